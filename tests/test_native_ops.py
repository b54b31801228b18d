"""The native CPU kernels against the reference: outputs, fused backward + update (tables and
optimizer states after several steps), torch.library registration and torch.compile."""

import pytest
import torch
import torch.nn.functional as F
from helpers import train_reference_and_native

import fnn_fast
from fnn_fast import FM, FNN, SparseRowOptimizer
from fnn_fast.ops import checks, cpu, eager, library, reference
from fnn_fast.optim import OPTIMIZERS, RowUpdate

pytestmark = pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")


def batch_of(batch, slots, rows, seed, with_values=True, hot=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, rows, (batch, slots), generator=g)
    if hot and batch:
        ids[:, 0] = 3  # one hot row hit by every sample
        ids[::2, -1] = 3  # and twice by some
    values = torch.rand(batch, slots, generator=g) + 0.5 if with_values else None
    labels = torch.randint(0, 2, (batch,), generator=g).float()
    return ids, values, labels


def assert_close_to_reference(got, table, w0, ids, values, op=reference.fm_forward, **kw):
    """float32 sums round differently: allow twice the reference's own error against float64."""
    exact = op(table.double(), w0.double(), ids, None if values is None else values.double(), **kw)
    ref_error = (op(table, w0, ids, values, **kw).double() - exact).abs()
    error = (got.double() - exact).abs()
    assert got.shape == exact.shape
    if error.numel():
        assert error.max() <= 2 * ref_error.max() + 1e-5


# factors 4, 8, 10, 16, 32 run the kernels compiled for their row width, the others the generic ones
SHAPES = [
    (1, 1, 1), (0, 4, 3), (33, 7, 5), (64, 39, 10), (17, 16, 16), (9, 5, 4), (5, 3, 8), (6, 4, 32),
]  # fmt: skip


@pytest.mark.parametrize("batch,slots,factors", SHAPES)
@pytest.mark.parametrize("with_values", [True, False])
def test_fm_forward(batch, slots, factors, with_values):
    table = torch.randn(500, 1 + factors)
    ids, values, _ = batch_of(batch, slots, 500, seed=batch + slots, with_values=with_values)
    got = library.fm_forward(table, ids, values) + 0.25
    assert_close_to_reference(got, table, torch.tensor(0.25), ids, values)


@pytest.mark.parametrize("batch,slots,factors", SHAPES)
def test_fnn_fields(batch, slots, factors):
    table = torch.randn(300, 1 + factors)
    ids, values, _ = batch_of(batch, slots, 300, seed=7)
    z = library.fnn_fields(table, ids, values, None, slots)
    expected = reference.fnn_input(table, torch.tensor(0.0), ids, values)[:, 1:]
    torch.testing.assert_close(z, expected)


def test_fnn_fields_multi_valued_fields():
    table = torch.randn(50, 4)
    ids, values, _ = batch_of(9, 5, 50, seed=1)
    slot_fields = torch.tensor([0, 1, 1, 2, 1])
    z = library.fnn_fields(table, ids, values, slot_fields, 3)
    expected = reference.fnn_input(table, torch.tensor(0.0), ids, values, slot_fields, 3)[:, 1:]
    torch.testing.assert_close(z, expected)


def compare_states(models, rule):
    ref_model, ref_optimizer = models["reference"]
    nat_model, _ = models["native"]
    torch.testing.assert_close(nat_model.table, ref_model.table, atol=2e-5, rtol=1e-4)
    state = ref_optimizer.state[ref_model.table]
    if rule.kind in ("adagrad", "rowwise_adagrad"):
        torch.testing.assert_close(
            nat_model.update_state1, state["sum"].reshape(nat_model.update_state1.shape),
            atol=1e-6, rtol=1e-4,
        )  # fmt: skip
    if rule.kind == "adam":
        torch.testing.assert_close(nat_model.update_state1, state["exp_avg"], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(
            nat_model.update_state2, state["exp_avg_sq"], atol=1e-8, rtol=1e-4
        )
    assert int(nat_model.update_step) == state["step"]
    for (name, a), (_, b) in zip(
        ref_model.named_parameters(), nat_model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize(
    "slots,factors,with_values",
    [
        (5, 3, True),
        (7, 10, False),
        (1, 1, True),
        (4, 4, True),
        (3, 8, False),
        (6, 16, True),
        (2, 32, True),
    ],  # fmt: skip
)
def test_fm_fused_update_matches_reference(kind, slots, factors, with_values):
    rule = RowUpdate(kind, lr=0.1 if kind != "adam" else 0.01, weight_decay=0.01)
    batches = [batch_of(24, slots, 60, seed=s, with_values=with_values) for s in range(4)]
    batches.append(batch_of(1, slots, 60, seed=9))  # batch of one
    models = train_reference_and_native(lambda: FM(60, factors, init_std=0.3), rule, batches[:5])
    compare_states(models, rule)


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("factors,slot_fields", [(3, [0, 1, 1, 2, 3, 3]), (10, None), (16, None)])
def test_fnn_fused_update_matches_reference(kind, factors, slot_fields):
    rule = RowUpdate(kind, lr=0.1 if kind != "adam" else 0.01, weight_decay=0.01)
    slots = len(slot_fields) if slot_fields else 4
    batches = [batch_of(20, slots, 40, seed=s) for s in range(4)]

    def make():
        return FNN(40, 4, factors, hidden=(8, 5), slot_fields=slot_fields, init_std=0.3)

    compare_states(train_reference_and_native(make, rule, batches[:4]), rule)


def test_empty_batch_trains_nothing():
    fm = FM(20, 3).fuse_update(RowUpdate("sgd", lr=0.1))
    before = fm.table.detach().clone()
    empty = torch.zeros(0, 4, dtype=torch.int64)
    fm(empty).sum().backward()
    torch.testing.assert_close(fm.table.detach(), before, rtol=0, atol=0)


def test_out_of_range_ids_raise_not_crash():
    table = torch.randn(10, 3)
    with pytest.raises(IndexError, match="outside the table"):
        library.fm_forward(table, torch.tensor([[1, 10]]), None)
    with pytest.raises(IndexError, match="outside the table"):
        library.fnn_fields(table, torch.tensor([[-1, 2]]), None, None, 2)


@pytest.mark.parametrize("factors", [2, 10])
def test_kernels_check_ids_as_they_read(factors):
    """The CPU kernels check the range themselves: an id far outside the table is never read,
    and the error names the first one, whichever thread met it."""
    table = torch.randn(1000, 1 + factors)
    state = RowUpdate("rowwise_adagrad").new_state(table)
    hparams = RowUpdate("rowwise_adagrad").hparams()
    step = torch.zeros((), dtype=torch.int64)
    ids = torch.randint(0, 1000, (3000, 5))
    ids[2000, 3], ids[2500, 1], ids[10, 4] = 2**40, -3, 1000
    calls = [
        lambda: library.fm_forward(table, ids, None),
        lambda: library.fm_forward_train(table, ids, None, *state, step, hparams, 2),
        lambda: library.fnn_fields(table, ids, None, None, 5),
        lambda: library.fnn_fields(table, ids, None, torch.tensor([0, 1, 1, 2, 0]), 3),
    ]
    for call in calls:
        with pytest.raises(IndexError, match="feature id 1000 is outside the table of 1000"):
            call()


def test_opcheck():
    table = torch.randn(30, 4)
    ids, values, _ = batch_of(6, 3, 30, seed=2)
    rule = RowUpdate("adam", lr=0.01)
    s1, s2 = rule.new_state(table)
    step, hp, code = torch.zeros((), dtype=torch.int64), rule.hparams(), checks.RULES["adam"]
    torch.library.opcheck(library.fm_forward, (table, ids, values))
    torch.library.opcheck(library.fnn_fields, (table, ids, values, None, 3))
    torch.library.opcheck(library.fnn_fields, (table, ids, values, None, 3, 16))
    torch.library.opcheck(
        library.fnn_fields_train, (table, ids, values, None, 3, s1, s2, step, hp, code, 16)
    )
    logits, sums = library.fm_forward_train(table, ids, values, s1, s2, step, hp, code)
    torch.library.opcheck(
        library.fm_backward_update,
        (table.clone(), ids, values, sums, torch.randn(6), s1.clone(), s2.clone(), step.clone(),
         hp, code),
    )  # fmt: skip
    for width in (12, 16):
        torch.library.opcheck(
            library.fnn_fields_backward_update,
            (table.clone(), ids, values, None, 3, torch.randn(6, width), s1.clone(), s2.clone(),
             step.clone(), hp, code),
        )  # fmt: skip


@pytest.mark.parametrize("slot_fields", [None, [0, 1, 1, 2, 0]])
def test_padded_z_is_z_and_zeros(slot_fields):
    """z padded to a wider row: the same values, zeros after them; the backward reads the
    padded gradient's rows at their own stride and ignores the padding."""
    table = torch.randn(200, 11)
    ids, values, _ = batch_of(37, 5, 200, seed=4)
    fields = 3 if slot_fields else 5
    sf = torch.tensor(slot_fields) if slot_fields else None
    plain = library.fnn_fields(table, ids, values, sf, fields)
    padded = library.fnn_fields(table, ids, values, sf, fields, plain.shape[1] + 13)
    assert torch.equal(padded[:, : plain.shape[1]], plain) and not padded[:, plain.shape[1] :].any()
    rule = RowUpdate("rowwise_adagrad", lr=0.1)
    grad = torch.randn_like(plain)
    tables = []
    for g in (grad, torch.cat([grad, torch.full((37, 13), float("nan"))], dim=1)):
        t, (s1, s2) = table.clone(), rule.new_state(table)
        library.fnn_fields_backward_update(t, ids, values, sf, fields, g, s1, s2,
                                          torch.zeros((), dtype=torch.int64), rule.hparams(),
                                          checks.RULES[rule.kind])  # fmt: skip
        tables.append(t)
    assert torch.equal(tables[0], tables[1])


@pytest.mark.parametrize("model_kind", ["fm", "fnn"])
def test_torch_compile_fullgraph_matches_eager(model_kind):
    batches = [batch_of(16, 5, 50, seed=s) for s in range(3)]

    def make():
        torch.manual_seed(0)
        if model_kind == "fm":
            model = FM(50, 4, init_std=0.2)
        else:
            model = FNN(50, 5, 4, hidden=(8,), init_std=0.2)
        return model.fuse_update(RowUpdate("rowwise_adagrad", lr=0.1))

    results = []
    for compiled in (False, True):
        model = make()
        optimizer = torch.optim.SGD([p for n, p in model.named_parameters() if n != "table"], 0.1)

        def loss_of(ids, values, labels, model=model):
            return F.binary_cross_entropy_with_logits(model(ids, values), labels)

        step = torch.compile(loss_of, fullgraph=True) if compiled else loss_of
        for ids, values, labels in batches:
            optimizer.zero_grad()
            step(ids, values, labels).backward()
            optimizer.step()
        results.append((model.table.detach().clone(), model.update_state1.clone()))
        with torch.no_grad():
            results[-1] += (model(batches[0][0], batches[0][1]),)
    for by_eager, by_compiled in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(by_compiled, by_eager, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["rowwise_adagrad", "adam"])
def test_large_batch_update_is_the_reference_and_thread_independent(kind):
    """Batches past the size where grouping by row runs on every thread: same tables as the
    reference, and bit for bit the same whatever the thread count."""
    from fnn_fast import _C

    rule = RowUpdate(kind, lr=0.05 if kind != "adam" else 0.01)
    batches = [batch_of(700, 39, 5000, seed=s, with_values=False) for s in range(2)]
    models = train_reference_and_native(lambda: FM(5000, 10, init_std=0.3), rule, batches[:2])
    compare_states(models, rule)
    threads = _C.num_threads()
    tables = []
    try:
        for count in (1, 2, 3):
            _C.set_num_threads(count)
            tables.append(
                train_reference_and_native(lambda: FM(5000, 10, init_std=0.3), rule, batches[:2])
            )
    finally:
        _C.set_num_threads(threads)
    for other in tables[1:]:
        assert torch.equal(other["native"][0].table, tables[0]["native"][0].table)
        assert torch.equal(other["native"][0].update_state1, tables[0]["native"][0].update_state1)


def test_kernels_refuse_sizes_that_do_not_fit():
    """5 id columns for 3 fields wrote past z's rows (a heap overflow at the last row); the ops
    refuse first, and the C++ kernels themselves refuse sizes that do not fit."""
    table, ids = torch.randn(10, 4), torch.randint(0, 10, (4, 5))
    with pytest.raises(ValueError, match="expected 3 id columns, one per field"):
        library.fnn_fields(table, ids, None, None, 3)
    with pytest.raises(ValueError, match="expected 5 id columns, one per field"):
        library.fnn_fields(table, ids[:, :3].contiguous(), None, None, 5)
    with pytest.raises(ValueError, match="slot_fields maps a column to field 3"):
        library.fnn_fields(table, ids, None, torch.tensor([0, 1, 2, 3, 0]), 3)
    z = torch.empty(4, 3 * 4)

    def gather(slot_fields, num_fields, z_width=z.shape[1]):
        cpu._C.fnn_fields(
            table.data_ptr(), 10, 4, ids.data_ptr(), 0, 4, 5, cpu._address(slot_fields),
            num_fields, z.data_ptr(), z_width,
        )  # fmt: skip

    with pytest.raises(ValueError, match="slots must equal num_fields"):
        gather(None, 3)
    with pytest.raises(ValueError, match="slot_fields maps a column to field 3, outside the 3"):
        gather(torch.tensor([0, 1, 2, 3, 0]), 3)
    with pytest.raises(ValueError, match="narrower than num_fields"):
        gather(torch.tensor([0, 1, 2, 3, 0]), 4)


@pytest.mark.parametrize("op", ["fm", "gather"])
def test_backward_update_with_an_id_outside_the_table_raises_and_writes_nothing(op):
    buffer = torch.randn(11, 4)
    table, before = buffer[:10], buffer.clone()  # row 10 lies just past the table
    ids = torch.tensor([[1, 10], [2, 3]])
    rule = RowUpdate("sgd", lr=0.1)
    state = (*rule.new_state(table), torch.zeros((), dtype=torch.int64), rule.hparams(), 0)
    with pytest.raises(IndexError, match="feature id 10 is outside the table of 10 rows"):
        if op == "fm":
            library.fm_backward_update(table, ids, None, torch.randn(2, 3), torch.randn(2), *state)
        else:
            library.fnn_fields_backward_update(table, ids, None, None, 2, torch.randn(2, 8), *state)
    torch.testing.assert_close(buffer, before, rtol=0, atol=0)


def test_zero_slots_give_each_sample_its_output():
    """A batch without slots used to return torch.empty: whatever memory held."""
    table = torch.randn(10, 4)
    ids = torch.zeros(64, 0, dtype=torch.int64)
    stale = table.new_full((64 * 8,), float("nan"))
    del stale  # freed memory that an uninitialized output would likely reuse
    assert torch.equal(library.fm_forward(table, ids, None), torch.zeros(64))
    none = torch.zeros(0, dtype=torch.int64)
    assert torch.equal(library.fnn_fields(table, ids, None, none, 2), torch.zeros(64, 8))


def test_an_argument_on_another_device_raises():
    """An argument on the meta device sent the op to its fake kernel, which returned an
    uninitialized tensor on the table's device."""
    table = torch.randn(10, 4)
    ids = torch.zeros(3, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="ids is on meta but the table on cpu"):
        library.fm_forward(table, ids.to("meta"), None)
    with pytest.raises(ValueError, match="values is on meta but the table on cpu"):
        library.fnn_fields(table, ids, torch.ones(3, 2, device="meta"), None, 2)


@pytest.mark.parametrize("path", ["eager", "custom_op"])
@pytest.mark.parametrize("model_kind", ["fm", "fnn", "fnn_multi_valued"])
def test_fused_training_gives_values_their_gradient(model_kind, path, monkeypatch):
    """The fused kernels returned no gradient for values (the reference did): d loss / d values
    now comes from the rows before the update, on the eager path and the custom ops'."""
    if path == "custom_op":  # the torch.library ops' autograd, as torch.compile runs them
        monkeypatch.setattr(eager, "_eager", lambda ids: False)
    slot_fields = [0, 1, 1, 2, 0] if model_kind == "fnn_multi_valued" else None
    ids, values, labels = batch_of(12, 5, 30, seed=4)
    grads, tables = {}, {}
    for backend in ("reference", "native"):
        torch.manual_seed(0)
        if model_kind == "fm":
            model = FM(30, 4, init_std=0.3)
        else:
            fields = 3 if slot_fields else 5
            model = FNN(30, fields, 4, hidden=(6,), slot_fields=slot_fields, init_std=0.3)
        fnn_fast.set_backend(backend)
        try:
            rule = RowUpdate("sgd", lr=0.1)
            if backend == "native":
                model.fuse_update(rule)
            x = values.clone().requires_grad_(True)
            F.binary_cross_entropy_with_logits(model(ids, x), labels).backward()
            if backend == "reference":  # the same SGD step the fused kernels take
                SparseRowOptimizer([model.table], "sgd", lr=0.1).step()
            else:
                assert model.table.grad is None  # the fused path ran
        finally:
            fnn_fast.set_backend("auto")
        grads[backend], tables[backend] = x.grad, model.table.detach()
    assert grads["native"] is not None
    torch.testing.assert_close(grads["native"], grads["reference"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tables["native"], tables["reference"], atol=1e-5, rtol=1e-4)
