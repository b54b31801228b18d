"""Large inputs cut into parts that are read, encoded and scored independently.

A part is a fixed slice of one input file, decided by the file alone, so that the same inputs
always give the same parts (what lets a killed scoring run resume exactly where it was):

- text (libFM, Criteo, CSV): the lines that *start* in a byte range of ``part_bytes``; a line
  crossing a boundary belongs to the part where it starts. Line numbers inside a part count from
  its first line; the scorer turns them into file line numbers from the earlier parts' line counts.
  A CSV field must not hold a quoted line break, which would be cut.
- Parquet: consecutive row groups, at least ``part_rows`` rows (a row group is never split).
- A binary cache entry (a directory written by fnn_fast.data.cache): ``part_rows`` rows.
"""

from __future__ import annotations

import csv
import glob
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from fnn_fast.data.cache import check_entry, read_row_range
from fnn_fast.data.encoder import FeatureEncoder
from fnn_fast.data.errors import BadLines, DataError
from fnn_fast.data.parquet import RowGroups, open_parquet, read_arrow_table
from fnn_fast.data.readers import read_rows
from fnn_fast.data.rows import ParsedRows
from fnn_fast.data.schema import CRITEO_COLUMNS, Schema, criteo_columns_of
from fnn_fast.data.textfile import TextPart
from fnn_fast.data.tokens import PAD_KEY

PART_BYTES = 32 << 20
PART_ROWS = 1 << 18


@dataclass(frozen=True)
class Part:
    file_index: int
    index: int  # within its file
    path: str
    kind: str  # "text" | "parquet" | "cache"
    start: int  # text: byte offset; cache: row; parquet: first row group
    stop: int  # exclusive
    first_row: int = 1  # parquet: 1-based row number of the part's first row
    size: int = 0  # bytes (text) or rows, for progress

    @property
    def name(self) -> str:
        return f"part-{self.file_index:05d}-{self.index:06d}"


@dataclass
class EncodedPart:
    """A part ready for the model. Output row r is scored when ``good[r]``; ``ids``/``values``
    hold the good rows only. ``lines``: every output row's line (text: counted from the part's
    first line). ``newlines``: the part's line count, for numbering the next part's lines."""

    part: Part
    good: np.ndarray  # bool [n]
    ids: np.ndarray  # int64 [g, S]
    values: np.ndarray | None  # float32 [g, S]; None when every value is 1
    lines: np.ndarray  # int64 [n]
    row_ids: np.ndarray | None  # [n], the id column passed through (None for rejected rows)
    rejects: list[tuple[int, str]]  # (line, reason), lines as in ``lines``
    newlines: int = 0

    def __len__(self) -> int:
        return len(self.good)


def expand_inputs(inputs) -> list[str]:
    """Files named, globbed or held by directories, in a stable order. A directory holding
    meta.json is one binary cache entry; other directories give their files, sorted. Anything
    else found (a subdirectory, a file that cannot be opened) stops the run, named."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"no file matches {item}")
            found.extend(_input_file(m, f"matched by {item}") for m in matches)
        elif _is_cache_entry(item):
            found.append(item)
        elif Path(item).is_dir():
            files = sorted(
                str(p) for p in Path(item).iterdir() if not p.name.startswith((".", "_"))
            )
            if not files:
                raise FileNotFoundError(f"directory {item} holds no input files")
            found.extend(_input_file(f, f"in the input directory {item}") for f in files)
        elif Path(item).exists():
            found.append(_input_file(item, "given as input"))
        else:
            raise FileNotFoundError(f"no such input: {item}")
    return found


def _is_cache_entry(path) -> bool:
    return Path(path, "meta.json").is_file()


def _input_file(path: str, found: str) -> str:
    """``path`` if it is a cache entry or a file that opens; else DataError saying why not."""
    if _is_cache_entry(path):
        return path
    if Path(path).is_dir():
        raise DataError(
            path, None,
            f"a directory {found}, not a file: directories are not searched recursively; "
            "give its files (a glob such as DIR/*) or the directory itself as an input",
        )  # fmt: skip
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise DataError(path, None, f"cannot be read ({found}): {error.strerror}") from None
    return path


def plan_parts(
    files: list[str], schema: Schema, part_bytes: int = PART_BYTES, part_rows: int = PART_ROWS
) -> list[Part]:
    parts: list[Part] = []
    for file_index, path in enumerate(files):
        if _is_cache_entry(path):
            rows = check_entry(path, schema)["n_rows"]
            starts = range(0, max(rows, 1), part_rows)
            for i, start in enumerate(starts):
                stop = min(start + part_rows, rows)
                parts.append(Part(file_index, i, path, "cache", start, stop, size=stop - start))
        elif schema.format == "parquet":
            metadata = open_parquet(path).metadata
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            first, group, index = 1, 0, 0
            while group < len(sizes) or index == 0:
                stop, rows = group, 0
                while stop < len(sizes) and rows < part_rows:
                    rows += sizes[stop]
                    stop += 1
                parts.append(Part(file_index, index, path, "parquet", group, stop, first, rows))
                first, group, index = first + rows, stop, index + 1
        else:
            size = os.path.getsize(path)
            if size == 0:
                warnings.warn(f"{path}: the file is empty: it adds no rows", stacklevel=2)
            for i, start in enumerate(range(0, max(size, 1), part_bytes)):
                stop = min(start + part_bytes, size)
                parts.append(Part(file_index, i, path, "text", start, stop, size=stop - start))
    return parts


def read_text_part(part: Part) -> tuple[bytes, int]:
    """The bytes of the part's lines (those starting in [start, stop)) and their count."""
    with open(part.path, "rb") as file:
        begin, end = _line_start(file, part.start), _line_start(file, part.stop)
        file.seek(begin)
        data = file.read(end - begin)
    newlines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return data, newlines


def text_part(data: bytes, first: bool, header: list[str] | None) -> TextPart:
    # utf-8-sig: a byte-order mark can only open the file's first part
    return TextPart(data.decode("utf-8-sig" if first else "utf-8", "surrogateescape"), header)


def _arrow_rows(
    part: Part, data: bytes, newlines: int, schema: Schema, header, bad: BadLines
) -> ParsedRows | None:
    """Criteo/CSV lines through pyarrow's multi-threaded CSV parser, each column's distinct
    cells turned into keys once. None when the part is not plain enough to map rows to lines
    exactly (a blank line, a ragged row): the line-by-line reader then takes it."""
    criteo = schema.format == "criteo"
    skip = 1 if (not criteo and part.index == 0) else 0  # the header line
    names = header
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip),
            parse_options=pacsv.ParseOptions(
                delimiter="\t" if criteo else schema.delimiter or ",",
                quote_char=False if criteo else '"',
                ignore_empty_lines=True,  # then a blank line shows as a missing row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                strings_can_be_null=False,
                include_columns=[
                    c for c in (schema.id_column, *schema.numeric, *schema.categorical) if c
                ],
            ),
        )
    except (pa.ArrowInvalid, KeyError):
        return None
    if table.num_rows != newlines - skip:
        return None
    return read_arrow_table(table, schema, bad, 1 + skip, False, part.path)


def _line_start(file, offset: int) -> int:
    """The offset of the first line starting at or after ``offset``."""
    if offset == 0:
        return 0
    file.seek(offset - 1)
    file.readline()
    return file.tell()


def criteo_columns(path) -> list[str]:
    """The columns of a Criteo file, decided once for the whole file by its first line: 39 cells
    for lines without the label (Criteo's unlabelled test file), else the 40 columns. A line of
    the other width is a bad line, not a row shifted by one column."""
    with open(path, "rb") as file:
        for line in file:
            line = line.rstrip(b"\r\n")
            if line:
                return criteo_columns_of(line.split(b"\t"))
    return CRITEO_COLUMNS


def csv_header(path, schema: Schema) -> list[str] | None:
    """A CSV file's header, which parts after the first need; None for an empty file (which
    gives no rows to score)."""
    if schema.format != "csv" or _is_cache_entry(path):
        return None
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        return next(csv.reader(file, delimiter=schema.delimiter or ","), None)  # None: empty


def load_part(part: Part):
    """The I/O of reading a part, without parsing: a cache part's rows, a text part's (bytes,
    line count); None for Parquet (read while parsing)."""
    if part.kind == "cache":
        return read_row_range(part.path, part.start, part.stop)
    if part.kind == "text":
        return read_text_part(part)
    return None


def encode_part(
    part: Part, schema: Schema, encoder: FeatureEncoder, skip_bad_lines: bool,
    header: list[str] | None = None, loaded=None, threads: int = 1,
) -> EncodedPart:  # fmt: skip
    """Read (or take from ``loaded``, see load_part) and encode one part. Without
    ``skip_bad_lines`` a malformed line raises DataError, its line counted from the part's first
    line for text parts. ``threads``: for encoding cached keys (1: others use the cores)."""
    bad = BadLines(part.path, skip_bad_lines, keep_all=True)
    newlines = 0
    if loaded is None:
        loaded = load_part(part)
    if part.kind == "cache":
        rows = loaded
    elif part.kind == "parquet":
        groups = RowGroups(list(range(part.start, part.stop)), part.first_row)
        rows = read_rows(part.path, schema, bad=bad, part=groups, progress=False, labelled=False)
    else:
        data, newlines = loaded
        if part.index == 0 and not data:  # an empty file: no rows, not even a CSV header
            return _no_rows(part, schema, encoder)
        if schema.format == "criteo":
            header = criteo_columns(part.path)
        encoded = _native_text_part(part, data, newlines, schema, encoder, header)
        if encoded is not None:
            return encoded
        rows = None
        if schema.format in ("criteo", "csv"):
            rows = _arrow_rows(part, data, newlines, schema, header, bad)
        if rows is None:
            given = header if part.index > 0 or schema.format == "criteo" else None
            text = text_part(data, part.index == 0, given)
            rows = read_rows(part.path, schema, bad=bad, part=text, progress=False, labelled=False)
    keys, values, overflow = conform_slots(rows, encoder)
    if not bad.rejected and not overflow.any():  # every row kept, in order: nothing to merge
        ids, values = encoder.transform(keys, values, threads=threads)
        return EncodedPart(
            part=part,
            good=np.ones(len(rows), dtype=bool),
            ids=ids,
            values=values if not np.all(values == 1) else None,
            lines=np.asarray(rows.lines, dtype=np.int64),
            row_ids=None if rows.row_ids is None else np.asarray(rows.row_ids).astype(object),
            rejects=[],
            newlines=newlines,
        )
    for row in np.flatnonzero(overflow):
        bad.report(int(rows.lines[row]), overflow_reason(rows, encoder, row))
    kept = ~overflow
    ids, values = encoder.transform(keys[kept], values[kept], threads=threads)
    values = values if not np.all(values == 1) else None

    # Output rows: the kept rows and the rejected lines (overflowing rows among them), in order.
    reject_lines = np.array([line for line, _ in bad.rejected], dtype=np.int64)
    lines = np.concatenate([np.asarray(rows.lines, dtype=np.int64)[kept], reject_lines])
    good = np.concatenate([np.ones(int(kept.sum()), dtype=bool), np.zeros(len(reject_lines), bool)])
    order = np.argsort(lines, kind="stable")
    row_ids = None
    if rows.row_ids is not None:
        passed = np.asarray(rows.row_ids)[kept]
        row_ids = np.concatenate([passed.astype(object), np.full(len(reject_lines), None)])[order]
    return EncodedPart(
        part=part,
        good=good[order],
        ids=np.ascontiguousarray(ids, dtype=np.int64),
        values=values,
        lines=lines[order],
        row_ids=row_ids,
        rejects=sorted(bad.rejected),
        newlines=newlines,
    )


def _no_rows(part: Part, schema: Schema, encoder: FeatureEncoder) -> EncodedPart:
    return EncodedPart(
        part=part,
        good=np.zeros(0, dtype=bool),
        ids=np.zeros((0, len(encoder.slot_fields)), dtype=np.int64),
        values=None,
        lines=np.zeros(0, dtype=np.int64),
        row_ids=None if schema.id_column is None else np.zeros(0, dtype=object),
        rejects=[],
    )


_MEMO_BITS = 14  # per field at most 2^14 recent cells (512 kB), fewer for a small vocabulary
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"


def native_text_layout(schema: Schema, encoder: FeatureEncoder, header: list[str] | None):
    """(delimiter, column slots, column kinds) for fnn_fast._C.DelimitedEncoder, or None where
    its fast path does not apply (not Criteo or CSV, an id column to pass through, multi-valued
    columns, a model whose slots are not one per column, no native module). ``header``: the
    file's columns (Criteo: 40 by default, see criteo_columns)."""
    if schema.format not in ("criteo", "csv") or schema.id_column is not None:
        return None
    if schema.multi_valued:  # the C++ reader takes a cell for one value
        return None
    if encoder.native_vocabulary() is None:
        return None
    fields = list(schema.field_names)
    if fields != list(encoder.field_names) or not np.array_equal(
        encoder.slot_fields, np.arange(len(fields))
    ):
        return None
    delimiter = "\t" if schema.format == "criteo" else schema.delimiter or ","
    columns = CRITEO_COLUMNS if header is None and schema.format == "criteo" else header
    if columns is None or len(delimiter) != 1:
        return None
    position: dict[str, int] = {}
    for i, name in enumerate(columns):
        position.setdefault(name, i)
    if any(name not in position for name in fields):
        return None  # the Python reader names the missing columns
    slots, kinds = [-1] * len(columns), [0] * len(columns)
    # DelimitedEncoder kinds: 2, 4 and 5 bucketize by numeric rule 1, 2 and 3; 3 keeps the value
    numeric_kind = (
        {1: 2, 2: 4, 3: 5}[schema.numeric_rule] if schema.numeric_mode == "bucketize" else 3
    )
    for slot, name in enumerate(fields):
        slots[position[name]] = slot
        kinds[position[name]] = numeric_kind if name in schema.numeric else 1
    return delimiter, slots, kinds


def _native_text_part(
    part: Part, data: bytes, newlines: int, schema: Schema, encoder: FeatureEncoder, header
) -> EncodedPart | None:
    """A text part encoded by the C++ reader (cells straight to ids, see csrc/cpu/encode.h);
    None when it does not apply or meets a line it leaves to the Python readers."""
    if schema.format == "csv" and part.index == 0:
        header = _first_line_cells(data, schema)
    layout = native_text_layout(schema, encoder, header)
    if layout is None or (part.index == 0 and data.startswith(_BYTE_ORDER_MARK)):
        return None
    if schema.format == "csv" and b'"' in data:  # quoting: csv.reader's rules apply
        return None
    skip = 1 if schema.format == "csv" and part.index == 0 else 0
    native = _delimited_encoder(encoder, layout)
    rows = max(newlines - skip, 0)
    ids = np.empty((rows, len(encoder.slot_fields)), dtype=np.int64)
    values = np.empty(ids.shape, dtype=np.float32)
    done, ok, all_ones, _ = native.encode(data, skip, rows, ids.ctypes.data, values.ctypes.data)
    if not ok or done != rows:
        return None
    return EncodedPart(
        part=part,
        good=np.ones(rows, dtype=bool),
        ids=ids,
        values=None if all_ones else values,
        lines=np.arange(1 + skip, 1 + skip + rows, dtype=np.int64),
        row_ids=None,
        rejects=[],
        newlines=newlines,
    )


def _first_line_cells(data: bytes, schema: Schema) -> list[str] | None:
    """The header cells of a CSV file's first part (without quotes: else no fast path)."""
    line = data[: data.find(b"\n")] if b"\n" in data else data
    if b'"' in line or b"\r" in line:
        return None
    return line.decode("utf-8", "surrogateescape").split(schema.delimiter or ",")


def _delimited_encoder(encoder: FeatureEncoder, layout):
    """This thread's DelimitedEncoder for ``layout`` (its cell memo is not shared)."""
    local = encoder.__dict__.setdefault("_delimited", threading.local())
    cached = getattr(local, "encoders", None)
    if cached is None:
        cached = local.encoders = {}
    key = repr(layout)
    if key not in cached:
        from fnn_fast import _C

        delimiter, slots, kinds = layout
        cached[key] = _C.DelimitedEncoder(
            encoder.native_vocabulary(), delimiter, slots, kinds,
            encoder.slot_fields.tolist(), _MEMO_BITS,
        )  # fmt: skip
    return cached[key]


def conform_slots(rows: ParsedRows, encoder: FeatureEncoder):
    """(keys, values, overflow): the rows laid out in the encoder's slots. A multi-valued field
    (libFM, or a bag column without a declared maximum) gets as many slots as the busiest line
    of the file being read; here the model's layout rules: missing slots are PAD, and a row with
    more values of a field than the model has slots for it is flagged in ``overflow`` (a bad
    row)."""
    n = len(rows)
    if list(rows.field_names) != list(encoder.field_names):
        raise DataError(
            rows.source, None,
            f"the fields {list(rows.field_names)[:5]}... do not match the model's "
            f"{list(encoder.field_names)[:5]}...",
        )  # fmt: skip
    if np.array_equal(rows.slot_fields, encoder.slot_fields):
        return np.asarray(rows.keys), np.asarray(rows.values), np.zeros(n, dtype=bool)
    keys = np.full((n, len(encoder.slot_fields)), PAD_KEY, dtype=np.int64)
    values = np.zeros(keys.shape, dtype=np.float32)
    overflow = np.zeros(n, dtype=bool)
    for field in range(len(encoder.field_names)):
        have = np.flatnonzero(rows.slot_fields == field)
        want = np.flatnonzero(encoder.slot_fields == field)
        shared = min(len(have), len(want))
        keys[:, want[:shared]] = rows.keys[:, have[:shared]]
        values[:, want[:shared]] = rows.values[:, have[:shared]]
        if len(have) > len(want):
            overflow |= (np.asarray(rows.keys)[:, have[shared:]] != PAD_KEY).any(axis=1)
    return keys, values, overflow


def overflow_reason(rows: ParsedRows, encoder: FeatureEncoder, row: int) -> str:
    for field, name in enumerate(encoder.field_names):
        have = np.count_nonzero(rows.keys[row, rows.slot_fields == field] != PAD_KEY)
        want = np.count_nonzero(encoder.slot_fields == field)
        if have > want:
            return (
                f"field {name} has {have} values; the model takes at most {want} (its slots "
                "for this field, fixed when it was trained)"
            )
    return "more values than the model has slots"
