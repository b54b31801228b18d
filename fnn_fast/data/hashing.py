"""Hashed features: ids from a hash of each key, with no vocabulary pass and nothing stored.

``HashedEncoder(field_names, slot_fields, buckets, shared=False)`` maps the key k of field f to

- per field (default): ``f * N + h(k, f) mod N``: field f owns the ids [f*N, (f+1)*N);
- shared (``shared=True``): ``h(k, f) mod N``: one space of N ids for all fields. The field index
  is mixed into the hash, so the same key in two fields (libFM indices and bucketized numbers are
  small integers shared by many fields) lands in unrelated buckets: fields collide only as any
  two keys do.

Either way one more id, the last (``F * N``, or ``N``), is the PAD row: an empty slot (a field
absent from a libFM line) gets it with value 0, and no key hashes to it. ``h`` is splitmix64's
finalizer of ``key + (f + 1) * 0x9E3779B97F4A7C15`` (mod 2^64): integer arithmetic in numpy,
the same on every process and machine (Python's ``hash()`` is salted per process). The spec is
saved with the model (``encoder/encoder.json``: ``kind: hashed``, the buckets, the space and the
hash's name), so scoring hashes as training did.

Collisions: :meth:`HashedEncoder.fit` counts the distinct keys of the training rows per field
(the same chunked pass as the vocabulary's, but only to report) and records, per field and in
all, how many share a bucket with another key (``observed``) and how many would be expected to
for that many keys hashed uniformly (``expected = 1 - (1 - 1/N)^(n - 1)`` for n keys in N
buckets, averaged over the fields in the per-field space).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fnn_fast.data.encoder import (
    _CHUNK_ROWS,
    as_buckets,
    count_keys,
    fit_inputs,
    transform_arrays,
)
from fnn_fast.data.tokens import PAD_KEY

HASHED_FORMAT_VERSION = 2  # encoder.json of a hashed encoder; version 1 is the vocabulary's
HASH_NAME = "splitmix64-field-v1"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def hash_keys(keys: np.ndarray, field: int) -> np.ndarray:
    """h(key, field) as uint64, for an int64 array of keys (PAD included: callers mask it)."""
    with np.errstate(over="ignore"):
        z = np.asarray(keys, dtype=np.int64).view(np.uint64) + np.uint64(field + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        return z ^ (z >> np.uint64(31))


def expected_collision_share(keys: int, buckets: int) -> float:
    """The chance that one of ``keys`` keys hashed uniformly into ``buckets`` buckets shares its
    bucket with another: 1 - (1 - 1/N)^(n - 1)."""
    if keys <= 1:
        return 0.0
    return float(-np.expm1((keys - 1) * np.log1p(-1.0 / buckets)))


class HashedEncoder:
    """Keys to feature ids by hashing; the interface of :class:`FeatureEncoder` (fit,
    transform, save/load through ``FeatureEncoder.load``), with no vocabulary."""

    kind = "hashed"

    def __init__(self, field_names, slot_fields, buckets: int, shared: bool = False,
                 collisions: dict | None = None, value_fields=()):  # fmt: skip
        """``value_fields``: fields of numbers under rule 3 (Schema.value_fields). With no
        vocabulary to tell a frequent value from a rare one, each number hashes by its
        bucket."""
        self.field_names = list(field_names)
        self.value_fields = sorted(int(f) for f in value_fields)
        self.slot_fields = np.ascontiguousarray(slot_fields, dtype=np.int64)
        if int(buckets) < 1:
            raise ValueError(f"hash buckets must be at least 1, got {buckets}")
        self.buckets = int(buckets)
        self.shared = bool(shared)
        self.min_count = 1
        self.collisions = collisions
        if np.any((self.slot_fields < 0) | (self.slot_fields >= len(self.field_names))):
            raise ValueError("slot_fields must index field_names")
        num_fields = len(self.field_names)
        if self.shared:
            self.offsets = np.zeros(num_fields, dtype=np.int64)
            self.sizes = np.full(num_fields, self.buckets, dtype=np.int64)
            self.pad_id = self.buckets
        else:
            self.offsets = np.arange(num_fields, dtype=np.int64) * self.buckets
            self.sizes = np.full(num_fields, self.buckets, dtype=np.int64)
            self.pad_id = num_fields * self.buckets
        self.num_features = self.pad_id + 1

    # -- fitting: nothing to learn, only the collision report --------------------------------

    @classmethod
    def fit(
        cls, rows_or_keys, slot_fields=None, field_names=None, *, buckets: int,
        shared: bool = False, value_fields=(), chunk_rows: int = _CHUNK_ROWS, threads: int = 0,
        progress: bool = False,
    ) -> HashedEncoder:  # fmt: skip
        """The encoder, with the collision report of the training keys (``collisions``)."""
        keys, slot_fields, field_names, value_fields = fit_inputs(
            rows_or_keys, slot_fields, field_names, value_fields
        )
        encoder = cls(field_names, slot_fields, buckets, shared, value_fields=value_fields)
        counted = count_keys(
            keys, slot_fields, len(field_names), chunk_rows=chunk_rows, threads=threads,
            progress=progress,
        )  # fmt: skip
        distinct = [
            np.unique(encoder.as_hashed(np.concatenate([k for k, _ in parts]), f))
            if parts else np.zeros(0, np.int64)
            for f, parts in enumerate(counted)
        ]  # fmt: skip
        encoder.collisions = encoder.collision_report(distinct)
        return encoder

    def as_hashed(self, keys: np.ndarray, field: int) -> np.ndarray:
        """The keys that field ``field`` hashes: a value field's numbers as their buckets."""
        return as_buckets(keys) if field in self.value_fields else keys

    def bucket_of(self, keys: np.ndarray, field: int) -> np.ndarray:
        """The feature ids of ``keys`` (no PAD) of field ``field``."""
        keys = self.as_hashed(keys, field)
        buckets = (hash_keys(keys, field) % np.uint64(self.buckets)).astype(np.int64)
        return buckets if self.shared else buckets + field * self.buckets

    def collision_report(self, distinct_keys: list[np.ndarray]) -> dict:
        """Per field and in all: distinct keys, how many share a bucket with another key
        (``colliding_keys``, ``observed`` as a share) and the share uniform hashing predicts."""
        fields, ids_all = {}, []
        for f, keys in enumerate(distinct_keys):
            ids = self.bucket_of(keys, f)
            ids_all.append(ids)
            colliding = _colliding(ids)
            fields[self.field_names[f]] = {
                "keys": len(keys),
                "colliding_keys": colliding,
                "observed": colliding / len(keys) if len(keys) else 0.0,
                "expected": expected_collision_share(len(keys), self.buckets),
            }
        total = sum(len(k) for k in distinct_keys)
        if self.shared:
            colliding = _colliding(np.concatenate(ids_all)) if ids_all else 0
            expected = expected_collision_share(total, self.buckets)
        else:
            colliding = sum(m["colliding_keys"] for m in fields.values())
            expected = (
                sum(m["expected"] * m["keys"] for m in fields.values()) / total if total else 0.0
            )
        return {
            "buckets": self.buckets,
            "space": "shared" if self.shared else "per-field",
            "num_features": self.num_features,
            "keys": total,
            "colliding_keys": colliding,
            "observed": colliding / total if total else 0.0,
            "expected": expected,
            "fields": fields,
        }

    def describe_collisions(self) -> str:
        c = self.collisions
        if c is None:
            return f"hashed into {self.describe_space()}"
        return (
            f"hashed into {self.describe_space()}: {c['keys']:,} distinct training keys, "
            f"{c['colliding_keys']:,} ({c['observed']:.2%}) share a bucket with another "
            f"(uniform hashing expects {c['expected']:.2%})"
        )

    def describe_space(self) -> str:
        if self.shared:
            return f"one shared space of {self.buckets:,} buckets"
        return f"{self.buckets:,} buckets per field ({len(self.field_names)} fields)"

    # -- encoding ---------------------------------------------------------------------------

    def transform(self, keys, values, *, chunk_rows: int = _CHUNK_ROWS, threads: int = 0):
        """(ids int64 [N, S], values float32 [N, S]); a PAD slot gets the PAD id, value 0.
        ``threads`` is accepted for FeatureEncoder's signature (numpy runs the chunks)."""
        del threads
        keys, values, ids, out_values = transform_arrays(keys, values, self.slot_fields)
        for start in range(0, len(keys), chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk = np.asarray(keys[rows], dtype=np.int64)
            pad = chunk == PAD_KEY
            for s, f in enumerate(self.slot_fields):
                ids[rows, s] = self.bucket_of(chunk[:, s], int(f))
            ids[rows][pad] = self.pad_id  # a view of the chunk's rows
            out_values[rows] = np.where(pad, 0.0, np.asarray(values[rows]))
        return ids, out_values

    def transform_rows(self, rows):
        return self.transform(rows.keys, rows.values)

    def native_vocabulary(self):
        """None: no C++ table (the C++ text reader's fast path does not apply)."""
        return None

    def field_of_id(self, feature_id: int) -> str:
        if not 0 <= feature_id < self.num_features:
            raise IndexError(f"feature id {feature_id} not in 0..{self.num_features - 1}")
        if feature_id == self.pad_id:
            return "(pad)"
        if self.shared:
            return "(shared)"
        return self.field_names[feature_id // self.buckets]

    # -- saving -----------------------------------------------------------------------------

    def spec(self) -> dict:
        """What config.json records of the encoder."""
        return {"kind": self.kind, "buckets": self.buckets, "shared": self.shared,
                "hash": HASH_NAME}  # fmt: skip

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": HASHED_FORMAT_VERSION,
            **self.spec(),
            "field_names": self.field_names,
            "slot_fields": self.slot_fields.tolist(),
            "num_features": self.num_features,
            "value_fields": self.value_fields,
            "collisions": self.collisions,
        }
        (directory / "encoder.json").write_text(json.dumps(config, indent=1) + "\n")

    @classmethod
    def from_config(cls, config: dict, directory="encoder") -> HashedEncoder:
        if config.get("format_version") != HASHED_FORMAT_VERSION or config.get("hash") != HASH_NAME:
            raise ValueError(
                f"{directory}: hashed encoder format {config.get('format_version')} with hash "
                f"{config.get('hash')!r}; this version reads {HASHED_FORMAT_VERSION} with "
                f"{HASH_NAME!r}"
            )
        encoder = cls(
            config["field_names"], config["slot_fields"], config["buckets"], config["shared"],
            config.get("collisions"), config.get("value_fields", ()),
        )  # fmt: skip
        if encoder.num_features != config["num_features"]:
            raise ValueError(f"{directory}: num_features does not match the hashing spec")
        return encoder


def _colliding(ids: np.ndarray) -> int:
    """How many of ``ids`` (one per distinct key) share their value with another."""
    if not len(ids):
        return 0
    _, counts = np.unique(ids, return_counts=True)
    return int(counts[counts > 1].sum())
