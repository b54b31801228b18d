"""Delimited text: Criteo's tab-separated files (no header, fixed columns) and CSV with a header.

A row must have exactly as many cells as the header. Empty lines are skipped (not counted as bad);
an empty cell is a missing value, the token "" of its field. A multi-valued column's cells are
split by its separator into bags (fnn_fast.data.bags). Files to score (``labelled=False``)
need no label column: it is not read (labels are NaN), and a Criteo file may have 39 columns, the
format of Criteo's unlabelled test file, which its first line decides for the whole file.
"""

from __future__ import annotations

import csv
import itertools

import numpy as np

from fnn_fast.data.bags import BagKeys
from fnn_fast.data.errors import BadLines, DataError, MalformedLine
from fnn_fast.data.rows import ArrayChunks, ParsedRows, bag_slots, join_fields
from fnn_fast.data.schema import CRITEO_COLUMNS, Schema, criteo_columns_of
from fnn_fast.data.textfile import TextPart, lines_of
from fnn_fast.data.tokens import NumericKeys, TokenKeys, parse_label

_NO_LABEL = float("nan")
_SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe", " ": "space"}


def read_delimited(
    path, schema: Schema, bad: BadLines, progress: bool, part: TextPart | None = None,
    labelled: bool = True,
) -> ParsedRows:  # fmt: skip
    criteo = schema.format == "criteo"
    separator = "\t" if criteo else schema.delimiter or ","
    # utf-8-sig drops the byte-order mark that spreadsheet exports put before the header.
    encoding, newline = ("utf-8", None) if criteo else ("utf-8-sig", "")
    with lines_of(path, part, progress=progress, encoding=encoding, newline=newline) as text:
        given = None if part is None else part.header
        if criteo:
            rows = _split_lines(text, separator)
            header = CRITEO_COLUMNS if labelled else given
            if header is None:
                header, rows = _criteo_columns(rows)
        else:
            header, rows = _csv_rows(path, text, separator, bad, given)
        position = _column_positions(path, header, schema, labelled)
        label_col = position[schema.label_column] if labelled else None
        id_col = None if schema.id_column is None else position[schema.id_column]
        numeric = [
            (position[c], NumericKeys(c, schema.numeric_mode, schema.numeric_rule))
            for c in schema.numeric
        ]
        categorical = [
            (position[c], TokenKeys()) for c in schema.categorical if c not in schema.multi_valued
        ]
        categorical_values = [1.0] * len(categorical)
        bags = [(position[c], BagKeys(c, schema.bag(c))) for c in schema.multi_valued]
        # per bag column: its flat keys and values and its rows' counts, flushed with the rest
        bag_chunks = [ArrayChunks(keys=np.int64, values=np.float32, counts=np.int64) for _ in bags]
        bag_lists = [([], [], []) for _ in bags]
        width = f"{len(header)} {_SEPARATOR_NAMES.get(separator, repr(separator))}-separated"

        labels, lines, keys, values, row_ids = [], [], [], [], []
        columns = ArrayChunks(
            labels=np.float32, lines=np.int64, keys=np.int64, values=np.float32, row_ids=str
        )
        for line_no, cells in rows:
            if len(cells) != len(header):
                bad.report(line_no, _width_problem(width, cells, header, criteo, labelled))
                continue
            try:
                label = _NO_LABEL if label_col is None else parse_label(cells[label_col])
                numbers = [column_keys[cells[col]] for col, column_keys in numeric]
                row_bags = [column_bags[cells[col]] for col, column_bags in bags]
            except MalformedLine as problem:
                bad.report(line_no, str(problem))
                continue
            labels.append(label)
            lines.append(line_no)
            keys.extend([key for key, _ in numbers])
            keys.extend([column_keys[cells[col]] for col, column_keys in categorical])
            values.extend([value for _, value in numbers])
            values.extend(categorical_values)
            if id_col is not None:
                row_ids.append(cells[id_col])
            for (bag_keys, bag_values, counts), (row_keys, row_values) in zip(
                bag_lists, row_bags, strict=True
            ):
                bag_keys.extend(row_keys)
                bag_values.extend(row_values)
                counts.append(len(row_keys))
            if len(labels) == columns.FLUSH_ROWS:
                columns.flush(labels=labels, lines=lines, keys=keys, values=values, row_ids=row_ids)
                _flush_bags(bag_chunks, bag_lists)
        columns.flush(labels=labels, lines=lines, keys=keys, values=values, row_ids=row_ids)
        _flush_bags(bag_chunks, bag_lists)

    keys, values, slot_fields = _slots(schema, columns, bags, bag_chunks)
    return ParsedRows(
        labels=columns.array("labels"),
        keys=keys,
        values=values,
        slot_fields=slot_fields,
        field_names=schema.field_names,
        row_ids=None if id_col is None else columns.array("row_ids"),
        lines=columns.array("lines"),
        bad_lines=bad.count,
        source=str(path),
        bad_examples=bad.examples,
    )


def _flush_bags(bag_chunks, bag_lists) -> None:
    for chunks, (bag_keys, bag_values, counts) in zip(bag_chunks, bag_lists, strict=True):
        chunks.flush(keys=bag_keys, values=bag_values, counts=counts)


def _slots(schema: Schema, columns: ArrayChunks, bags, bag_chunks):
    """(keys, values, slot_fields) of the parsed rows: one slot per single-valued field, a bag
    column's slots (its declared maximum, or its busiest row's count) after them in field order."""
    rows = len(columns.array("labels"))
    single = [name for name in schema.field_names if name not in schema.multi_valued]
    keys = columns.array("keys").reshape(rows, len(single))
    values = columns.array("values").reshape(rows, len(single))
    if not bags:
        return keys, values, np.arange(len(single), dtype=np.int64)
    blocks = {name: (keys[:, [i]], values[:, [i]]) for i, name in enumerate(single)}
    for (_, column_bags), chunks in zip(bags, bag_chunks, strict=True):
        counts = chunks.array("counts")
        width = column_bags.spec.max_values or max(1, int(counts.max(initial=0)))
        bag_keys, bag_values = chunks.array("keys"), chunks.array("values")
        blocks[column_bags.column] = bag_slots(bag_keys, bag_values, counts, width)
    return join_fields([blocks[name] for name in schema.field_names])


def _split_lines(text, separator: str):
    """(line number, cells) of each non-empty line; no quoting, as in Criteo's files."""
    for line_no, line in enumerate(text, 1):
        line = line.rstrip("\r\n")
        if line:
            yield line_no, line.split(separator)


def _criteo_columns(rows):
    """(columns, rows) of a Criteo file to score: its first line decides (criteo_columns_of)."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return CRITEO_COLUMNS, iter(())
    return criteo_columns_of(first[1]), itertools.chain([first], rows)


def _width_problem(width: str, cells: list[str], header: list[str], criteo: bool, labelled: bool):
    problem = f"expected {width} columns, found {len(cells)}"
    full = len(CRITEO_COLUMNS)
    if not criteo:
        return problem
    if len(cells) == 1 and "," in cells[0]:
        hint = "for Criteo columns in comma-separated text with a header line, use --delimiter ,"
        return f"{problem}; {hint}"
    if len(header) < full and len(cells) == full:
        return f"{problem}: the file's first line has no label, so no line may have one"
    if len(header) == full and len(cells) == full - 1:
        if labelled:
            return f"{problem}: a line without its label; training and evaluation need labels"
        return f"{problem}: a line without its label, but the file's first line has one"
    return problem


def _csv_rows(path, text, separator: str, bad: BadLines, header: list[str] | None = None):
    """(header, rows); ``header`` given: the text is a later part of a file whose header it is."""
    reader = csv.reader(text, delimiter=separator)
    if header is None:
        header = next(reader, None)
    if header is None:
        raise DataError(path, 1, "the file is empty: a header line is expected")

    def rows():
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                bad.report(reader.line_num, f"malformed CSV: {error}")
                continue
            if cells:
                yield reader.line_num, cells

    return header, rows()


def _column_positions(
    path, header: list[str], schema: Schema, labelled: bool = True
) -> dict[str, int]:
    position: dict[str, int] = {}
    for i, name in enumerate(header):
        position.setdefault(name, i)
    declared = [
        schema.label_column if labelled else None,
        schema.id_column,
        *schema.numeric,
        *schema.categorical,
    ]
    missing = [name for name in declared if name is not None and name not in position]
    if missing:
        raise DataError(path, 1, f"declared columns not in the header: {', '.join(missing)}")
    return position
