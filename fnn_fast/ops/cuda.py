"""The CUDA C++ kernels of fnn_fast._C (``csrc/cuda``) behind the GPU kernel interface that
``fnn_fast.ops.triton`` shares: plain functions over contiguous CUDA tensors.

The kernels are torch-free: they get raw addresses, sizes and the current stream of the
tensors' device (``torch.cuda.current_stream().cuda_stream``), and queue their work there
without synchronizing. The backward's scratch memory (sort buffers, run lists) is allocated
here with torch, so it comes from PyTorch's caching allocator on that same stream.

The kernels are built for Hopper (sm_90 machine code plus PTX, which the driver compiles for
later GPUs); :func:`available` is False, with :data:`UNAVAILABLE_REASON` saying why, when
fnn_fast._C was built without them, when there is no GPU, or when the GPU is older than sm_90.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fnn_fast.ops import checks

try:
    from fnn_fast import _C
except ImportError as error:  # the package stays usable without its compiled module
    _C = None
    _IMPORT_ERROR = f"fnn_fast._C is not built ({error})"
else:
    _IMPORT_ERROR = None

RULES = checks.RULES

# A row with more occurrences than this in a batch (a hot row) is cut into segments of this many,
# summed by separate groups of lanes, then combined by one block in a fixed order; shorter runs
# are summed by one group each. Tests lower it to push small batches through the long path.
LONG_RUN = 64

# Lanes of a warp that share one row (a power of two up to 32); 0 lets the kernels choose (a lane
# per 16-byte vector, or per two scalar columns). For tuning: the GPU benchmark times a few.
ROW_LANES = 0

_reason: list[str | None] = []  # computed on first use: probing the GPU initializes the driver


def _find_reason() -> str | None:
    if _C is None:
        return _IMPORT_ERROR
    if not hasattr(_C, "cuda"):
        return _C.cuda_unavailable_reason
    if not torch.cuda.is_available():
        return "no CUDA GPU is available to PyTorch"
    if _C.cuda.device_count() == 0:
        return (
            "the CUDA runtime linked into fnn_fast._C sees no GPU (is the driver older than the "
            "CUDA toolkit fnn_fast was built with?)"
        )
    major, minor = torch.cuda.get_device_capability()
    if major < 9:
        return (
            f"the CUDA kernels are built for sm_90 (Hopper) and later; this GPU is "
            f"sm_{major}{minor}"
        )
    return None


def __getattr__(name: str):
    if name == "UNAVAILABLE_REASON":  # str | None: why the kernels cannot run here
        if not _reason:
            _reason.append(_find_reason())
        return _reason[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available() -> bool:
    return __getattr__("UNAVAILABLE_REASON") is None


# --- Checks (cheap: attributes only, no device synchronization) -------------------------------


def _check_table(table: Tensor) -> None:
    if table.device.type != "cuda" or table.dtype != torch.float32 or table.dim() != 2:
        raise ValueError(
            f"table must be a float32 [rows, 1 + K] CUDA tensor, got {table.dtype} "
            f"{tuple(table.shape)} on {table.device}"
        )
    if not table.is_contiguous():
        raise ValueError("table must be contiguous")


def _check_like(name: str, t: Tensor | None, shape, dtype, device) -> None:
    if t is None:
        return
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise ValueError(
            f"{name} must be {dtype} {tuple(shape)} on {device}, got {t.dtype} "
            f"{tuple(t.shape)} on {t.device}"
        )
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_batch(table: Tensor, ids: Tensor, values: Tensor | None) -> None:
    _check_table(table)
    if ids.dim() != 2:
        raise ValueError(f"ids must be int64 [batch, slots], got shape {tuple(ids.shape)}")
    _check_like("ids", ids, ids.shape, torch.int64, table.device)
    _check_like("values", values, ids.shape, torch.float32, table.device)


def _check_state(table: Tensor, state1: Tensor, state2: Tensor, rule: int) -> None:
    rows = table.shape[0]
    if rule not in RULES.values():
        raise ValueError(f"unknown update rule {rule}; choose from {RULES}")
    if rule in (RULES["adagrad"], RULES["adam"]):
        _check_like("state1", state1, table.shape, torch.float32, table.device)
    elif rule == RULES["rowwise_adagrad"]:
        _check_like("state1", state1, (rows,), torch.float32, table.device)
    if rule == RULES["adam"]:
        _check_like("state2", state2, table.shape, torch.float32, table.device)


def _address(t: Tensor | None) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _launch(t: Tensor) -> tuple[int, int, int]:
    """(device index, current stream of that device as an integer cudaStream_t, ROW_LANES)."""
    device = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return device, torch.cuda.current_stream(device).cuda_stream, ROW_LANES


def _workspace(table: Tensor, items: int, launch) -> tuple[Tensor, int]:
    nbytes = _C.cuda.backward_workspace_bytes(
        items, table.shape[0], table.shape[1], LONG_RUN, *launch
    )
    return torch.empty(nbytes, dtype=torch.uint8, device=table.device), nbytes


# --- The interface ----------------------------------------------------------------------------


def fm_forward(table: Tensor, ids: Tensor, values: Tensor | None, sums: Tensor | None) -> Tensor:
    """FM logits [B] without the bias w0; fills ``sums`` [B, K] with sum_s x_s v_s if given."""
    _check_batch(table, ids, values)
    batch, slots = ids.shape
    _check_like("sums", sums, (batch, table.shape[1] - 1), torch.float32, table.device)
    logits = torch.empty(batch, dtype=torch.float32, device=table.device)
    _C.cuda.fm_forward(
        table.data_ptr(), table.shape[1], ids.data_ptr(), _address(values), batch, slots,
        logits.data_ptr(), _address(sums), *_launch(table),
    )  # fmt: skip
    return logits


def fm_backward_update(
    table: Tensor,
    ids: Tensor,
    values: Tensor | None,
    sums: Tensor,
    grad_logits: Tensor,
    state1: Tensor,
    state2: Tensor,
    hparams: tuple[float, float, float, float, float],
    rule: int,
    step: int,
) -> None:
    """Sums each present row's gradient g_b x (1, sums_b - x v) over its occurrences, adds
    weight decay once, and applies the rule to the row and its state in place."""
    _check_batch(table, ids, values)
    batch, slots = ids.shape
    _check_like("sums", sums, (batch, table.shape[1] - 1), torch.float32, table.device)
    _check_like("grad_logits", grad_logits, (batch,), torch.float32, table.device)
    _check_state(table, state1, state2, rule)
    if ids.numel() == 0:
        return
    launch = _launch(table)
    workspace, nbytes = _workspace(table, ids.numel(), launch)
    lr, weight_decay, eps, beta1, beta2 = hparams
    _C.cuda.fm_backward_update(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        batch, slots, _address(sums), grad_logits.data_ptr(), rule, lr, weight_decay, eps,
        beta1, beta2, step, _address(state1), _address(state2), workspace.data_ptr(), nbytes,
        LONG_RUN, *launch,
    )  # fmt: skip


def _fields_by_slot(slot_fields: Tensor, num_fields: int) -> tuple[Tensor, Tensor]:
    """The slots ordered by field (stably, so a field sums its slots in slot order) and each
    field's first index in that order, [F + 1]; without a device synchronization."""
    fields, slots = torch.sort(slot_fields, stable=True)
    bounds = torch.arange(num_fields + 1, device=slot_fields.device, dtype=slot_fields.dtype)
    return slots.contiguous(), torch.searchsorted(fields, bounds).contiguous()


def fnn_fields(
    table: Tensor, ids: Tensor, values: Tensor | None, slot_fields: Tensor | None, num_fields: int
) -> Tensor:
    """z [B, num_fields * (1 + K)]: z[b, f block] = sum over slots s of field f of x table[id]."""
    _check_batch(table, ids, values)
    batch, slots = ids.shape
    field_slots = field_offsets = None
    if slot_fields is None:
        if num_fields != slots:
            raise ValueError(f"without slot_fields, num_fields ({num_fields}) must equal the "
                             f"number of slots ({slots})")  # fmt: skip
    else:
        _check_like("slot_fields", slot_fields, (slots,), torch.int64, table.device)
        field_slots, field_offsets = _fields_by_slot(slot_fields, num_fields)
    z = torch.empty(batch, num_fields * table.shape[1], dtype=torch.float32, device=table.device)
    _C.cuda.fnn_fields(
        table.data_ptr(), table.shape[1], ids.data_ptr(), _address(values), batch, slots,
        _address(field_slots), _address(field_offsets), num_fields, z.data_ptr(), *_launch(table),
    )  # fmt: skip
    return z


def fnn_fields_backward_update(
    table: Tensor,
    ids: Tensor,
    values: Tensor | None,
    slot_fields: Tensor | None,
    num_fields: int,
    grad_z: Tensor,
    state1: Tensor,
    state2: Tensor,
    hparams: tuple[float, float, float, float, float],
    rule: int,
    step: int,
) -> None:
    """Sums each present row's gradient x grad_z[b, field block] over its occurrences, adds
    weight decay once, and applies the rule to the row and its state in place."""
    _check_batch(table, ids, values)
    batch, slots = ids.shape
    if slot_fields is None and num_fields != slots:
        raise ValueError(f"without slot_fields, num_fields ({num_fields}) must equal the "
                         f"number of slots ({slots})")  # fmt: skip
    _check_like("slot_fields", slot_fields, (slots,), torch.int64, table.device)
    _check_like("grad_z", grad_z, (batch, num_fields * table.shape[1]), torch.float32,
                table.device)  # fmt: skip
    _check_state(table, state1, state2, rule)
    if ids.numel() == 0:
        return
    launch = _launch(table)
    workspace, nbytes = _workspace(table, ids.numel(), launch)
    lr, weight_decay, eps, beta1, beta2 = hparams
    _C.cuda.fnn_fields_backward_update(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        batch, slots, _address(slot_fields), num_fields, grad_z.data_ptr(), rule, lr,
        weight_decay, eps, beta1, beta2, step, _address(state1), _address(state2),
        workspace.data_ptr(), nbytes, LONG_RUN, *launch,
    )  # fmt: skip
