"""What the machine allows, measured on the same rows as the contenders:

- ``gather-bound``: a C++ loop (fnn_fast._C.gather_sum) that reads every row the batch looks
  up, prefetched a few lookups ahead as the kernels do, and sums each sample's rows into one
  row: the least work any op that reads the batch's rows must do, so every op-level record
  states its share of it (``vs_bound``). Its own record also gives the random-read rate it
  reached: cache lines touched times 64 bytes per second (``read_gb_per_s``; on a table well
  past the last-level cache with fresh batches, the machine's DRAM random-read rate).
- ``index_select``: the same rows gathered with plain PyTorch (``torch.index_select``), what a
  lookup costs in PyTorch at least. Not a bound: fused kernels that never write the rows out
  beat it.
- ``mlp-only``: trains or scores the FNN's MLP on a ready input (what a perfect embedding path
  would cost).
"""

from __future__ import annotations

import torch

from fnn_fast.bench.cases import OPS
from fnn_fast.bench.contenders.base import MLP_LR, Contender, FnnLayers, ModelSpec, Scored
from fnn_fast.memory import table_zeros
from fnn_fast.modules import FNN
from fnn_fast.ops import cpu


def _table(rows: int, dim: int, device: str) -> torch.Tensor:
    if device == "cpu":  # allocated as fnn_fast's modules allocate theirs
        return table_zeros(rows, dim).normal_()
    return torch.randn(rows, dim, device=device)


def gather_sum(table: torch.Tensor, ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out [B, D] = each sample's rows of the CPU float32 table summed (fnn_fast._C.gather_sum,
    the gather bound); ids int64 [B, F]."""
    from fnn_fast import _C

    rows, dim = table.shape
    bad = _C.gather_sum(
        table.data_ptr(), rows, dim, ids.data_ptr(), ids.shape[0], ids.shape[1], out.data_ptr()
    )
    if bad >= 0:
        raise IndexError(f"id {int(ids.flatten()[bad])} at flat position {bad} is outside the "
                         f"table of {rows} rows")  # fmt: skip
    return out


class _RowReader(Contender):
    """A bound for every op: reads the batch's rows from a table of the case's size."""

    kind = "bound"
    ops = frozenset(OPS)
    trains = False


class GatherBound(_RowReader):
    name = "gather-bound"

    def unavailable(self, device):
        if device != "cpu":
            return "a CPU loop: on GPU the bound is the index_select row"
        if not cpu.available():
            return "needs fnn_fast._C (the native build)"
        return None

    def optimizer(self, case):
        return "C++ gather_sum: rows read once, prefetched"

    def setup(self, case, data):
        s = case.shape
        table = _table(s.rows, s.dim, data.device)
        out = torch.empty(s.batch, s.dim)
        return lambda: gather_sum(table, data.next().ids, out)


class IndexSelect(_RowReader):
    name = "index_select"

    def optimizer(self, case):
        return "torch.index_select"

    def setup(self, case, data):
        s = case.shape
        table = _table(s.rows, s.dim, data.device)
        return lambda: torch.index_select(table, 0, data.next().ids.flatten())


class _BareMLP(Scored):
    """The FNN's layers (as every contender's FNN computes them) on a ready random input."""

    def __init__(self, spec: ModelSpec):
        torch.manual_seed(spec.seed)
        fnn = FNN(spec.fields, spec.fields, spec.factors, spec.hidden)  # its layers only
        self.module = FnnLayers(fnn.hidden_layers, fnn.output).to(spec.device)
        self.optimizers = [torch.optim.Adam(self.module.parameters(), lr=MLP_LR)]
        self.shape, self.device = (spec.fields, spec.dim), spec.device
        self.w0 = torch.zeros((), device=spec.device)
        self.inputs: dict[int, torch.Tensor] = {}

    def logits(self, batch):
        rows = batch.ids.shape[0]
        if rows not in self.inputs:
            self.inputs[rows] = torch.randn(rows, *self.shape, device=self.device)
        return self.module(self.inputs[rows], self.w0)


class MlpOnly(Contender):
    name = "mlp-only"
    kind = "bound"
    models = frozenset({"fnn"})
    trains = False

    def optimizer(self, case):
        return None

    def memory_bytes(self, case):
        return 0

    def build(self, model, spec):
        return _BareMLP(spec)
