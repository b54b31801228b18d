"""Reading text files line by line, with a progress bar over the file's size."""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

_UPDATE_EVERY = 1 << 14  # lines between progress bar updates: a per-line update costs too much


@contextmanager
def text_lines(path, *, progress: bool, encoding: str = "utf-8", newline: str | None = None):
    """The file's lines. Undecodable bytes survive as surrogates (and are hashed as such) rather
    than failing the whole file."""
    with open(path, encoding=encoding, errors="surrogateescape", newline=newline) as file:
        bar = tqdm(
            total=os.path.getsize(path),
            unit="B",
            unit_scale=True,
            desc=Path(path).name,
            disable=None if progress else True,
        )
        with bar:
            yield file if bar.disable else _tracked(file, bar)


def _tracked(lines, bar):
    size = 0
    for count, line in enumerate(lines, 1):
        size += len(line)
        if count % _UPDATE_EVERY == 0:
            bar.update(size - bar.n)
        yield line
    bar.update(bar.total - bar.n)  # characters undercount multi-byte text: end exactly full


@dataclass
class TextPart:
    """A slice of a text file's lines, already read (see fnn_fast.data.parts): its line numbers
    count from the part's first line. ``header``: a CSV file's header, for parts after the first."""

    text: str
    header: list[str] | None = None


@contextmanager
def lines_of(path, part: TextPart | None, *, progress: bool, encoding="utf-8", newline=None):
    """The lines of a whole file (text_lines), or of one part of it."""
    if part is None:
        with text_lines(path, progress=progress, encoding=encoding, newline=newline) as text:
            yield text
    else:
        yield io.StringIO(part.text, newline="")
