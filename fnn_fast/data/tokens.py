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


# How numbers become bucket tokens. Rule 1: floor(log(x)^2) above 2, int(x) at or below, which
# puts every value in (-1, 1) into one bucket; schemas saved before rules had numbers use it.
# Rule 2 (NUMERIC_RULE): sign-aware; 0 is "0"; |x| > 2 keeps rule 1's floor(log|x|^2) buckets;
# 0 < |x| <= 2 gets floor(4 log|x|), steps of e^(1/4) (1.28x), with "s" before it, so 0.5,
# 0.05 and 1.5 land in buckets of their own and 0, 1 and 2 stay apart. "-" marks negatives.
NUMERIC_RULES = (1, 2)
NUMERIC_RULE = 2


def bucket_token(x: float, rule: int) -> str:
    """The token of the bucket of ``x`` (finite) under numeric rule ``rule``."""
    if rule == 1:
        return str(math.floor(math.log(x) ** 2) if x > 2 else int(x))
    if x == 0:
        return "0"
    sign, size = ("-", -x) if x < 0 else ("", x)
    if size > 2:
        return f"{sign}{math.floor(math.log(size) ** 2)}"
    return f"{sign}s{math.floor(math.log(size) * 4.0)}"


FLOAT32_MAX = 3.4028234663852886e38


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
    nearly every cell is distinct, so they are parsed each time instead of filling the dict.
    ``rule``: the schema's numeric_rule (see bucket_token)."""

    def __init__(self, column: str, mode: str, rule: int):
        super().__init__({MISSING: (hash_token(MISSING), 1.0)})
        if mode not in NUMERIC_MODES:
            raise ValueError(f"numeric_mode must be one of {NUMERIC_MODES}, not {mode!r}")
        if rule not in NUMERIC_RULES:
            raise ValueError(f"numeric_rule must be one of {NUMERIC_RULES}, not {rule!r}")
        self.column = column
        self.bucketized = mode == "bucketize"
        self.rule = rule

    def __missing__(self, cell: str) -> tuple[int, float]:
        x = parse_number(cell, self.column)
        if not self.bucketized:
            if abs(x) > FLOAT32_MAX:  # a value trains as float32: this one would be inf
                raise MalformedLine(
                    f"numeric column {self.column}: {cell!r} is past float32's range"
                )
            return VALUE_KEY, x
        key_value = self[cell] = (hash_token(bucket_token(x, self.rule)), 1.0)
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
