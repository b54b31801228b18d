"""Parquet files, read in record batches. Each column is dictionary-encoded, so Python work is
per distinct value, not per row. Row numbers (1-based) stand in for line numbers.

Nulls are missing values: the token "" for a feature column; NaN in a numeric column too, since
that is how pandas writes missing floats. A null label is a bad row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from fnn_fast.data.errors import BadLines, DataError, MalformedLine
from fnn_fast.data.rows import ParsedRows
from fnn_fast.data.schema import Schema
from fnn_fast.data.tokens import MISSING, PAD_KEY, NumericKeys, TokenKeys, parse_label

_BATCH_ROWS = 1 << 16


@dataclass
class RowGroups:
    """A part of a Parquet file: some of its row groups, the first of them starting at row
    ``first_row`` (1-based) of the file."""

    groups: list[int]
    first_row: int


def read_parquet(
    path, schema: Schema, bad: BadLines, progress: bool, part: RowGroups | None = None,
    labelled: bool = True,
) -> ParsedRows:  # fmt: skip
    """``labelled=False`` (scoring): the label column is not read; labels are NaN."""
    file = open_parquet(path)
    wanted = [*([schema.label_column] if labelled else []), *schema.numeric, *schema.categorical]
    if schema.id_column is not None:
        wanted.append(schema.id_column)
    missing = [name for name in wanted if name not in file.schema_arrow.names]
    if missing:
        raise DataError(path, None, f"declared columns not in the file: {', '.join(missing)}")
    numeric = {c: NumericKeys(c, schema.numeric_mode, schema.numeric_rule) for c in schema.numeric}
    categorical = {c: TokenKeys() for c in schema.categorical}

    batches, first_row = [], 1 if part is None else part.first_row
    groups = None if part is None else part.groups
    total = file.metadata.num_rows
    if groups is not None:
        total = sum(file.metadata.row_group(g).num_rows for g in groups)
    with tqdm(
        total=total,
        unit="rows",
        desc=Path(path).name,
        disable=None if progress else True,
    ) as bar:
        for batch in _batches(path, file, row_groups=groups, columns=wanted):
            batches.append(
                read_record_batch(batch, first_row, schema, numeric, categorical, bad, labelled)
            )
            first_row += batch.num_rows
            bar.update(batch.num_rows)
    if not batches:  # no rows: still arrays of the right shapes and dtypes
        columns = pa.schema([file.schema_arrow.field(name) for name in wanted])
        empty = pa.RecordBatch.from_pylist([], schema=columns)
        batches.append(read_record_batch(empty, 1, schema, numeric, categorical, bad, labelled))

    return _assemble(batches, schema, bad, str(path))


def open_parquet(path) -> pq.ParquetFile:
    """The file's Parquet reader; DataError naming the file when it is not Parquet."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(path, None, f"not a readable Parquet file: {error}") from None


def _batches(path, file: pq.ParquetFile, **selection):
    """The file's record batches; a corrupt one is a DataError naming the file."""
    batches = file.iter_batches(_BATCH_ROWS, **selection)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as error:
            raise DataError(path, None, f"corrupt Parquet data: {error}") from None
        yield batch


def read_arrow_table(
    table: pa.Table, schema: Schema, bad: BadLines, first_row: int, labelled: bool, source: str
) -> ParsedRows:
    """Rows of an Arrow table of string columns (pyarrow's CSV reader), row i at line
    ``first_row + i``: the same keys as the text readers give for the same cells."""
    numeric = {c: NumericKeys(c, schema.numeric_mode, schema.numeric_rule) for c in schema.numeric}
    categorical = {c: TokenKeys() for c in schema.categorical}
    batches = []
    for batch in table.to_batches(_BATCH_ROWS) or [pa.RecordBatch.from_pylist([], table.schema)]:
        batches.append(
            read_record_batch(batch, first_row, schema, numeric, categorical, bad, labelled)
        )
        first_row += batch.num_rows
    return _assemble(batches, schema, bad, source)


def _assemble(batches, schema: Schema, bad: BadLines, source: str) -> ParsedRows:
    labels, keys, values, lines, row_ids = zip(*batches, strict=True)
    return ParsedRows(
        labels=np.concatenate(labels),
        keys=np.concatenate(keys),
        values=np.concatenate(values),
        slot_fields=np.arange(len(schema.field_names), dtype=np.int64),
        field_names=schema.field_names,
        row_ids=None if schema.id_column is None else np.concatenate(row_ids),
        lines=np.concatenate(lines),
        bad_lines=bad.count,
        source=source,
        bad_examples=bad.examples,
    )


def read_record_batch(
    batch: pa.RecordBatch, first_row: int, schema: Schema, numeric, categorical, bad: BadLines,
    labelled: bool = True,
):  # fmt: skip
    checks = []  # (reasons per distinct value, distinct value of each row) of checked columns
    if labelled:
        label_of, reasons, index = _map_distinct(batch.column(schema.label_column), _label_of)
        checks.append((reasons, index))
        labels = np.array([0.0 if x is None else x for x in label_of], dtype=np.float32)[index]
    else:
        labels = np.full(batch.num_rows, np.nan, dtype=np.float32)
    keys, values = [], []
    for name, column_keys in numeric.items():
        pairs, reasons, index = _map_distinct(batch.column(name), _cell_to(column_keys))
        checks.append((reasons, index))
        # Rejected values (None) get placeholders: their rows are dropped or raised below.
        key_of = np.array([PAD_KEY if p is None else p[0] for p in pairs], dtype=np.int64)
        value_of = np.array([0.0 if p is None else p[1] for p in pairs], dtype=np.float32)
        keys.append(key_of[index])
        values.append(value_of[index])
    for name, column_keys in categorical.items():
        column_of, _, index = _map_distinct(batch.column(name), _cell_to(column_keys))
        keys.append(np.array(column_of, dtype=np.int64)[index])
        values.append(np.ones(batch.num_rows, dtype=np.float32))

    good = np.ones(batch.num_rows, dtype=bool)
    for reasons, index in checks:
        good &= np.array([r is None for r in reasons], dtype=bool)[index]
    for i in np.flatnonzero(~good):
        reason = next(reasons[index[i]] for reasons, index in checks if reasons[index[i]])
        bad.report(first_row + int(i), reason)
    row_ids = None
    if schema.id_column is not None:
        row_ids = _row_ids(batch.column(schema.id_column))[good]
    rows = np.arange(first_row, first_row + batch.num_rows, dtype=np.int64)
    return (
        labels[good],
        np.stack(keys, axis=1)[good],
        np.stack(values, axis=1)[good],
        rows[good],
        row_ids,
    )


def _map_distinct(column: pa.Array, convert) -> tuple[list, list, np.ndarray]:
    """convert() applied once per distinct value of the column: (its results, the reasons it
    rejected values, None where it did not, and the [n] index of each row's distinct value).
    A rejected value's result is None."""
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    results, reasons = [], []
    for value in encoded.dictionary.to_pylist():
        try:
            results.append(convert(value))
            reasons.append(None)
        except MalformedLine as problem:
            results.append(None)
            reasons.append(str(problem))
    return results, reasons, encoded.indices.to_numpy(zero_copy_only=False)


def _cell_to(column_keys):
    return lambda value: column_keys[_cell(value)]


def _cell(value) -> str:
    """A Parquet value as the text cell a CSV would hold, so that both give the same keys."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _label_of(value) -> float:
    if value is None:
        raise MalformedLine("label is missing")
    if isinstance(value, bool):
        return float(value)
    return parse_label(str(value))


def _row_ids(column: pa.Array) -> np.ndarray:
    if pa.types.is_integer(column.type) and column.null_count == 0:
        return column.to_numpy().astype(np.int64)
    strings = pc.fill_null(pc.cast(column, pa.string()), MISSING)
    return strings.to_numpy(zero_copy_only=False).astype(str)
