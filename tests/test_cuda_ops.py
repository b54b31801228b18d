"""The CUDA C++ kernels (fnn_fast.ops.cuda) against the pure PyTorch reference: forward outputs,
the fused backward + update (tables and optimizer states after several steps, every rule), odd
shapes, multi-valued fields, duplicate and hot ids (runs longer than a block's share), batch 1,
empty batch, determinism. Skipped, with the reason, where the kernels cannot run."""

import math

import pytest
import torch
import torch.nn.functional as F

import fnn_fast
from fnn_fast import FM, FNN, SparseRowOptimizer
from fnn_fast.ops import cuda, reference
from fnn_fast.optim import OPTIMIZERS, RowUpdate

requires_cuda = pytest.mark.skipif(
    not cuda.available(), reason=f"CUDA kernels unavailable: {cuda.UNAVAILABLE_REASON}"
)
DEVICE = "cuda"


def test_availability_is_explained():
    """Runs everywhere: either the kernels run, or the reason they cannot is given."""
    if cuda.available():
        assert cuda.UNAVAILABLE_REASON is None
    else:
        assert isinstance(cuda.UNAVAILABLE_REASON, str) and cuda.UNAVAILABLE_REASON


def batch_of(batch, slots, rows, seed, with_values=True, hot=True, hot_row=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, rows, (batch, slots), generator=g)
    if hot and batch:
        ids[:, 0] = hot_row  # one hot row hit by every sample
        ids[::2, -1] = hot_row  # and twice by some
    values = torch.rand(batch, slots, generator=g) + 0.5 if with_values else None
    return ids.to(DEVICE), None if values is None else values.to(DEVICE)


def poison_next_allocation(numel):
    """Fill a block of the caching allocator with NaN and free it: the kernel's output, allocated
    next with the same size, most likely lands there, so an element it fails to write shows."""
    torch.full((max(numel, 1),), math.nan, device=DEVICE)


def assert_close_to_reference(got, table, ids, values, op, **kw):
    """float32 sums round differently: allow twice the reference's own error against float64."""
    w0 = torch.zeros((), device=DEVICE)
    exact = op(table.double(), w0.double(), ids, None if values is None else values.double(), **kw)
    ref_error = (op(table, w0, ids, values, **kw).double() - exact).abs()
    assert got.shape == exact.shape
    assert torch.isfinite(got).all()
    if got.numel():
        assert (got.double() - exact).abs().max() <= 2 * ref_error.max() + 1e-5


# (batch, slots, K). K = 10 (dim 11) is the Criteo shape. Dims 4, 8, 16, 64 take the 16-byte
# vector path with groups of 1 to 16 lanes, dims 256 and 384 with two and four chunks a lane;
# dims 2, 6, 11 the scalar path with groups of 2 to 16 lanes, dims 41 and 101 two and four chunks.
SHAPES = [(1, 1, 1), (0, 4, 3), (33, 7, 5), (64, 39, 10), (17, 16, 7), (40, 3, 15), (9, 5, 63),
          (6, 3, 255), (3, 2, 383), (4, 3, 40), (5, 4, 100), (2, 3, 3)]  # fmt: skip


@requires_cuda
@pytest.mark.parametrize("batch,slots,factors", SHAPES)
@pytest.mark.parametrize("with_values", [True, False])
def test_fm_forward(batch, slots, factors, with_values):
    table = torch.randn(500, 1 + factors, device=DEVICE)
    ids, values = batch_of(batch, slots, 500, seed=batch + slots, with_values=with_values)
    sums = torch.full((batch, factors), math.nan, device=DEVICE)
    poison_next_allocation(batch)
    logits = cuda.fm_forward(table, ids, values, sums)
    assert_close_to_reference(logits, table, ids, values, reference.fm_forward)
    x = torch.ones_like(ids, dtype=torch.float32) if values is None else values
    expected_sums = (x.double().unsqueeze(-1) * table.double()[ids][..., 1:]).sum(dim=1)
    torch.testing.assert_close(sums.double(), expected_sums, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cuda.fm_forward(table, ids, values, None), logits, rtol=0, atol=0)


def fnn_reference(table, ids, values, **kw):
    """The FNN input without its w0 column."""
    w0 = torch.zeros((), device=table.device)
    return reference.fnn_input(table, w0, ids, values, **kw)[:, 1:]


@requires_cuda
@pytest.mark.parametrize("batch,slots,factors", SHAPES)
def test_fnn_fields(batch, slots, factors):
    table = torch.randn(300, 1 + factors, device=DEVICE)
    ids, values = batch_of(batch, slots, 300, seed=7)
    poison_next_allocation(batch * slots * (1 + factors))
    z = cuda.fnn_fields(table, ids, values, None, slots)
    torch.testing.assert_close(z, fnn_reference(table, ids, values))


@requires_cuda
@pytest.mark.parametrize("factors", [3, 10, 15])
def test_fnn_fields_multi_valued_and_empty_fields(factors):
    table = torch.randn(50, 1 + factors, device=DEVICE)
    ids, values = batch_of(9, 5, 50, seed=1)
    # Field 0 has two slots out of order, field 2 two adjacent ones; fields 1 and 4 have none.
    slot_fields = torch.tensor([2, 0, 2, 3, 0], device=DEVICE)
    poison_next_allocation(9 * 5 * (1 + factors))
    z = cuda.fnn_fields(table, ids, values, slot_fields, 5)
    expected = fnn_reference(table, ids, values, slot_fields=slot_fields, num_fields=5)
    torch.testing.assert_close(z, expected)
    assert (z.view(9, 5, -1)[:, [1, 4]] == 0).all()


@requires_cuda
def test_rows_too_wide_are_refused():
    table = torch.randn(10, 201, device=DEVICE)  # 201 floats: neither <= 128 nor a multiple of 4
    ids = torch.zeros(2, 3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="not supported"):
        cuda.fm_forward(table, ids, None, None)


@requires_cuda
def test_bad_inputs_raise():
    table = torch.randn(10, 4, device=DEVICE)
    with pytest.raises(ValueError, match="ids"):
        cuda.fm_forward(table, torch.zeros(2, 3, dtype=torch.int32, device=DEVICE), None, None)
    with pytest.raises(ValueError, match="table"):
        cuda.fm_forward(table.double(), torch.zeros(2, 3, dtype=torch.int64, device=DEVICE),
                        None, None)  # fmt: skip
    with pytest.raises(ValueError, match="num_fields"):
        cuda.fnn_fields(table, torch.zeros(2, 3, dtype=torch.int64, device=DEVICE), None, None, 4)


# --- Fused backward + update -------------------------------------------------------------------


def rule_for(kind):
    return RowUpdate(kind, lr=0.1 if kind != "adam" else 0.01, weight_decay=0.01)


class Trainer:
    """One table trained by the CUDA op and a copy trained by the reference (autograd's sparse
    gradient + SparseRowOptimizer) on the same upstream gradients."""

    def __init__(self, model, kind, rows, factors, slot_fields=None, num_fields=None, seed=0):
        torch.manual_seed(seed)
        self.model, self.rule = model, rule_for(kind)
        self.slot_fields, self.num_fields = slot_fields, num_fields
        self.table = (torch.randn(rows, 1 + factors) * 0.3).to(DEVICE)
        self.state1, self.state2 = self.rule.new_state(self.table)
        self.step = 0
        self.ref_table = self.table.clone().requires_grad_()
        self.optimizer = SparseRowOptimizer(
            [self.ref_table], kind, lr=self.rule.lr, weight_decay=self.rule.weight_decay
        )

    def train(self, ids, values, seed):
        """One step on upstream gradients of a mean loss's size (1 / batch)."""
        g = torch.Generator().manual_seed(seed)
        batch, slots = ids.shape
        scale = 1.0 / max(batch, 1)
        self.step += 1
        hparams = tuple(self.rule.hparams().tolist())
        code = cuda.RULES[self.rule.kind]
        w0 = torch.zeros((), device=DEVICE)
        if self.model == "fm":
            grad = (torch.randn(batch, generator=g) * scale).to(DEVICE)
            sums = torch.empty(batch, self.table.shape[1] - 1, device=DEVICE)
            cuda.fm_forward(self.table, ids, values, sums)
            cuda.fm_backward_update(self.table, ids, values, sums, grad, self.state1, self.state2,
                                    hparams, code, self.step)  # fmt: skip
            out = reference.fm_forward(self.ref_table, w0, ids, values)
        else:
            fields = self.num_fields if self.num_fields is not None else slots
            grad = torch.randn(batch, fields * self.table.shape[1], generator=g) * scale
            grad = grad.to(DEVICE)
            cuda.fnn_fields_backward_update(
                self.table, ids, values, self.slot_fields, fields, grad, self.state1,
                self.state2, hparams, code, self.step,
            )  # fmt: skip
            out = fnn_reference(self.ref_table, ids, values, slot_fields=self.slot_fields,
                                num_fields=self.num_fields)  # fmt: skip
        (out * grad).sum().backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    def check(self):
        torch.testing.assert_close(self.table, self.ref_table.detach(), atol=2e-5, rtol=1e-4)
        state = self.optimizer.state[self.ref_table]
        if self.rule.kind in ("adagrad", "rowwise_adagrad"):
            torch.testing.assert_close(self.state1, state["sum"], atol=1e-6, rtol=1e-4)
        if self.rule.kind == "adam":
            torch.testing.assert_close(self.state1, state["exp_avg"], atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(self.state2, state["exp_avg_sq"], atol=1e-8, rtol=1e-4)


@requires_cuda
@pytest.mark.parametrize("model", ["fm", "fnn"])
@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize(
    "slots,factors,with_values",
    [(5, 3, True), (7, 10, False), (1, 1, True), (6, 15, True), (3, 40, True), (4, 63, False)],
)
def test_fused_update_matches_reference(model, kind, slots, factors, with_values):
    trainer = Trainer(model, kind, rows=60, factors=factors)
    for s in range(4):
        trainer.train(*batch_of(24, slots, 60, seed=s, with_values=with_values), seed=s)
    trainer.train(*batch_of(1, slots, 60, seed=9), seed=9)  # batch of one
    trainer.check()


@requires_cuda
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_fnn_fused_update_multi_valued_fields(kind):
    slot_fields = torch.tensor([0, 1, 1, 2, 3, 3], device=DEVICE)
    trainer = Trainer("fnn", kind, rows=40, factors=4, slot_fields=slot_fields, num_fields=5)
    for s in range(4):
        trainer.train(*batch_of(20, 6, 40, seed=s), seed=s)
    trainer.check()


@requires_cuda
@pytest.mark.parametrize("model", ["fm", "fnn"])
@pytest.mark.parametrize("kind", ["rowwise_adagrad", "adam"])
@pytest.mark.parametrize("long_run", [1, 4, 64, 1 << 30])
@pytest.mark.parametrize("factors", [10, 7])
def test_hot_rows_split_across_segments(monkeypatch, model, kind, long_run, factors):
    """A row in every sample (2000+ occurrences): with long_run 1 or 4 its segments outnumber the
    slices of the block that combines them, with 1 << 30 one group sums it all."""
    monkeypatch.setattr(cuda, "LONG_RUN", long_run)
    trainer = Trainer(model, kind, rows=3000, factors=factors)
    for s in range(3):
        ids, values = batch_of(1500, 5, 3000, seed=s, hot_row=2999)
        ids[:, 2] = 17  # a second hot row, and many medium runs
        ids[:700, 3] = torch.arange(700, device=DEVICE) % 50
        trainer.train(ids, values, seed=s)
    trainer.check()


@requires_cuda
@pytest.mark.parametrize("factors,lanes", [(10, 4), (10, 16), (10, 32), (15, 1), (15, 32)])
def test_lanes_per_row_set_by_hand(monkeypatch, factors, lanes):
    """The tuning knob: any power of two of lanes per row that fits gives the same results."""
    monkeypatch.setattr(cuda, "ROW_LANES", lanes)
    table = torch.randn(200, 1 + factors, device=DEVICE)
    ids, values = batch_of(45, 7, 200, seed=3)
    sums = torch.empty(45, factors, device=DEVICE)
    logits = cuda.fm_forward(table, ids, values, sums)
    assert_close_to_reference(logits, table, ids, values, reference.fm_forward)
    torch.testing.assert_close(cuda.fnn_fields(table, ids, values, None, 7),
                               fnn_reference(table, ids, values))  # fmt: skip
    for model in ("fm", "fnn"):
        trainer = Trainer(model, "rowwise_adagrad", rows=200, factors=factors)
        for s in range(2):
            trainer.train(*batch_of(300, 7, 200, seed=s), seed=s)
        trainer.check()


@requires_cuda
@pytest.mark.parametrize("model", ["fm", "fnn"])
def test_update_is_deterministic(monkeypatch, model):
    monkeypatch.setattr(cuda, "LONG_RUN", 4)
    results = []
    for _ in range(2):
        trainer = Trainer(model, "adagrad", rows=500, factors=10)
        for s in range(3):
            trainer.train(*batch_of(700, 9, 500, seed=s), seed=s)
        results.append((trainer.table.clone(), trainer.state1.clone()))
    for first, second in zip(*results, strict=True):
        torch.testing.assert_close(first, second, rtol=0, atol=0)


@requires_cuda
def test_empty_batch_changes_nothing():
    table = torch.randn(20, 4, device=DEVICE)
    state1, state2 = RowUpdate("adam").new_state(table)
    before = table.clone()
    empty = torch.zeros(0, 4, dtype=torch.int64, device=DEVICE)
    adam = tuple(RowUpdate("adam").hparams().tolist()), cuda.RULES["adam"], 1
    assert cuda.fm_forward(table, empty, None, None).shape == (0,)
    assert cuda.fnn_fields(table, empty, None, None, 4).shape == (0, 16)
    sums, grad_logits = torch.empty(0, 3, device=DEVICE), torch.empty(0, device=DEVICE)
    cuda.fm_backward_update(table, empty, None, sums, grad_logits, state1, state2, *adam)
    grad_z = torch.empty(0, 16, device=DEVICE)
    cuda.fnn_fields_backward_update(table, empty, None, None, 4, grad_z, state1, state2, *adam)
    torch.testing.assert_close(table, before, rtol=0, atol=0)
    assert not state1.any() and not state2.any()


@requires_cuda
def test_large_table_rows_beyond_2_31_elements():
    """Row offsets are 64-bit: a row past 2^31 floats is read and updated where it is."""
    rows = (1 << 31) // 11 + 1000
    try:
        table = torch.zeros(rows, 11, device=DEVICE)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for a 9.4 GB table")
    last = rows - 1
    table[last] = torch.arange(11, dtype=torch.float32, device=DEVICE)
    ids = torch.tensor([[last, last]], device=DEVICE)
    z = cuda.fnn_fields(table, ids, None, None, 2)
    torch.testing.assert_close(z[0, 11:], table[last])
    state1, state2 = RowUpdate("sgd").new_state(table)
    grad = torch.ones(1, 22, device=DEVICE)
    sgd = (0.5, 0.0, 1e-10, 0.9, 0.999), cuda.RULES["sgd"], 1
    cuda.fnn_fields_backward_update(table, ids, None, None, 2, grad, state1, state2, *sgd)
    torch.testing.assert_close(table[last], torch.arange(11.0, device=DEVICE) - 1.0)
    del table


# --- Through the modules (the dispatch to the cuda backend) ------------------------------------


@requires_cuda
@pytest.mark.parametrize("model_kind", ["fm", "fnn"])
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_modules_on_cuda_backend_match_reference(model_kind, kind):
    try:
        fnn_fast.set_backend("cuda")
    except (ValueError, RuntimeError) as error:
        pytest.skip(f"the cuda backend is not selectable: {error}")
    fnn_fast.set_backend("auto")
    rule = rule_for(kind)
    batches = [batch_of(24, 6, 40, seed=s) for s in range(4)]
    labels = [torch.randint(0, 2, (24,), device=DEVICE).float() for _ in batches]

    def make():
        torch.manual_seed(0)
        if model_kind == "fm":
            return FM(40, 5, init_std=0.3)
        return FNN(40, 4, 5, hidden=(8,), slot_fields=[0, 1, 1, 2, 3, 3], init_std=0.3)

    tables = {}
    for backend in ("reference", "cuda"):
        model = make().to(DEVICE)
        fnn_fast.set_backend(backend)
        try:
            if backend == "cuda":
                model.fuse_update(rule)
            table_optimizer = SparseRowOptimizer(
                [model.table], kind, lr=rule.lr, weight_decay=rule.weight_decay
            )
            dense = torch.optim.SGD([p for n, p in model.named_parameters() if n != "table"], 0.05)
            for (ids, values), y in zip(batches, labels, strict=True):
                table_optimizer.zero_grad()
                dense.zero_grad()
                F.binary_cross_entropy_with_logits(model(ids, values), y).backward()
                if backend == "cuda":
                    assert model.table.grad is None  # updated inside backward, on the GPU
                table_optimizer.step()
                dense.step()
        finally:
            fnn_fast.set_backend("auto")
        tables[backend] = model.table.detach()
    torch.testing.assert_close(tables["cuda"], tables["reference"], atol=2e-5, rtol=1e-4)
