"""fnn_fast ops: one public function per op, several implementations behind it.

The reference (pure PyTorch, ``reference``) always works. CPU tensors run on the native C++
kernels of fnn_fast._C (``cpu``) where they apply; CUDA tensors on the GPU kernels (``gpu``:
CUDA C++ in ``cuda`` or Triton in ``triton``). ``library`` registers both as torch custom ops
(for torch.compile), and ``eager`` calls the training ones without the custom ops' dispatch
cost. Each op keeps its name at every level: ``fm_forward``, ``fnn_fields`` (and their
``_train`` / ``_backward_update`` halves where the optimizer update is fused).

``FNN_FAST_BACKEND``, :func:`set_backend` or, for a block, :func:`use_backend` chooses:
'reference' forces the reference everywhere, 'native' requires the C++ CPU kernels, 'cuda' or
'triton' picks the kernels for CUDA tensors (CPU tensors then run as under 'auto').
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch

from fnn_fast.ops import checks, cpu, eager, gpu, library, reference
from fnn_fast.ops.gpu import set_bounds_check as set_gpu_bounds_check  # noqa: F401 (public)

_BACKENDS = ("auto", "reference", "native", *gpu.BACKENDS)
_forced = os.environ.get("FNN_FAST_BACKEND", "auto")
if _forced not in _BACKENDS:
    raise ValueError(f"FNN_FAST_BACKEND={_forced!r}; choose one of {', '.join(_BACKENDS)}")
# Checked when a CUDA tensor first needs it: importing fnn_fast never imports triton.
gpu.set_backend(_forced if _forced in gpu.BACKENDS else "auto", check=False)


def set_backend(name: str) -> None:
    """Choose the backend: 'auto' (fastest available), 'reference', 'native' (C++ CPU kernels),
    or 'cuda' / 'triton' (the kernels for CUDA tensors)."""
    global _forced
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    if name == "native" and not cpu.available():
        raise RuntimeError(f"native backend unavailable: {cpu.IMPORT_ERROR}")
    gpu.set_backend(name if name in gpu.BACKENDS else "auto")
    _forced = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with fnn_fast.use_backend("reference"): ...`` runs the block under that backend and
    restores the one chosen before, also when the block raises. (The choice is process-wide:
    other threads see it too while the block runs.)"""
    previous = _forced
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def backends() -> dict:
    """Which backends exist here and which ones run: ``active`` for CPU tensors,
    ``cuda_tensors`` for CUDA tensors ('reference' where no GPU kernels can run them)."""
    gpus = {name: gpu.module(name) for name in gpu.BACKENDS}
    return {
        "available": ["reference"]
        + (["native"] if cpu.available() else [])
        + [name for name, (module, _) in gpus.items() if module is not None],
        "selected": _forced,
        "active": "native" if _use_native() else "reference",
        "cuda_tensors": (_forced != "reference" and gpu.backend()) or "reference",
        "native_error": cpu.IMPORT_ERROR,
        "gpu_errors": {name: reason for name, (_, reason) in gpus.items()},
    }


def _use_native() -> bool:
    return _forced != "reference" and cpu.available()


def check_ids(ids: torch.Tensor, num_features: int, slot_names=None) -> None:
    """Raise a clear error for ids outside [0, num_features), naming the offending field. On
    CUDA tensors this costs a host sync, and is skipped where the GPU bounds check is off
    (``FNN_FAST_GPU_BOUNDS_CHECK=0``, :func:`set_gpu_bounds_check`)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise ValueError(f"ids must be an int tensor [batch, fields], got {ids!r:.80}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ids must be int32 or int64, got {ids.dtype}")
    if ids.numel() == 0 or torch.compiler.is_compiling() or not gpu.host_checks_range(ids):
        return  # under torch.compile the kernels check bounds; a CUDA graph's caller checks
    low, high = (int(v) for v in ids.aminmax())  # one pass; locate the culprit only on error
    if low < 0 or high >= num_features:
        bad = (ids < 0) | (ids >= num_features)
        row, slot = (int(i) for i in bad.nonzero()[0])
        named = slot_names is not None and slot < len(slot_names)
        name = slot_names[slot] if named else f"in column {slot}"
        raise IndexError(
            f"feature id {int(ids[row, slot])} of field {name} (row {row}) is outside the "
            f"table of {num_features} rows"
        )


class FusedArgs(NamedTuple):
    """A table's optimizer state and rule, for ops that update it inside backward."""

    state1: torch.Tensor
    state2: torch.Tensor
    step: torch.Tensor
    hparams: torch.Tensor
    kind: str


def _fused_kernels_apply(table) -> bool:
    if _forced == "reference" or table.dtype != torch.float32 or not table.is_contiguous():
        return False
    if table.device.type == "cpu":
        return cpu.available()
    return table.device.type == "cuda" and gpu.backend() is not None


def _native_inputs(table, ids, values):
    """Contiguous int64 ids and float32 values; None when no fused kernels apply (then the
    reference runs)."""
    if not _fused_kernels_apply(table):
        return None
    ids = ids.to(torch.int64).contiguous()
    if values is not None:
        values = values.to(torch.float32).contiguous()
    return ids, values


def _grads(table, values) -> tuple[bool, bool]:
    """Whether the table and the values need gradients here."""
    enabled = torch.is_grad_enabled()
    return (
        enabled and table.requires_grad,
        enabled and values is not None and values.requires_grad,
    )


def fm_forward(table, w0, ids, values=None, sparse=True, fused: FusedArgs | None = None):
    """FM logits [B]. Native kernels serve inference, and training when the table's update is
    fused (``fused``); otherwise the reference computes them with a sparse table gradient. The
    values get their gradient on every path."""
    checks.check_batch(table, ids, values)
    inputs = _native_inputs(table, ids, values)
    if inputs is not None:
        table_grad, values_grad = _grads(table, values)
        if not (table_grad or values_grad):
            return w0 + library.fm_forward(table.detach(), *inputs)
        if fused is not None and table_grad:
            logits, _ = eager.fm_forward_train(
                table, *inputs, fused.state1, fused.state2, fused.step, fused.hparams,
                checks.RULES[fused.kind],
            )  # fmt: skip
            return w0 + logits
    return reference.fm_forward(table, w0, ids, values, sparse)


def fnn_input(
    table, w0, ids, values=None, slot_fields=None, num_fields=None, sparse=True,
    fused: FusedArgs | None = None,
):  # fmt: skip
    """The FNN's dense input z = [w0, z_1, ..., z_F]: [B, 1 + F (1 + K)]."""
    z = fnn_fields(table, ids, values, slot_fields, num_fields, sparse, fused)
    return torch.cat([w0.reshape(1, 1).expand(z.shape[0], 1), z], dim=1)


def fnn_fields(
    table, ids, values=None, slot_fields=None, num_fields=None, sparse=True,
    fused: FusedArgs | None = None, width: int = 0,
):  # fmt: skip
    """z without its w0 column, [B, F (1 + K)]: the FNN folds w0 into its first layer's bias.
    Native kernels serve inference, and training when the table's update is fused (``fused``);
    they pad z with zero columns up to ``width`` when that is larger. Otherwise the reference
    computes it, with a sparse table gradient (and no padding). The values get their gradient on
    every path."""
    checks.check_batch(table, ids, values)
    fields = checks.check_fields(ids, slot_fields, num_fields)
    checks.check_width(width)
    inputs = _native_inputs(table, ids, values)
    if inputs is not None:
        table_grad, values_grad = _grads(table, values)
        if not (table_grad or values_grad):
            return library.fnn_fields(table.detach(), *inputs, slot_fields, fields, width)
        if fused is not None and table_grad:
            return eager.fnn_fields_train(
                table, *inputs, slot_fields, fields, fused.state1, fused.state2, fused.step,
                fused.hparams, checks.RULES[fused.kind], width,
            )  # fmt: skip
    if slot_fields is not None and slot_fields.device.type == "cpu" and slot_fields.numel():
        checks.check_slot_fields_range(*(int(v) for v in slot_fields.aminmax()), fields)
    return reference.fnn_fields(table, ids, values, slot_fields, fields, sparse)
