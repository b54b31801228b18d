"""Benchmark shapes named after real click logs, and the batches of ids they are measured on.

A shape is a data set's field count F, the factor count K, the table size R, the batch size B
and how ids are drawn. The table is split evenly between the F fields (field f owns the ids
``offsets[f] .. offsets[f] + dims[f] - 1``, as :class:`fnn_fast.data.FeatureEncoder` lays them
out), so peers that take per-field ids (pytorch-fm) see the same rows as fnn_fast's global ids.
"""

from __future__ import annotations

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


class CaseData:
    """The batches a shape is measured on, shared by every contender: ``pool`` distinct batches
    cycled through, so a large table is not measured on one cache-resident batch."""

    def __init__(self, shape: Shape, pool: int, device: str, seed: int = 0):
        self.shape, self.device = shape, device
        dims = shape.field_dims()
        offsets = torch.from_numpy(np.cumsum(dims) - dims).to(device)
        generator = torch.Generator().manual_seed(seed)
        self.batches = [
            Batch(
                torch.from_numpy(ids).to(device),
                torch.randint(0, 2, (shape.batch,), generator=generator).float().to(device),
                offsets,
            )
            for ids in draw_batches(shape, pool, np.random.default_rng(seed))
        ]
        self._next = 0

    def next(self) -> Batch:
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        return batch

    @cached_property
    def distinct_rows(self) -> float:
        """Distinct rows per batch, averaged over the pool (the rows an update must write)."""
        return float(np.mean([torch.unique(b.ids).numel() for b in self.batches]))
