"""Randomized calls of the public modules and ops, and of the kernels' custom ops directly.

Each case draws a valid call (shapes, ids, slot maps, values, empty batches, update rules),
then maybe breaks one argument (a wrong shape, dtype, device, field count, slot map, id, state
or gradient). A valid call must give the reference's result; a broken one must raise
ValueError, TypeError or IndexError before any kernel runs wild: no crash, no silent result.
A canary row after the table catches a kernel writing past it. CI also runs this file against a
build of fnn_fast._C under AddressSanitizer (.ci/run), where any read or write outside a
buffer aborts the run. FNN_FAST_FUZZ_SEED and FNN_FAST_FUZZ_CASES change the draw; a failure
names its seed, and one case reruns with ``-k "seed=N-"``.
"""

import os
import random

import pytest
import torch

from fnn_fast import FM, FNN, ops
from fnn_fast.ops import checks, cpu, library, reference
from fnn_fast.optim import RowUpdate

pytestmark = pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")

SEED = int(os.environ.get("FNN_FAST_FUZZ_SEED", "0"))
CASES = int(os.environ.get("FNN_FAST_FUZZ_CASES", "240"))
ERRORS = (ValueError, TypeError, IndexError)

# module: FM / FNN; op: the public ops (fnn_fast.ops, any backend); kernel: the custom ops of
# fnn_fast.ops.native, called directly (the stricter contract: int64 ids, float32, contiguous).
TARGETS = ["fm_module", "fnn_module", "fm_op", "gather_op", "fm_kernel", "gather_kernel"]


def _gather(target: str) -> bool:
    return target in ("fnn_module", "gather_op", "gather_kernel")


def draw(rng: random.Random, gen: torch.Generator) -> dict:
    """A valid call of a random target."""
    target = rng.choice(TARGETS)
    k = rng.choice([0, 1, 3, 4, 8, 10])
    rows = rng.randint(1, 40)
    batch = rng.choice([0, 1, 2, 5, 17])
    num_fields = rng.randint(1, 5)
    slot_fields = None
    slots = num_fields if _gather(target) else rng.randint(0, 6)
    if _gather(target) and rng.random() < 0.5:
        slots = rng.randint(1, 7)
        slot_fields = torch.tensor([rng.randrange(num_fields) for _ in range(slots)])
    canary = torch.randn(rows + 1, 1 + k, generator=gen)
    return {
        "target": target,
        "canary": canary,
        "table": canary[:rows],  # contiguous, followed by one row no kernel may touch
        "ids": torch.randint(0, rows, (batch, slots), generator=gen),
        "values": torch.rand(batch, slots, generator=gen) + 0.5 if rng.random() < 0.6 else None,
        "slot_fields": slot_fields,
        "num_fields": num_fields,
        "width": rng.choice([0, 0, 16, 64]) if _gather(target) else 0,
        "rule": rng.choice(["sgd", "adagrad", "rowwise_adagrad", "adam"]),
        "train": rng.random() < 0.5,
        "values_grad": rng.random() < 0.3,
    }


def _has(a, key):
    return a[key] is not None


# Each breakage: (name, applies to the call?, breaks it in place, the error or None where the
# call stays valid for that target).
def _kernel(a):
    return a["target"].endswith("_kernel")


def _cols(a, n):
    a["ids"] = torch.randint(0, a["table"].shape[0], (a["ids"].shape[0], n))
    if _has(a, "values"):
        a["values"] = torch.rand(a["ids"].shape) + 0.5


BREAKAGES = [
    ("no breakage", lambda a: True, lambda a: None, lambda a: None),
    (
        "empty batch",
        lambda a: True,
        lambda a: a.update(
            ids=a["ids"][:0], values=None if a["values"] is None else a["values"][:0]
        ),
        lambda a: None,
    ),
    (
        "one id column more",
        lambda a: True,
        lambda a: _cols(a, a["ids"].shape[1] + 1),
        lambda a: ValueError if _gather(a["target"]) else None,
    ),
    (
        "twice the id columns",
        lambda a: a["ids"].shape[1] > 0,
        lambda a: _cols(a, 2 * a["ids"].shape[1]),
        lambda a: ValueError if _gather(a["target"]) else None,
    ),
    (
        "one id column fewer",
        lambda a: a["ids"].shape[1] > 0,
        lambda a: _cols(a, a["ids"].shape[1] - 1),
        lambda a: ValueError if _gather(a["target"]) else None,
    ),
    (
        "id past the table",
        lambda a: a["ids"].numel() > 0,
        lambda a: a["ids"].view(-1).__setitem__(-1, a["table"].shape[0]),
        lambda a: IndexError,
    ),
    (
        "negative id",
        lambda a: a["ids"].numel() > 0,
        lambda a: a["ids"].view(-1).__setitem__(0, -1),
        lambda a: IndexError,
    ),
    (
        "huge id",
        lambda a: a["ids"].numel() > 0,
        lambda a: a["ids"].view(-1).__setitem__(0, 2**40),
        lambda a: IndexError,
    ),
    ("float ids", lambda a: True, lambda a: a.update(ids=a["ids"].float()), lambda a: TypeError),
    (
        "int32 ids",
        lambda a: True,
        lambda a: a.update(ids=a["ids"].int()),
        lambda a: TypeError if _kernel(a) else None,
    ),
    ("1-D ids", lambda a: True, lambda a: a.update(ids=a["ids"].reshape(-1)), lambda a: ValueError),
    (
        "3-D ids",
        lambda a: True,
        lambda a: a.update(ids=a["ids"].unsqueeze(0)),
        lambda a: ValueError,
    ),
    (
        "strided ids",
        lambda a: a["ids"].shape[0] > 1 and a["ids"].shape[1] > 0,
        lambda a: a.update(ids=torch.cat([a["ids"], a["ids"]], 1)[:, : a["ids"].shape[1]]),
        lambda a: ValueError if _kernel(a) else None,
    ),
    (
        "ids on another device",
        lambda a: True,
        lambda a: a.update(ids=a["ids"].to("meta")),
        lambda a: ValueError,
    ),
    (
        "values of another shape",
        lambda a: True,
        lambda a: a.update(values=torch.rand(a["ids"].shape[0] + 1, a["ids"].shape[1])),
        lambda a: ValueError,
    ),
    (
        "int values",
        lambda a: _has(a, "values"),
        lambda a: a.update(values=a["values"].long()),
        lambda a: TypeError,
    ),
    (
        "float64 values",
        lambda a: _has(a, "values"),
        lambda a: a.update(values=a["values"].double()),
        lambda a: TypeError if _kernel(a) else None,
    ),
    (
        "values on another device",
        lambda a: _has(a, "values"),
        lambda a: a.update(values=a["values"].to("meta")),
        lambda a: ValueError,
    ),
    (
        "slot_fields entry past num_fields",
        lambda a: _has(a, "slot_fields"),
        lambda a: a["slot_fields"].__setitem__(-1, a["num_fields"]),
        lambda a: ValueError,
    ),
    (
        "negative slot_fields entry",
        lambda a: _has(a, "slot_fields"),
        lambda a: a["slot_fields"].__setitem__(0, -1),
        lambda a: ValueError,
    ),
    (
        "slot_fields of another length",
        lambda a: _has(a, "slot_fields"),
        lambda a: a.update(slot_fields=torch.cat([a["slot_fields"], a["slot_fields"][:1]])),
        lambda a: ValueError,
    ),
    (
        "int32 slot_fields",
        lambda a: _has(a, "slot_fields") and a["target"] != "fnn_module",
        lambda a: a.update(slot_fields=a["slot_fields"].int()),
        lambda a: TypeError,
    ),
    (
        "num_fields 0",
        lambda a: _gather(a["target"]),
        lambda a: a.update(num_fields=0),
        lambda a: ValueError,
    ),
    (
        "num_fields one less",
        lambda a: _gather(a["target"]) and a["num_fields"] > 1,
        lambda a: a.update(num_fields=a["num_fields"] - 1),
        lambda a: (
            None
            if _has(a, "slot_fields") and a["slot_fields"].max() < a["num_fields"]
            else ValueError
        ),
    ),
    (
        "negative width",
        lambda a: a["target"] in ("gather_op", "gather_kernel"),
        lambda a: a.update(width=-1),
        lambda a: ValueError,
    ),
    (
        "1-D table",
        lambda a: not a["target"].endswith("module"),
        lambda a: a.update(table=a["table"].reshape(-1)),
        lambda a: ValueError,
    ),
    (
        "float64 table",
        lambda a: not a["target"].endswith("module"),
        lambda a: a.update(table=a["table"].double()),
        lambda a: TypeError if _kernel(a) else None,
    ),
    (
        "strided table",
        lambda a: not a["target"].endswith("module"),
        lambda a: a.update(table=torch.cat([a["table"], a["table"]], 1)[:, : a["table"].shape[1]]),
        lambda a: ValueError if _kernel(a) and not a["table"].is_contiguous() else None,
    ),
    (
        "optimizer state of another shape",
        lambda a: a["train"] and a["rule"] != "sgd" and not a["target"].endswith("_op"),
        lambda a: a.update(break_state=True),
        lambda a: ValueError,
    ),
    (
        "unknown rule",
        lambda a: _kernel(a) and a["train"],
        lambda a: a.update(rule_code=7),
        lambda a: ValueError,
    ),
    (
        "gradient of another shape",
        lambda a: _kernel(a) and a["train"],
        lambda a: a.update(break_grad=True),
        lambda a: ValueError,
    ),
]


def _state(a):
    """The state of the table as drawn (before any breakage)."""
    rule = RowUpdate(a["rule"], lr=0.1)
    table = a["canary"][:-1]
    state1, state2 = rule.new_state(table)
    if a.get("break_state"):
        state1 = torch.zeros(table.shape[0] + 1, *state1.shape[1:])
    return rule, state1, state2, torch.zeros((), dtype=torch.int64), rule.hparams()


def _double(values):
    return None if values is None else values.detach().double()


def _reference_z(a, table, ids, values):
    fields = a["num_fields"] if a["slot_fields"] is not None else None
    return reference.fnn_fields(table, ids, values, a["slot_fields"], fields, sparse=False)


def _values(a):
    values = a["values"]
    if values is not None and a["values_grad"] and values.is_floating_point():
        values = values.detach().clone().requires_grad_(True)
    return values


def run(a):
    """Calls the target; for a valid call, checks its result against the reference."""
    target, table, ids = a["target"], a["table"], a["ids"]
    values = _values(a)
    if target.endswith("_kernel"):
        return run_kernel(a, table, ids, None if values is None else values.detach())
    if target == "fm_module":
        model = FM(table.shape[0], table.shape[1] - 1)
    elif target == "fnn_module":
        slot_fields = None if a["slot_fields"] is None else a["slot_fields"].tolist()
        model = FNN(table.shape[0], a["num_fields"], table.shape[1] - 1, hidden=(3,),
                    slot_fields=slot_fields)  # fmt: skip
    if target.endswith("_module"):
        with torch.no_grad():
            model.table.copy_(table)
        if a["train"]:
            model.fuse_update(RowUpdate(a["rule"], lr=0.1))
            if a.get("break_state"):
                model.update_state1 = torch.zeros(table.shape[0] + 1)
    else:
        weights = table.detach().clone().requires_grad_(a["train"])
    if target == "fm_module":
        got = model(ids, values)
    elif target == "fnn_module":
        assert model(ids, values).shape == (ids.shape[0],)
        got = model.input(ids, values)[:, 1:]
    elif target == "fm_op":
        got = ops.fm_forward(weights, torch.tensor(0.0), ids, values, sparse=False)
    else:
        got = ops.fnn_fields(weights, ids, values, a["slot_fields"], a["num_fields"],
                             sparse=False, width=a["width"])  # fmt: skip
    check_against_reference(a, got, table, ids, values)


def check_against_reference(a, got, table, ids, values):
    """got is the op's output (z possibly padded); with values that need a gradient, that
    gradient too, through whichever path ran (fused kernels or reference)."""
    ref_values = None
    if values is not None:
        ref_values = values.detach().double().requires_grad_(values.requires_grad)
    if a["target"].startswith("fm"):
        want = reference.fm_forward(table.double(), 0.0, ids, ref_values)
    else:
        want = _reference_z(a, table.double(), ids, ref_values)
        assert not got[:, want.shape[1] :].any()  # padding
        got = got[:, : want.shape[1]]
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    if got.requires_grad:
        weights = torch.randn(want.shape, dtype=torch.float64)
        (got.double() * weights).sum().backward()
        if ref_values is not None and ref_values.requires_grad:
            (want * weights).sum().backward()
            torch.testing.assert_close(values.grad.double(), ref_values.grad, atol=1e-4, rtol=1e-4)


def run_kernel(a, table, ids, values):
    gather = a["target"] == "gather_kernel"
    if gather:
        args = (a["slot_fields"], a["num_fields"])
        if not a["train"]:
            z = library.fnn_fields(table, ids, values, *args, a["width"])
            want = _reference_z(a, table.double(), ids, _double(values))
            torch.testing.assert_close(z[:, : want.shape[1]].double(), want, atol=1e-4, rtol=1e-4)
            assert not z[:, want.shape[1] :].any()
            return
    elif not a["train"]:
        got = library.fm_forward(table, ids, values)
        want = reference.fm_forward(table.double(), 0.0, ids, _double(values))
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
        return
    rule, state1, state2, step, hparams = _state(a)
    code = a.get("rule_code", checks.RULES[rule.kind])
    before = table.clone()
    # The reference's dense gradient of the same output, for the SGD update it must make.
    weights = table.detach().double().requires_grad_(True)
    if gather:
        out = library.fnn_fields_train(table, ids, values, *args, state1, state2, step, hparams,
                                      code, a["width"])  # fmt: skip
        grad = torch.randn(out.shape)
        if a.get("break_grad"):
            grad = grad[:, :1]
        library.fnn_fields_backward_update(table, ids, values, *args, grad, state1, state2, step,
                                          hparams, code)  # fmt: skip
        want = _reference_z(a, weights, ids, _double(values))
        dense = torch.autograd.grad((want * grad[:, : want.shape[1]].double()).sum(), weights)[0]
    else:
        _, sums = library.fm_forward_train(table, ids, values, state1, state2, step, hparams, code)
        grad = torch.randn(ids.shape[0] + (1 if a.get("break_grad") else 0))
        library.fm_backward_update(table, ids, values, sums, grad, state1, state2, step, hparams,
                                  code)  # fmt: skip
        want = reference.fm_forward(weights, 0.0, ids, _double(values))
        dense = torch.autograd.grad((want * grad.double()).sum(), weights, allow_unused=True)[0]
        dense = torch.zeros_like(weights) if dense is None else dense
    present = torch.zeros(table.shape[0], dtype=torch.bool)
    present[ids.reshape(-1)] = True
    torch.testing.assert_close(table[~present], before[~present], rtol=0, atol=0)
    if rule.kind == "sgd":
        expected = before.double() - 0.1 * dense
        torch.testing.assert_close(table.double(), expected, atol=1e-4, rtol=1e-4)


def test_the_sanitized_build_is_loaded():
    """CI's AddressSanitizer run sets FNN_FAST_REQUIRE_SANITIZER: a normal build loaded by mistake
    would pass every case without checking a single access."""
    wanted = os.environ.get("FNN_FAST_REQUIRE_SANITIZER")
    if not wanted:
        pytest.skip("FNN_FAST_REQUIRE_SANITIZER is unset (CI sets it for its ASan run)")
    from fnn_fast import _C

    assert _C.sanitize == wanted, f"{_C.__file__} was built with sanitize={_C.sanitize!r}"


@pytest.mark.parametrize("case", [SEED * 100_000 + i for i in range(CASES)],
                         ids=lambda seed: f"seed={seed}-")  # fmt: skip
def test_random_call(case):
    rng = random.Random(case)
    gen = torch.Generator().manual_seed(case)
    a = draw(rng, gen)
    applicable = [b for b in BREAKAGES if b[1](a)]
    name, _, breaks, expect = applicable[rng.randrange(len(applicable))]
    breaks(a)
    error = expect(a)
    canary = a["canary"][-1].clone()
    what = f"seed {case}: {a['target']} with {name} (train={a['train']}, rule={a['rule']})"
    try:
        run(a)
    except Exception as failure:
        if error is None or not isinstance(failure, error) or not str(failure):
            expected = "no error" if error is None else error.__name__
            raise AssertionError(f"{what}: raised {failure!r}, expected {expected}") from failure
    else:
        assert error is None, f"{what}: returned, expected {error.__name__}"
    assert torch.equal(a["canary"][-1], canary), f"{what}: the row after the table changed"
