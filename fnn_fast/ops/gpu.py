"""The GPU kernels for CUDA tensors: which of the two GPU backends runs them, CUDA C++
(``fnn_fast.ops.cuda``) or Triton (``fnn_fast.ops.triton``), both modules with one interface,
and the same six functions as ``fnn_fast.ops.cpu`` on top of the chosen one.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch
from torch import Tensor

from fnn_fast.ops import checks
from fnn_fast.ops.checks import hyperparameters

BACKENDS = ("cuda", "triton")  # "auto" takes the first that can run
_modules: dict[str, tuple[ModuleType | None, str | None]] = {}
_choice = "auto"

# An id range check of CUDA tensors costs a device-to-host sync per forward. The kernels never
# read outside the table whatever the ids (a bad id adds nothing), so FNN_FAST_GPU_BOUNDS_CHECK=0
# or set_bounds_check(False) trades the clear error for that sync, in these functions and in
# ops.check_ids (the modules' check) alike. CPU tensors are always checked: it costs no sync.
BOUNDS_CHECK = os.environ.get("FNN_FAST_GPU_BOUNDS_CHECK", "1") != "0"


def set_bounds_check(enabled: bool) -> None:
    """Whether CUDA ids (and slot_fields) are range-checked, at one host sync per forward."""
    global BOUNDS_CHECK
    BOUNDS_CHECK = bool(enabled)


def host_checks_range(ids: Tensor) -> bool:
    """Whether a range check may read ``ids`` on the host: always for CPU tensors; for CUDA ones
    only with the GPU bounds check on, and never inside CUDA graph capture (no sync may happen
    there: the scorer checks its batches before replaying a graph)."""
    if ids.device.type != "cuda":
        return ids.device.type == "cpu"  # others (meta, ...) have no values to read
    return BOUNDS_CHECK and not torch.cuda.is_current_stream_capturing()


def module(name: str) -> tuple[ModuleType | None, str | None]:
    """(module, None) when the GPU backend ``name`` can run CUDA tensors here, else
    (None, why not). Imported on first use: neither triton nor the CUDA build is needed to
    import fnn_fast."""
    if name not in BACKENDS:
        raise ValueError(f"unknown GPU backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name not in _modules:
        try:
            found = importlib.import_module(f"fnn_fast.ops.{name}")
        except ImportError as error:
            _modules[name] = (None, f"fnn_fast.ops.{name} cannot be imported: {error}")
        else:
            if not torch.cuda.is_available():
                reason = "no CUDA device"
            else:
                reason = None if found.available() else found.UNAVAILABLE_REASON or "unavailable"
            _modules[name] = (None if reason else found, reason)
    return _modules[name]


def set_backend(name: str, check: bool = True) -> None:
    """Which kernels run CUDA tensors: 'auto' (CUDA C++ if built, else Triton), 'cuda' or
    'triton'. With ``check``, a backend that cannot run here raises at once."""
    global _choice
    if name != "auto":
        found, reason = module(name)
        if check and found is None:
            raise RuntimeError(f"{name} backend unavailable: {reason}")
    _choice = name


def backend() -> str | None:
    """The backend that runs CUDA tensors, None when none can."""
    if _choice != "auto":
        return _choice if module(_choice)[0] is not None else None
    return next((name for name in BACKENDS if module(name)[0] is not None), None)


def _kernels() -> ModuleType:
    name = backend()
    if name is None:
        names = BACKENDS if _choice == "auto" else (_choice,)
        reasons = "; ".join(f"{n}: {module(n)[1]}" for n in names)
        raise RuntimeError(f"no GPU kernels can run CUDA tensors here ({reasons})")
    return _modules[name][0]


def check_bounds(ids: Tensor, num_rows: int, slot_fields=None, num_fields=0) -> None:
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
            raise checks.out_of_range(low if low < 0 else high, num_rows)
    if bounds:
        checks.check_slot_fields_range(*bounds, num_fields)


# --- The six functions of fnn_fast.ops.cpu, for CUDA tensors ----------------------------------


def fm_forward(table, ids, values):
    checks.check_fm_args(table, ids, values)
    check_bounds(ids, table.shape[0])
    return _kernels().fm_forward(table, ids, values, None)


def fm_forward_train(table, ids, values, state1, state2, step, hparams, rule):
    checks.check_fm_args(table, ids, values)
    checks.check_update(table, state1, state2, step, hparams, rule)
    check_bounds(ids, table.shape[0])
    sums = torch.empty(ids.shape[0], table.shape[1] - 1, dtype=torch.float32, device=table.device)
    return _kernels().fm_forward(table, ids, values, sums), sums


def fm_backward_update(table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule):
    checks.check_fm_backward_args(
        table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule
    )
    step.add_(1)  # step and hparams normally live on the CPU (FM/FNN keep them there): no sync
    if ids.numel():
        _kernels().fm_backward_update(
            table, ids, values, sums, grad_logits.to(torch.float32).contiguous(), state1,
            state2, hyperparameters(hparams), rule, int(step),
        )  # fmt: skip


def fnn_fields(table, ids, values, slot_fields, num_fields, width=0):
    checks.check_fields_args(table, ids, values, slot_fields, num_fields, width)
    check_bounds(ids, table.shape[0], slot_fields, num_fields)
    z = _kernels().fnn_fields(table, ids, values, slot_fields, num_fields)
    extra = checks.z_width(table, num_fields, width) - z.shape[1]
    return torch.nn.functional.pad(z, (0, extra)) if extra else z


def fnn_fields_train(
    table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule, width=0
):  # fmt: skip
    checks.check_fields_args(table, ids, values, slot_fields, num_fields, width)
    checks.check_update(table, state1, state2, step, hparams, rule)
    return fnn_fields(table, ids, values, slot_fields, num_fields, width)


def fnn_fields_backward_update(
    table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
):  # fmt: skip
    checks.check_fields_backward_args(
        table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
    )
    step.add_(1)
    if ids.numel():
        grad_z = grad_z[:, : num_fields * table.shape[1]]  # without z's padding columns
        _kernels().fnn_fields_backward_update(
            table, ids, values, slot_fields, num_fields, grad_z.to(torch.float32).contiguous(),
            state1, state2, hyperparameters(hparams), rule, int(step),
        )  # fmt: skip
