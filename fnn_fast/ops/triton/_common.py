"""Launch helpers shared by the Triton kernels."""

from __future__ import annotations

import contextlib
import functools
import math
import struct

import torch
import triton
import triton.language as tl


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of the device: launches aim at several programs on each. The
    interpreter (CPU tensors) runs programs one by one, so fewer, larger ones suit it."""
    if device.type != "cuda":
        return 1
    return _multiprocessors(device.index if device.index is not None else 0)


def check_device(table: torch.Tensor) -> None:
    # The launch would otherwise fail deep inside Triton with an unhelpful message.
    from fnn_fast.ops.triton import INTERPRETED

    if table.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"the Triton kernels need CUDA tensors, got {table.device} (TRITON_INTERPRET=1 "
            "runs them on CPU tensors)"
        )


def float32(value: float) -> float:
    """value rounded to float32, as the C++ kernels receive it."""
    return struct.unpack("f", struct.pack("f", value))[0]


def adam_step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    """lr sqrt(1 - beta2^t) / (1 - beta1^t), in double from the float32 inputs, as
    csrc/cpu/row_update.h computes it."""
    lr, beta1, beta2 = float32(lr), float32(beta1), float32(beta2)
    return float32(lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step))


def on_device(table: torch.Tensor):
    """Triton launches on the current CUDA device: make it the table's (several GPUs)."""
    if table.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(table.device)


@triton.jit
def load_weighted_rows(
    table_ptr, ids_ptr, values_ptr, at, present, cols, D, R, HAS_VALUES: tl.constexpr
):
    """x table[id] [M, N, BLOCK_D] for the lookups at flat positions ``at`` [M, N] of ids and
    values where ``present``; 0 elsewhere (every x is 1 without HAS_VALUES)."""
    ids = tl.load(ids_ptr + at, mask=present, other=0)
    # Callers check ids; this keeps a bad one from reading outside the table.
    present = present & (ids >= 0) & (ids < R)
    if HAS_VALUES:
        x = tl.load(values_ptr + at, mask=present, other=0.0)
    else:
        x = present.to(tl.float32)
    rows = tl.load(
        table_ptr + ids[:, :, None] * D + cols[None, None, :],
        mask=present[:, :, None] & (cols < D)[None, None, :],
        other=0.0,
    )
    return x[:, :, None] * rows
