"""Sparse row optimizers: only present rows move, repeated ids are summed, and each rule
matches PyTorch's own optimizer (or its formula) exactly."""

import pytest
import torch
import torch.nn.functional as F

from fnn_fast.optim import OPTIMIZERS, SparseRowOptimizer


def loss_of(table, ids, weights):
    return (F.embedding(ids, table, sparse=True).sin() * weights).sum()


def batches(steps, rows, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, rows // 2, (16, 3), generator=g)  # upper half never present
        ids[:, 0] = 3  # a hot row in every sample: many duplicates
        out.append((ids, torch.randn(16, 3, 5, generator=g)))
    return out


@pytest.mark.parametrize(
    "kind,torch_optimizer",
    [
        ("sgd", lambda p: torch.optim.SGD([p], lr=0.1)),
        ("adagrad", lambda p: torch.optim.Adagrad([p], lr=0.1)),
        ("adam", lambda p: torch.optim.SparseAdam([p], lr=0.1)),
    ],
)
def test_matches_torch_optimizers(kind, torch_optimizer):
    start = torch.randn(40, 5)
    ours = torch.nn.Parameter(start.clone())
    theirs = torch.nn.Parameter(start.clone())
    optimizer, reference = SparseRowOptimizer([ours], kind, lr=0.1), torch_optimizer(theirs)
    for ids, weights in batches(6, 40, seed=0):
        for p, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            loss_of(p, ids, weights).backward()
            opt.step()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_rowwise_adagrad_formula():
    start = torch.randn(20, 4, dtype=torch.float64)
    p = torch.nn.Parameter(start.clone())
    optimizer = SparseRowOptimizer([p], "rowwise_adagrad", lr=0.3, eps=1e-10)
    expected, state = start.clone(), torch.zeros(20, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        ids = torch.tensor([[1, 2, 2], [2, 7, 1]])
        weights = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
        optimizer.zero_grad()
        loss_of(p, ids, weights).backward()
        optimizer.step()
        # Reference: dense gradient of the same loss, then the rule row by row.
        dense = torch.zeros_like(expected)
        for b in range(2):
            for s in range(3):
                dense[ids[b, s]] += torch.cos(expected[ids[b, s]]) * weights[b, s]
        for row in (1, 2, 7):
            state[row] += dense[row].square().mean()
            expected[row] -= 0.3 * dense[row] / (state[row].sqrt() + 1e-10)
    torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(optimizer.state[p]["sum"].flatten(), state)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_only_present_rows_and_their_state_change(kind):
    start = torch.randn(40, 5)
    p = torch.nn.Parameter(start.clone())
    optimizer = SparseRowOptimizer([p], kind, lr=0.05, weight_decay=0.1)
    present = set()
    for ids, weights in batches(3, 40, seed=1):
        present |= set(ids.flatten().tolist())
        optimizer.zero_grad()
        loss_of(p, ids, weights).backward()
        optimizer.step()
    absent = sorted(set(range(40)) - present)
    assert len(absent) >= 20
    torch.testing.assert_close(p.detach()[absent], start[absent], atol=0, rtol=0)
    assert not torch.equal(p.detach()[sorted(present)], start[sorted(present)])
    for name, value in optimizer.state[p].items():
        if isinstance(value, torch.Tensor):
            assert torch.count_nonzero(value[absent]) == 0, name


def test_weight_decay_touches_only_present_rows():
    start = torch.ones(10, 2)
    p = torch.nn.Parameter(start.clone())
    optimizer = SparseRowOptimizer([p], "sgd", lr=0.5, weight_decay=0.2)
    ids = torch.tensor([[4]])
    F.embedding(ids, p, sparse=True).sum().mul(0).backward()  # zero gradient, only decay acts
    optimizer.step()
    expected = start.clone()
    expected[4] = 1 - 0.5 * 0.2
    torch.testing.assert_close(p.detach(), expected)


def test_duplicates_are_summed_deterministically():
    start = torch.randn(8, 3)
    results = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        p = torch.nn.Parameter(start.clone())
        optimizer = SparseRowOptimizer([p], "adagrad", lr=0.1)
        ids = torch.tensor([[5, 5, 5, 2]])[:, order]
        weights = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])[:, order]
        loss_of(p, ids, weights).backward()
        optimizer.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_dense_scalar_parameter_is_updated():
    w0 = torch.nn.Parameter(torch.tensor(0.5))
    for kind in OPTIMIZERS:
        w0.data.fill_(0.5)
        optimizer = SparseRowOptimizer([w0], kind, lr=0.1)
        (w0 * 2).backward()
        optimizer.step()
        w0.grad = None
        assert w0.item() < 0.5, kind


def test_bad_arguments():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unknown optimizer"):
        SparseRowOptimizer([p], "lbfgs")
    with pytest.raises(ValueError, match="learning rate"):
        SparseRowOptimizer([p], "sgd", lr=0)


@pytest.mark.parametrize("kind", ["adagrad", "rowwise_adagrad"])
def test_fused_initial_accumulator_matches_the_optimizer(kind):
    """RowUpdate's starting sum gives the fused kernels the steps SparseRowOptimizer takes."""
    import fnn_fast
    from fnn_fast import FM
    from fnn_fast.optim import RowUpdate

    g = torch.Generator().manual_seed(5)
    data = [(torch.randint(0, 30, (12, 4), generator=g), torch.rand(12, generator=g).round())
            for _ in range(3)]  # fmt: skip
    tables = {}
    for backend in ("reference", "auto"):
        with fnn_fast.use_backend(backend):
            torch.manual_seed(0)
            fm = FM(30, 3, init_std=0.3)
            if backend == "auto":
                fm.fuse_update(RowUpdate(kind, lr=0.1, initial_accumulator_value=0.5))
            optimizer = SparseRowOptimizer([fm.table], kind, lr=0.1, initial_accumulator_value=0.5)
            for ids, labels in data:
                optimizer.zero_grad()
                F.binary_cross_entropy_with_logits(fm(ids), labels).backward()
                optimizer.step()
            tables[backend] = fm.table.detach().clone()
    torch.testing.assert_close(tables["auto"], tables["reference"], atol=2e-6, rtol=1e-5)
    with_zero = RowUpdate(kind, lr=0.1).new_state(torch.zeros(4, 3))[0]
    assert float(with_zero.sum()) == 0.0


@pytest.mark.parametrize(
    "kind,torch_optimizer",
    [
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.05)),
        ("adagrad", lambda ps: torch.optim.Adagrad(ps, lr=0.05)),
        ("adam", lambda ps: torch.optim.Adam(ps, lr=0.05)),
    ],
)
def test_dense_layers_of_a_network_match_torch(kind, torch_optimizer):
    # SparseRowOptimizer(fnn.parameters()) once failed on the layers' 1-D biases (a shape
    # error): dense parameters of any shape get the same rule as PyTorch's optimizer.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    twin.load_state_dict(net.state_dict())
    ours, theirs = (
        SparseRowOptimizer(net.parameters(), kind, lr=0.05),
        torch_optimizer(list(twin.parameters())),
    )
    x = torch.randn(8, 6)
    for _ in range(3):
        for model, opt in ((net, ours), (twin, theirs)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rowwise_adagrad_on_dense_layers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 1))
    opt = SparseRowOptimizer(net.parameters(), "rowwise_adagrad", lr=0.05)
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.randn(8, 6)).sum().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
