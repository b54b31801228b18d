"""The fused kernels as PyTorch custom ops: the C++ CPU kernels of fnn_fast._C for CPU tensors,
and for CUDA tensors the GPU kernels of ``fnn_fast.ops.cuda`` (CUDA C++) or
``fnn_fast.ops.triton`` (Triton), whichever :func:`set_gpu_backend` chose.

Each op is registered with ``torch.library`` (a fake implementation for tracing, and autograd
where it has a backward), so ``torch.compile(fullgraph=True)`` and ``opcheck`` work through them.
Every op checks its arguments (``fnn_fast.ops.checks``) before a raw address crosses into a
kernel, whoever calls it.

The training ops fuse the optimizer into backward, following FBGEMM: the forward op takes the
table *and its optimizer state*; its backward calls an op declared as mutating them, which
groups the batch's ids by row, sums each row's gradient and applies the update in place. The
table's ``.grad`` stays None: no gradient the size of the table, nor of the batch's rows, is made.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from fnn_fast.ops import checks

try:
    from fnn_fast import _C
except ImportError as error:  # the package stays usable through the reference path
    _C = None
    _build_error = Path(__file__).parents[1] / "native_build_error.txt"
    IMPORT_ERROR: str | None = (
        _build_error.read_text().strip() if _build_error.exists() else str(error)
    )
else:
    IMPORT_ERROR = None

RULES = checks.RULES


def available() -> bool:
    return _C is not None


def _check_fm(table: Tensor, ids: Tensor, values: Tensor | None) -> None:
    checks.check_batch(table, ids, values, kernels=True)


def _check_gather(table, ids, values, slot_fields, num_fields, width) -> None:
    checks.check_batch(table, ids, values, kernels=True)
    checks.check_fields(ids, slot_fields, num_fields, kernels=True)
    checks.check_width(width)


def _check_fm_backward(table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule):
    _check_fm(table, ids, values)
    checks.check_grad("sums", sums, (ids.shape[0], table.shape[1] - 1), table.device)
    checks.check_grad("grad_logits", grad_logits, (ids.shape[0],), table.device)
    checks.check_update(table, state1, state2, step, hparams, rule)


def _check_gather_backward(
    table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
):  # fmt: skip
    _check_gather(table, ids, values, slot_fields, num_fields, 0)
    if not (
        isinstance(grad_z, Tensor) and grad_z.dim() == 2 and grad_z.shape[0] == ids.shape[0]
        and grad_z.shape[1] >= num_fields * table.shape[1]
    ):  # fmt: skip
        raise ValueError(
            f"grad_z must be [{ids.shape[0]}, >= {num_fields * table.shape[1]}] (z's shape), "
            f"got {checks._described(grad_z)}"
        )
    checks.check_grad("grad_z", grad_z, grad_z.shape, table.device)
    checks.check_update(table, state1, state2, step, hparams, rule)


def _out_of_range(bad: int, num_rows: int) -> IndexError:
    return IndexError(f"feature id {bad} is outside the table of {num_rows} rows")


def _raise_if_bad(first_bad: int, ids: Tensor, num_rows: int) -> None:
    """A CPU kernel's report: -1, or the flat position of the first id outside the table."""
    if first_bad >= 0:
        raise _out_of_range(int(ids.reshape(-1)[first_bad]), num_rows)


def _address(t: Tensor | None) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _hyper(hparams: Tensor) -> tuple[float, float, float, float, float]:
    lr, weight_decay, eps, beta1, beta2 = hparams.tolist()
    return lr, weight_decay, eps, beta1, beta2


# --- FM ----------------------------------------------------------------------------------------


@torch.library.custom_op("fnn_fast::fm_scores", mutates_args=(), device_types="cpu")
def fm_scores(table: Tensor, ids: Tensor, values: Tensor | None) -> Tensor:
    """FM logits without the bias w0 (inference: no sums kept for a backward)."""
    _check_fm(table, ids, values)
    logits = torch.empty(ids.shape[0], dtype=torch.float32)
    bad = _C.fm_forward(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        ids.shape[0], ids.shape[1], logits.data_ptr(), 0,
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])
    return logits


# The fake implementations check too: they stand in for the kernels under torch.compile, and
# run (instead of a kernel) when any argument is on the meta device.
@fm_scores.register_fake
def _(table, ids, values):
    _check_fm(table, ids, values)
    return table.new_empty(ids.shape[0])


def _cpu_fm_train_forward(
    table: Tensor,
    ids: Tensor,
    values: Tensor | None,
    state1: Tensor,
    state2: Tensor,
    step: Tensor,
    hparams: Tensor,
    rule: int,
) -> tuple[Tensor, Tensor]:
    """(logits without w0 [B], sums [B, K]); its backward updates table and state in place."""
    _check_fm(table, ids, values)
    checks.check_update(table, state1, state2, step, hparams, rule)
    batch, k = ids.shape[0], table.shape[1] - 1
    logits = torch.empty(batch, dtype=torch.float32)
    sums = torch.empty(batch, k, dtype=torch.float32)
    bad = _C.fm_forward(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        batch, ids.shape[1], logits.data_ptr(), _address(sums),
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])
    return logits, sums


fm_train_forward = torch.library.custom_op(
    "fnn_fast::fm_train_forward", mutates_args=(), device_types="cpu"
)(_cpu_fm_train_forward)


@fm_train_forward.register_fake
def _(table, ids, values, state1, state2, step, hparams, rule):
    _check_fm(table, ids, values)
    checks.check_update(table, state1, state2, step, hparams, rule)
    return table.new_empty(ids.shape[0]), table.new_empty(ids.shape[0], table.shape[1] - 1)


def _cpu_fm_backward_update(
    table: Tensor,
    ids: Tensor,
    values: Tensor | None,
    sums: Tensor,
    grad_logits: Tensor,
    state1: Tensor,
    state2: Tensor,
    step: Tensor,
    hparams: Tensor,
    rule: int,
) -> None:
    _check_fm_backward(table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule)
    step.add_(1)
    grad_logits = grad_logits.to(torch.float32).contiguous()
    bad = _C.fm_backward_update(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        ids.shape[0], ids.shape[1], sums.data_ptr(), grad_logits.data_ptr(), rule,
        *_hyper(hparams), int(step), _address(state1), _address(state2),
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])


fm_backward_update = torch.library.custom_op(
    "fnn_fast::fm_backward_update",
    mutates_args=("table", "state1", "state2", "step"),
    device_types="cpu",
)(_cpu_fm_backward_update)


@fm_backward_update.register_fake
def _(table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule):
    _check_fm_backward(table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule)
    return None


def _fm_values_grad(table, ids, values, sums, grad_logits):
    """d loss / d values of the FM logits: g_b (w_i + <v_i, sums_b> - x v_i . v_i), read from
    the rows before the update."""
    rows = torch.nn.functional.embedding(ids, table)
    w, v = rows[..., 0], rows[..., 1:]
    dot = (v * sums.unsqueeze(1)).sum(-1) - values * v.square().sum(-1)
    return grad_logits.unsqueeze(1) * (w + dot)


def _gather_values_grad(table, ids, slot_fields, num_fields, grad_z):
    """d loss / d values of z: the dot of each lookup's row with its field's block of grad_z,
    read from the rows before the update."""
    dim = table.shape[1]
    grad_fields = grad_z[:, : num_fields * dim].reshape(ids.shape[0], num_fields, dim)
    if slot_fields is not None:
        grad_fields = grad_fields.index_select(1, slot_fields)
    return (torch.nn.functional.embedding(ids, table) * grad_fields).sum(-1)


def _fm_setup_context(ctx, inputs, output):
    table, ids, values, state1, state2, step, hparams, rule = inputs
    ctx.save_for_backward(table, ids, values, output[1], state1, state2, step, hparams)
    ctx.rule = rule


def _fm_backward(ctx, grad_logits, grad_sums):
    table, ids, values, sums, state1, state2, step, hparams = ctx.saved_tensors
    grad_values = None
    if ctx.needs_input_grad[2]:  # before the update changes the rows
        grad_values = _fm_values_grad(table, ids, values, sums, grad_logits)
    fm_backward_update(table, ids, values, sums, grad_logits, state1, state2, step, hparams,
                       ctx.rule)  # fmt: skip
    return None, None, grad_values, None, None, None, None, None


fm_train_forward.register_autograd(_fm_backward, setup_context=_fm_setup_context)


# --- FNN input ---------------------------------------------------------------------------------


def z_width(table: Tensor, num_fields: int, width: int) -> int:
    """z's row length: num_fields * (1 + K), or ``width`` when that is larger (zero padding)."""
    return max(width, num_fields * table.shape[1])


def _cpu_fnn_gather(
    table: Tensor,
    ids: Tensor,
    values: Tensor | None,
    slot_fields: Tensor | None,
    num_fields: int,
    width: int = 0,
) -> Tensor:
    """The value-weighted rows of each field, [B, num_fields * (1 + K)] (no w0 column), zero
    padded to ``width`` columns when that is larger."""
    _check_gather(table, ids, values, slot_fields, num_fields, width)
    z = torch.empty(ids.shape[0], z_width(table, num_fields, width), dtype=torch.float32)
    bad = _C.fnn_gather(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        ids.shape[0], ids.shape[1], _address(slot_fields), num_fields, z.data_ptr(),
        z.shape[1],
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])
    return z


fnn_gather = torch.library.custom_op("fnn_fast::fnn_gather", mutates_args=(), device_types="cpu")(
    _cpu_fnn_gather
)


@fnn_gather.register_fake
def _(table, ids, values, slot_fields, num_fields, width=0):
    _check_gather(table, ids, values, slot_fields, num_fields, width)
    return table.new_empty(ids.shape[0], z_width(table, num_fields, width))


def _cpu_fnn_gather_train(
    table: Tensor,
    ids: Tensor,
    values: Tensor | None,
    slot_fields: Tensor | None,
    num_fields: int,
    state1: Tensor,
    state2: Tensor,
    step: Tensor,
    hparams: Tensor,
    rule: int,
    width: int = 0,
) -> Tensor:
    """fnn_gather whose backward updates the table and its optimizer state in place."""
    _check_gather(table, ids, values, slot_fields, num_fields, width)
    checks.check_update(table, state1, state2, step, hparams, rule)
    return _cpu_fnn_gather(table, ids, values, slot_fields, num_fields, width)


fnn_gather_train = torch.library.custom_op(
    "fnn_fast::fnn_gather_train", mutates_args=(), device_types="cpu"
)(_cpu_fnn_gather_train)


@fnn_gather_train.register_fake
def _(table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule, width=0):
    _check_gather(table, ids, values, slot_fields, num_fields, width)
    checks.check_update(table, state1, state2, step, hparams, rule)
    return table.new_empty(ids.shape[0], z_width(table, num_fields, width))


def _cpu_fnn_gather_backward_update(
    table: Tensor,
    ids: Tensor,
    values: Tensor | None,
    slot_fields: Tensor | None,
    num_fields: int,
    grad_z: Tensor,
    state1: Tensor,
    state2: Tensor,
    step: Tensor,
    hparams: Tensor,
    rule: int,
) -> None:
    _check_gather_backward(
        table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
    )
    step.add_(1)
    # [B, z's width]: padding columns are not read
    grad_z = grad_z.to(torch.float32).contiguous()
    bad = _C.fnn_gather_backward_update(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        ids.shape[0], ids.shape[1], _address(slot_fields), num_fields, grad_z.data_ptr(),
        grad_z.shape[1], rule, *_hyper(hparams), int(step), _address(state1),
        _address(state2),
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])


fnn_gather_backward_update = torch.library.custom_op(
    "fnn_fast::fnn_gather_backward_update",
    mutates_args=("table", "state1", "state2", "step"),
    device_types="cpu",
)(_cpu_fnn_gather_backward_update)


@fnn_gather_backward_update.register_fake
def _(table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule):
    _check_gather_backward(
        table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
    )
    return None


def _gather_setup_context(ctx, inputs, output):
    table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule, _ = inputs
    ctx.save_for_backward(table, ids, values, slot_fields, state1, state2, step, hparams)
    ctx.num_fields, ctx.rule = num_fields, rule


def _gather_backward(ctx, grad_z):
    table, ids, values, slot_fields, state1, state2, step, hparams = ctx.saved_tensors
    grad_values = None
    if ctx.needs_input_grad[2]:  # before the update changes the rows
        grad_values = _gather_values_grad(table, ids, slot_fields, ctx.num_fields, grad_z)
    fnn_gather_backward_update(table, ids, values, slot_fields, ctx.num_fields, grad_z, state1,
                               state2, step, hparams, ctx.rule)  # fmt: skip
    return None, None, grad_values, *(None,) * 8


fnn_gather_train.register_autograd(_gather_backward, setup_context=_gather_setup_context)


# --- CUDA tensors ------------------------------------------------------------------------------
# The same ops, for CUDA tensors, call one of two modules with one interface (plain functions;
# see fnn_fast/ops/triton/__init__.py): CUDA C++ kernels or Triton ones.

GPU_BACKENDS = ("cuda", "triton")  # "auto" takes the first that can run
_gpu_modules: dict[str, tuple[ModuleType | None, str | None]] = {}
_gpu_choice = "auto"

# An id range check of CUDA tensors costs a device-to-host sync per forward. The kernels never
# read outside the table whatever the ids (a bad id adds nothing), so FNN_FAST_GPU_BOUNDS_CHECK=0
# or set_gpu_bounds_check(False) trades the clear error for that sync, in the ops and in
# ops.check_ids (the modules' check) alike. CPU tensors are always checked: it costs no sync.
GPU_BOUNDS_CHECK = os.environ.get("FNN_FAST_GPU_BOUNDS_CHECK", "1") != "0"


def set_gpu_bounds_check(enabled: bool) -> None:
    """Whether CUDA ids (and slot_fields) are range-checked, at one host sync per forward."""
    global GPU_BOUNDS_CHECK
    GPU_BOUNDS_CHECK = bool(enabled)


def host_checks_range(ids: Tensor) -> bool:
    """Whether a range check may read ``ids`` on the host: always for CPU tensors; for CUDA ones
    only with the GPU bounds check on, and never inside CUDA graph capture (no sync may happen
    there: the scorer checks its batches before replaying a graph)."""
    if ids.device.type != "cuda":
        return ids.device.type == "cpu"  # others (meta, ...) have no values to read
    return GPU_BOUNDS_CHECK and not torch.cuda.is_current_stream_capturing()


def gpu_module(name: str) -> tuple[ModuleType | None, str | None]:
    """(module, None) when the GPU backend ``name`` can run CUDA tensors here, else
    (None, why not). Imported on first use: neither triton nor the CUDA build is needed to
    import fnn_fast."""
    if name not in GPU_BACKENDS:
        raise ValueError(f"unknown GPU backend {name!r}; choose one of {', '.join(GPU_BACKENDS)}")
    if name not in _gpu_modules:
        try:
            module = importlib.import_module(f"fnn_fast.ops.{name}")
        except ImportError as error:
            _gpu_modules[name] = (None, f"fnn_fast.ops.{name} cannot be imported: {error}")
        else:
            if not torch.cuda.is_available():
                reason = "no CUDA device"
            else:
                reason = None if module.available() else module.UNAVAILABLE_REASON or "unavailable"
            _gpu_modules[name] = (None if reason else module, reason)
    return _gpu_modules[name]


def set_gpu_backend(name: str, check: bool = True) -> None:
    """Which kernels run CUDA tensors: 'auto' (CUDA C++ if built, else Triton), 'cuda' or
    'triton'. With ``check``, a backend that cannot run here raises at once."""
    global _gpu_choice
    if name != "auto":
        module, reason = gpu_module(name)
        if check and module is None:
            raise RuntimeError(f"{name} backend unavailable: {reason}")
    _gpu_choice = name


def gpu_backend() -> str | None:
    """The backend that runs CUDA tensors, None when none can."""
    if _gpu_choice != "auto":
        return _gpu_choice if gpu_module(_gpu_choice)[0] is not None else None
    return next((name for name in GPU_BACKENDS if gpu_module(name)[0] is not None), None)


def _gpu() -> ModuleType:
    name = gpu_backend()
    if name is None:
        names = GPU_BACKENDS if _gpu_choice == "auto" else (_gpu_choice,)
        reasons = "; ".join(f"{n}: {gpu_module(n)[1]}" for n in names)
        raise RuntimeError(f"no GPU kernels can run CUDA tensors here ({reasons})")
    return _gpu_modules[name][0]


def _check_gpu_bounds(ids: Tensor, num_rows: int, slot_fields=None, num_fields=0) -> None:
    """The GPU kernels' last line of defence (module-level checks name the field; under
    torch.compile those are skipped and this one remains): ids and slot_fields in range, for
    one host sync. The CPU kernels check as they read."""
    tensors = [t for t in (ids, slot_fields) if t is not None and t.numel()]
    if not tensors or not host_checks_range(ids):
        return
    bounds = torch.stack([v for t in tensors for v in t.aminmax()]).tolist()
    if ids.numel():
        (low, high), bounds = bounds[:2], bounds[2:]
        if low < 0 or high >= num_rows:
            raise _out_of_range(low if low < 0 else high, num_rows)
    if bounds:
        checks.check_slot_fields_range(*bounds, num_fields)


def _gpu_fm_scores(table, ids, values):
    _check_fm(table, ids, values)
    _check_gpu_bounds(ids, table.shape[0])
    return _gpu().fm_forward(table, ids, values, None)


def _gpu_fm_train_forward(table, ids, values, state1, state2, step, hparams, rule):
    _check_fm(table, ids, values)
    checks.check_update(table, state1, state2, step, hparams, rule)
    _check_gpu_bounds(ids, table.shape[0])
    sums = torch.empty(ids.shape[0], table.shape[1] - 1, dtype=torch.float32, device=table.device)
    return _gpu().fm_forward(table, ids, values, sums), sums


def _gpu_fm_backward_update(
    table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule
):  # fmt: skip
    _check_fm_backward(table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule)
    step.add_(1)  # step and hparams normally live on the CPU (FM/FNN keep them there): no sync
    if ids.numel():
        _gpu().fm_backward_update(
            table, ids, values, sums, grad_logits.to(torch.float32).contiguous(), state1,
            state2, _hyper(hparams), rule, int(step),
        )  # fmt: skip


def _gpu_fnn_gather(table, ids, values, slot_fields, num_fields, width=0):
    _check_gather(table, ids, values, slot_fields, num_fields, width)
    _check_gpu_bounds(ids, table.shape[0], slot_fields, num_fields)
    z = _gpu().fnn_gather(table, ids, values, slot_fields, num_fields)
    extra = z_width(table, num_fields, width) - z.shape[1]
    return torch.nn.functional.pad(z, (0, extra)) if extra else z


def _gpu_fnn_gather_train(
    table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule, width=0
):  # fmt: skip
    _check_gather(table, ids, values, slot_fields, num_fields, width)
    checks.check_update(table, state1, state2, step, hparams, rule)
    return _gpu_fnn_gather(table, ids, values, slot_fields, num_fields, width)


def _gpu_fnn_gather_backward_update(
    table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
):  # fmt: skip
    _check_gather_backward(
        table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
    )
    step.add_(1)
    if ids.numel():
        grad_z = grad_z[:, : num_fields * table.shape[1]]  # without z's padding columns
        _gpu().fnn_gather_backward_update(
            table, ids, values, slot_fields, num_fields, grad_z.to(torch.float32).contiguous(),
            state1, state2, _hyper(hparams), rule, int(step),
        )  # fmt: skip


fm_scores.register_kernel("cuda")(_gpu_fm_scores)
fm_train_forward.register_kernel("cuda")(_gpu_fm_train_forward)
fm_backward_update.register_kernel("cuda")(_gpu_fm_backward_update)
fnn_gather.register_kernel("cuda")(_gpu_fnn_gather)
fnn_gather_train.register_kernel("cuda")(_gpu_fnn_gather_train)
fnn_gather_backward_update.register_kernel("cuda")(_gpu_fnn_gather_backward_update)


# --- Eager training --------------------------------------------------------------------------
# Outside torch.compile the custom ops' Python dispatch (forward op, autograd node, mutating
# backward op) costs about 0.2 ms per training step, a tenth of a whole FM step at batch 4096.
# Eager training calls the same implementations through an autograd.Function instead, saving
# the same tensors and bumping the same version counters; torch.compile traces the ops.

_FM_TRAIN = {
    "cpu": (_cpu_fm_train_forward, _cpu_fm_backward_update),
    "cuda": (_gpu_fm_train_forward, _gpu_fm_backward_update),
}
_GATHER_TRAIN = {
    "cpu": (_cpu_fnn_gather_train, _cpu_fnn_gather_backward_update),
    "cuda": (_gpu_fnn_gather_train, _gpu_fnn_gather_backward_update),
}


def _eager(ids: Tensor) -> bool:
    # Tracers (dynamo, make_fx) hand over tensor subclasses; only plain tensors take the shortcut.
    return not torch.compiler.is_compiling() and type(ids) is torch.Tensor


class _FMTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, ids, values, state1, state2, step, hparams, rule):
        forward, ctx.update = _FM_TRAIN[table.device.type]
        logits, sums = forward(table, ids, values, state1, state2, step, hparams, rule)
        ctx.save_for_backward(table, ids, values, sums, state1, state2, step, hparams)
        ctx.rule = rule
        ctx.mark_non_differentiable(sums)
        return logits, sums

    @staticmethod
    def backward(ctx, grad_logits, grad_sums):
        table, ids, values, sums, state1, state2, step, hparams = ctx.saved_tensors
        grad_values = None
        if ctx.needs_input_grad[2]:  # before the update changes the rows
            grad_values = _fm_values_grad(table, ids, values, sums, grad_logits)
        ctx.update(table, ids, values, sums, grad_logits, state1, state2, step, hparams, ctx.rule)
        torch.autograd.graph.increment_version((table, state1, state2))
        return None, None, grad_values, *(None,) * 5


class _GatherTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, ids, values, slot_fields, num_fields, state1, state2, step, hparams,
                rule, width):  # fmt: skip
        forward, ctx.update = _GATHER_TRAIN[table.device.type]
        z = forward(table, ids, values, slot_fields, num_fields, state1, state2, step, hparams,
                    rule, width)  # fmt: skip
        ctx.save_for_backward(table, ids, values, slot_fields, state1, state2, step, hparams)
        ctx.num_fields, ctx.rule = num_fields, rule
        return z

    @staticmethod
    def backward(ctx, grad_z):
        table, ids, values, slot_fields, state1, state2, step, hparams = ctx.saved_tensors
        grad_values = None
        if ctx.needs_input_grad[2]:  # before the update changes the rows
            grad_values = _gather_values_grad(table, ids, slot_fields, ctx.num_fields, grad_z)
        ctx.update(table, ids, values, slot_fields, ctx.num_fields, grad_z, state1, state2, step,
                   hparams, ctx.rule)  # fmt: skip
        torch.autograd.graph.increment_version((table, state1, state2))
        return None, None, grad_values, *(None,) * 8


def fm_train(table, ids, values, state1, state2, step, hparams, rule):
    """(logits without w0, sums) whose backward updates table and state in place."""
    if _eager(ids):
        return _FMTrain.apply(table, ids, values, state1, state2, step, hparams, rule)
    return fm_train_forward(table, ids, values, state1, state2, step, hparams, rule)


def gather_train(
    table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule, width=0
):  # fmt: skip
    """z without w0 (zero padded to ``width`` columns) whose backward updates table and state
    in place."""
    args = (table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule)
    if _eager(ids):
        return _GatherTrain.apply(*args, width)
    return fnn_gather_train(*args, width)
