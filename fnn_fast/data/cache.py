"""A binary cache of parsed rows, so that only the first pass over a file parses text.

An entry is a directory of .npy arrays plus meta.json, named after the file and a hash of what
the parse depends on (the file's path, size and mtime, the schema, its featindex file and
skip_bad_lines): a changed file or schema gets a new entry. Entries are written into a temporary
directory and renamed into place, so a reader never sees a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fnn_fast.data.readers import read_rows
from fnn_fast.data.rows import ParsedRows
from fnn_fast.data.schema import Schema

CACHE_FORMAT_VERSION = 1
_ARRAYS = ("labels", "keys", "values", "lines")


def load_rows(
    path, schema: Schema, *, cache_dir=None, skip_bad_lines: bool = False, progress: bool = True
) -> ParsedRows:
    """read_rows(), through the cache in ``cache_dir`` when given (arrays come back mmapped)."""
    if cache_dir is None:
        return read_rows(path, schema, skip_bad_lines=skip_bad_lines, progress=progress)
    cache_dir = Path(cache_dir)
    entry = cache_dir / _entry_name(path, schema, skip_bad_lines)
    if not entry.is_dir():
        rows = read_rows(path, schema, skip_bad_lines=skip_bad_lines, progress=progress)
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=cache_dir))
        try:
            write_rows(rows, staging)
            os.rename(staging, entry)
        except OSError:
            if not entry.is_dir():  # else another process wrote the same entry first: use it
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return open_rows(entry)


def write_rows(rows: ParsedRows, directory) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in _ARRAYS:
        np.save(directory / f"{name}.npy", np.ascontiguousarray(getattr(rows, name)))
    if rows.row_ids is not None:
        row_ids = np.asarray(rows.row_ids)
        if row_ids.dtype == object:  # object arrays would need pickle to load
            row_ids = row_ids.astype(str)
        np.save(directory / "row_ids.npy", row_ids)
    meta = {
        "format_version": CACHE_FORMAT_VERSION,
        "field_names": list(rows.field_names),
        "slot_fields": [int(f) for f in rows.slot_fields],
        "bad_lines": rows.bad_lines,
        "bad_examples": list(rows.bad_examples),
        "source": rows.source,
        "n_rows": len(rows),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def open_rows(directory, *, mmap: bool = True) -> ParsedRows:
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise ValueError(
            f"{directory}: cache format {meta.get('format_version')}, "
            f"this version reads {CACHE_FORMAT_VERSION}"
        )
    mode = "r" if mmap else None
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode=mode) for name in _ARRAYS}
    row_ids_path = directory / "row_ids.npy"
    return ParsedRows(
        **arrays,
        slot_fields=np.asarray(meta["slot_fields"], dtype=np.int64),
        field_names=meta["field_names"],
        row_ids=np.load(row_ids_path, mmap_mode=mode) if row_ids_path.exists() else None,
        bad_lines=meta["bad_lines"],
        source=meta["source"],
        bad_examples=meta["bad_examples"],
    )


def read_row_range(directory, start: int, stop: int) -> ParsedRows:
    """Rows [start, stop) of an entry, read from the files rather than memory-mapped: a scorer
    walking through a large entry keeps its memory flat (mapped pages it touched would stay
    in its resident set)."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    names = [*_ARRAYS, *(["row_ids"] if (directory / "row_ids.npy").exists() else [])]
    arrays = {name: _read_rows_of(directory / f"{name}.npy", start, stop) for name in names}
    return ParsedRows(
        **arrays,
        slot_fields=np.asarray(meta["slot_fields"], dtype=np.int64),
        field_names=meta["field_names"],
        source=meta["source"],
    )


def _read_rows_of(path: Path, start: int, stop: int) -> np.ndarray:
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(file)
        if fortran or dtype.hasobject:
            raise ValueError(f"{path}: not a C-ordered plain array")
        row = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        stop = min(stop, shape[0])
        file.seek(file.tell() + start * row)
        data = np.fromfile(file, dtype=dtype, count=(stop - start) * (row // dtype.itemsize))
    return data.reshape((stop - start, *shape[1:]))


def _entry_name(path, schema: Schema, skip_bad_lines: bool) -> str:
    identity = {
        "format_version": CACHE_FORMAT_VERSION,
        "file": _file_identity(path),
        "schema": schema.to_dict(),
        "skip_bad_lines": skip_bad_lines,
    }
    if schema.featindex is not None:  # it decides the fields of a libFM file
        identity["featindex"] = _file_identity(schema.featindex)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{Path(path).name}-{digest}"


def _file_identity(path) -> list:
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
