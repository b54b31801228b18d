"""A binary cache of parsed rows, so that only the first pass over a file parses text.

An entry is a directory of .npy arrays plus meta.json, named after the file and a hash of what
the parse depends on (the file's path, size and mtime, the schema, its featindex file's content
and skip_bad_lines): a changed file or schema gets a new entry. meta.json also records the schema,
and an entry is only read for a schema that gives the same keys (see check_entry): an entry
given to the scorer by hand, built with another numeric mode, featindex or columns, is refused
rather than encoded into out-of-vocabulary rows. Entries are written into a temporary directory
and renamed into place, so a reader never sees a half-written one. A file is parsed into its
entry part by part (fnn_fast.data.cache_build): building one takes about one part's memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fnn_fast.data.errors import DataError
from fnn_fast.data.readers import read_rows
from fnn_fast.data.rows import ParsedRows
from fnn_fast.data.schema import Schema

CACHE_FORMAT_VERSION = 2  # 2: meta.json records the schema
# What the keys of an entry depend on; the label is not read when scoring, the id column only
# when asked for.
_KEY_SETTINGS = (
    "format", "delimiter", "numeric", "categorical", "numeric_mode", "numeric_rule", "featindex",
    "multi_valued", "bag_pooling",
)  # fmt: skip
_ARRAYS = ("labels", "keys", "values", "lines")


def load_rows(
    path, schema: Schema, *, cache_dir=None, skip_bad_lines: bool = False, progress: bool = True
) -> ParsedRows:
    """read_rows() of a file to train or evaluate on, through the cache in ``cache_dir`` when
    given (arrays come back mmapped). A file that gives no rows is a DataError."""
    if cache_dir is None:
        return _some_rows(
            read_rows(path, schema, skip_bad_lines=skip_bad_lines, progress=progress), schema
        )
    entry = ensure_entry(path, schema, cache_dir, skip_bad_lines=skip_bad_lines, progress=progress)
    rows = open_rows(entry, schema=schema)
    rows.value_fields = schema.value_fields(rows.field_names)
    return _some_rows(rows, schema)


def ensure_entry(
    path, schema: Schema, cache_dir, *, skip_bad_lines: bool = False, progress: bool = True,
    part_bytes: int | None = None,
) -> Path:  # fmt: skip
    """The entry of ``path`` in ``cache_dir``, parsed into it first when it is not there yet:
    part by part (``part_bytes`` of text, see fnn_fast.data.cache_build), so that building it
    takes about one part's memory whatever the file's size."""
    from fnn_fast.data.cache_build import PART_BYTES, build_entry

    cache_dir = Path(cache_dir)
    entry = cache_dir / _entry_name(path, schema, skip_bad_lines)
    if not entry.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=cache_dir))
        try:
            build_entry(
                path, schema, staging, skip_bad_lines=skip_bad_lines, progress=progress,
                part_bytes=PART_BYTES if part_bytes is None else part_bytes,
            )  # fmt: skip
            os.rename(staging, entry)
        except OSError:
            if not entry.is_dir():  # else another process wrote the same entry first: use it
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return entry


def _some_rows(rows: ParsedRows, schema: Schema) -> ParsedRows:
    if len(rows) == 0:
        why = (
            f"all {rows.bad_lines} lines with data are bad: none could be read as "
            f"{schema.format} input (check --format and the file)"
            if rows.bad_lines
            else "it holds no data lines"
        )
        raise DataError(rows.source, None, f"no rows to train or evaluate on: {why}")
    return rows


def write_rows(rows: ParsedRows, directory, schema: Schema) -> None:
    """An entry of ``rows``, read from a file with ``schema``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in _ARRAYS:
        np.save(directory / f"{name}.npy", np.ascontiguousarray(getattr(rows, name)))
    if rows.row_ids is not None:
        row_ids = np.asarray(rows.row_ids)
        if row_ids.dtype == object:  # object arrays would need pickle to load
            row_ids = row_ids.astype(str)
        np.save(directory / "row_ids.npy", row_ids)
    meta = entry_meta(
        rows.field_names, rows.slot_fields, rows.bad_lines, rows.bad_examples, rows.source,
        len(rows), schema,
    )  # fmt: skip
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def entry_meta(
    field_names, slot_fields, bad_lines: int, bad_examples, source: str, n_rows: int,
    schema: Schema,
) -> dict:  # fmt: skip
    """An entry's meta.json."""
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "field_names": list(field_names),
        "slot_fields": [int(f) for f in slot_fields],
        "bad_lines": bad_lines,
        "bad_examples": list(bad_examples),
        "source": source,
        "n_rows": n_rows,
        "schema": schema_identity(schema),
    }


def open_rows(directory, *, mmap: bool = True, schema: Schema | None = None) -> ParsedRows:
    """An entry's rows; with ``schema``, only if it gives the keys the entry holds."""
    directory = Path(directory)
    meta = read_meta(directory)
    if schema is not None:
        check_entry(directory, schema, meta)
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
    meta = read_meta(directory)
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


def read_meta(directory) -> dict:
    """An entry's meta.json, refused when written by another version of the cache format."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise DataError(
            directory, None,
            f"cache format {meta.get('format_version')}, this version reads "
            f"{CACHE_FORMAT_VERSION}: rebuild the entry (read the source file again with "
            "--cache-dir)",
        )  # fmt: skip
    return meta


def check_entry(directory, schema: Schema, meta: dict | None = None) -> dict:
    """The entry's meta, after checking that ``schema`` reads the keys it holds: the same format,
    columns, numeric mode and rule, and featindex content (and id column, when ``schema`` has
    one). Raises DataError saying what differs."""
    meta = read_meta(directory) if meta is None else meta
    built, wanted = meta["schema"], schema_identity(schema)
    settings = [*_KEY_SETTINGS, *(["id_column"] if schema.id_column is not None else [])]
    differ = [
        f"{name} {_setting(built, name)} (wanted: {_setting(wanted, name)})"
        for name in settings
        if built.get(name) != wanted.get(name)
    ]
    if differ:
        raise DataError(
            directory, None,
            f"this cache entry was built with other settings: {'; '.join(differ)}. Read the "
            "source file instead, or rebuild the entry with these settings (another "
            "--cache-dir)",
        )  # fmt: skip
    return meta


def _setting(identity: dict, name: str) -> str:
    value = identity.get(name)
    if name == "featindex" and value is not None:
        return f"with content sha256 {value[:12]}"
    return repr(value)


def schema_identity(schema: Schema) -> dict:
    """The schema as an entry records it: its featindex file by content, not path (a saved
    model holds a copy of the one it was trained with), the numeric rule where it applies."""
    identity = schema.to_dict()
    # bag settings at their defaults are left out: entries from before bags read the same keys
    if not schema.multi_valued:
        del identity["multi_valued"]
    if schema.bag_pooling == "sum":
        del identity["bag_pooling"]
    if schema.numeric_mode != "bucketize" or not schema.numeric:
        identity["numeric_rule"] = None  # no number is bucketized: any rule reads the same keys
    if schema.featindex is not None:
        identity["featindex"] = hashlib.sha256(Path(schema.featindex).read_bytes()).hexdigest()
    return identity


def _entry_name(path, schema: Schema, skip_bad_lines: bool) -> str:
    identity = {
        "format_version": CACHE_FORMAT_VERSION,
        "file": _file_identity(path),
        "schema": schema_identity(schema),
        "skip_bad_lines": skip_bad_lines,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{Path(path).name}-{digest}"


def _file_identity(path) -> list:
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
