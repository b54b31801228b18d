"""Each fused training op is wired twice: an autograd.Function for eager training (cheaper to
call) and a torch.library custom op that torch.compile traces. Both must run the same kernels:
the same logits or z, the same values gradient and the same updated table and state, bit for bit.
"""

import pytest
import torch

from fnn_fast.ops import checks, cpu, eager, library
from fnn_fast.optim import OPTIMIZERS, RowUpdate

pytestmark = pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")


def _inputs(seed, batch=29, slots=5, rows=40, factors=3):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, 1 + factors, generator=g)
    ids = torch.randint(0, rows, (batch, slots), generator=g)
    ids[:, 0] = 7  # a hot row, hit by every sample
    ids[::3, -1] = 7  # and twice by some
    values = torch.rand(batch, slots, generator=g) + 0.5
    return table, ids, values, g


def _run(wiring, op, kind, table, ids, values, upstream, *args):
    """One forward and backward through ``wiring`` ('eager' or 'custom op'); the output, the
    values' gradient and the updated table and optimizer state."""
    rule = RowUpdate(kind, lr=0.05, initial_accumulator_value=0.1)
    table = table.clone()
    s1, s2 = rule.new_state(table)
    step = torch.zeros((), dtype=torch.int64)
    values = values.clone().requires_grad_()
    state = (s1, s2, step, rule.hparams(), checks.RULES[kind])
    if op == "fm":
        call = eager.fm_forward_train if wiring == "eager" else library.fm_forward_train
        out, _ = call(table, ids, values, *state)
    else:
        slot_fields, num_fields, width = args
        call = eager.fnn_fields_train if wiring == "eager" else library.fnn_fields_train
        out = call(table, ids, values, slot_fields, num_fields, *state, width)
    (out * upstream).sum().backward()
    return out.detach(), values.grad, table, s1, s2, step


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_fm_train_wirings_are_bit_identical(kind, seed):
    table, ids, values, g = _inputs(seed)
    upstream = torch.randn(ids.shape[0], generator=g)
    eager = _run("eager", "fm", kind, table, ids, values, upstream)
    traced = _run("custom op", "fm", kind, table, ids, values, upstream)
    for a, b in zip(eager, traced, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("slot_fields,width", [(None, 0), ([0, 1, 1, 2, 0], 16)])
def test_fnn_fields_train_wirings_are_bit_identical(kind, slot_fields, width):
    table, ids, values, g = _inputs(3)
    sf = None if slot_fields is None else torch.tensor(slot_fields)
    num_fields = 5 if sf is None else 3
    z_width = max(width, num_fields * table.shape[1])
    upstream = torch.randn(ids.shape[0], z_width, generator=g)
    args = (sf, num_fields, width)
    eager = _run("eager", "fnn", kind, table, ids, values, upstream, *args)
    traced = _run("custom op", "fnn", kind, table, ids, values, upstream, *args)
    for a, b in zip(eager, traced, strict=True):
        assert torch.equal(a, b)


def test_eager_training_takes_the_autograd_function():
    """The eager shortcut is what runs outside torch.compile (else the test above compares a
    wiring with itself)."""
    table, ids, values, _ = _inputs(4)
    rule = RowUpdate("sgd", lr=0.1)
    state = (*rule.new_state(table), torch.zeros((), dtype=torch.int64), rule.hparams(),
             checks.RULES["sgd"])  # fmt: skip
    out, _ = eager.fm_forward_train(table.clone(), ids, values.requires_grad_(), *state)
    assert type(out.grad_fn).__name__ == "_FMTrainBackward"
