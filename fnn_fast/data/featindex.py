"""The libFM feature dictionary: lines ``field:value<TAB>index``."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from fnn_fast.data.errors import DataError


@dataclass(frozen=True)
class FeatureIndex:
    field_names: list[str]  # in order of first appearance in the file
    field_of: dict[int, int]  # feature index -> position in field_names


def load_featindex(path) -> FeatureIndex:
    """Read (once per file version: train, test and the schema all ask for it) a featindex file."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    return _load(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int) -> FeatureIndex:
    field_numbers: dict[str, int] = {}
    field_of: dict[int, int] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as file:
        for line_no, line in enumerate(file, 1):
            parts = line.rsplit(None, 1)
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(path, line_no, f"expected 'field:value<TAB>index', found {line!r}")
            name, index_text = parts
            field, colon, _ = name.partition(":")
            if not colon:
                raise DataError(path, line_no, f"feature {name!r} has no 'field:' prefix")
            try:
                index = int(index_text)
            except ValueError:
                raise DataError(path, line_no, f"index {index_text!r} is not an integer") from None
            if index in field_of:
                raise DataError(path, line_no, f"index {index} is listed twice")
            field_of[index] = field_numbers.setdefault(field, len(field_numbers))
    return FeatureIndex(list(field_numbers), field_of)
