"""The Triton kernels against the reference: FM forward, FNN gather, and the backward fused with
every optimizer rule (tables and optimizer states after several steps).

Without a GPU the kernels run on CPU tensors through Triton's interpreter (tests/conftest.py
sets TRITON_INTERPRET=1 before anything imports them), so shapes stay small. With a GPU the
same tests run on CUDA tensors, and the tests at the end train FM and FNN modules on CUDA
through the ops.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # as conftest.py; for a lone import of this file

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import fnn_fast  # noqa: E402
from fnn_fast import FM, FNN, SparseRowOptimizer  # noqa: E402
from fnn_fast.ops import checks, cpu, gpu, library, reference  # noqa: E402
from fnn_fast.ops import triton as triton_ops  # noqa: E402
from fnn_fast.optim import OPTIMIZERS, RowUpdate  # noqa: E402

pytestmark = pytest.mark.skipif(
    not triton_ops.available(),
    reason=f"the Triton kernels cannot run here: {triton_ops.UNAVAILABLE_REASON}",
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
W0 = 0.1
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every torch.empty comes back full of NaN (floats) or a huge value (ints): an output
    element, or a partial sum, that a kernel leaves unwritten fails the comparison."""
    empty = torch.empty

    def poisoned(*args, **kwargs):
        tensor = empty(*args, **kwargs)
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
        elif tensor.dtype in (torch.int32, torch.int64):
            tensor.fill_(2**30)
        return tensor

    monkeypatch.setattr(torch, "empty", poisoned)


def make_batch(batch, slots, rows, seed, with_values=True, hot=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, rows, (batch, slots), generator=g)
    if hot and batch and slots:
        ids[:, 0] = 3  # one hot row hit by every sample
        ids[::2, -1] = 3  # and twice by some
    values = torch.rand(batch, slots, generator=g) + 0.5 if with_values else None
    labels = torch.randint(0, 2, (batch,), generator=g).float()
    return (
        ids.to(DEVICE),
        None if values is None else values.to(DEVICE),
        labels.to(DEVICE),
    )


def random_table(rows, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, dim, generator=g) * 0.3).to(DEVICE)


def assert_close_to_exact(got, exact, rounded):
    """float32 sums round differently: allow twice the float32 reference's own error."""
    assert got.shape == exact.shape
    if got.numel():
        error = (got.double() - exact).abs().max()
        assert error <= 2 * (rounded.double() - exact).abs().max() + 1e-5, error


# --- forward -----------------------------------------------------------------------------------

SHAPES = [(1, 1, 2), (0, 4, 3), (13, 7, 6), (9, 3, 17), (4, 0, 3)]  # batch, slots, D = 1 + K


@pytest.mark.parametrize("batch,slots,dim", SHAPES)
@pytest.mark.parametrize("with_values", [True, False])
def test_fm_forward(batch, slots, dim, with_values):
    table = random_table(40, dim, seed=dim)
    ids, values, _ = make_batch(batch, slots, 40, seed=batch + slots, with_values=with_values)
    sums = torch.empty(batch, dim - 1, device=DEVICE)
    logits = triton_ops.fm_forward(table, ids, values, sums)
    w0 = torch.tensor(0.0, device=DEVICE)
    exact_values = None if values is None else values.double()
    exact = reference.fm_forward(table.double(), w0.double(), ids, exact_values)
    assert_close_to_exact(logits, exact, reference.fm_forward(table, w0, ids, values))
    x = torch.ones(batch, slots, device=DEVICE) if values is None else values
    expected_sums = (x.unsqueeze(-1) * table[ids][..., 1:]).sum(dim=1)
    torch.testing.assert_close(sums, expected_sums, atol=1e-5, rtol=1e-5)
    inference = triton_ops.fm_forward(table, ids, values, None)
    torch.testing.assert_close(inference, logits, atol=0, rtol=0)


@pytest.mark.parametrize("batch,slots,dim", SHAPES)
@pytest.mark.parametrize("with_values", [True, False])
def test_fnn_fields(batch, slots, dim, with_values):
    table = random_table(30, dim, seed=dim)
    ids, values, _ = make_batch(batch, slots, 30, seed=7, with_values=with_values)
    z = triton_ops.fnn_fields(table, ids, values, None, slots)
    expected = reference.fnn_input(table, torch.tensor(0.0, device=DEVICE), ids, values)[:, 1:]
    torch.testing.assert_close(z, expected, atol=0, rtol=0)


@pytest.mark.parametrize("with_values", [True, False])
def test_fnn_fields_multi_valued_fields(with_values):
    table = random_table(50, 5, seed=1)
    ids, values, _ = make_batch(9, 6, 50, seed=1, with_values=with_values)
    # Field 1 has three slots, field 3 none (its block must be zeros), field 4 the last slot.
    slot_fields = torch.tensor([1, 0, 1, 2, 1, 4], device=DEVICE)
    z = triton_ops.fnn_fields(table, ids, values, slot_fields, 5)
    w0 = torch.tensor(0.0, device=DEVICE)
    expected = reference.fnn_input(table, w0, ids, values, slot_fields, 5)[:, 1:]
    torch.testing.assert_close(z, expected, atol=1e-6, rtol=1e-6)
    assert torch.all(z[:, 3 * 5 : 4 * 5] == 0)


def test_out_of_range_ids_read_nothing():
    """Callers check ids; the kernels still never read outside the table: a bad id adds
    nothing (as if its value were 0)."""
    table = random_table(10, 4, seed=3)
    ids = torch.tensor([[1, 10, 2], [-1, 4, 5]], device=DEVICE)
    values = torch.rand(2, 3, device=DEVICE) + 0.5
    bad = (ids < 0) | (ids >= 10)
    kept_ids, kept_values = ids.clamp(0, 9), values.masked_fill(bad, 0.0)
    logits = triton_ops.fm_forward(table, ids, values, None)
    torch.testing.assert_close(logits, triton_ops.fm_forward(table, kept_ids, kept_values, None))
    z = triton_ops.fnn_fields(table, ids, values, None, 3)
    torch.testing.assert_close(z, triton_ops.fnn_fields(table, kept_ids, kept_values, None, 3))


# --- backward fused with the optimizer -----------------------------------------------------------


def grad_of(logits, labels):
    """dL/dlogits of the mean binary cross-entropy."""
    logits = logits.detach().requires_grad_(True)
    F.binary_cross_entropy_with_logits(logits, labels).backward()
    return logits.grad


class Trainer:
    """The same table trained by the reference (sparse gradient + SparseRowOptimizer) and by the
    Triton kernels (backward fused with the update)."""

    def __init__(self, kind, table):
        self.rule = RowUpdate(kind, lr=0.1 if kind != "adam" else 0.02, weight_decay=0.01)
        self.reference = torch.nn.Parameter(table.clone())
        self.optimizer = SparseRowOptimizer(
            [self.reference], kind, lr=self.rule.lr, weight_decay=self.rule.weight_decay
        )
        self.table = table.clone()
        self.state1, self.state2 = self.rule.new_state(self.table)
        self.hparams = tuple(self.rule.hparams().tolist())
        self.code = checks.RULES[kind]
        self.steps = 0

    def update(self, backward, *args, window):
        self.steps += 1
        backward(
            self.table, *args, self.state1, self.state2, self.hparams, self.code, self.steps,
            window=window,
        )  # fmt: skip

    def compare(self):
        torch.testing.assert_close(self.table, self.reference.detach(), atol=2e-5, rtol=1e-4)
        state = self.optimizer.state[self.reference]
        assert state["step"] == self.steps
        if self.rule.kind in ("adagrad", "rowwise_adagrad"):
            torch.testing.assert_close(self.state1, state["sum"], atol=1e-6, rtol=1e-4)
        if self.rule.kind == "adam":
            torch.testing.assert_close(self.state1, state["exp_avg"], atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(self.state2, state["exp_avg_sq"], atol=1e-8, rtol=1e-4)


def batches(slots, rows, with_values):
    # Several steps, then a batch of one and an empty batch.
    sizes = [(16, 0), (11, 1), (1, 3), (0, 4)]
    return [make_batch(b, slots, rows, seed, with_values) for b, seed in sizes]


@pytest.mark.parametrize("kind", OPTIMIZERS)
# window 4: the hot row's run spans many windows; None: the default (one window here)
@pytest.mark.parametrize("with_values,window", [(True, 4), (False, 4), (True, None)])
def test_fm_backward_update_matches_reference(kind, with_values, window):
    rows, dim = 20, 6
    trainer = Trainer(kind, random_table(rows, dim, seed=11))
    w0 = torch.tensor(W0, device=DEVICE)
    for ids, values, labels in batches(5, rows, with_values):
        trainer.optimizer.zero_grad()
        expected = reference.fm_forward(trainer.reference, w0, ids, values)
        F.binary_cross_entropy_with_logits(expected, labels).backward()
        trainer.optimizer.step()

        sums = torch.empty(ids.shape[0], dim - 1, device=DEVICE)
        logits = W0 + triton_ops.fm_forward(trainer.table, ids, values, sums)
        torch.testing.assert_close(logits, expected.detach(), atol=1e-5, rtol=1e-5)
        trainer.update(
            triton_ops.fm_backward_update, ids, values, sums, grad_of(logits, labels),
            window=window,
        )  # fmt: skip
    trainer.compare()


def fnn_loss(z, labels, head):
    return F.binary_cross_entropy_with_logits(z @ head, labels)


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize(
    "with_values,slot_fields",
    [(True, None), (False, [0, 1, 1, 2, 4]), (True, [0, 1, 1, 2, 4])],  # field 3: no slot
)
def test_fnn_backward_update_matches_reference(kind, with_values, slot_fields):
    rows, dim, slots = 20, 4, 5
    fields = slots if slot_fields is None else 5
    if slot_fields is not None:
        slot_fields = torch.tensor(slot_fields, device=DEVICE)
    trainer = Trainer(kind, random_table(rows, dim, seed=12))
    w0 = torch.tensor(W0, device=DEVICE)
    head = torch.randn(1 + fields * dim, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for ids, values, labels in batches(slots, rows, with_values):
        trainer.optimizer.zero_grad()
        z = reference.fnn_input(trainer.reference, w0, ids, values, slot_fields, fields)
        fnn_loss(z, labels, head).backward()
        trainer.optimizer.step()

        got = triton_ops.fnn_fields(trainer.table, ids, values, slot_fields, fields)
        torch.testing.assert_close(got, z[:, 1:].detach(), atol=1e-6, rtol=1e-6)
        got = got.requires_grad_(True)
        fnn_loss(torch.cat([w0.expand(got.shape[0], 1), got], dim=1), labels, head).backward()
        trainer.update(
            triton_ops.fnn_fields_backward_update, ids, values, slot_fields, fields, got.grad,
            window=4,
        )  # fmt: skip
    trainer.compare()


@pytest.mark.parametrize("kind", ["rowwise_adagrad", "adam"])
def test_hot_row_across_many_windows(kind):
    """A row in 3 of every 4 lookups: its run spans more windows than the combine kernel sums
    in one block (64), so every part of the split path runs; rows around it too."""
    rows, dim = 12, 5
    trainer = Trainer(kind, random_table(rows, dim, seed=13))
    ids, values, labels = make_batch(48, 4, rows, seed=21)
    ids[:, 1:] = 5
    w0 = torch.tensor(W0, device=DEVICE)
    trainer.optimizer.zero_grad()
    F.binary_cross_entropy_with_logits(
        reference.fm_forward(trainer.reference, w0, ids, values), labels
    ).backward()
    trainer.optimizer.step()
    sums = torch.empty(48, dim - 1, device=DEVICE)
    logits = W0 + triton_ops.fm_forward(trainer.table, ids, values, sums)
    trainer.update(
        triton_ops.fm_backward_update, ids, values, sums, grad_of(logits, labels), window=2
    )
    trainer.compare()


def test_out_of_range_ids_update_nothing():
    table = random_table(10, 4, seed=4)
    ids = torch.tensor([[1, 10, 2], [-1, 1, 5]], device=DEVICE)
    values = torch.rand(2, 3, device=DEVICE) + 0.5
    kept_values = values.masked_fill((ids < 0) | (ids >= 10), 0.0)
    sums = torch.empty(2, 3, device=DEVICE)
    triton_ops.fm_forward(table, ids, values, sums)
    grad = torch.randn(2, device=DEVICE)
    results = []
    for x in (values, kept_values):
        updated = table.clone()
        empty = torch.zeros(0, device=DEVICE)
        triton_ops.fm_backward_update(
            updated, ids.clamp(0, 9) if x is kept_values else ids, x, sums, grad, empty, empty,
            (0.1, 0.0, 1e-10, 0.9, 0.999), 0, 1, window=2,
        )  # fmt: skip
        results.append(updated)
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)


# --- the CUDA dispatch ---------------------------------------------------------------------------


@pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")
@pytest.mark.skipif(
    not triton_ops.INTERPRETED, reason="runs CUDA-dispatch code on CPU tensors: interpreter only"
)
def test_gpu_dispatch_matches_cpu_ops(monkeypatch):
    """The functions registered for CUDA tensors (step count, hyperparameters, buffers), run on
    CPU tensors through the Triton module, against the CPU ops."""
    monkeypatch.setattr(gpu, "_kernels", lambda: triton_ops)
    rule = RowUpdate("adam", lr=0.05, weight_decay=0.01)
    table = random_table(30, 5, seed=5).cpu()
    ids, values, labels = (t.cpu() for t in make_batch(12, 4, 30, seed=6))
    hparams, code = rule.hparams(), checks.RULES["adam"]
    results = []
    for implementation in ("cpu", "gpu"):
        updated = table.clone()
        state1, state2 = rule.new_state(updated)
        step = torch.tensor(2)
        if implementation == "cpu":
            train_forward, backward = library.fm_forward_train, library.fm_backward_update
        else:
            train_forward, backward = gpu.fm_forward_train, gpu.fm_backward_update
        logits, sums = train_forward(updated, ids, values, state1, state2, step, hparams, code)
        backward(
            updated, ids, values, sums, grad_of(logits, labels), state1, state2, step, hparams,
            code,
        )  # fmt: skip
        if implementation == "cpu":
            gather_backward = library.fnn_fields_backward_update
            z = library.fnn_fields_train(updated, ids, values, None, 4, state1, state2, step,
                                         hparams, code)  # fmt: skip
        else:
            gather_backward = gpu.fnn_fields_backward_update
            z = gpu.fnn_fields_train(updated, ids, values, None, 4, state1, state2, step,
                                     hparams, code)  # fmt: skip
        gather_backward(updated, ids, values, None, 4, torch.ones_like(z), state1, state2, step,
                        hparams, code)  # fmt: skip
        results.append((logits, sums, z, updated, state1, state2, step))
    for on_cpu, on_gpu in zip(*results, strict=True):
        torch.testing.assert_close(on_gpu, on_cpu, atol=2e-5, rtol=1e-4)
    assert int(results[1][-1]) == 4


def test_package_works_without_triton():
    script = """
import sys
sys.modules["triton"] = None  # as if triton were not installed
import torch, fnn_fast
from fnn_fast.ops import triton as triton_ops
assert not triton_ops.available() and "not installed" in triton_ops.UNAVAILABLE_REASON
assert "triton" not in fnn_fast.backends()["available"]
try:
    triton_ops.fm_forward(torch.zeros(3, 2), torch.zeros(1, 1, dtype=torch.int64), None, None)
except RuntimeError as error:
    assert "unavailable" in str(error)
else:
    raise AssertionError("no error")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


COMPILE_FOR_SM90 = """
import os
os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not interpreted ones
from triton import compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fnn_fast.ops.triton import fm, gather, sparse_update

INTS = {"keys_ptr": "*i32", "order_ptr": "*i64", "ids_ptr": "*i64", "slot_fields_ptr": "*i64",
        "field_slots_ptr": "*i64", "field_starts_ptr": "*i64", "field_counts_ptr": "*i64"}
FLOATS = {"lr", "weight_decay", "eps", "beta1", "beta2", "step_size"}

def sm90(kernel, num_warps, **constexprs):
    signature = {
        name: "constexpr" if name in constexprs
        else INTS.get(name, "*fp32") if name.endswith("_ptr")
        else "fp32" if name in FLOATS
        else "i32"
        for name in kernel.arg_names
    }
    compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
            options={"num_warps": num_warps})

sm90(fm._fm_forward_kernel, 4, HAS_VALUES=True, STORE_SUMS=True, BLOCK_B=4, BLOCK_S=32,
     BLOCK_D=16)
sm90(gather._fnn_fields_kernel, 4, HAS_VALUES=True, GROUPED=True, BLOCK_B=4, BLOCK_F=32,
     BLOCK_D=16)
sm90(sparse_update._window_update_kernel, 8, FM=True, HAS_VALUES=True, HAS_SLOT_FIELDS=False,
     RULE=3, WINDOW=128, BLOCK_D=16)
sm90(sparse_update._window_update_kernel, 8, FM=False, HAS_VALUES=False, HAS_SLOT_FIELDS=True,
     RULE=2, WINDOW=128, BLOCK_D=16)
sm90(sparse_update._combine_kernel, 1, FM=True, RULE=3, WINDOW=128, BLOCK_W=64, BLOCK_D=16)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernels")
def test_kernels_compile_for_the_h200():
    """The interpreter does not lower kernels: compile them for sm_90 (Triton ships ptxas, no
    GPU needed) so that a construct the GPU compiler rejects fails here, not on the GPU."""
    command = [sys.executable, "-c", COMPILE_FOR_SM90]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_backends_report():
    info = fnn_fast.backends()
    assert set(info["gpu_errors"]) == {"cuda", "triton"}
    if not torch.cuda.is_available():
        assert info["cuda_tensors"] == "reference"
        assert info["gpu_errors"]["triton"] == "no CUDA device"
        with pytest.raises(RuntimeError, match="triton backend unavailable"):
            fnn_fast.set_backend("triton")
        assert fnn_fast.backends()["selected"] == "auto"


def train_modules(make_model, rule, device, backend, steps=3):
    torch.manual_seed(0)
    model = make_model().fuse_update(rule).to(device)  # the state moves, step and hparams not
    fnn_fast.set_backend(backend)
    try:
        dense = torch.optim.SGD([p for n, p in model.named_parameters() if n != "table"], 0.05)
        for seed in range(steps):
            ids, values, labels = (t.to(device) for t in make_batch(64, 6, 200, seed=seed))
            dense.zero_grad()
            F.binary_cross_entropy_with_logits(model(ids, values), labels).backward()
            assert model.table.grad is None  # updated inside backward
            dense.step()
    finally:
        fnn_fast.set_backend("auto")
    return model


@needs_gpu
@pytest.mark.parametrize("model_kind", ["fm", "fnn"])
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_modules_on_cuda_match_cpu(model_kind, kind):
    def make():
        if model_kind == "fm":
            return FM(200, 10, init_std=0.2)
        return FNN(200, 5, 10, hidden=(16,), slot_fields=[0, 1, 1, 2, 3, 4], init_std=0.2)

    rule = RowUpdate(kind, lr=0.05 if kind != "adam" else 0.01, weight_decay=0.01)
    on_cpu = train_modules(make, rule, "cpu", "auto")
    on_gpu = train_modules(make, rule, "cuda", "triton")
    assert on_gpu.update_step.device.type == "cpu"  # read by the host without a sync
    for (name, a), (_, b) in zip(on_cpu.named_parameters(), on_gpu.named_parameters(), strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=5e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(on_gpu.update_state1.cpu(), on_cpu.update_state1, atol=1e-5,
                               rtol=1e-4)  # fmt: skip


@needs_gpu
def test_torch_compile_on_cuda_matches_eager():
    def make():
        return FNN(200, 6, 10, hidden=(16,), init_std=0.2)

    rule = RowUpdate("rowwise_adagrad", lr=0.1)
    results = []
    fnn_fast.set_backend("triton")
    try:
        for compiled in (False, True):
            torch.manual_seed(0)
            model = make().cuda().fuse_update(rule)

            def loss_of(ids, values, labels, model=model):
                return F.binary_cross_entropy_with_logits(model(ids, values), labels)

            step = torch.compile(loss_of, fullgraph=True) if compiled else loss_of
            for seed in range(3):
                ids, values, labels = (t.cuda() for t in make_batch(64, 6, 200, seed=seed))
                step(ids, values, labels).backward()
            results.append((model.table.detach().clone(), model.update_state1.clone()))
    finally:
        fnn_fast.set_backend("auto")
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-5)


@needs_gpu
def test_opcheck_on_cuda():
    fnn_fast.set_backend("triton")
    try:
        table = random_table(30, 4, seed=8)
        ids, values, _ = make_batch(6, 3, 30, seed=2)
        rule = RowUpdate("adam", lr=0.01)
        s1, s2 = rule.new_state(table)
        step, hp, code = torch.zeros((), dtype=torch.int64), rule.hparams(), checks.RULES["adam"]
        torch.library.opcheck(library.fm_forward, (table, ids, values))
        torch.library.opcheck(library.fnn_fields, (table, ids, values, None, 3))
        logits, sums = library.fm_forward_train(table, ids, values, s1, s2, step, hp, code)
        torch.library.opcheck(
            library.fm_backward_update,
            (table.clone(), ids, values, sums, torch.randn(6, device=DEVICE), s1.clone(),
             s2.clone(), step.clone(), hp, code),
        )  # fmt: skip
        torch.library.opcheck(
            library.fnn_fields_backward_update,
            (table.clone(), ids, values, None, 3, torch.randn(6, 12, device=DEVICE), s1.clone(),
             s2.clone(), step.clone(), hp, code),
        )  # fmt: skip
    finally:
        fnn_fast.set_backend("auto")
