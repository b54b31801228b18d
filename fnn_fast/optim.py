"""Sparse optimizers for embedding tables: only the rows present in a batch move.

:class:`SparseRowOptimizer` takes parameters whose gradient is sparse (from
``F.embedding(..., sparse=True)``) and updates only the rows that gradient names, after summing
repeated ids (``coalesce``), so updates are deterministic. Weight decay (L2, added to the
gradient) touches only those rows. Dense parameters given to it (e.g. the bias ``w0``) are
updated whole with the same rule.

Rules, for a row w with summed gradient g (after ``g += weight_decay * w``):

- ``sgd``:             w -= lr g
- ``adagrad``:         G += g^2 (element-wise);  w -= lr g / (sqrt(G) + eps)
- ``rowwise_adagrad``: G_row += mean(g^2);       w -= lr g / (sqrt(G_row) + eps)   (FBGEMM's
  exact row-wise Adagrad: one state value per row)
- ``adam`` (lazy):     m, v updated only on present rows, bias correction by the step count;
  identical to ``torch.optim.SparseAdam`` when weight_decay is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fnn_fast.memory import zeros_like_table

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")


def check_rule(kind: str, lr: float) -> None:
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; choose from {', '.join(OPTIMIZERS)}")
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")


def default_eps(kind: str) -> float:
    """Adam's usual epsilon, Adagrad's (PyTorch's defaults, so the rules match theirs)."""
    return 1e-8 if kind == "adam" else 1e-10


class SparseRowOptimizer(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        kind: str = "adagrad",
        lr: float = 0.01,
        weight_decay: float = 0.0,
        eps: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        initial_accumulator_value: float = 0.0,
    ):
        check_rule(kind, lr)
        if eps is None:
            eps = default_eps(kind)
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            eps=eps,
            betas=betas,
            initial_accumulator_value=initial_accumulator_value,
        )
        self.kind = kind
        super().__init__(params, defaults)

    @staticmethod
    def _as_rows(t: torch.Tensor) -> torch.Tensor:
        """A [rows, width] view: a table keeps its rows, anything smaller is one row."""
        # An explicit width: -1 is ambiguous for the empty gradient of an empty batch.
        return t.view(t.shape[0], math.prod(t.shape[1:])) if t.dim() >= 2 else t.view(1, -1)

    def _state_for(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            if self.kind == "adagrad":
                state["sum"] = torch.full_like(p, group["initial_accumulator_value"])
            elif self.kind == "rowwise_adagrad":
                rows = self._as_rows(p).shape[0]
                state["sum"] = torch.full(
                    (rows,), group["initial_accumulator_value"], dtype=p.dtype, device=p.device
                )
            elif self.kind == "adam":
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse and not p.is_contiguous():
                    raise ValueError("sparse updates need a contiguous parameter")
                state = self._state_for(p, group)
                state["step"] += 1
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()  # sums repeated ids: group by row
                    rows, grad_rows = grad.indices()[0], self._as_rows(grad.values())
                else:
                    rows, grad_rows = None, self._as_rows(p.grad)
                self._update_rows(p, rows, grad_rows, state, group)
        return loss

    def _update_rows(self, p, rows, grad, state, group):
        """Apply the rule to the given rows of p (all rows when rows is None), in place."""
        names = [n for n in ("sum", "exp_avg", "exp_avg_sq") if n in state]
        views = {"weight": self._as_rows(p)}
        for name in names:
            tensor = state[name]
            # Row-wise Adagrad keeps one value per row; every other state has p's shape.
            rowwise = name == "sum" and self.kind == "rowwise_adagrad"
            views[name] = tensor.view(-1, 1) if rowwise else self._as_rows(tensor)
        old = {k: (v if rows is None else v[rows]) for k, v in views.items()}
        new = self._rule(old, grad, state["step"], group)
        for name, value in new.items():
            if rows is None:
                views[name].copy_(value)
            else:
                views[name][rows] = value

    def _rule(self, old: dict, grad: torch.Tensor, step: int, group: dict) -> dict:
        """The update on a block of rows [r, width]; returns the new weight and state rows."""
        lr, eps = group["lr"], group["eps"]
        weight = old["weight"]
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * weight
        if self.kind == "sgd":
            return {"weight": weight - lr * grad}
        if self.kind == "adagrad":
            sums = old["sum"] + grad.square()
            return {"weight": weight - lr * grad / (sums.sqrt() + eps), "sum": sums}
        if self.kind == "rowwise_adagrad":
            sums = old["sum"] + grad.square().mean(dim=1, keepdim=True)
            return {"weight": weight - lr / (sums.sqrt() + eps) * grad, "sum": sums}
        beta1, beta2 = group["betas"]
        exp_avg = old["exp_avg"] + (grad - old["exp_avg"]) * (1 - beta1)
        exp_avg_sq = old["exp_avg_sq"] + (grad.square() - old["exp_avg_sq"]) * (1 - beta2)
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        return {
            "weight": weight - step_size * exp_avg / (exp_avg_sq.sqrt() + eps),
            "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq,
        }


@dataclass(frozen=True)
class RowUpdate:
    """A sparse update rule for kernels that fuse it into backward (``FM.fuse_update``): the same
    rules and defaults as :class:`SparseRowOptimizer`, applied while the gradient is computed."""

    kind: str = "rowwise_adagrad"
    lr: float = 0.01
    weight_decay: float = 0.0
    eps: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    # Adagrad's starting sum (PyTorch's and TensorFlow's initial_accumulator_value): a row's
    # first steps are lr g / sqrt(init + g^2) rather than a full lr, so a rare feature cannot
    # jump as far on its few occurrences as a frequent one moves over thousands.
    initial_accumulator_value: float = 0.0

    def __post_init__(self):
        check_rule(self.kind, self.lr)
        if self.initial_accumulator_value < 0:
            raise ValueError(
                f"initial_accumulator_value must be >= 0, got {self.initial_accumulator_value}"
            )

    @property
    def resolved_eps(self) -> float:
        return self.eps if self.eps is not None else default_eps(self.kind)

    def optimizer(self, params) -> SparseRowOptimizer:
        """The same rule as an optimizer, for tables whose update is not fused (the reference
        backend gives them sparse gradients)."""
        return SparseRowOptimizer(
            params, self.kind, lr=self.lr, weight_decay=self.weight_decay, eps=self.eps,
            betas=self.betas, initial_accumulator_value=self.initial_accumulator_value,
        )  # fmt: skip

    def hparams(self) -> torch.Tensor:
        """[lr, weight_decay, eps, beta1, beta2] as the kernels read them."""
        return torch.tensor(
            [self.lr, self.weight_decay, self.resolved_eps, *self.betas], dtype=torch.float64
        )

    def new_state(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh optimizer state laid out as the kernels expect (see csrc/row_update.h)."""
        empty = table.new_zeros(0)
        if self.kind == "adagrad":
            return zeros_like_table(table).fill_(self.initial_accumulator_value), empty
        if self.kind == "rowwise_adagrad":
            return zeros_like_table(table[:, 0]).fill_(self.initial_accumulator_value), empty
        if self.kind == "adam":
            return zeros_like_table(table), zeros_like_table(table)
        return empty, empty
