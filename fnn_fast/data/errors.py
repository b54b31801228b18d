"""Errors for malformed input, each naming the file and line it comes from."""

from __future__ import annotations

MAX_BAD_EXAMPLES = 5


class DataError(ValueError):
    """A problem in an input file. ``line`` is 1-based (the row number for Parquet), or None when
    the problem concerns the whole file (a missing column, say)."""

    def __init__(self, path, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # crosses process boundaries (the scorer's reading workers)
        return DataError, (self.path, self.line, self.reason)


class MalformedLine(Exception):
    """Raised by the parsing helpers, which do not know the file position; the reader turns it
    into a DataError (or a skipped line) via :class:`BadLines`."""


class BadLines:
    """What a malformed line does: raise a DataError, or, with ``skip``, get counted, keeping the
    first few messages so that the user can see what was skipped (and, with ``keep_all``, every
    line and reason)."""

    def __init__(self, path, skip: bool, *, keep_all: bool = False):
        self.path = str(path)
        self.skip = skip
        self.count = 0
        self.examples: list[str] = []
        # (line, reason) of every skipped line, for a scorer's rejects file
        self.rejected: list[tuple[int, str]] | None = [] if keep_all else None

    def report(self, line: int, reason: str) -> None:
        error = DataError(self.path, line, reason)
        if not self.skip:
            raise error
        self.count += 1
        if self.rejected is not None:
            self.rejected.append((line, reason))
        if len(self.examples) < MAX_BAD_EXAMPLES:
            self.examples.append(str(error))
