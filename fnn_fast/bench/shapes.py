"""Benchmark shapes named after real click logs, and the batches of ids they are measured on.

A shape is a data set's field count F, the factor count K, the table size R, the batch size B
and how ids are drawn. The table is split evenly between the F fields (field f owns the ids
``offsets[f] .. offsets[f] + dims[f] - 1``, as :class:`fnn_fast.data.FeatureEncoder` lays them
out), so peers that take per-field ids (pytorch-fm) see the same rows as fnn_fast's global ids.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

# Fields of the public data sets the shapes are named after.
DATASETS = {"criteo": 39, "avazu": 22, "ipinyou": 16}
ID_DISTRIBUTIONS = ("zipf", "uniform")
ZIPF_EXPONENT = 1.1
# A prime above any field size: rank * prime mod size is a bijection that scatters hot ids
# over the field, so popular rows do not share cache lines as consecutive ranks would.
_SCATTER_PRIME = 1_000_000_007


def format_count(n: int) -> str:
    """1e6 for 1_000_000; plain digits when n is not a power of ten."""
    exponent = len(str(n)) - 1
    return f"1e{exponent}" if n == 10**exponent else str(n)


@dataclass(frozen=True)
class Shape:
    dataset: str = "criteo"
    factors: int = 10  # K: the table's rows are [w_i, v_i], D = 1 + K floats
    rows: int = 1_000_000  # R
    batch: int = 4096  # B
    ids: str = "zipf"  # zipf | uniform

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown data set {self.dataset!r}; choose from {list(DATASETS)}")
        if self.ids not in ID_DISTRIBUTIONS:
            raise ValueError(f"unknown id distribution {self.ids!r}; choose {ID_DISTRIBUTIONS}")
        if self.rows < self.fields or self.batch < 1 or self.factors < 1:
            raise ValueError(f"bad shape {self}: need rows >= fields, batch >= 1, factors >= 1")

    @property
    def fields(self) -> int:
        return DATASETS[self.dataset]

    @property
    def dim(self) -> int:
        return 1 + self.factors

    @property
    def slug(self) -> str:
        return (
            f"{self.dataset}-K{self.factors}-R{format_count(self.rows)}-"
            f"B{format_count(self.batch)}-{self.ids}"
        )

    def field_dims(self) -> np.ndarray:
        """Rows per field: R split evenly, the first R mod F fields one row larger."""
        base, extra = divmod(self.rows, self.fields)
        return np.array([base + (f < extra) for f in range(self.fields)], dtype=np.int64)


def draw_batches(shape: Shape, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` batches of global ids [B, F] int64.

    - ``uniform``: every row of a field equally likely.
    - ``zipf``: within each field, rank r (0-based) has probability about (r + 1)^-1.1, drawn
      by inverting the continuous power law bounded to the field (no mass piles up at the
      end), ranks scattered over the field.
    """
    size = (shape.batch, shape.fields)
    dims = shape.field_dims()
    offsets = np.cumsum(dims) - dims
    salt = np.arange(shape.fields, dtype=np.int64) * 7919
    batches = []
    for _ in range(count):
        u = rng.random(size)
        if shape.ids == "uniform":
            local = np.floor(u * dims).astype(np.int64)
        else:
            a = 1.0 - ZIPF_EXPONENT
            x = (((dims + 1.0) ** a - 1.0) * u + 1.0) ** (1.0 / a)  # in [1, dims + 1)
            ranks = np.floor(x).astype(np.int64) - 1
            local = (np.clip(ranks, 0, dims - 1) * _SCATTER_PRIME + salt) % dims
        batches.append(np.minimum(local, dims - 1) + offsets)
    return batches


_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
PLANTED_BIAS, PLANTED_LINEAR, PLANTED_FACTOR = -1.0, 0.25, 0.15


def _hashed_uniform(ids: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random value in [-sqrt 3, sqrt 3) (mean 0, variance 1) per id and salt
    (splitmix64): a truth over tables of any size without storing it."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) + np.uint64(salt) * np.uint64(_MIX[0])
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX[1])
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX[2])
        x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(11)).astype(np.float64) / 2.0**53 - 0.5) * 2 * np.sqrt(3)


def planted_probabilities(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Click probabilities of a planted FM over global ids [B, F]: each row has a weight and two
    factors drawn from a hash of its id (PLANTED_* scale them), so a model that learns the rows
    the batches visit can approach the Bayes-optimal AUC of these probabilities."""
    w = PLANTED_LINEAR * _hashed_uniform(ids, 3 * seed + 1)
    v = np.stack([_hashed_uniform(ids, 3 * seed + 2 + k) for k in range(2)], -1) * PLANTED_FACTOR
    pairs = 0.5 * (np.square(v.sum(1)) - np.square(v).sum(1)).sum(-1)
    return 1.0 / (1.0 + np.exp(-(PLANTED_BIAS + w.sum(1) + pairs)))


@dataclass
class Batch:
    """One batch on the device: global ids [B, F], labels [B], the field offsets [F]."""

    ids: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor

    @cached_property
    def local_ids(self) -> torch.Tensor:
        """Per-field ids (what pytorch-fm takes: it adds the offsets itself)."""
        return self.ids - self.offsets

    @cached_property
    def field_major(self) -> torch.Tensor:
        """Ids laid out field by field, [F * B] (FBGEMM's table-batched input)."""
        return self.ids.t().contiguous().flatten()

    @cached_property
    def field_major_int32(self) -> torch.Tensor:
        """field_major as int32 (FBGEMM's inference TBE)."""
        return self.field_major.int()


class CaseData:
    """The batches a shape is measured on, the same for every contender, labelled by a planted
    model (:func:`planted_probabilities`). Warm (``fresh`` False): ``pool`` distinct batches
    cycled through, so after the first round a table's visited rows sit in the caches. Fresh:
    ``pool`` distinct batches walked once, so no timed call reuses a batch and rows come back
    only as often as the id distribution brings them; a contender may then make at most
    ``pool`` calls (:meth:`left`). Each contender walks its own :meth:`view` of the batches from
    the first, so all see the same batches in the same order."""

    def __init__(self, shape: Shape, pool: int, device: str, seed: int = 0, fresh: bool = False):
        self.shape, self.device, self.seed, self.fresh = shape, device, seed, fresh
        self.batches = self._draw(pool, seed)
        self._next = 0

    def _draw(self, count: int, seed: int) -> list[Batch]:
        dims = self.shape.field_dims()
        offsets = torch.from_numpy(np.cumsum(dims) - dims).to(self.device)
        rng = np.random.default_rng(seed)
        batches = []
        for ids in draw_batches(self.shape, count, rng):
            labels = rng.random(ids.shape[0]) < planted_probabilities(ids, self.seed)
            batches.append(
                Batch(
                    torch.from_numpy(ids).to(self.device),
                    torch.from_numpy(labels).float().to(self.device),
                    offsets,
                )
            )
        return batches  # fmt: skip

    def view(self) -> CaseData:
        """The same batches, walked from the first by a cursor of its own."""
        view = copy.copy(self)
        view._next = 0
        return view

    def left(self) -> int | None:
        """Calls this view may still make (None: any number, the batches cycle)."""
        return len(self.batches) - self._next if self.fresh else None

    def next(self) -> Batch:
        if self.fresh and self._next >= len(self.batches):
            raise RuntimeError(f"all {len(self.batches)} fresh batches used: a bench bug")
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        return batch

    def prepare(self, layouts) -> None:
        """Compute the batch layouts a contender reads (untimed)."""
        for batch in self.batches + (self.__dict__.get("held_out") or []):
            for layout in layouts:
                getattr(batch, layout)

    @cached_property
    def held_out(self) -> list[Batch]:
        """Batches no contender trains on (another seed), to score the trained models."""
        return self._draw(HELD_OUT_BATCHES, self.seed + 10_000)

    @cached_property
    def held_out_probabilities(self) -> np.ndarray:
        """The planted truth on the held-out batches (their Bayes-optimal scores)."""
        return np.concatenate(
            [planted_probabilities(b.ids.cpu().numpy(), self.seed) for b in self.held_out]
        )

    @cached_property
    def distinct_rows(self) -> float:
        """Distinct rows per batch, averaged over the pool (the rows an update must write)."""
        return float(np.mean([torch.unique(b.ids).numel() for b in self.batches[:16]]))

    @cached_property
    def lines_per_batch(self) -> float:
        """64-byte cache lines a batch's lookups touch, a line counted at each lookup (a table
        of rows of D float32 from a 64-byte aligned start)."""
        row = 4 * self.shape.dim
        counts = []
        for batch in self.batches[:16]:
            start = batch.ids.cpu().numpy() * row
            counts.append(((start + row - 1) // 64 - start // 64 + 1).sum())
        return float(np.mean(counts))


HELD_OUT_BATCHES = 4
