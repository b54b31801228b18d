"""Parsed rows: labels plus, per slot, a key and a value."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ParsedRows:
    """Rows as keys, before any vocabulary. A slot holds one feature of field ``slot_fields[s]``;
    normally there is one slot per field, more only for a multi-valued libFM field. Empty slots
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
