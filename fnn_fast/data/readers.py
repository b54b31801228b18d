"""Reading an input file into :class:`ParsedRows`, whatever its format.

Malformed lines raise :class:`DataError` (file, line, reason), or with ``skip_bad_lines`` are
skipped and counted in ``bad_lines``, the first few reasons kept in ``bad_examples``. Empty lines
of text files carry nothing and are skipped without being counted.
"""

from __future__ import annotations

from pathlib import Path

from fnn_fast.data.delimited import read_delimited
from fnn_fast.data.errors import BadLines, DataError
from fnn_fast.data.libfm import read_libfm
from fnn_fast.data.parquet import read_parquet
from fnn_fast.data.rows import ParsedRows
from fnn_fast.data.schema import Schema
from fnn_fast.data.tokens import PAD_KEY

__all__ = ["PAD_KEY", "ParsedRows", "read_rows"]

_READERS = {
    "libfm": read_libfm,
    "criteo": read_delimited,
    "csv": read_delimited,
    "parquet": read_parquet,
}


def read_rows(
    path, schema: Schema, *, skip_bad_lines: bool = False, progress: bool = True,
    bad: BadLines | None = None, part=None, labelled: bool = True,
) -> ParsedRows:  # fmt: skip
    """Parse one file, or one part of it (see fnn_fast.data.parts). ``progress`` shows a tqdm bar
    when stderr is a terminal. ``labelled=False``: files to score, whose labels are not read."""
    reader = _READERS[schema.format]
    if part is None:
        _check_file(path)
    bad = BadLines(path, skip_bad_lines) if bad is None else bad
    if part is None and labelled:
        rows = reader(path, schema, bad, progress)
    else:
        rows = reader(path, schema, bad, progress, part=part, labelled=labelled)
    rows.value_fields = schema.value_fields(rows.field_names)
    return rows


def _check_file(path) -> None:
    if Path(path).is_dir():
        raise DataError(path, None, "a directory, not a file: give one input file")
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise DataError(path, None, "no such file") from None
    except OSError as error:
        raise DataError(path, None, f"cannot be read: {error.strerror}") from None
