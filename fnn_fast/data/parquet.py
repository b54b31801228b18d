"""Parquet files, read in record batches. Each column is dictionary-encoded, so Python work is
per distinct value, not per row. Row numbers (1-based) stand in for line numbers.

Nulls are missing values: the token "" for a feature column; NaN in a numeric column too, since
that is how pandas writes missing floats. A null label is a bad row.

A categorical column of lists (list<string>, or any list of values) holds a bag of values per
row, multi-valued whether declared or not (undeclared: pooled by the schema's bag_pooling); a
map<string, number> column a bag of weighted values; a string column declared multi-valued with a
separator is split as in CSV (fnn_fast.data.bags). Null items of a list are dropped; a null or
empty list is the missing value.
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

from fnn_fast.data.bags import MISSING_KEY, BagKeys, BagSpec
from fnn_fast.data.errors import BadLines, DataError, MalformedLine
from fnn_fast.data.rows import ParsedRows, bag_slots, into_layout, join_fields, widest_layout
from fnn_fast.data.schema import Schema
from fnn_fast.data.tokens import (
    FLOAT32_MAX,
    MISSING,
    PAD_KEY,
    NumericKeys,
    TokenKeys,
    parse_label,
)

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
    column_keys = ColumnKeys(schema)

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
            batches.append(read_record_batch(batch, first_row, schema, column_keys, bad, labelled))
            first_row += batch.num_rows
            bar.update(batch.num_rows)
    if not batches:  # no rows: still arrays of the right shapes and dtypes
        columns = pa.schema([file.schema_arrow.field(name) for name in wanted])
        empty = pa.RecordBatch.from_pylist([], schema=columns)
        batches.append(read_record_batch(empty, 1, schema, column_keys, bad, labelled))

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
    column_keys = ColumnKeys(schema)
    batches = []
    for batch in table.to_batches(_BATCH_ROWS) or [pa.RecordBatch.from_pylist([], table.schema)]:
        batches.append(read_record_batch(batch, first_row, schema, column_keys, bad, labelled))
        first_row += batch.num_rows
    return _assemble(batches, schema, bad, source)


def _assemble(batches, schema: Schema, bad: BadLines, source: str) -> ParsedRows:
    """The batches' rows as one ParsedRows: a bag column gets the most slots any batch gave it."""
    labels, keys, values, lines, row_ids, layouts = zip(*batches, strict=True)
    slot_fields = widest_layout(layouts, len(schema.field_names))
    if any(not np.array_equal(layout, slot_fields) for layout in layouts):
        pairs = list(zip(keys, values, layouts, strict=True))
        keys = [into_layout(k, have, slot_fields, PAD_KEY) for k, _, have in pairs]
        values = [into_layout(v, have, slot_fields, 0.0) for _, v, have in pairs]
    return ParsedRows(
        labels=np.concatenate(labels),
        keys=np.concatenate(keys),
        values=np.concatenate(values),
        slot_fields=slot_fields,
        field_names=schema.field_names,
        row_ids=None if schema.id_column is None else np.concatenate(row_ids),
        lines=np.concatenate(lines),
        bad_lines=bad.count,
        source=source,
        bad_examples=bad.examples,
    )


class ColumnKeys:
    """What turns a schema's cells into keys, kept across batches so that each distinct cell is
    converted once: per numeric column a NumericKeys, per categorical column a TokenKeys, per
    column declared multi-valued with a separator a BagKeys."""

    def __init__(self, schema: Schema):
        self.numeric = {
            c: NumericKeys(c, schema.numeric_mode, schema.numeric_rule) for c in schema.numeric
        }
        self.categorical = {c: TokenKeys() for c in schema.categorical}
        self.bags = {c: schema.bag(c) for c in schema.categorical}  # None: single-valued
        self.split = {
            c: BagKeys(c, spec)
            for c, spec in self.bags.items()
            if spec is not None and spec.separator is not None
        }
        self.default_bag = BagSpec(pooling=schema.bag_pooling)


def read_record_batch(
    batch: pa.RecordBatch, first_row: int, schema: Schema, column_keys: ColumnKeys,
    bad: BadLines, labelled: bool = True,
):  # fmt: skip
    """(labels, keys, values, rows, row_ids, slot_fields) of the batch's good rows; a bad row is
    reported to ``bad`` (which raises, or counts and skips it)."""
    checks = []  # (reasons per distinct value, distinct value of each row) of checked columns
    if labelled:
        label_of, reasons, index = _map_distinct(batch.column(schema.label_column), _label_of)
        checks.append((reasons, index))
        labels = np.array([0.0 if x is None else x for x in label_of], dtype=np.float32)[index]
    else:
        labels = np.full(batch.num_rows, np.nan, dtype=np.float32)
    blocks = []  # per field: (keys [n, w], values [n, w])
    for name, keys_of in column_keys.numeric.items():
        pairs, reasons, index = _map_distinct(batch.column(name), _cell_to(keys_of))
        checks.append((reasons, index))
        # Rejected values (None) get placeholders: their rows are dropped or raised below.
        key_of = np.array([PAD_KEY if p is None else p[0] for p in pairs], dtype=np.int64)
        value_of = np.array([0.0 if p is None else p[1] for p in pairs], dtype=np.float32)
        blocks.append((key_of[index][:, None], value_of[index][:, None]))
    for name, keys_of in column_keys.categorical.items():
        column, spec = batch.column(name), column_keys.bags[name]
        if _is_list(column.type):
            spec = spec or column_keys.default_bag
            block, reasons = _list_bags(column, name, spec, keys_of, bad.path)
            checks.append((reasons, np.arange(batch.num_rows)))
        elif spec is not None:
            if name not in column_keys.split:
                raise DataError(
                    bad.path, None,
                    f"column {name} is declared multi-valued without a separator, but holds "
                    f"{column.type} values, not lists: declare its separator ({name}:SEP)",
                )  # fmt: skip
            bags, reasons, index = _map_distinct(column, _cell_to(column_keys.split[name]))
            checks.append((reasons, index))
            block = _distinct_bags(bags, index, spec)
        else:
            column_of, _, index = _map_distinct(column, _cell_to(keys_of))
            block = (np.array(column_of, dtype=np.int64)[index][:, None],
                     np.ones((batch.num_rows, 1), dtype=np.float32))  # fmt: skip
        blocks.append(block)
    keys, values, slot_fields = join_fields(blocks)

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
    return labels[good], keys[good], values[good], rows[good], row_ids, slot_fields


def _is_list(kind: pa.DataType) -> bool:
    return (
        pa.types.is_list(kind) or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind) or pa.types.is_map(kind)
    )  # fmt: skip


def _distinct_bags(bags: list, index: np.ndarray, spec: BagSpec):
    """[n, w] slots of the rows' bags, given per distinct cell (None: a rejected cell)."""
    lengths = np.array([0 if b is None else len(b[0]) for b in bags], dtype=np.int64)
    width = spec.max_values or max(1, int(lengths.max(initial=0)))
    flat_keys = [k for b in bags if b is not None for k in b[0]]
    flat_values = [v for b in bags if b is not None for v in b[1]]
    keys, values = bag_slots(flat_keys, flat_values, lengths, width)
    return keys[index], values[index]


def _list_bags(column: pa.Array, name: str, spec: BagSpec, tokens: TokenKeys, path: str):
    """([n, w] keys and values, per-row reasons (None: good)) of a list or map column's bags,
    pooled as bags.pool pools a text cell's."""
    n = len(column)
    if pa.types.is_fixed_size_list(column.type):
        column = column.cast(pa.list_(column.type.value_type))
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    begin, end = int(offsets[0]), int(offsets[-1])
    weighted = pa.types.is_map(column.type)
    if spec.weighted and not weighted:
        raise DataError(
            path, None,
            f"column {name} is declared weighted, but holds {column.type}: weighted values in "
            "Parquet are a map<string, number> column (value -> weight)",
        )  # fmt: skip
    items = (column.keys if weighted else column.values).slice(begin, end - begin)
    rows = np.repeat(np.arange(n), np.diff(offsets))
    keep = ~column.is_null().to_numpy(zero_copy_only=False)[rows]
    keep &= items.is_valid().to_numpy(zero_copy_only=False)
    reasons: list = [None] * n
    weights = None
    if weighted:
        weight_items = column.items.slice(begin, end - begin)
        if not (pa.types.is_integer(weight_items.type) or pa.types.is_floating(weight_items.type)):
            raise DataError(
                path, None,
                f"column {name}: a map column's values are the weights of its keys and must be "
                f"numbers, not {weight_items.type}",
            )  # fmt: skip
        weights = pc.fill_null(weight_items.cast(pa.float64()), np.nan).to_numpy(
            zero_copy_only=False
        )
        for row in np.unique(rows[keep & ~(np.abs(weights) <= FLOAT32_MAX)]):
            reasons[row] = f"column {name}: a weight is missing or not a finite number"
    item_keys, _, index = _map_distinct(items, _cell_to(tokens))
    keys = np.array(item_keys, dtype=np.int64)[index]
    counts = np.bincount(rows[keep], minlength=n)
    if spec.max_values is not None:
        for row in np.flatnonzero(counts > spec.max_values):
            reasons[row] = (
                f"column {name} holds {counts[row]} values, more than its declared maximum of "
                f"{spec.max_values}"
            )
    if weights is None:
        values = np.ones(len(rows)) if spec.pooling == "sum" else 1.0 / np.maximum(counts, 1)[rows]
    else:
        values = weights
        if spec.pooling == "mean":
            totals = np.bincount(rows[keep], weights=weights[keep], minlength=n)
            for row in np.flatnonzero((totals == 0) & (counts > 0)):
                reasons[row] = f"column {name}: the weights of a bag sum to 0 (mean pooling)"
            with np.errstate(divide="ignore", invalid="ignore"):
                values = weights / totals[rows]
    bad_rows = np.array([r is not None for r in reasons], dtype=bool)
    keep &= ~bad_rows[rows]
    counts[bad_rows] = 0
    # an empty bag is the missing value, x = 1
    empty = np.flatnonzero(counts == 0)
    rows = np.concatenate([rows[keep], empty])
    order = np.argsort(rows, kind="stable")
    keys = np.concatenate([keys[keep], np.full(len(empty), MISSING_KEY)])[order]
    values = np.concatenate([values[keep], np.ones(len(empty))])[order]
    counts[empty] = 1
    width = spec.max_values or max(1, int(counts.max(initial=0)))
    return bag_slots(keys, values, counts, width), reasons


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
