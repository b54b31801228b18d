"""Per-field vocabularies mapping keys to dense feature ids.

Field f owns the ids ``offsets[f] .. offsets[f] + sizes[f] - 1``: the first is f's
out-of-vocabulary id (also given to PAD slots, with value 0), then one id per kept key, in key
order. Arrays are processed in row chunks, so memmapped inputs never have to fit in memory.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from fnn_fast.data.rows import ParsedRows
from fnn_fast.data.tokens import BUCKET_BITS, PAD_KEY

# Numeric rule 3 (fnn_fast.data.tokens): a value counted at least this many times in training
# is a feature of its own, a rarer one its bucket's. Chosen on validation (README, "How the
# defaults were chosen"): 3 gave the few repeated values of a continuous column (Adult's
# fnlwgt) features that overfit, 20 and 50 merged values that each predict well; 5 and 10 tie.
VALUE_MIN_COUNT = 10

ENCODER_FORMAT_VERSION = 1
_CHUNK_ROWS = 1 << 18


class FeatureEncoder:
    kind = "vocabulary"

    def __init__(self, field_names, slot_fields, vocabs, min_count: int = 1,
                 value_fields=(), value_min_count: int = VALUE_MIN_COUNT):  # fmt: skip
        """``vocabs[f]``: field f's kept keys, sorted and distinct. ``value_fields``: the fields
        of numbers under rule 3, whose value keys not in the vocabulary are read as their
        bucket's (see value_min_count, fnn_fast.data.tokens.value_key)."""
        self.field_names = list(field_names)
        self.slot_fields = np.ascontiguousarray(slot_fields, dtype=np.int64)
        self.vocabs = [np.ascontiguousarray(v, dtype=np.int64) for v in vocabs]
        self.min_count = min_count
        self.value_fields = sorted(int(f) for f in value_fields)
        self.value_min_count = int(value_min_count)
        if len(self.vocabs) != len(self.field_names):
            raise ValueError(f"{len(self.vocabs)} vocabularies for {len(self.field_names)} fields")
        if np.any((self.slot_fields < 0) | (self.slot_fields >= len(self.field_names))):
            raise ValueError("slot_fields must index field_names")
        for name, vocab in zip(self.field_names, self.vocabs, strict=True):
            if np.any(vocab[1:] <= vocab[:-1]):
                raise ValueError(f"vocabulary of field {name!r} is not sorted and distinct")
        self.sizes = np.array([1 + len(v) for v in self.vocabs], dtype=np.int64)
        self.offsets = np.cumsum(self.sizes) - self.sizes
        self.num_features = int(self.sizes.sum())

    @classmethod
    def fit(
        cls,
        rows_or_keys,
        slot_fields=None,
        field_names=None,
        min_count: int = 1,
        *,
        value_fields=(),
        value_min_count: int = VALUE_MIN_COUNT,
        chunk_rows: int = _CHUNK_ROWS,
        threads: int = 0,
        progress: bool = False,
    ) -> FeatureEncoder:
        """Keep, per field, the keys seen at least ``min_count`` times; in ``value_fields``
        (Schema.value_fields) a number's own key only if seen ``value_min_count`` times, else
        its bucket's. Accepts ParsedRows (its value_fields then apply unless given), or keys
        [N, S] with slot_fields [S] and field_names. The pass counts row chunks in ``threads``
        threads (0: all cores; numpy's sorts release the GIL), with a progress bar over the
        rows when ``progress`` (and stderr is a terminal)."""
        keys, slot_fields, field_names, value_fields = fit_inputs(
            rows_or_keys, slot_fields, field_names, value_fields
        )
        counted = count_keys(
            keys, slot_fields, len(field_names), chunk_rows=chunk_rows, threads=threads,
            progress=progress,
        )  # fmt: skip
        vocabs = vocabularies(counted, min_count, value_fields, value_min_count, threads)
        return cls(field_names, slot_fields, vocabs, min_count, value_fields, value_min_count)

    @classmethod
    def fit_rows(cls, rows: ParsedRows, min_count: int = 1) -> FeatureEncoder:
        return cls.fit(rows, min_count=min_count)

    def transform(self, keys, values, *, chunk_rows: int = _CHUNK_ROWS, threads: int = 0):
        """(ids int64 [N, S], values float32 [N, S]). An unseen key gets its field's OOV id and
        keeps its value; a PAD slot gets the OOV id and value 0. ``threads``: of the native
        encoder (0: all cores; 1 where the caller already runs beside other work)."""
        keys, values, ids, out_values = transform_arrays(keys, values, self.slot_fields)
        if self.native_vocabulary() is not None:
            threads = threads or os.cpu_count() or 1
            for start in range(0, len(keys), chunk_rows):
                rows = slice(start, start + chunk_rows)
                self._encode_native(keys[rows], values[rows], ids[rows], out_values[rows], threads)
            return ids, out_values
        for start in range(0, len(keys), chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk = np.asarray(keys[rows], dtype=np.int64)
            for s, f in enumerate(self.slot_fields):
                ids[rows, s] = self._ids(f, chunk[:, s])
            out_values[rows] = np.where(chunk == PAD_KEY, 0.0, np.asarray(values[rows]))
        return ids, out_values

    def native_vocabulary(self):
        """The C++ hash table of every (key, field) -> id (fnn_fast._C.Vocabulary), built on
        first use; None without the native module (a numpy binary search then serves)."""
        if getattr(self, "_table", None) is None:
            try:
                from fnn_fast import _C
            except ImportError:
                self._table = False
                return None
            vocab_keys = np.concatenate([np.zeros(0, np.int64), *self.vocabs])
            fields = np.repeat(
                np.arange(len(self.vocabs), dtype=np.int64), [len(v) for v in self.vocabs]
            )
            ids = np.concatenate(
                [np.zeros(0, np.int64)]
                + [self.offsets[f] + 1 + np.arange(len(v)) for f, v in enumerate(self.vocabs)]
            ).astype(np.int64)
            begin = np.ascontiguousarray(self.offsets, dtype=np.int64)
            end = np.ascontiguousarray(self.offsets + self.sizes, dtype=np.int64)
            self._table = _C.Vocabulary(
                vocab_keys.ctypes.data, fields.ctypes.data, ids.ctypes.data, len(vocab_keys),
                begin.ctypes.data, end.ctypes.data, len(self.vocabs),
            )  # fmt: skip
            if self.value_fields:  # encode_keys backs rare values off to their bucket as _ids
                self._table.set_value_fields(self.value_fields)
        return self._table or None

    def _encode_native(self, keys, values, out_ids, out_values, threads: int) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        values = np.ascontiguousarray(values, dtype=np.float32)
        assert out_ids.flags.c_contiguous and out_values.flags.c_contiguous
        self._table.encode_keys(
            keys.ctypes.data, values.ctypes.data, len(keys), keys.shape[1],
            self.slot_fields.ctypes.data, out_ids.ctypes.data, out_values.ctypes.data, threads,
        )  # fmt: skip

    def __getstate__(self):  # the native table is rebuilt where the encoder lands
        return {k: v for k, v in self.__dict__.items() if k not in ("_table", "_delimited")}

    def transform_rows(self, rows: ParsedRows):
        return self.transform(rows.keys, rows.values)

    def _backed_off(self, field: int, keys: np.ndarray) -> np.ndarray:
        """A value field's keys, each value key not in the vocabulary as its bucket's."""
        vocab = self.vocabs[field]
        position = np.minimum(np.searchsorted(vocab, keys), max(len(vocab) - 1, 0))
        known = vocab[position] == keys if len(vocab) else np.zeros(len(keys), bool)
        return as_buckets(keys, ~known)

    def _ids(self, field: int, keys: np.ndarray) -> np.ndarray:
        vocab, oov = self.vocabs[field], self.offsets[field]
        if field in self.value_fields:
            keys = self._backed_off(field, keys)
        if not len(vocab):
            return np.full(len(keys), oov, dtype=np.int64)
        position = np.minimum(np.searchsorted(vocab, keys), len(vocab) - 1)
        return np.where(vocab[position] == keys, oov + 1 + position, oov)

    def field_of_id(self, feature_id: int) -> str:
        if not 0 <= feature_id < self.num_features:
            raise IndexError(f"feature id {feature_id} not in 0..{self.num_features - 1}")
        return self.field_names[int(np.searchsorted(self.offsets, feature_id, side="right")) - 1]

    def spec(self) -> dict:
        """What config.json records of the encoder."""
        spec = {"kind": self.kind, "min_count": self.min_count}
        if self.value_fields:
            spec["value_min_count"] = self.value_min_count
        return spec

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {f"vocab.{f}": v for f, v in enumerate(self.vocabs)},
            str(directory / "encoder.safetensors"),
        )
        config = {
            "format_version": ENCODER_FORMAT_VERSION,
            "field_names": self.field_names,
            "slot_fields": self.slot_fields.tolist(),
            "min_count": self.min_count,
            "value_fields": self.value_fields,
            "value_min_count": self.value_min_count,
            "offsets": self.offsets.tolist(),
            "sizes": self.sizes.tolist(),
        }
        (directory / "encoder.json").write_text(json.dumps(config, indent=1) + "\n")

    @classmethod
    def load(cls, directory) -> FeatureEncoder:
        directory = Path(directory)
        config = json.loads((directory / "encoder.json").read_text())
        if config.get("kind") == "hashed":
            from fnn_fast.data.hashing import HashedEncoder

            return HashedEncoder.from_config(config, directory)
        if config.get("format_version") != ENCODER_FORMAT_VERSION:
            raise ValueError(
                f"{directory}: encoder format {config.get('format_version')}, "
                f"this version reads {ENCODER_FORMAT_VERSION}"
            )
        tensors = load_file(str(directory / "encoder.safetensors"))
        vocabs = [tensors[f"vocab.{f}"] for f in range(len(config["field_names"]))]
        encoder = cls(
            config["field_names"], config["slot_fields"], vocabs, config["min_count"],
            config.get("value_fields", ()), config.get("value_min_count", VALUE_MIN_COUNT),
        )  # fmt: skip
        if encoder.sizes.tolist() != config["sizes"]:
            raise ValueError(f"{directory}: vocabulary sizes do not match encoder.json")
        return encoder


def as_buckets(keys: np.ndarray, where=True) -> np.ndarray:
    """``keys`` with each key where ``where`` holds read as its bucket's (numeric rule 3: the
    value bits cleared, fnn_fast.data.tokens.value_key); a bucket key stays itself, PAD stays
    PAD."""
    return np.where(np.asarray(where) & (keys >= 0), keys & BUCKET_BITS, keys)


def vocabularies(counted, min_count: int, value_fields=(), value_min_count=VALUE_MIN_COUNT,
                 threads: int = 0) -> list[np.ndarray]:  # fmt: skip
    """Each field's kept keys from its per-chunk (keys, counts) (count_keys' output)."""
    value_fields = set(int(f) for f in value_fields)

    def field_vocabulary(f):
        return _frequent(counted[f], min_count, value_min_count if f in value_fields else None)

    with _pool(threads) as pool:
        return list(pool.map(field_vocabulary, range(len(counted))))


def _frequent(parts: list[tuple[np.ndarray, np.ndarray]], min_count: int,
              value_min_count: int | None = None) -> np.ndarray:  # fmt: skip
    """Merge per-chunk (keys, counts) and keep the keys counted at least min_count times. With
    ``value_min_count`` (a field of numbers under rule 3), a value key counted fewer times
    counts toward its bucket's key instead."""
    if not parts:
        return np.zeros(0, dtype=np.int64)
    keys, counts = _merge(parts)
    if value_min_count is not None:
        keys = as_buckets(keys, counts < value_min_count)
        keys, where = np.unique(keys, return_inverse=True)
        counts = np.bincount(where, weights=counts, minlength=len(keys)).astype(np.int64)
    return keys[counts >= min_count]


def transform_arrays(keys, values, slot_fields):
    """(keys, values, ids, out_values) of a transform: its inputs (arrays or memory maps, kept
    as they are) checked against the encoder's slot layout, and its outputs allocated."""
    keys = keys if hasattr(keys, "shape") else np.asarray(keys)
    values = values if hasattr(values, "shape") else np.asarray(values)
    if keys.shape != values.shape or keys.ndim != 2 or keys.shape[1] != len(slot_fields):
        raise ValueError(
            f"keys {keys.shape} and values {values.shape} must both be [N, {len(slot_fields)}], "
            "the slot layout this encoder was fitted on (parts.conform_slots lays rows out in it)"
        )
    return keys, values, np.empty(keys.shape, np.int64), np.empty(keys.shape, np.float32)


def fit_inputs(rows_or_keys, slot_fields, field_names, value_fields=()):
    """(keys [N, S], slot_fields int64 [S], field_names, value_fields) from ParsedRows or keys
    plus the rest (ParsedRows' value_fields apply unless some are given)."""
    keys = rows_or_keys
    if isinstance(rows_or_keys, ParsedRows):
        keys = rows_or_keys.keys
        slot_fields = rows_or_keys.slot_fields if slot_fields is None else slot_fields
        field_names = rows_or_keys.field_names if field_names is None else field_names
        value_fields = value_fields or rows_or_keys.value_fields
    if slot_fields is None or field_names is None:
        raise TypeError("fit(keys, ...) needs slot_fields and field_names")
    return keys, np.asarray(slot_fields, dtype=np.int64), list(field_names), list(value_fields)


def _workers(threads: int) -> int:
    return max(1, threads or os.cpu_count() or 1)


def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_workers(threads))


def count_keys(
    keys, slot_fields, num_fields: int, *, chunk_rows: int = _CHUNK_ROWS, threads: int = 0,
    progress: bool = False,
) -> list[list[tuple[np.ndarray, np.ndarray]]]:  # fmt: skip
    """Per field, the (distinct keys, counts) of each row chunk of ``keys`` (PAD not counted).
    Chunks are counted in a pool of ``threads`` threads (0: all cores), at most two per thread
    in flight so that a memory-mapped input is read a few chunks at a time."""
    slot_fields = np.asarray(slot_fields, dtype=np.int64)
    slots_of = [np.flatnonzero(slot_fields == f) for f in range(num_fields)]
    counted: list[list] = [[] for _ in range(num_fields)]

    def count(start: int):
        chunk = np.asarray(keys[start : start + chunk_rows], dtype=np.int64)
        out = []
        for slots in slots_of:
            seen = chunk[:, slots].ravel()
            out.append(np.unique(seen[seen != PAD_KEY], return_counts=True))
        return len(chunk), out

    bar = tqdm(
        total=len(keys), desc="vocabulary", unit="rows", unit_scale=True, leave=False,
        disable=None if progress else True,
    )  # fmt: skip
    starts = list(range(0, len(keys), chunk_rows))
    with _pool(threads) as pool, bar:
        window = 2 * _workers(threads)
        futures = [pool.submit(count, s) for s in starts[:window]]
        for i in range(len(starts)):
            rows, per_field = futures[i].result()
            futures[i] = None  # free the chunk's counts once merged into ``counted``
            if i + window < len(starts):
                futures.append(pool.submit(count, starts[i + window]))
            for f, part in enumerate(per_field):
                counted[f].append(part)
                if len(counted[f]) >= 8:  # memory bounded by the vocabulary, not by the rows
                    counted[f] = [_merge(counted[f])]
            bar.update(rows)
    return counted


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk (keys, counts) as one (keys, counts): a key seen in several chunks adds up."""
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts]).astype(np.int64, copy=False)
    if len(parts) > 1:
        keys, inverse = np.unique(keys, return_inverse=True)
        counts = np.bincount(inverse, weights=counts, minlength=len(keys)).astype(np.int64)
    return keys, counts
