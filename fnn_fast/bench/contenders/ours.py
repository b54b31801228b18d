"""fnn_fast's own contenders: its backends, through its public modules and ops with
:func:`fnn_fast.set_backend` (``reference``: eager PyTorch; ``native``: the C++ CPU kernels;
``triton`` and ``cuda``: the GPU kernels, when :func:`fnn_fast.backends` lists them), and the
reference functions under ``torch.compile`` three ways a user would try: ``compiled``
(``dynamic=True``: one graph for every shape), ``compiled-static`` (``dynamic=False``: a graph
per shape, the default mode) and ``compiled-autotune`` (``dynamic=False``,
``mode="max-autotune-no-cudagraphs"``). The table update is the case's rule (row-wise Adagrad
unless named), fused into backward where the backend can."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

import fnn_fast
from fnn_fast import FM, FNN, SparseRowOptimizer
from fnn_fast.bench.cases import OPS, Case
from fnn_fast.bench.contenders.base import (
    INFERENCE_OPS,
    INIT_STD,
    MLP_LR,
    TABLE_LR,
    Contender,
    ModelSpec,
    Scored,
    SkipCase,
    bce,
    small_gradient,
    spec_of,
    zero_step,
)
from fnn_fast.bench.shapes import CaseData
from fnn_fast.bench.traffic import state_floats
from fnn_fast.ops import checks, library, reference
from fnn_fast.optim import RowUpdate


class _FnnFastFM(Scored):
    def __init__(self, spec: ModelSpec):
        torch.manual_seed(spec.seed)
        self.module = FM(spec.num_features, spec.factors, init_std=INIT_STD)
        lr = TABLE_LR[spec.rule]
        self.module.fuse_update(RowUpdate(spec.rule, lr)).to(spec.device)
        self.optimizers = [SparseRowOptimizer(self.module.parameters(), spec.rule, lr=lr)]

    def logits(self, batch):
        return self.module(batch.ids)


class _FnnFastFNN(Scored):
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


def gather_module(case: Case, device: str, fused: bool) -> FNN:
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
            if self.name != "reference" and fnn_fast.backends()["active"] != self.name:
                raise RuntimeError(
                    f"fnn_fast.set_backend({self.name!r}) left {fnn_fast.backends()['active']!r} "
                    "active: refusing to time another path under this name"
                )
            yield
        finally:
            fnn_fast.set_backend(previous)

    def memory_bytes(self, case):
        s = case.shape
        state = 0 if case.op in INFERENCE_OPS else state_floats(case.rule, s.dim)
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
        fnn = gather_module(case, data.device, fused=False)

        def step():
            with torch.inference_mode():
                return fnn.input(data.next().ids)

        return step

    def fnn_fields_train(self, case, data):
        fnn = gather_module(case, data.device, fused=True)
        optimizer = SparseRowOptimizer(
            fnn.embedding_parameters(), case.rule, lr=TABLE_LR[case.rule]
        )
        grad_z = small_gradient((case.shape.batch, fnn.output.in_features), data.device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            fnn.input(data.next().ids).backward(grad_z)
            optimizer.step()

        return step

    def sparse_update(self, case, data):
        s = case.shape
        grad_rows = small_gradient((s.batch, s.fields * s.dim), data.device)
        if self.name == "reference":
            return _reference_sparse_update(case, data, grad_rows)
        fnn = gather_module(case, data.device, fused=True)
        table, fused, rule = fnn.table.detach(), fnn._fused_args(), checks.RULES[case.rule]

        def step():
            library.fnn_fields_backward_update(
                table, data.next().ids, None, None, s.fields, grad_rows, fused.state1,
                fused.state2, fused.step, fused.hparams, rule,
            )  # fmt: skip

        return step


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


_compiled: dict[tuple, Callable] = {}
_compile_failures: dict[tuple, str] = {}
# A graph per shape (dynamic=False) recompiles for each case's shape: allow that many, and fail
# loudly rather than fall back to eager (which would be timed under the compiled name).
_RECOMPILES = 64


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
    return bce(reference.fm_forward(table, w0, ids, None, True), labels)


def _fnn_input_train(table, w0, ids):
    return reference.fnn_input(table, w0, ids, None, None, None, True)


class CompiledReference(Contender):
    """The reference functions under torch.compile; a case it cannot compile is skipped with
    the compiler's reason (sparse gradients, on torch 2.13)."""

    ops = frozenset(OPS)

    def __init__(self, name: str, dynamic: bool, mode: str | None = None):
        self.name, self.dynamic, self.mode = name, dynamic, mode

    def optimizer(self, case):
        settings = f"torch.compile(dynamic={self.dynamic}, mode={self.mode or 'default'})"
        if case.op in INFERENCE_OPS:
            return settings
        return f"{case.rule} lr {TABLE_LR[case.rule]:g}; {settings}"

    @contextmanager
    def active(self):
        config = torch._dynamo.config
        saved = config.recompile_limit, config.fail_on_recompile_limit_hit
        config.recompile_limit, config.fail_on_recompile_limit_hit = _RECOMPILES, True
        try:
            with FnnFastBackend("reference").active():
                yield
        finally:
            config.recompile_limit, config.fail_on_recompile_limit_hit = saved

    def _compile(self, fn: Callable) -> Callable:
        """One compiled function per reference function and setting."""
        key = (fn, self.dynamic, self.mode)
        if key not in _compiled:
            _compiled[key] = torch.compile(fn, dynamic=self.dynamic, mode=self.mode)
        return _compiled[key]

    def _first_call(self, case: Case, step: Callable) -> Callable:
        """Compile now (untimed); remember a failure so later shapes skip at once."""
        key = (case.op, self.dynamic, self.mode)
        if key in _compile_failures:
            raise SkipCase(_compile_failures[key])
        try:
            with _quiet_compiler():
                step()
        except Exception as error:  # noqa: BLE001 - any compiler failure is a reason to skip
            first = (str(error).strip().splitlines() or [""])[0][:160]
            _compile_failures[key] = f"torch.compile cannot run it: {type(error).__name__}: {first}"
            raise SkipCase(_compile_failures[key]) from None
        return step

    def fm_forward(self, case, data):
        fm = FM(case.shape.rows, case.shape.factors, init_std=INIT_STD).to(data.device)
        forward = self._compile(reference.fm_forward)

        def step():
            with torch.no_grad():
                return forward(fm.table, fm.w0, data.next().ids, None, False)

        return self._first_call(case, step)

    def fm_train_step(self, case, data):
        fm = FM(case.shape.rows, case.shape.factors, init_std=INIT_STD).to(data.device)
        optimizer = SparseRowOptimizer(fm.parameters(), case.rule, lr=TABLE_LR[case.rule])
        loss = self._compile(_fm_loss)

        def step():
            batch = data.next()
            zero_step([optimizer], lambda: loss(fm.table, fm.w0, batch.ids, batch.labels))

        return self._first_call(case, step)

    def fnn_fields_forward(self, case, data):
        fnn = gather_module(case, data.device, fused=False)
        forward = self._compile(reference.fnn_input)

        def step():
            with torch.no_grad():
                return forward(fnn.table, fnn.w0, data.next().ids, None, None, None, False)

        return self._first_call(case, step)

    def fnn_fields_train(self, case, data):
        fnn = gather_module(case, data.device, fused=False)
        optimizer = SparseRowOptimizer(
            fnn.embedding_parameters(), case.rule, lr=TABLE_LR[case.rule]
        )
        grad_z = small_gradient((case.shape.batch, fnn.output.in_features), data.device)
        forward = self._compile(_fnn_input_train)

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
