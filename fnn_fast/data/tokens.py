"""Turning tokens into keys: 63-bit non-negative ints, independent of any fitted vocabulary."""

from __future__ import annotations

import hashlib
import math
import struct

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
# Rule 3 (NUMERIC_RULE): a value seen often enough in training is a feature of its own, a rarer
# one its rule-2 bucket's (age 37 and capital gain 7688 each learn their own weight; the rare
# values of a continuous column share buckets). The key of a number carries both: its bucket's
# key in the high bits (value_key, BUCKET_BITS) and a hash of the value in the low 32 bits,
# never 0; the encoder keeps the value keys counted at least value_min_count times and maps
# every other to its bucket (key & BUCKET_BITS, FeatureEncoder.value_fields).
NUMERIC_RULES = (1, 2, 3)
NUMERIC_RULE = 3
VALUE_BITS = 0xFFFFFFFF
BUCKET_BITS = KEY_MAX & ~VALUE_BITS


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


def value_key(x: float) -> int:
    """Rule 3's key of ``x`` (finite): its rule-2 bucket's key in the high bits, a hash of the
    float64 (``-0.0`` as ``0.0``) in the low 32, never 0."""
    bucket = hash_token(bucket_token(x, 2)) & BUCKET_BITS
    digest = hashlib.blake2b(struct.pack("<d", x + 0.0), digest_size=8).digest()
    return bucket | (int.from_bytes(digest, "little") & VALUE_BITS) | 1


def missing_key(rule: int) -> int:
    """The key of an empty numeric cell: under rule 3 a bucket key (low bits 0), never backed
    off."""
    key = hash_token(MISSING)
    return key & BUCKET_BITS if rule == 3 else key


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
        if mode not in NUMERIC_MODES:
            raise ValueError(f"numeric_mode must be one of {NUMERIC_MODES}, not {mode!r}")
        if rule not in NUMERIC_RULES:
            raise ValueError(f"numeric_rule must be one of {NUMERIC_RULES}, not {rule!r}")
        self.column = column
        self.bucketized = mode == "bucketize"
        self.rule = rule
        self[MISSING] = (missing_key(rule) if self.bucketized else hash_token(MISSING), 1.0)

    def __missing__(self, cell: str) -> tuple[int, float]:
        x = parse_number(cell, self.column)
        if not self.bucketized:
            if abs(x) > FLOAT32_MAX:  # a value trains as float32: this one would be inf
                raise MalformedLine(
                    f"numeric column {self.column}: {cell!r} is past float32's range"
                )
            return VALUE_KEY, x
        key = value_key(x) if self.rule == 3 else hash_token(bucket_token(x, self.rule))
        key_value = self[cell] = (key, 1.0)
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
