"""Turning tokens into keys: 63-bit non-negative ints, independent of any fitted vocabulary."""

from __future__ import annotations

import hashlib
import math

from fnn_fast.data.errors import MalformedLine

PAD_KEY = -1  # an empty slot: a field absent from a libFM line, or a multi-valued field's spare
KEY_MAX = 2**63 - 1
MISSING = ""  # the token of an empty cell: missing is a category of its own
VALUE_KEY = 0  # numeric_mode="value": the single feature of a numeric field
NUMERIC_MODES = ("bucketize", "value")


def hash_token(token: str) -> int:
    """A stable (process- and platform-independent) key; surrogateescape keeps undecodable bytes
    hashable instead of failing the whole file."""
    digest = hashlib.blake2b(token.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & KEY_MAX


class TokenKeys(dict):
    """token -> key for one categorical field; each distinct token is hashed once."""

    def __missing__(self, token: str) -> int:
        key = self[token] = hash_token(token)
        return key


def bucketize(x: float) -> int:
    """The Criteo winners' trick: counts above 2 fall into log-squared buckets, small and negative
    values stay as they are."""
    return math.floor(math.log(x) ** 2) if x > 2 else int(x)


def parse_number(cell: str, column: str) -> float:
    try:
        x = float(cell)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise MalformedLine(f"numeric column {column}: {cell!r} is not a number")
    return x


class NumericKeys(dict):
    """cell -> (key, value) for one numeric column. Bucketized cells are memoized; in "value" mode
    nearly every cell is distinct, so they are parsed each time instead of filling the dict."""

    def __init__(self, column: str, mode: str):
        super().__init__({MISSING: (hash_token(MISSING), 1.0)})
        if mode not in NUMERIC_MODES:
            raise ValueError(f"numeric_mode must be one of {NUMERIC_MODES}, not {mode!r}")
        self.column = column
        self.bucketized = mode == "bucketize"

    def __missing__(self, cell: str) -> tuple[int, float]:
        x = parse_number(cell, self.column)
        if not self.bucketized:
            return VALUE_KEY, x
        key_value = self[cell] = (hash_token(str(bucketize(x))), 1.0)
        return key_value


_LABELS: dict[str, float] = {}  # accepted spellings seen so far -> 0.0/1.0


def parse_label(token: str) -> float:
    """0/1 or -1/+1, in int or float spelling, as 0.0/1.0."""
    label = _LABELS.get(token)
    if label is None:
        try:
            x = float(token)
        except ValueError:
            x = math.nan
        if x not in (0.0, 1.0, -1.0):
            raise MalformedLine(f"label {token!r} is not 0/1 or -1/+1")
        label = _LABELS[token] = 1.0 if x == 1.0 else 0.0
    return label
