"""Who is measured: fnn_fast's backends, the peers a user would pick instead, and two bounds.

Every contender has the same small interface. For an op-level case, ``setup(case, data)``
builds what the op needs (untimed) and returns ``step``, a call that does the op once on the
next batch. For model and quality cases, ``build(model, spec)`` returns a :class:`Trainable`
with ``train_step(batch)`` and ``score(batch)``. A contender says why it cannot run (not
installed, wrong device, a case it cannot express) instead of failing.

Backends (fnn_fast, through its public modules and ops, with :func:`fnn_fast.set_backend`):
``reference`` (eager PyTorch), ``compiled`` (the reference functions under
``torch.compile(dynamic=True)``), ``native`` (C++ CPU kernels), ``triton`` and ``cuda`` (GPU
kernels, when :func:`fnn_fast.backends` lists them). Their table update is the case's rule
(row-wise Adagrad unless named), fused into backward where the backend can.

Peers, each used as its authors intend: ``fbgemm`` (FBGEMM's CPU table-batched embedding,
exact row-wise Adagrad fused into backward, the FM or MLP in PyTorch), ``torchfm``
(pytorch-fm's FactorizationMachineModel and FactorizationSupportedNeuralNetworkModel, dense
embedding gradients, Adam, as in its examples) and ``torch-sparse`` (plain PyTorch:
``nn.EmbeddingBag(sparse=True)`` with ``torch.optim.SparseAdam``).

Bounds: ``index_select`` gathers the batch's rows and nothing else (what any lookup costs at
least); ``mlp-only`` trains or scores the FNN's MLP on a ready input (what a perfect embedding
path would cost).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import fnn_fast
from fnn_fast import FM, FNN, SparseRowOptimizer
from fnn_fast.bench.cases import OPS, Case
from fnn_fast.bench.shapes import Batch, CaseData
from fnn_fast.bench.traffic import state_floats
from fnn_fast.memory import table_zeros
from fnn_fast.ops import checks, library, reference
from fnn_fast.optim import RowUpdate

# Table learning rates per rule (the batch-mean loss makes plain SGD need a large one), the
# Adam rate of the peers' tables, and of every MLP.
TABLE_LR = {"sgd": 1.0, "adagrad": 0.01, "rowwise_adagrad": 0.01, "adam": 0.003}
PEER_ADAM_LR = TABLE_LR["adam"]
MLP_LR = 1e-3
HIDDEN = (200, 300, 100)  # the paper's FNN, for every contender's MLP
INIT_STD = 0.01
_INFERENCE_OPS = ("fm_forward", "fnn_fields_forward", "fm_score", "fnn_score")


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


def initial_model(model: str, spec: ModelSpec) -> tuple[torch.Tensor, nn.Module | None]:
    """The table, and for the FNN the MLP, that fnn_fast's model starts from for this spec.
    Peers that take a table (and an MLP) start from the same ones, so the equal-quality run
    compares training, not the luck of the draw."""
    torch.manual_seed(spec.seed)
    if model == "fm":
        return FM(spec.num_features, spec.factors, init_std=INIT_STD).table.detach(), None
    fnn = FNN(spec.num_features, spec.fields, spec.factors, spec.hidden, init_std=INIT_STD)
    return fnn.table.detach(), nn.Sequential(fnn.hidden_layers, fnn.output)


def _fnn_logits(mlp: nn.Module, rows: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """The FNN on gathered rows [B, F, D]: its input is z = [w0, rows of each field]."""
    z = torch.cat([w0.reshape(1, 1).expand(rows.shape[0], 1), rows.flatten(1)], dim=1)
    return mlp(z).squeeze(-1)


class Trainable:
    """A model as the benchmark drives it."""

    def train_step(self, batch: Batch) -> None:
        raise NotImplementedError

    def score(self, batch: Batch) -> torch.Tensor:
        """Click probabilities [B]."""
        raise NotImplementedError


class Contender:
    name = ""
    kind = "backend"  # backend | peer | bound
    ops: frozenset[str] = frozenset()  # op-level cases it runs
    models: frozenset[str] = frozenset()  # "fm", "fnn"
    trains = True  # takes part in the equal-quality run

    def supports(self, case: Case) -> bool:
        if case.level == "op":
            return case.op in self.ops
        return case.model in self.models and (case.level == "model" or self.trains)

    def unavailable(self, device: str) -> str | None:
        """Why this contender cannot run here at all, or None."""
        return None

    def why_not(self, case: Case) -> str | None:
        """Why it cannot run this case, or None."""
        return None

    def optimizer(self, case: Case) -> str | None:
        """The table update it uses, for the records."""
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
        if case.op.endswith("_train"):
            return lambda: model.train_step(data.next())
        return lambda: model.score(data.next())

    def build(self, model: str, spec: ModelSpec) -> Trainable:
        raise NotImplementedError


def _bce(logits, labels):
    return F.binary_cross_entropy_with_logits(logits, labels)


def _fm_logits(rows: torch.Tensor, w0: torch.Tensor, factors: int) -> torch.Tensor:
    """FM logits from gathered rows [B, F, >= 1 + K] ([w, v, padding])."""
    v = rows[..., 1 : 1 + factors]
    return w0 + rows[..., 0].sum(1) + 0.5 * (v.sum(1).square() - v.square().sum(1)).sum(1)


def _zero_step(optimizers, loss):
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss().backward()
    for optimizer in optimizers:
        optimizer.step()


class _Scored(Trainable):
    """score(): inference mode, sigmoid of the logits."""

    module: nn.Module

    def logits(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def score(self, batch):
        self.module.eval()
        with torch.inference_mode():
            return torch.sigmoid(self.logits(batch))

    def train_step(self, batch):
        self.module.train()
        _zero_step(self.optimizers, lambda: _bce(self.logits(batch), batch.labels))


# --- fnn_fast's backends ---------------------------------------------------------------------


class _FnnFastFM(_Scored):
    def __init__(self, spec: ModelSpec):
        torch.manual_seed(spec.seed)
        self.module = FM(spec.num_features, spec.factors, init_std=INIT_STD)
        lr = TABLE_LR[spec.rule]
        self.module.fuse_update(RowUpdate(spec.rule, lr)).to(spec.device)
        self.optimizers = [SparseRowOptimizer(self.module.parameters(), spec.rule, lr=lr)]

    def logits(self, batch):
        return self.module(batch.ids)


class _FnnFastFNN(_Scored):
    def __init__(self, spec: ModelSpec):
        torch.manual_seed(spec.seed)
        self.module = FNN(spec.num_features, spec.fields, spec.factors, spec.hidden)
        lr = TABLE_LR[spec.rule]
        self.module.fuse_update(RowUpdate(spec.rule, lr)).to(spec.device)
        layers = [p for group in self.module.layer_parameters() for p in group]
        self.optimizers = [
            SparseRowOptimizer(self.module.embedding_parameters(), spec.rule, lr=lr),
            torch.optim.Adam(layers, lr=MLP_LR),
        ]

    def logits(self, batch):
        return self.module(batch.ids)


def _gather_module(case: Case, device: str, fused: bool) -> FNN:
    """An FNN without hidden layers: its ``input`` is the gather op."""
    s = case.shape
    fnn = FNN(s.rows, s.fields, s.factors, hidden=(), init_std=INIT_STD)
    if fused:
        fnn.fuse_update(RowUpdate(case.rule, TABLE_LR[case.rule]))
    return fnn.to(device)


class FnnFastBackend(Contender):
    """One of fnn_fast's backends, selected with fnn_fast.set_backend while it runs."""

    ops = frozenset(OPS)
    models = frozenset({"fm", "fnn"})

    def __init__(self, name: str):
        self.name = name

    def unavailable(self, device):
        if self.name == "native" and device != "cpu":
            return "the native backend runs the CPU kernels (use --device cpu)"
        if self.name in ("triton", "cuda") and device != "cuda":
            return "a GPU backend: run with --device cuda on a machine with CUDA"
        info = fnn_fast.backends()
        if self.name not in info["available"]:
            reason = info.get(f"{self.name}_error") or "not built or not importable here"
            return f"not in fnn_fast.backends(): {reason}"
        return None

    @contextmanager
    def active(self):
        previous = fnn_fast.backends()["selected"]
        fnn_fast.set_backend(self.name)
        try:
            yield
        finally:
            fnn_fast.set_backend(previous)

    def memory_bytes(self, case):
        s = case.shape
        state = 0 if case.op in _INFERENCE_OPS else state_floats(case.rule, s.dim)
        return s.rows * (s.dim + state) * 5  # 4 bytes a float, a quarter more for the rest

    def build(self, model, spec):
        return _FnnFastFM(spec) if model == "fm" else _FnnFastFNN(spec)

    def fm_forward(self, case, data):
        fm = FM(case.shape.rows, case.shape.factors, init_std=INIT_STD).to(data.device).eval()

        def step():
            with torch.inference_mode():
                return fm(data.next().ids)

        return step

    def fm_train_step(self, case, data):
        model = self.build("fm", spec_of(case, data.device))
        return lambda: model.train_step(data.next())

    def fnn_fields_forward(self, case, data):
        fnn = _gather_module(case, data.device, fused=False)

        def step():
            with torch.inference_mode():
                return fnn.input(data.next().ids)

        return step

    def fnn_fields_train(self, case, data):
        fnn = _gather_module(case, data.device, fused=True)
        optimizer = SparseRowOptimizer(
            fnn.embedding_parameters(), case.rule, lr=TABLE_LR[case.rule]
        )
        grad_z = _small_gradient((case.shape.batch, fnn.output.in_features), data.device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            fnn.input(data.next().ids).backward(grad_z)
            optimizer.step()

        return step

    def sparse_update(self, case, data):
        s = case.shape
        grad_rows = _small_gradient((s.batch, s.fields * s.dim), data.device)
        if self.name == "reference":
            return _reference_sparse_update(case, data, grad_rows)
        fnn = _gather_module(case, data.device, fused=True)
        table, fused, rule = fnn.table.detach(), fnn._fused_args(), checks.RULES[case.rule]

        def step():
            library.fnn_fields_backward_update(
                table, data.next().ids, None, None, s.fields, grad_rows, fused.state1,
                fused.state2, fused.step, fused.hparams, rule,
            )  # fmt: skip

        return step


def _small_gradient(shape, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(shape, generator=generator) * 1e-3).to(device)


def _reference_sparse_update(case: Case, data: CaseData, grad_rows: torch.Tensor):
    """The reference update: a sparse COO gradient (what F.embedding(sparse=True) gives),
    coalesced and applied by SparseRowOptimizer."""
    s = case.shape
    table = nn.Parameter(torch.randn(s.rows, s.dim, device=data.device) * INIT_STD)
    optimizer = SparseRowOptimizer([table], case.rule, lr=TABLE_LR[case.rule])
    values = grad_rows.view(-1, s.dim)

    def step():
        ids = data.next().ids.reshape(1, -1)
        table.grad = torch.sparse_coo_tensor(ids, values, table.shape, check_invariants=False)
        optimizer.step()

    return step


_compiled: dict[Callable, Callable] = {}
_compile_failures: dict[str, str] = {}


def _compile(fn: Callable) -> Callable:
    """One compiled function per reference function, shapes dynamic: no recompile per case."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


@contextmanager
def _quiet_compiler():
    """The compiler logs its own tracebacks as warnings when it fails; the record says why."""
    loggers = [logging.getLogger(f"torch.{n}") for n in ("_functorch", "_dynamo", "_inductor")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _fm_loss(table, w0, ids, labels):
    return _bce(reference.fm_forward(table, w0, ids, None, True), labels)


def _fnn_input_train(table, w0, ids):
    return reference.fnn_input(table, w0, ids, None, None, None, True)


class CompiledReference(Contender):
    """The reference functions under torch.compile; a case it cannot compile is skipped with
    the compiler's reason (sparse gradients, on torch 2.13)."""

    name = "compiled"
    ops = frozenset(OPS)

    @contextmanager
    def active(self):
        with FnnFastBackend("reference").active():
            yield

    def _first_call(self, case: Case, step: Callable) -> Callable:
        """Compile now (untimed); remember a failure so later shapes skip at once."""
        if case.op in _compile_failures:
            raise SkipCase(_compile_failures[case.op])
        try:
            with _quiet_compiler():
                step()
        except Exception as error:  # noqa: BLE001 - any compiler failure is a reason to skip
            first = (str(error).strip().splitlines() or [""])[0][:160]
            reason = f"torch.compile cannot run it: {type(error).__name__}: {first}"
            _compile_failures[case.op] = reason
            raise SkipCase(_compile_failures[case.op]) from None
        return step

    def fm_forward(self, case, data):
        fm = FM(case.shape.rows, case.shape.factors, init_std=INIT_STD).to(data.device)
        forward = _compile(reference.fm_forward)

        def step():
            with torch.no_grad():
                return forward(fm.table, fm.w0, data.next().ids, None, False)

        return self._first_call(case, step)

    def fm_train_step(self, case, data):
        fm = FM(case.shape.rows, case.shape.factors, init_std=INIT_STD).to(data.device)
        optimizer = SparseRowOptimizer(fm.parameters(), case.rule, lr=TABLE_LR[case.rule])
        loss = _compile(_fm_loss)

        def step():
            batch = data.next()
            _zero_step([optimizer], lambda: loss(fm.table, fm.w0, batch.ids, batch.labels))

        return self._first_call(case, step)

    def fnn_fields_forward(self, case, data):
        fnn = _gather_module(case, data.device, fused=False)
        forward = _compile(reference.fnn_input)

        def step():
            with torch.no_grad():
                return forward(fnn.table, fnn.w0, data.next().ids, None, None, None, False)

        return self._first_call(case, step)

    def fnn_fields_train(self, case, data):
        fnn = _gather_module(case, data.device, fused=False)
        optimizer = SparseRowOptimizer(
            fnn.embedding_parameters(), case.rule, lr=TABLE_LR[case.rule]
        )
        grad_z = _small_gradient((case.shape.batch, fnn.output.in_features), data.device)
        forward = _compile(_fnn_input_train)

        def step():
            optimizer.zero_grad(set_to_none=True)
            forward(fnn.table, fnn.w0, data.next().ids).backward(grad_z)
            optimizer.step()

        return self._first_call(case, step)

    def sparse_update(self, case, data):
        raise SkipCase(
            "the reference update works on sparse COO gradients, which torch.compile does not "
            "compile"
        )


# --- Peers -----------------------------------------------------------------------------------


def _import(module: str, install: str):
    """The module, or SkipCase saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SkipCase(f"not installed ({error}): pip install {install}") from None


def _reason_if_missing(*modules: str, install: str) -> str | None:
    try:
        for module in modules:
            _import(module, install)
    except SkipCase as missing:
        return str(missing)
    return None


_FBGEMM = "fbgemm_gpu.split_table_batched_embeddings_ops_training"
_FBGEMM_COMMON = "fbgemm_gpu.split_table_batched_embeddings_ops_common"
_FBGEMM_CONFIGS = "fbgemm_gpu.split_embedding_configs"
_FBGEMM_INSTALL = "fbgemm-gpu-cpu==1.8.0 (or fnn-fast[bench])"
FBGEMM_LR = TABLE_LR["rowwise_adagrad"]


def _fbgemm_table(rows: int, fields: int, dim: int, initial: torch.Tensor | None = None):
    """One table shared by the F fields, one id per bag, exact row-wise Adagrad fused into
    backward. FBGEMM needs a row width that is a multiple of 4: the FM reads the first D."""
    tbe = _import(_FBGEMM, _FBGEMM_INSTALL)
    common = _import(_FBGEMM_COMMON, _FBGEMM_INSTALL)
    configs = _import(_FBGEMM_CONFIGS, _FBGEMM_INSTALL)
    width = 4 * ((dim + 3) // 4)
    table = tbe.SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(rows, width, common.EmbeddingLocation.HOST, common.ComputeDevice.CPU)],
        feature_table_map=[0] * fields,
        optimizer=configs.EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=FBGEMM_LR,
        pooling_mode=common.PoolingMode.SUM,
    )
    # FBGEMM starts from zeros, where an FM's factors get no gradient: start as fnn_fast does.
    with torch.no_grad():
        weights = table.split_embedding_weights()[0]
        if initial is None:
            weights[:, 1:dim].normal_(0.0, INIT_STD)
        else:
            weights[:, :dim] = initial
    return table, width


class _FbgemmModel(_Scored):
    def __init__(self, model: str, spec: ModelSpec):
        initial, self.mlp = initial_model(model, spec)
        self.table, self.width = _fbgemm_table(spec.num_features, spec.fields, spec.dim, initial)
        self.factors, self.fields, self.dim = spec.factors, spec.fields, spec.dim
        self.w0 = nn.Parameter(torch.zeros(()))
        self.module = nn.ModuleDict({"table": self.table, "mlp": self.mlp or nn.Identity()})
        # The table's update is fused into its backward; the bias and the MLP need optimizers.
        self.optimizers = [torch.optim.Adagrad([self.w0], lr=FBGEMM_LR)]
        if self.mlp is not None:
            self.optimizers.append(torch.optim.Adam(self.mlp.parameters(), lr=MLP_LR))
        self.offsets: dict[int, torch.Tensor] = {}

    def score(self, batch):
        # FBGEMM's CPU lookup has no kernel outside autograd: no_grad, not inference_mode.
        self.module.eval()
        with torch.no_grad():
            return torch.sigmoid(self.logits(batch))

    def logits(self, batch):
        ids = batch.ids.t().contiguous().flatten()  # FBGEMM takes the ids field by field
        if ids.numel() not in self.offsets:
            self.offsets[ids.numel()] = torch.arange(ids.numel() + 1)
        rows = self.table(ids, self.offsets[ids.numel()]).view(-1, self.fields, self.width)
        if self.mlp is None:
            return _fm_logits(rows, self.w0, self.factors)
        return _fnn_logits(self.mlp, rows[..., : self.dim], self.w0)


class Fbgemm(Contender):
    """FBGEMM's CPU TBE. At op level the ids are laid out field by field beforehand (untimed),
    as in the first CPU-kernel figures; at model level the step lays them out itself."""

    name = "fbgemm"
    kind = "peer"
    ops = frozenset({"fm_forward", "fm_train_step", "fnn_fields_forward", "fnn_fields_train"})
    models = frozenset({"fm", "fnn"})

    def unavailable(self, device):
        if device != "cpu":
            return "fbgemm-gpu-cpu runs on CPU only"
        return _reason_if_missing(_FBGEMM, _FBGEMM_COMMON, _FBGEMM_CONFIGS, install=_FBGEMM_INSTALL)

    def optimizer(self, case):
        return f"exact rowwise_adagrad lr {FBGEMM_LR:g}"

    def memory_bytes(self, case):
        s = case.shape
        return s.rows * (4 * ((s.dim + 3) // 4) + 1) * 4

    def build(self, model, spec):
        return _FbgemmModel(model, spec)

    def _op(self, case, data, train: bool, fm: bool):
        s = case.shape
        table, width = _fbgemm_table(s.rows, s.fields, s.dim)
        w0 = nn.Parameter(torch.zeros(()))
        w0_optimizer = torch.optim.Adagrad([w0], lr=FBGEMM_LR)
        offsets = torch.arange(s.batch * s.fields + 1)
        for batch in data.batches:
            batch.field_major  # noqa: B018 - lay the ids out now, untimed
        grad_z = _small_gradient((s.batch, s.fields * s.dim), data.device)

        def forward(batch):
            rows = table(batch.field_major, offsets).view(s.batch, s.fields, width)
            return _fm_logits(rows, w0, s.factors) if fm else rows[..., : s.dim]

        if not train:

            def step():
                with torch.no_grad():
                    return forward(data.next())

            return step
        if fm:

            def step():
                batch = data.next()
                _zero_step([w0_optimizer], lambda: _bce(forward(batch), batch.labels))

            return step

        def step():
            forward(data.next()).backward(grad_z.view(s.batch, s.fields, s.dim))

        return step

    def fm_forward(self, case, data):
        return self._op(case, data, train=False, fm=True)

    def fm_train_step(self, case, data):
        return self._op(case, data, train=True, fm=True)

    def fnn_fields_forward(self, case, data):
        return self._op(case, data, train=False, fm=False)

    def fnn_fields_train(self, case, data):
        return self._op(case, data, train=True, fm=False)


class _TorchFMModel(_Scored):
    """pytorch-fm's models output probabilities; its examples train them with BCELoss and
    Adam."""

    def __init__(self, model: str, spec: ModelSpec):
        torch.manual_seed(spec.seed)
        dims = list(spec.field_dims)
        if model == "fm":
            cls = _import("torchfm.model.fm", "torchfm").FactorizationMachineModel
            self.module = cls(dims, spec.factors)
        else:
            cls = _import("torchfm.model.fnn", "torchfm").FactorizationSupportedNeuralNetworkModel
            self.module = cls(dims, spec.factors, mlp_dims=spec.hidden, dropout=0.0)
        self.module.to(spec.device)
        self.optimizers = [torch.optim.Adam(self.module.parameters(), lr=PEER_ADAM_LR)]

    def score(self, batch):
        self.module.eval()
        with torch.inference_mode():
            return self.module(batch.local_ids)

    def train_step(self, batch):
        self.module.train()
        loss = lambda: F.binary_cross_entropy(self.module(batch.local_ids), batch.labels)  # noqa: E731
        _zero_step(self.optimizers, loss)


class TorchFM(Contender):
    name = "torchfm"
    kind = "peer"
    models = frozenset({"fm", "fnn"})

    def unavailable(self, device):
        return _reason_if_missing("torchfm.model.fm", "torchfm.model.fnn", install="torchfm")

    def optimizer(self, case):
        return f"dense adam lr {PEER_ADAM_LR:g}"

    def memory_bytes(self, case):
        return 4 * case.shape.rows * case.shape.dim * 4  # weights, dense gradient, Adam's two

    def build(self, model, spec):
        return _TorchFMModel(model, spec)


class _TorchSparseModel(_Scored):
    def __init__(self, model: str, spec: ModelSpec):
        self.factors, self.fields = spec.factors, spec.fields
        initial, self.mlp = initial_model(model, spec)
        self.table = nn.EmbeddingBag.from_pretrained(initial, freeze=False, mode="sum", sparse=True)
        self.w0 = nn.Parameter(torch.zeros((), device=spec.device))
        self.module = nn.ModuleDict({"table": self.table, "mlp": self.mlp or nn.Identity()})
        self.module.to(spec.device)
        dense = [self.w0] + (list(self.mlp.parameters()) if self.mlp else [])
        self.optimizers = [
            torch.optim.SparseAdam(list(self.table.parameters()), lr=PEER_ADAM_LR),
            torch.optim.Adam(dense, lr=PEER_ADAM_LR if self.mlp is None else MLP_LR),
        ]

    def logits(self, batch):
        rows = self.table(batch.ids.reshape(-1, 1)).view(batch.ids.shape[0], self.fields, -1)
        if self.mlp is None:
            return _fm_logits(rows, self.w0, self.factors)
        return _fnn_logits(self.mlp, rows, self.w0)


class TorchSparse(Contender):
    name = "torch-sparse"
    kind = "peer"
    models = frozenset({"fm", "fnn"})

    def optimizer(self, case):
        return f"SparseAdam lr {PEER_ADAM_LR:g}"

    def memory_bytes(self, case):
        return 3 * case.shape.rows * case.shape.dim * 4  # weights and SparseAdam's two

    def build(self, model, spec):
        return _TorchSparseModel(model, spec)


# --- Bounds ----------------------------------------------------------------------------------


class GatherBound(Contender):
    name = "index_select"
    kind = "bound"
    ops = frozenset(OPS)
    trains = False

    def optimizer(self, case):
        return None

    def setup(self, case, data):
        s = case.shape
        if data.device == "cpu":  # allocated as fnn_fast's modules allocate theirs
            table = table_zeros(s.rows, s.dim).normal_()
        else:
            table = torch.randn(s.rows, s.dim, device=data.device)
        return lambda: torch.index_select(table, 0, data.next().ids.flatten())


class _BareMLP(_Scored):
    def __init__(self, spec: ModelSpec):
        torch.manual_seed(spec.seed)
        fnn = FNN(spec.fields, spec.fields, spec.factors, spec.hidden)  # its layers only
        self.module = nn.Sequential(fnn.hidden_layers, fnn.output).to(spec.device)
        self.optimizers = [torch.optim.Adam(self.module.parameters(), lr=MLP_LR)]
        self.width, self.device = 1 + spec.fields * spec.dim, spec.device  # the FNN's z
        self.inputs: dict[int, torch.Tensor] = {}

    def logits(self, batch):
        rows = batch.ids.shape[0]
        if rows not in self.inputs:
            self.inputs[rows] = torch.randn(rows, self.width, device=self.device)
        return self.module(self.inputs[rows]).squeeze(-1)


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


def all_contenders() -> list[Contender]:
    """In the order the table lists them."""
    backends = [FnnFastBackend(n) for n in ("reference", "native", "triton", "cuda")]
    return [
        backends[0],
        CompiledReference(),
        *backends[1:],
        Fbgemm(),
        TorchFM(),
        TorchSparse(),
        GatherBound(),
        MlpOnly(),
    ]


CONTENDER_NAMES = tuple(c.name for c in all_contenders())
