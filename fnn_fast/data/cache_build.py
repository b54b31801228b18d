"""Building a cache entry part by part, so that memory stays about one part whatever the file's
size (see fnn_fast.data.cache for what an entry is).

Text files are read in parts of about ``part_bytes`` (whole lines; a CSV part is extended until
it ends between records, so that a quoted line break is never cut), Parquet files in row groups
of at least ``part_rows`` rows. Each part is parsed by read_rows() and its arrays appended to the
entry's .npy files behind a reserved header, written once the final shape is known. The entry
holds what parsing the whole file at once gives, byte for byte:

- line numbers are the file's: a part's lines are offset by the earlier parts' line counts, in
  its rows' ``lines`` and in its bad lines' reports (whose count and examples run over the file);
- a CSV header is read from the first part and given to the others;
- a positional libFM file's width (features per line) is decided by its first row, in whatever
  part that is, and required of the later parts;
- a multi-valued field (libFM, or a bag column) gets as many slots as its busiest line in the
  whole file: a part whose busiest line has fewer gets PAD slots, moved into place (a rewrite of
  keys and values, chunk by chunk) only when the parts' widths differ;
- an id column's strings get the widest string's dtype, as numpy's concatenation would give.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections import deque
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fnn_fast.data.errors import BadLines
from fnn_fast.data.parquet import RowGroups, open_parquet
from fnn_fast.data.readers import _check_file, read_rows
from fnn_fast.data.rows import ParsedRows, into_layout, widest_layout
from fnn_fast.data.schema import Schema
from fnn_fast.data.textfile import TextPart
from fnn_fast.data.tokens import PAD_KEY

PART_BYTES = 32 << 20  # as fnn_fast.data.parts
PART_ROWS = 1 << 18
_HEADER_BYTES = 128  # reserved for a .npy header: what np.save writes for these arrays
_COPY_ROWS = 1 << 16  # rows per chunk when an array has to be rewritten
_END = "fnn-fast-end-of-part"  # a line that cannot continue a quoted CSV field


class _FileBadLines(BadLines):
    """BadLines of a whole file, reported by parts whose lines count from their first line."""

    def __init__(self, path, skip: bool):
        super().__init__(path, skip)
        self.offset = 0  # lines of the earlier parts

    def report(self, line: int, reason: str) -> None:
        super().report(line + self.offset, reason)


def build_entry(
    path, schema: Schema, directory, *, skip_bad_lines: bool = False, progress: bool = True,
    part_bytes: int = PART_BYTES, part_rows: int = PART_ROWS,
) -> None:  # fmt: skip
    """Parse ``path`` into the (existing, empty) entry directory ``directory``."""
    from fnn_fast.data.cache import entry_meta

    _check_file(path)
    bad = _FileBadLines(path, skip_bad_lines)
    parts = (
        _parquet_parts(path, schema, bad, progress, part_rows)
        if schema.format == "parquet"
        else _text_parts(path, schema, bad, progress, part_bytes)
    )
    writer = _EntryWriter(Path(directory))
    try:
        for rows in parts:
            writer.add(rows)
        field_names, slot_fields, n_rows = writer.finish()
    finally:
        writer.close()
    meta = entry_meta(field_names, slot_fields, bad.count, bad.examples, str(path), n_rows, schema)
    (Path(directory) / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def _text_parts(path, schema: Schema, bad: _FileBadLines, progress: bool, part_bytes: int):
    """Each part's rows, numbered by file line."""
    is_csv = schema.format == "csv"
    delimiter = schema.delimiter or ","
    positional = schema.format == "libfm" and schema.featindex is None
    part_schema, header, first = schema, None, True
    with open(path, "rb") as file, tqdm(
        total=os.path.getsize(path), unit="B", unit_scale=True, desc=Path(path).name,
        disable=None if progress else True,
    ) as bar:  # fmt: skip
        while True:
            data = _read_part(file, part_bytes, delimiter if is_csv else None)
            if not data and not first:
                return
            # As the whole-file readers decode: utf-8-sig drops a CSV file's byte-order mark.
            text = data.decode("utf-8-sig" if is_csv and first else "utf-8", "surrogateescape")
            rows = read_rows(
                path, part_schema, bad=bad, part=TextPart(text, header), progress=False
            )
            rows.lines = np.asarray(rows.lines, dtype=np.int64) + bad.offset
            if is_csv and first:
                header = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
            if positional and part_schema.num_fields is None and len(rows):
                # the first row decided the width for the whole file
                part_schema = dataclasses.replace(schema, num_fields=rows.keys.shape[1])
            yield rows
            bar.update(len(data))
            bad.offset += _line_count(data)
            first = False


def _read_part(file, part_bytes: int, csv_delimiter: str | None) -> bytes:
    """The next whole lines, about ``part_bytes`` of them; for CSV, up to a record's end."""
    data = _whole_lines(file, part_bytes)
    while csv_delimiter is not None and b'"' in data and not _ends_a_record(data, csv_delimiter):
        more = _whole_lines(file, part_bytes)
        if not more:
            break
        data += more
    return data


def _whole_lines(file, size: int) -> bytes:
    data = file.read(size)
    if data and not data.endswith(b"\n"):
        data += file.readline()
    return data


def _ends_a_record(data: bytes, delimiter: str) -> bool:
    """Whether csv.reader, as the whole-file reader runs it, is between records after ``data``
    (not inside a quoted field): then a line after it reads as a record of its own."""
    text = data.decode("utf-8", "surrogateescape")
    text += ("" if text.endswith(("\n", "\r")) else "\n") + _END + "\n"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    last: deque = deque(maxlen=1)
    while True:
        try:
            last.append(next(reader))
        except StopIteration:
            break
        except csv.Error:  # the reader reports it and goes on with the next line
            last.append(None)
    return bool(last) and last[0] == [_END]


def _line_count(data: bytes) -> int:
    """Lines as the readers count them (universal newlines: \\n, \\r\\n or \\r)."""
    ends = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return ends + (1 if data and not data.endswith((b"\n", b"\r")) else 0)


def _parquet_parts(path, schema: Schema, bad: BadLines, progress: bool, part_rows: int):
    metadata = open_parquet(path).metadata
    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    with tqdm(
        total=metadata.num_rows, unit="rows", desc=Path(path).name,
        disable=None if progress else True,
    ) as bar:  # fmt: skip
        group, first_row = 0, 1
        while group < len(sizes) or group == 0:
            stop, rows = group, 0
            while stop < len(sizes) and rows < part_rows:
                rows, stop = rows + sizes[stop], stop + 1
            groups = RowGroups(list(range(group, stop)), first_row)
            yield read_rows(path, schema, bad=bad, part=groups, progress=False)
            bar.update(rows)
            group, first_row = stop, first_row + rows
            if group >= len(sizes):
                return


class _EntryWriter:
    """The entry's arrays, appended part by part."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.files = {
            name: _ArrayFile(directory / f"{name}.npy")
            for name in ("labels", "keys", "values", "lines")
        }
        self.layouts: list[tuple[list[str], np.ndarray]] = []  # each part's fields and slots

    def add(self, rows: ParsedRows) -> None:
        if rows.row_ids is not None and "row_ids" not in self.files:
            self.files["row_ids"] = _ArrayFile(self.directory / "row_ids.npy")
        layout = len(self.layouts)
        self.layouts.append((list(rows.field_names), np.asarray(rows.slot_fields, np.int64)))
        for name, file in self.files.items():
            file.append(getattr(rows, name), layout)

    def finish(self) -> tuple[list[str], np.ndarray, int]:
        """(field names, slot fields, rows): the whole file's."""
        # A positional libFM file's parts before its first row have no fields yet.
        sized = [i for i, file_blocks in enumerate(self.files["labels"].blocks) if file_blocks[1]]
        field_names = self.layouts[sized[0] if sized else -1][0]
        slot_fields = widest_layout(
            [slots for names, slots in self.layouts if names == field_names], len(field_names)
        )
        for name, file in self.files.items():
            if name in ("keys", "values"):
                fill = PAD_KEY if name == "keys" else 0

                def into(chunk, layout, fill=fill):
                    return into_layout(chunk, self.layouts[layout][1], slot_fields, fill)

                file.finish(file.dtype(), (len(slot_fields),), into, self.layouts, slot_fields)
            else:
                file.finish(file.dtype(), None)
        return field_names, slot_fields, self.files["labels"].rows

    def close(self) -> None:
        for file in self.files.values():
            file.close()


class _ArrayFile:
    """A .npy file written block by block behind a reserved header: the header goes in at the
    end when the blocks already have the final dtype and layout, else the blocks are rewritten
    into a new file, a chunk at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.file.write(b"\0" * _HEADER_BYTES)
        self.blocks: list[tuple[int, int, np.dtype, tuple, int]] = []  # offset, rows, ...

    def append(self, array, layout: int) -> None:
        array = np.ascontiguousarray(array)
        if array.dtype.hasobject:  # as write_rows: object arrays would need pickle to load
            array = array.astype(str)
        self.blocks.append((self.file.tell(), len(array), array.dtype, array.shape[1:], layout))
        if array.size:
            self.file.write(array.data)

    @property
    def rows(self) -> int:
        return sum(rows for _, rows, *_ in self.blocks)

    def dtype(self) -> np.dtype:
        """The dtype numpy's concatenation of the blocks would have."""
        return np.result_type(*(dtype for _, _, dtype, _, _ in self.blocks))

    def finish(self, dtype, tail, convert=None, layouts=None, want=None) -> None:
        """Write the header of the final array: ``tail`` its shape after the rows (None: the
        blocks'); ``convert(chunk, layout)`` lays a block's rows out in it."""
        filled = [block for block in self.blocks if block[1]]
        if tail is None:
            tail = (filled or self.blocks)[0][3]
        shape = (self.rows, *(int(n) for n in tail))
        header = _npy_header(dtype, shape)
        in_place = len(header) == _HEADER_BYTES and all(
            block_dtype == dtype
            and block_tail == shape[1:]
            and (layouts is None or np.array_equal(layouts[layout][1], want))
            for _, _, block_dtype, block_tail, layout in filled
        )
        if in_place:
            self.file.seek(0)
            self.file.write(header)
            self.close()
            return
        self.close()
        rewritten = self.path.with_name(self.path.name + ".new")
        with open(self.path, "rb") as source, open(rewritten, "wb") as target:
            target.write(header)
            for offset, rows, block_dtype, block_tail, layout in filled:
                per_row = int(np.prod(block_tail, dtype=np.int64))
                source.seek(offset)
                for start in range(0, rows, _COPY_ROWS):
                    count = min(_COPY_ROWS, rows - start)
                    chunk = np.fromfile(source, dtype=block_dtype, count=count * per_row)
                    chunk = chunk.reshape(count, *block_tail)
                    if layouts is not None and not np.array_equal(layouts[layout][1], want):
                        chunk = convert(chunk, layout)
                    target.write(np.ascontiguousarray(chunk, dtype=dtype).data)
        os.replace(rewritten, self.path)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """The header np.save writes for an array of ``dtype`` and ``shape``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape},
    )
    return header.getvalue()
