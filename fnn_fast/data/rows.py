"""Parsed rows: labels plus, per slot, a key and a value."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fnn_fast.data.tokens import PAD_KEY


@dataclass
class ParsedRows:
    """Rows as keys, before any vocabulary. A slot holds one feature of field ``slot_fields[s]``;
    normally there is one slot per field, more for a multi-valued field (a libFM field repeated in
    a line, a bag column: fnn_fast.data.bags). Empty slots
    hold PAD_KEY with value 0."""

    labels: np.ndarray  # float32 [N], 0/1
    keys: np.ndarray  # int64 [N, S]
    values: np.ndarray  # float32 [N, S]
    slot_fields: np.ndarray  # int64 [S]
    field_names: list[str]
    row_ids: np.ndarray | None = None  # the schema's id_column, passed through
    lines: np.ndarray | None = None  # int64 [N], source line (Parquet: row) of each row; None: 1..N
    bad_lines: int = 0  # malformed lines skipped (skip_bad_lines=True)
    source: str = ""
    bad_examples: list[str] = field(default_factory=list)  # the first few skipped lines' errors
    value_fields: list[int] = field(default_factory=list)  # Schema.value_fields of the fields

    def __post_init__(self):
        if self.lines is None:
            self.lines = np.arange(1, len(self.labels) + 1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_fields(self) -> int:
        return len(self.field_names)


class ArrayChunks:
    """Columns being parsed, moved out of Python lists into numpy chunks every FLUSH_ROWS rows,
    so that a large file costs numpy's memory rather than Python objects' (several times more)."""

    FLUSH_ROWS = 1 << 16

    def __init__(self, **dtypes):
        self.dtypes = dtypes
        self.chunks: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}

    def flush(self, **lists: list) -> None:
        """Append each list to its column and empty it (in place: callers keep their lists)."""
        for name, items in lists.items():
            self.chunks[name].append(np.asarray(items, dtype=self.dtypes[name]))
            items.clear()

    def array(self, name: str) -> np.ndarray:
        chunks = self.chunks[name]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=self.dtypes[name])


def bag_slots(keys, values, counts, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Bags given flat (``keys``/``values`` of every bag in turn, ``counts`` values in row i's)
    as [N, width] slots, each bag from its row's first slot on, the rest PAD_KEY with value 0.
    ``width`` is at least the largest count."""
    counts = np.asarray(counts, dtype=np.int64)
    out_keys = np.full((len(counts), width), PAD_KEY, dtype=np.int64)
    out_values = np.zeros((len(counts), width), dtype=np.float32)
    rows = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    slots = np.arange(len(rows)) - np.repeat(starts, counts)
    out_keys[rows, slots] = keys
    out_values[rows, slots] = values
    return out_keys, out_values


def join_fields(blocks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys [N, S], values [N, S], slot_fields [S]) from one (keys [N, w], values [N, w])
    block per field, in field order: field f owns its block's w slots."""
    keys = np.concatenate([k for k, _ in blocks], axis=1)
    values = np.concatenate([v for _, v in blocks], axis=1)
    widths = [k.shape[1] for k, _ in blocks]
    return keys, values, np.repeat(np.arange(len(blocks), dtype=np.int64), widths)


def into_layout(chunk: np.ndarray, have, want, fill) -> np.ndarray:
    """Rows of a slot layout ``have`` laid out in ``want`` (which has at least as many slots for
    each field): a field's k-th slot stays its k-th, the extra slots are ``fill``."""
    have, want = np.asarray(have), np.asarray(want)
    out = np.full((len(chunk), len(want)), fill, dtype=chunk.dtype)
    for field_ in np.unique(have):
        slots = np.flatnonzero(have == field_)
        out[:, np.flatnonzero(want == field_)[: len(slots)]] = chunk[:, slots]
    return out


def widest_layout(layouts, num_fields: int) -> np.ndarray:
    """The slot layout with, per field, the most slots any of ``layouts`` gives it (at least
    one): what every one of them fits into."""
    width = np.ones(num_fields, dtype=np.int64)
    for slots in layouts:
        width = np.maximum(width, np.bincount(np.asarray(slots, np.int64), minlength=num_fields))
    return np.repeat(np.arange(num_fields, dtype=np.int64), width)
