"""FM and FNN modules against direct computations, and their gradients."""

import itertools
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

import fnn_fast
from fnn_fast import FM, FNN
from fnn_fast.ops import gpu, reference


def fm_direct(table, w0, ids, values):
    """The FM by its definition: O(S^2 K) pairwise sum, one sample at a time."""
    out = []
    for b in range(ids.shape[0]):
        x, rows = values[b], table[ids[b]]
        total = w0 + (x * rows[:, 0]).sum()
        for i, j in itertools.combinations(range(ids.shape[1]), 2):
            total = total + (rows[i, 1:] * rows[j, 1:]).sum() * x[i] * x[j]
        out.append(total)
    return torch.stack(out)


def random_batch(batch, slots, num_features, generator, hot=None):
    ids = torch.randint(0, num_features, (batch, slots), generator=generator)
    if hot is not None:
        ids[:, 0] = hot  # one row hit by every sample
        ids[::2, -1] = hot  # and twice in some samples
    values = torch.rand(batch, slots, generator=generator, dtype=torch.float64) * 2 - 0.5
    return ids, values


@pytest.mark.parametrize("slots,factors", [(1, 1), (3, 5), (7, 10), (16, 3)])
def test_fm_forward_matches_direct(slots, factors):
    g = torch.Generator().manual_seed(slots * 100 + factors)
    table = torch.randn(40, 1 + factors, generator=g, dtype=torch.float64)
    w0 = torch.tensor(0.3, dtype=torch.float64)
    ids, values = random_batch(9, slots, 40, g, hot=5)
    got = reference.fm_forward(table, w0, ids, values)
    torch.testing.assert_close(got, fm_direct(table, w0, ids, values))
    ones = torch.ones_like(values)
    torch.testing.assert_close(
        reference.fm_forward(table, w0, ids), fm_direct(table, w0, ids, ones)
    )


def test_fm_gradients_match_direct():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(30, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w0 = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    ids, values = random_batch(8, 5, 30, g, hot=3)
    values.requires_grad_(True)
    weights = torch.randn(8, generator=g, dtype=torch.float64)
    (reference.fm_forward(table, w0, ids, values) * weights).sum().backward()
    got = (table.grad.to_dense(), w0.grad.clone(), values.grad.clone())
    for t in (table, w0, values):
        t.grad = None
    (fm_direct(table, w0, ids, values) * weights).sum().backward()
    torch.testing.assert_close(got[0], table.grad)
    torch.testing.assert_close(got[1], w0.grad)
    torch.testing.assert_close(got[2], values.grad)


def test_fm_module_gradient_is_sparse_and_only_present_rows():
    fm = FM(100, 4)
    ids = torch.tensor([[1, 5, 9], [1, 7, 9]])
    fm(ids).sum().backward()
    assert fm.table.grad.is_sparse
    rows = set(fm.table.grad.coalesce().indices()[0].tolist())
    assert rows == {1, 5, 7, 9}


def test_fnn_input_is_w0_then_value_weighted_rows():
    g = torch.Generator().manual_seed(2)
    table = torch.randn(20, 4, generator=g)
    w0 = torch.tensor(0.7)
    ids = torch.tensor([[0, 3, 3], [19, 2, 4]])
    values = torch.rand(2, 3, generator=g)
    z = reference.fnn_input(table, w0, ids, values)
    expected = torch.stack(
        [
            torch.cat([w0.reshape(1)] + [values[b, s] * table[ids[b, s]] for s in range(3)])
            for b in range(2)
        ]
    )
    torch.testing.assert_close(z, expected)


def test_fnn_multi_valued_field_sums_its_slots():
    g = torch.Generator().manual_seed(3)
    table = torch.randn(20, 3, generator=g)
    w0 = torch.tensor(0.0)
    ids = torch.tensor([[1, 2, 3, 4]])
    values = torch.rand(1, 4, generator=g)
    slot_fields = torch.tensor([0, 1, 1, 2])  # field 1 has two slots
    z = reference.fnn_input(table, w0, ids, values, slot_fields, 3)
    field1 = values[0, 1] * table[2] + values[0, 2] * table[3]
    torch.testing.assert_close(z[0, 1 + 3 : 1 + 6], field1)
    assert z.shape == (1, 1 + 3 * 3)


def test_fnn_from_fm_starts_from_fm_embedding():
    fm = FM(50, 6)
    with torch.no_grad():
        fm.table.normal_()
        fm.w0.fill_(0.4)
    fnn = FNN.from_fm(fm, num_fields=4, hidden=(7, 5), dropout=0.1)
    torch.testing.assert_close(fnn.table, fm.table)
    assert fnn.w0.item() == pytest.approx(0.4)
    ids = torch.randint(0, 50, (3, 4))
    z = fnn.input(ids)
    torch.testing.assert_close(z[:, 1 : 1 + 7], fm.table[ids[:, 0]])
    assert fnn(ids).shape == (3,)
    assert isinstance(fnn.hidden_layers[1], torch.nn.Tanh)


def test_fnn_sparse_and_dense_gradients_agree():
    torch.manual_seed(4)
    sparse = FNN(30, 5, 3, hidden=(8, 6), dropout=0.0)
    dense = FNN(30, 5, 3, hidden=(8, 6), dropout=0.0, sparse=False)
    dense.load_state_dict(sparse.state_dict())
    ids = torch.randint(0, 30, (11, 5))
    ids[:, 2] = 17
    values = torch.rand(11, 5)
    labels = torch.randint(0, 2, (11,)).float()
    for model in (sparse, dense):
        torch.nn.functional.binary_cross_entropy_with_logits(model(ids, values), labels).backward()
    torch.testing.assert_close(sparse.table.grad.to_dense(), dense.table.grad)
    for a, b in zip(
        sparse.hidden_layers.parameters(), dense.hidden_layers.parameters(), strict=True
    ):
        torch.testing.assert_close(a.grad, b.grad)


def test_out_of_range_id_names_the_field():
    fm = FM(10, 2, slot_names=["weekday", "hour", "city"])
    with pytest.raises(IndexError, match="field city"):
        fm(torch.tensor([[1, 2, 10]]))
    with pytest.raises(IndexError, match="field weekday"):
        fm(torch.tensor([[-1, 2, 3]]))
    with pytest.raises(TypeError):
        fm(torch.tensor([[1.0, 2.0, 3.0]]))


def test_empty_batch():
    fm = FM(10, 2)
    fnn = FNN.from_fm(fm, num_fields=3, hidden=(4,))
    empty = torch.zeros(0, 3, dtype=torch.int64)
    assert fm(empty).shape == (0,)
    assert fnn(empty).shape == (0,)


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="unknown backend"):
        fnn_fast.set_backend("cuda-magic")


@pytest.mark.skipif(
    not os.environ.get("FNN_FAST_REQUIRE_NATIVE"),
    reason="set FNN_FAST_REQUIRE_NATIVE=1 where fnn_fast._C must have been built",
)
def test_native_extension_was_built():
    assert "native" in fnn_fast.backends()["available"], fnn_fast.backends()["native_error"]


def test_package_works_without_the_native_extension():
    """A failed C++ build must never break `import fnn_fast`: the reference runs instead."""
    script = """
import sys
sys.modules["fnn_fast._C"] = None  # as if the extension had not been built
import torch, fnn_fast
from fnn_fast.optim import RowUpdate
info = fnn_fast.backends()
assert info["available"] == ["reference"] and info["active"] == "reference", info
assert info["native_error"]
fm = fnn_fast.FM(50, 3).fuse_update(RowUpdate("adagrad", lr=0.1))
fm(torch.randint(0, 50, (4, 6))).sum().backward()
assert fm.table.grad.is_sparse  # the reference path: a sparse gradient for the optimizer
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "FNN_FAST_REQUIRE_NATIVE"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("given", [9, 16, 7])
def test_fnn_refuses_a_wrong_number_of_id_columns(backend, given):
    """One id column per field: more columns were zero-padded into the first layer (or, in the
    native gather, written past z), fewer left fields unwritten."""
    fnn = FNN(100, num_fields=8, num_factors=3, hidden=(4,))
    ids = torch.randint(0, 100, (5, given))
    with fnn_fast.use_backend(backend):
        for call in (fnn, fnn.input):
            with pytest.raises(ValueError, match=f"expected 8 id columns.*got {given}"):
                call(ids)
            with (
                torch.no_grad(),
                pytest.raises(ValueError, match=f"expected 8 id columns.*{given}"),
            ):
                call(ids)


@pytest.mark.parametrize("num_fields,given", [(3, 5), (5, 3)])
def test_fnn_with_mismatched_fields_raises_before_the_kernels(num_fields, given):
    fnn = FNN(50, num_fields=num_fields, num_factors=4, hidden=(4,))
    with torch.no_grad(), pytest.raises(ValueError, match=f"expected {num_fields} id columns"):
        fnn(torch.randint(0, 50, (64, given)))


def test_fnn_checks_its_field_map_when_built():
    with pytest.raises(ValueError, match="field 3, outside the 3 fields"):
        FNN(10, num_fields=3, slot_fields=[0, 1, 3], hidden=(4,))
    with pytest.raises(ValueError, match="field -1"):
        FNN(10, num_fields=3, slot_fields=[0, -1, 2], hidden=(4,))
    with pytest.raises(ValueError, match="at least 1"):
        FNN(10, num_fields=0, hidden=(4,))
    fnn = FNN(10, num_fields=3, slot_fields=[0, 1, 1, 2], hidden=(4,))
    with pytest.raises(ValueError, match="expected 4 id columns, one per entry of slot_fields"):
        fnn(torch.zeros(2, 3, dtype=torch.int64))


def _cuda_like_ids():
    """Stands in for CUDA ids: records every call made on it, and has no data to read."""
    ids = mock.MagicMock(spec=torch.Tensor)
    ids.dim.return_value = 2
    ids.dtype = torch.int64
    ids.numel.return_value = 12
    ids.device = torch.device("cuda", 0)
    ids.is_cuda = True
    ids.aminmax.return_value = (torch.tensor(0), torch.tensor(3))
    return ids


def test_gpu_bounds_check_off_reads_no_cuda_ids(monkeypatch):
    """FNN_FAST_GPU_BOUNDS_CHECK=0 (or set_gpu_bounds_check(False)) drops the host sync of the
    modules' own id check (ops.check_ids) as well as the GPU ops' check; CPU ids stay checked."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    fnn_fast.ops.set_gpu_bounds_check(False)
    try:
        ids = _cuda_like_ids()
        fnn_fast.ops.check_ids(ids, 10)
        gpu.check_bounds(ids, 10)
        read = {name for name, *_ in ids.mock_calls} - {"dim", "numel"}
        assert not read, f"the CUDA ids were read: {read}"
        with pytest.raises(IndexError, match="outside the table of 10 rows"):
            fnn_fast.ops.check_ids(torch.tensor([[1, 10]]), 10)
    finally:
        fnn_fast.ops.set_gpu_bounds_check(True)
    ids = _cuda_like_ids()
    fnn_fast.ops.check_ids(ids, 10)  # on: the one read (a sync on a real GPU) happens
    assert ids.aminmax.called


def test_gpu_bounds_check_environment_variable():
    script = "from fnn_fast.ops import gpu; print(gpu.BOUNDS_CHECK)"
    env = {**os.environ, "FNN_FAST_GPU_BOUNDS_CHECK": "0"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_use_backend_restores_the_previous_choice():
    assert fnn_fast.backends()["selected"] == "auto"
    with fnn_fast.use_backend("reference"):
        assert fnn_fast.backends()["active"] == "reference"
        with pytest.raises(KeyError), fnn_fast.use_backend("auto"):
            assert fnn_fast.backends()["selected"] == "auto"
            raise KeyError("the block fails")
        assert fnn_fast.backends()["selected"] == "reference"
    assert fnn_fast.backends()["selected"] == "auto"


@pytest.mark.parametrize("hidden", [(6, 4), ()])
def test_first_layer_is_a_module_call_with_w0_folded(hidden):
    """FNN.forward folds w0 into the first layer's bias through that nn.Linear itself: forward
    hooks see the call, and the logits equal the plain network on z = [w0, z_1, ..., z_F]."""
    torch.manual_seed(0)
    fnn = FNN(50, num_fields=4, num_factors=3, hidden=hidden)
    with torch.no_grad():
        fnn.w0.fill_(0.7)
    first = fnn.hidden_layers[0] if hidden else fnn.output
    assert isinstance(first, torch.nn.Linear)
    seen = []
    first.register_forward_hook(lambda module, args, kwargs, out: seen.append(out.shape),
                                with_kwargs=True)  # fmt: skip
    ids = torch.randint(0, 50, (9, 4))
    for grad in (False, True):  # inference, and training's zero-padded z
        with torch.set_grad_enabled(grad):
            got = fnn(ids)
            plain = fnn.output(fnn.hidden_layers(fnn.input(ids))).squeeze(-1)
        torch.testing.assert_close(got, plain)
    assert len(seen) == 4  # two FNN calls and two plain ones
