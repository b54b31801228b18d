"""The contenders' common interface, the model every contender builds, and the helpers they
share (the FM and FNN on gathered rows, a training step)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fnn_fast import FM, FNN
from fnn_fast.bench.cases import Case
from fnn_fast.bench.shapes import Batch, CaseData
from fnn_fast.modules import fnn_head

# Table learning rates per rule (the batch-mean loss makes plain SGD need a large one), the
# Adam rate of the peers' tables, and of every MLP.
TABLE_LR = {"sgd": 1.0, "adagrad": 0.01, "rowwise_adagrad": 0.01, "adam": 0.003}
PEER_ADAM_LR = TABLE_LR["adam"]
MLP_LR = 1e-3
HIDDEN = (200, 300, 100)  # the paper's FNN, for every contender's MLP
INIT_STD = 0.01
INFERENCE_OPS = ("fm_forward", "fnn_fields_forward", "fm_score", "fnn_score")


class SkipCase(Exception):
    """This contender cannot run this case; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model-level contender builds: a table of num_features rows split into fields."""

    num_features: int
    field_dims: tuple[int, ...]
    factors: int
    rule: str
    device: str
    hidden: tuple[int, ...] = HIDDEN
    seed: int = 0

    @property
    def fields(self) -> int:
        return len(self.field_dims)

    @property
    def dim(self) -> int:
        return 1 + self.factors


def spec_of(case: Case, device: str) -> ModelSpec:
    s = case.shape
    return ModelSpec(s.rows, tuple(int(d) for d in s.field_dims()), s.factors, case.rule, device)


class FnnLayers(nn.Module):
    """The FNN's network above z, as fnn_fast's FNN holds it (hidden layers, output)."""

    def __init__(self, hidden_layers: nn.Sequential, output: nn.Linear):
        super().__init__()
        self.hidden_layers, self.output = hidden_layers, output

    def forward(self, rows: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
        """Logits [B] from gathered rows [B, F, D]: the same function as FNN.forward (w0's
        column of the first layer folded into its bias, no concatenation)."""
        fields = rows.flatten(1)
        return fnn_head(fields, w0, self.hidden_layers, self.output)


def initial_model(model: str, spec: ModelSpec) -> tuple[torch.Tensor, FnnLayers | None]:
    """The table, and for the FNN its layers, that fnn_fast's model starts from for this spec.
    Peers that take a table (and an MLP) start from the same ones, so the equal-quality run
    compares training, not the luck of the draw."""
    torch.manual_seed(spec.seed)
    if model == "fm":
        return FM(spec.num_features, spec.factors, init_std=INIT_STD).table.detach(), None
    fnn = FNN(spec.num_features, spec.fields, spec.factors, spec.hidden, init_std=INIT_STD)
    return fnn.table.detach(), FnnLayers(fnn.hidden_layers, fnn.output)


class Trainable:
    """A model as the benchmark drives it."""

    def train_step(self, batch: Batch) -> None:
        raise NotImplementedError

    def score(self, batch: Batch) -> torch.Tensor:
        """Click probabilities [B]."""
        raise NotImplementedError


class ModelStep:
    """A model case's step: one training step or one scoring on the next batch. The runner
    reaches the model through it, to train it on the rest of the batches (untimed) and to
    score the held-out batches."""

    def __init__(self, model: Trainable, data: CaseData, train: bool):
        self.model, self.data, self.train = model, data, train

    def __call__(self):
        batch = self.data.next()
        return self.model.train_step(batch) if self.train else self.model.score(batch)


class Contender:
    name = ""
    kind = "backend"  # backend | peer | bound
    ops: frozenset[str] = frozenset()  # op-level cases it runs
    models: frozenset[str] = frozenset()  # "fm", "fnn"
    trains = True  # takes part in model training cases and the equal-quality run
    # Batch layouts it reads besides the ids [B, F] (shapes.Batch's properties: local_ids,
    # field_major, ...), prepared for every batch before the timed calls.
    layouts: tuple[str, ...] = ()

    def supports(self, case: Case) -> bool:
        if case.level == "op":
            return case.op in self.ops
        if case.model not in self.models:
            return False
        if case.level == "model":
            return self.trains or not case.op.endswith("_train") or self.kind == "bound"
        return self.trains and self.kind != "bound"

    def unavailable(self, device: str) -> str | None:
        """Why this contender cannot run here at all, or None."""
        return None

    def why_not(self, case: Case) -> str | None:
        """Why it cannot run this case, or None."""
        return None

    def optimizer(self, case: Case) -> str | None:
        """The table update and settings it uses, for the records."""
        return f"{case.rule} lr {TABLE_LR[case.rule]:g}"

    def memory_bytes(self, case: Case) -> int:
        """Roughly what setup allocates: the table (and its state) dominates."""
        return 2 * case.shape.rows * case.shape.dim * 4

    @contextmanager
    def active(self):
        yield

    def setup(self, case: Case, data: CaseData) -> Callable[[], object]:
        if case.level == "op":
            return getattr(self, case.op)(case, data)
        model = self.build(case.model, spec_of(case, data.device))
        return ModelStep(model, data, train=case.op.endswith("_train"))

    def build(self, model: str, spec: ModelSpec) -> Trainable:
        raise NotImplementedError


def bce(logits, labels):
    return F.binary_cross_entropy_with_logits(logits, labels)


def fm_logits(rows: torch.Tensor, w0: torch.Tensor, factors: int) -> torch.Tensor:
    """FM logits from gathered rows [B, F, >= 1 + K] ([w, v, padding])."""
    v = rows[..., 1 : 1 + factors]
    return w0 + rows[..., 0].sum(1) + 0.5 * (v.sum(1).square() - v.square().sum(1)).sum(1)


def zero_step(optimizers, loss):
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss().backward()
    for optimizer in optimizers:
        optimizer.step()


def small_gradient(shape, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(shape, generator=generator) * 1e-3).to(device)


def import_module(module: str, install: str):
    """The module, or SkipCase saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SkipCase(f"not installed ({error}): pip install {install}") from None


def reason_if_missing(*modules: str, install: str) -> str | None:
    try:
        for module in modules:
            import_module(module, install)
    except SkipCase as missing:
        return str(missing)
    return None


class Scored(Trainable):
    """score(): inference mode, sigmoid of the logits."""

    module: nn.Module
    optimizers: list

    def logits(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def score(self, batch):
        self.module.eval()
        with torch.inference_mode():
            return torch.sigmoid(self.logits(batch))

    def train_step(self, batch):
        self.module.train()
        zero_step(self.optimizers, lambda: bce(self.logits(batch), batch.labels))
