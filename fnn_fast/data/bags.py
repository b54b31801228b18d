"""Multi-valued (multi-hot) columns: a cell holding a bag of values of one field.

A bag becomes several slots of its field (fnn_fast.data.rows), so that the FM and the FNN pool
it as they pool a libFM field that occurs several times in a line: FM sums ``x_s [w_s, v_s]``
over all slots, the FNN's z_f sums them over the slots of field f. The pooling is in the values:

- ``sum``: every value of the bag has x = 1 (its weight w when weighted);
- ``mean``: x = 1/n for a bag of n values (weighted: w / sum of the bag's weights).

Empty slots (a bag shorter than its field's slots) hold PAD_KEY with value 0: they add nothing.
An empty bag (an empty cell, a null, an empty list) is the missing value, the token "" with
x = 1, as an empty cell of a single-valued column. Empty items ("a||b") are dropped; a value
repeated in a bag counts as often as it occurs.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from fnn_fast.data.errors import MalformedLine
from fnn_fast.data.tokens import FLOAT32_MAX, MISSING, TokenKeys, hash_token

POOLINGS = ("sum", "mean")
MISSING_KEY = hash_token(MISSING)
_MAX_MEMO_CELLS = 1 << 16
SEPARATOR_NAMES = {
    "comma": ",", "pipe": "|", "semicolon": ";", "space": " ", "tab": "\t", "colon": ":",
}  # fmt: skip


@dataclass(frozen=True)
class BagSpec:
    """How one column's cells become bags. ``separator`` None: the cells are lists already
    (Parquet list / map columns, Arrow or pandas lists); ``max_values`` None: as many slots as
    the busiest row of the training file has values; ``weighted``: text items are
    ``TOKEN:WEIGHT`` (Parquet: a map<string, number> column)."""

    separator: str | None = None
    pooling: str = "sum"
    max_values: int | None = None
    weighted: bool = False

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"bag pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if self.separator == "":
            raise ValueError("a multi-valued column's separator cannot be empty")
        if self.max_values is not None and (
            isinstance(self.max_values, bool) or int(self.max_values) < 1
        ):
            raise ValueError(f"a bag's maximum length must be at least 1, not {self.max_values}")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_multi_valued(texts) -> dict[str, dict]:
    """``--multi-valued`` values (each ``COL[:SEP[:OPTION...]]``, several comma-separated) as
    the schema's ``multi_valued`` mapping. SEP is a literal (without ':' or ',') or one of the
    names comma, pipe, semicolon, space, tab, colon; empty or absent for Parquet list columns.
    OPTIONs: ``sum`` or ``mean`` (the pooling; default --bag-pooling), a positive integer (the
    most values a bag may hold) and ``weighted`` (items are TOKEN:WEIGHT)."""
    if isinstance(texts, str):
        texts = [texts]
    specs: dict[str, dict] = {}
    for text in texts or []:
        for item in text.split(","):
            if not item:
                continue
            column, _, rest = item.partition(":")
            separator, *options = rest.split(":") if rest else [""]
            if not column:
                raise ValueError(f"--multi-valued {item!r}: no column name (COL:SEP[:OPTION...])")
            if column in specs:
                raise ValueError(f"--multi-valued: column {column!r} is declared twice")
            spec: dict = {"separator": SEPARATOR_NAMES.get(separator, separator) or None}
            for option in options:
                if option in POOLINGS:
                    spec["pooling"] = option
                elif option == "weighted":
                    spec["weighted"] = True
                elif re.fullmatch(r"[0-9]+", option):
                    spec["max_values"] = int(option)
                else:
                    raise ValueError(
                        f"--multi-valued {item!r}: unknown option {option!r} (sum, mean, a "
                        "maximum number of values, weighted)"
                    )
            specs[column] = spec
    return specs


class BagKeys(dict):
    """text cell -> (keys, values) of its bag, for one column; each distinct cell is parsed
    once. Raises MalformedLine for a bag longer than the declared maximum or a bad weight."""

    def __init__(self, column: str, spec: BagSpec):
        super().__init__()
        if spec.separator is None:
            raise ValueError(
                f"column {column}: its cells are text, so its --multi-valued declaration needs "
                f"a separator ({column}:SEP; Parquet list columns need none)"
            )
        self.column, self.spec = column, spec
        self.tokens = TokenKeys()

    def __missing__(self, cell: str) -> tuple[tuple, tuple]:
        bag = self.parse(cell)
        if len(self) < _MAX_MEMO_CELLS:  # bags are often all distinct: memoize a bounded few
            self[cell] = bag
        return bag

    def parse(self, cell: str) -> tuple[tuple, tuple]:
        items = [item for item in cell.split(self.spec.separator) if item]
        weights = None
        if self.spec.weighted:
            tokens, weights = [], []
            for item in items:
                token, colon, weight = item.rpartition(":")
                if not colon:
                    raise MalformedLine(
                        f"column {self.column}: value {item!r} has no weight (weighted bags "
                        "hold TOKEN:WEIGHT)"
                    )
                tokens.append(token)
                weights.append(_weight(weight, self.column, item))
            items = tokens
        return pool(self.column, [self.tokens[t] for t in items], weights, self.spec)


def _weight(text: str, column: str, item: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not abs(weight) <= FLOAT32_MAX:
        raise MalformedLine(f"column {column}: the weight of {item!r} is not a finite number")
    return weight


def pool(column: str, keys: list, weights: list | None, spec: BagSpec) -> tuple[tuple, tuple]:
    """(keys, values) of a bag of ``keys`` (with their ``weights``, None: all 1) pooled by
    ``spec``: the values are what the model multiplies each value's row by."""
    if spec.max_values is not None and len(keys) > spec.max_values:
        raise MalformedLine(
            f"column {column} holds {len(keys)} values, more than its declared maximum of "
            f"{spec.max_values}"
        )
    if not keys:
        return (MISSING_KEY,), (1.0,)
    if weights is None:
        value = 1.0 if spec.pooling == "sum" else 1.0 / len(keys)
        return tuple(keys), (value,) * len(keys)
    if spec.pooling == "mean":
        total = sum(weights)  # in order, as the Parquet reader's np.bincount sums
        if total == 0:
            raise MalformedLine(f"column {column}: the weights of a bag sum to 0 (mean pooling)")
        weights = [w / total for w in weights]
    return tuple(keys), tuple(weights)
