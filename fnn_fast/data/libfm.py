"""libFM / libSVM text: ``label idx:value idx:value ...``, whitespace separated.

With a featindex each index belongs to a field of the dictionary; a field may appear several times
in a line (one slot per occurrence) or not at all (a PAD slot). Without one, the field of a feature
is its position in the line and every line must have the same number of features.
"""

from __future__ import annotations

import numpy as np

from fnn_fast.data.errors import BadLines, MalformedLine
from fnn_fast.data.featindex import load_featindex
from fnn_fast.data.rows import ArrayChunks, ParsedRows
from fnn_fast.data.schema import Schema
from fnn_fast.data.textfile import TextPart, lines_of
from fnn_fast.data.tokens import FLOAT32_MAX, KEY_MAX, PAD_KEY, parse_label

_MAX_MEMO_VALUES = 1 << 16  # real-valued features are mostly distinct: don't memoize them all


def read_libfm(
    path, schema: Schema, bad: BadLines, progress: bool, part: TextPart | None = None,
    labelled: bool = True,
) -> ParsedRows:  # fmt: skip
    """``labelled`` is accepted for symmetry with the column formats: a libFM line always starts
    with its label."""
    index = load_featindex(schema.featindex) if schema.featindex is not None else None
    expected = schema.num_fields
    labels, lines, counts, keys, values, fields = [], [], [], [], [], []
    columns = ArrayChunks(
        labels=np.float32,
        lines=np.int64,
        counts=np.int64,
        keys=np.int64,
        values=np.float32,
        fields=np.int64,
    )
    value_of: dict[str, float] = {}
    with lines_of(path, part, progress=progress) as text:
        for line_no, line in enumerate(text, 1):
            parts = line.split()
            if not parts:  # blank lines carry nothing: skipped, not counted as bad
                continue
            try:
                label = parse_label(parts[0])
                row_keys, row_values = _parse_features(parts[1:], value_of)
                if index is not None:
                    row_fields = _fields_of(row_keys, index.field_of, schema.featindex)
                elif expected is not None and len(row_keys) != expected:
                    raise MalformedLine(f"expected {expected} features, found {len(row_keys)}")
            except MalformedLine as problem:
                bad.report(line_no, str(problem))
                continue
            if expected is None and index is None:
                expected = len(row_keys)
            labels.append(label)
            lines.append(line_no)
            counts.append(len(row_keys))
            keys.extend(row_keys)
            values.extend(row_values)
            if index is not None:
                fields.extend(row_fields)
            if len(labels) == columns.FLUSH_ROWS:
                columns.flush(
                    labels=labels,
                    lines=lines,
                    counts=counts,
                    keys=keys,
                    values=values,
                    fields=fields,
                )
    columns.flush(
        labels=labels, lines=lines, counts=counts, keys=keys, values=values, fields=fields
    )

    keys, values = columns.array("keys"), columns.array("values")
    if index is None:
        num_fields = expected or 0
        field_names = [f"f{i}" for i in range(num_fields)]
        slot_fields = np.arange(num_fields, dtype=np.int64)
        rows = len(columns.array("labels"))  # not -1: no rows of no fields is ambiguous
        keys, values = keys.reshape(rows, num_fields), values.reshape(rows, num_fields)
    else:
        field_names = list(index.field_names)
        keys, values, slot_fields = _into_slots(
            keys, values, columns.array("fields"), columns.array("counts"), len(field_names)
        )
    return ParsedRows(
        labels=columns.array("labels"),
        keys=keys,
        values=values,
        slot_fields=slot_fields,
        field_names=field_names,
        row_ids=None,
        lines=columns.array("lines"),
        bad_lines=bad.count,
        source=str(path),
        bad_examples=bad.examples,
    )


def _parse_features(items: list[str], value_of: dict[str, float]) -> tuple[list, list]:
    keys, values = [], []
    for item in items:
        index_text, colon, value_text = item.partition(":")
        try:
            index = int(index_text) if colon else None
        except ValueError:
            index = None
        if index is None:
            raise MalformedLine(f"cannot parse feature {item!r} (want idx:value)")
        if not 0 <= index <= KEY_MAX:
            raise MalformedLine(f"feature index {index} is out of range (0 .. 2**63-1)")
        value = value_of.get(value_text)
        if value is None:
            try:
                value = float(value_text)
            except ValueError:
                raise MalformedLine(
                    f"value {value_text!r} of feature {index} is not a number"
                ) from None
            # Values train as float32: nan, inf or a number past float32's range would make the
            # loss non-finite, so they are bad input here, not a divergence later.
            if not abs(value) <= FLOAT32_MAX:
                raise MalformedLine(
                    f"value {value_text!r} of feature {index} is not a finite float32 number"
                )
            if len(value_of) < _MAX_MEMO_VALUES:
                value_of[value_text] = value
        keys.append(index)
        values.append(value)
    return keys, values


def _fields_of(keys: list[int], field_of: dict[int, int], featindex: str) -> list[int]:
    try:
        return [field_of[key] for key in keys]
    except KeyError as error:
        raise MalformedLine(f"feature index {error.args[0]} is not in {featindex}") from None


def _into_slots(keys, values, fields, counts, num_fields):
    """Lay flat per-feature arrays out as [N, S] slots: field f owns as many slots as it has
    occurrences in its busiest line (at least one, so that every field has a slot); a line's
    k-th occurrence of f goes to f's k-th slot, in line order."""
    rows = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((fields, rows))  # stable: occurrences keep their line order
    sorted_rows, sorted_fields = rows[order], fields[order]
    group_start = np.ones(len(order), dtype=bool)
    group_start[1:] = (np.diff(sorted_rows) != 0) | (np.diff(sorted_fields) != 0)
    position = np.arange(len(order))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = position - np.maximum.accumulate(np.where(group_start, position, 0))

    width = np.ones(num_fields, dtype=np.int64)
    np.maximum.at(width, fields, rank + 1)
    first_slot = np.cumsum(width) - width
    slots = first_slot[fields] + rank
    num_slots = int(width.sum())
    slot_keys = np.full((len(counts), num_slots), PAD_KEY, dtype=np.int64)
    slot_values = np.zeros((len(counts), num_slots), dtype=np.float32)
    slot_keys[rows, slots] = keys
    slot_values[rows, slots] = values
    return slot_keys, slot_values, np.repeat(np.arange(num_fields, dtype=np.int64), width)
