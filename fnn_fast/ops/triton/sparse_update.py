"""The sparse backward fused with the optimizer, shared by the FM and the FNN gather.

Each of the batch's B S lookups (b, s) of row i = ids[b, s] with value x contributes a gradient
to that row:

- FM:  g_b x (1, sums_b - x v_i), with g_b = dL/dlogit_b and sums_b = sum_s x v (the forward's).
  Summed over a run of lookups of one row this is A - (0, c v_i) with A = sum g x (1, sums_b)
  and c = sum g x^2, so the row itself is read once, at the update.
- FNN: x dL/dz[b, field(s) block].

The proven way (FBGEMM's): sort the lookups by row, so the lookups of a row form a run. The
sort is stable, so each run keeps (b, s) order and the sums are deterministic. The sorted list
is cut into windows of WINDOW lookups and one program takes each window: it gathers every
lookup's gradient, sums each run with a segmented scan, and applies the rule to each row whose
run lies wholly inside the window. A run that crosses a window boundary (a hot row, or a run
that happens to straddle one) leaves one partial sum per window it touches; a second small
kernel, one program per boundary, adds a run's partials in order and applies the rule once.
So every present row is updated exactly once, by one program, with its whole gradient; a hot
row hit by every sample costs one partial per window, summed in blocks, not a serial loop; and
the only buffers are the sort's output and two partials per window: no gradient of the
table's size, nor a [B, S, D] one.

Host syncs: none. The grid depends on B S only, not on the number of unique rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fnn_fast.ops.checks import Hparams
from fnn_fast.ops.triton._common import adam_step_size, next_power_of_2, on_device

SGD, ADAGRAD, ROWWISE_ADAGRAD, ADAM = 0, 1, 2, 3

# Partial-sum slots of a window: the segment that ends at the window's end while its run goes
# on (HEAD, also when the run covers the whole window), and the last segment of a run that
# began in an earlier window (TAIL).
HEAD = tl.constexpr(0)
TAIL = tl.constexpr(1)


@triton.jit
def _segment_sum(flag_a, value_a, flag_b, value_b):
    # Combine of a segmented scan: where a segment starts (flag_b) the running sum restarts.
    return flag_a | flag_b, tl.where(flag_b != 0, value_b, value_a + value_b)


@triton.jit
def _load_rows(
    table_ptr,  # float32 [R, D]
    state1_ptr,  # adagrad: [R, D] sum of g^2; rowwise: [R]; adam: m [R, D]
    state2_ptr,  # adam: v [R, D]
    rows,  # [M] int64 rows to update
    update,  # [M] bool: which of them to update
    cols,  # [BLOCK_D] column indices
    D,
    RULE: tl.constexpr,
):
    """(weight, state1, state2) of the rows, 0 where masked; a state the rule does not use is
    the weight again (never read)."""
    mask = update[:, None] & (cols < D)[None, :]
    offsets = rows[:, None] * D + cols[None, :]
    weight = tl.load(table_ptr + offsets, mask=mask, other=0.0)
    first = weight
    second = weight
    if RULE == 1:
        first = tl.load(state1_ptr + offsets, mask=mask, other=0.0)
    elif RULE == 2:
        first = tl.load(state1_ptr + rows, mask=update, other=0.0)
    elif RULE == 3:
        first = tl.load(state1_ptr + offsets, mask=mask, other=0.0)
        second = tl.load(state2_ptr + offsets, mask=mask, other=0.0)
    return weight, first, second


@triton.jit
def _apply_rule(
    table_ptr,  # float32 [R, D], updated in place
    state1_ptr,
    state2_ptr,
    rows,  # [M] int64 rows to update
    update,  # [M] bool: which of them to update
    cols,  # [BLOCK_D] column indices
    D,
    weight,  # [M, BLOCK_D] the rows' values, state1 and state2 (from _load_rows)
    first,
    second,
    grad,  # [M, BLOCK_D] their summed gradients (0 where masked)
    scalars,  # (lr, weight_decay, eps, beta1, beta2, step_size); adam's step_size:
    # lr sqrt(1 - beta2^t) / (1 - beta1^t)
    RULE: tl.constexpr,
):
    # The math of csrc/cpu/row_update.h, with IEEE division and square root to match it.
    lr, weight_decay, eps, beta1, beta2, step_size = scalars
    mask = update[:, None] & (cols < D)[None, :]
    offsets = rows[:, None] * D + cols[None, :]
    grad = grad + weight_decay * weight
    if RULE == 0:
        weight = weight - lr * grad
    elif RULE == 1:
        total = first + grad * grad
        tl.store(state1_ptr + offsets, total, mask=mask)
        weight = weight - tl.div_rn(lr * grad, tl.sqrt_rn(total) + eps)
    elif RULE == 2:
        square = tl.sum(tl.where(mask, grad * grad, 0.0), axis=1)
        total = first + tl.div_rn(square, tl.zeros_like(square) + D)
        tl.store(state1_ptr + rows, total, mask=update)
        scale = tl.div_rn(tl.zeros_like(total) + lr, tl.sqrt_rn(total) + eps)
        weight = weight - scale[:, None] * grad
    else:
        m = first + (grad - first) * (1.0 - beta1)
        v = second + (grad * grad - second) * (1.0 - beta2)
        tl.store(state1_ptr + offsets, m, mask=mask)
        tl.store(state2_ptr + offsets, v, mask=mask)
        weight = weight - tl.div_rn(step_size * m, tl.sqrt_rn(v) + eps)
    tl.store(table_ptr + offsets, weight, mask=mask)


@triton.jit
def _window_update_kernel(
    keys_ptr,  # [N] the lookups' rows, sorted (int32 or int64)
    order_ptr,  # [N] int64: flat position b * S + s of each sorted lookup
    values_ptr,  # [B, S] float32 lookup values (read when HAS_VALUES)
    grad_ptr,  # FM: [B] dL/dlogit; FNN: [B, F * D] dL/dz
    sums_ptr,  # FM: [B, D - 1] sum_s x v saved by the forward (unused for the FNN)
    slot_fields_ptr,  # [S] int64 field of each slot (read when HAS_SLOT_FIELDS)
    table_ptr,
    state1_ptr,
    state2_ptr,
    partial_ptr,  # [windows, 2, D] float32: partial sums of runs that cross windows
    partial_c_ptr,  # FM: [windows, 2] float32: their sum g x^2
    N,
    S,
    D,
    R,
    GRAD_WIDTH,  # FNN: F * D, the row length of dL/dz
    scalars,  # the rule's floats (see _apply_rule)
    FM: tl.constexpr,
    HAS_VALUES: tl.constexpr,
    HAS_SLOT_FIELDS: tl.constexpr,
    RULE: tl.constexpr,
    WINDOW: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    window = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, WINDOW)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    i = window * WINDOW + lane
    live = i < N
    key = tl.load(keys_ptr + i, mask=live, other=-1)
    previous = tl.load(keys_ptr + i - 1, mask=live & (lane > 0), other=-1)
    following = tl.load(keys_ptr + i + 1, mask=i + 1 < N, other=-1)
    starts = (lane == 0) | (key != previous)
    run_ends = (i + 1 >= N) | (key != following)
    segment_ends = live & (run_ends | (lane == WINDOW - 1))
    # Out-of-range rows (callers check; this keeps a bad id from touching memory) add nothing.
    valid = live & (key >= 0) & (key < R)

    # Which segment ends finish a run here (whole), and which leave a partial sum: the run goes
    # on past the window (head), or began before it (tail: the window's first segment).
    first_key = tl.load(keys_ptr + window * WINDOW)
    key_before = tl.load(keys_ptr + window * WINDOW - 1, mask=window > 0, other=-1)
    continues = (window > 0) & (key_before == first_key)
    second_segment = tl.min(tl.where(starts & (lane > 0), lane, WINDOW), 0)
    continued = lane < tl.where(continues, second_segment, 0)
    head = segment_ends & (run_ends == 0)
    tail = segment_ends & run_ends & continued
    whole = segment_ends & run_ends & (continued == 0) & valid

    # The rows and their state do not depend on the gradient: issued first, their loads overlap
    # the gradient gathers below.
    rows = key.to(tl.int64)
    weight, first, second = _load_rows(
        table_ptr, state1_ptr, state2_ptr, rows, whole, cols, D, RULE
    )  # fmt: skip

    position = tl.load(order_ptr + i, mask=valid, other=0).to(tl.int32)
    b = position // S
    if HAS_VALUES:
        x = tl.load(values_ptr + position, mask=valid, other=0.0)
    else:
        x = valid.to(tl.float32)
    grad_mask = valid[:, None] & col_ok[None, :]
    if FM:
        gx = tl.load(grad_ptr + b, mask=valid, other=0.0) * x
        sums = tl.load(
            sums_ptr + b.to(tl.int64)[:, None] * (D - 1) + cols[None, :] - 1,
            mask=grad_mask & (cols >= 1)[None, :],
            other=0.0,
        )
        a = gx[:, None] * tl.where((cols == 0)[None, :], 1.0, sums)
        c = gx * x
    else:
        slot = position - b * S
        if HAS_SLOT_FIELDS:
            field = tl.load(slot_fields_ptr + slot, mask=valid, other=0)
        else:
            field = slot
        at = b.to(tl.int64)[:, None] * GRAD_WIDTH + field.to(tl.int64)[:, None] * D
        a = x[:, None] * tl.load(grad_ptr + at + cols[None, :], mask=grad_mask, other=0.0)

    flags = starts.to(tl.int32)
    _, a = tl.associative_scan(
        (tl.broadcast_to(flags[:, None], [WINDOW, BLOCK_D]), a), 0, _segment_sum
    )
    if FM:
        _, c = tl.associative_scan((flags, c), 0, _segment_sum)

    slot_of_partial = tl.where(head, HEAD, TAIL).to(tl.int64)
    partial = (window * 2 + slot_of_partial)[:, None] * D + cols[None, :]
    keep = head | tail
    tl.store(partial_ptr + partial, a, mask=keep[:, None] & col_ok[None, :])
    if FM:
        tl.store(partial_c_ptr + window * 2 + slot_of_partial, c, mask=keep)

    if FM:
        a = a - tl.where((cols >= 1)[None, :], c[:, None] * weight, 0.0)
    _apply_rule(
        table_ptr, state1_ptr, state2_ptr, rows, whole, cols, D, weight, first, second, a,
        scalars, RULE,
    )  # fmt: skip


@triton.jit
def _combine_kernel(
    keys_ptr,  # [N] sorted rows
    table_ptr,
    state1_ptr,
    state2_ptr,
    partial_ptr,  # [windows, 2, D] from _window_update_kernel
    partial_c_ptr,  # FM: [windows, 2]
    N,
    D,
    R,
    scalars,
    FM: tl.constexpr,
    RULE: tl.constexpr,
    WINDOW: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program per boundary between windows; a run that crosses several boundaries is
    # finished by the program of the first.
    boundary = tl.program_id(0).to(tl.int64) + 1
    at = boundary * WINDOW
    key = tl.load(keys_ptr + at)
    crosses = tl.load(keys_ptr + at - 1) == key
    key_before_previous = tl.load(keys_ptr + at - WINDOW - 1, mask=boundary > 1, other=-1)
    first_crossing = crosses & ((boundary == 1) | (key_before_previous != key))
    if first_crossing & (key >= 0) & (key < R):
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < D
        start_window = boundary - 1
        a = tl.load(partial_ptr + (start_window * 2 + HEAD) * D + cols, mask=col_ok, other=0.0)
        a = a[None, :]
        c = 0.0
        if FM:
            c = tl.load(partial_c_ptr + start_window * 2 + HEAD)
        # Windows the run covers wholly (it crosses their far boundary too) left their sum in
        # HEAD; the window where it ends, in TAIL. Sorted keys make the former a prefix.
        middles = tl.full([], BLOCK_W, tl.int32)
        next_window = boundary
        while middles == BLOCK_W:
            windows = next_window + tl.arange(0, BLOCK_W)
            far = (windows + 1) * WINDOW
            is_middle = (far < N) & (tl.load(keys_ptr + far, mask=far < N, other=-1) == key)
            middles = tl.sum(is_middle.to(tl.int32), 0)
            heads = tl.load(
                partial_ptr + (windows * 2 + HEAD)[:, None] * D + cols[None, :],
                mask=is_middle[:, None] & col_ok[None, :],
                other=0.0,
            )
            a += tl.sum(heads, 0, keep_dims=True)
            if FM:
                c += tl.sum(tl.load(partial_c_ptr + windows * 2 + HEAD, mask=is_middle, other=0.0))
            next_window += BLOCK_W
        last_window = next_window - BLOCK_W + middles
        tail = tl.load(partial_ptr + (last_window * 2 + TAIL) * D + cols, mask=col_ok, other=0.0)
        a += tail[None, :]
        if FM:
            c += tl.load(partial_c_ptr + last_window * 2 + TAIL)

        rows = tl.zeros([1], tl.int64) + key
        update = rows >= 0
        weight, first, second = _load_rows(
            table_ptr, state1_ptr, state2_ptr, rows, update, cols, D, RULE
        )  # fmt: skip
        if FM:
            a = a - tl.where((cols >= 1)[None, :], c * weight, 0.0)
        _apply_rule(
            table_ptr, state1_ptr, state2_ptr, rows, update, cols, D, weight, first, second, a,
            scalars, RULE,
        )  # fmt: skip


def window_size(dim: int) -> int:
    """Lookups per program: about 2048 gradient elements (a 16-float row: 128 lookups), 8 per
    thread of 8 warps. Compiled for sm_90 the Adam kernel then takes about 130 registers (80
    for row-wise Adagrad), so 4 programs fit on a multiprocessor; 4096 took 255."""
    return max(16, min(128, 2048 // next_power_of_2(dim)))


def sparse_update(
    table: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None,
    grad: torch.Tensor,
    sums: torch.Tensor | None,
    slot_fields: torch.Tensor | None,
    state1: torch.Tensor,
    state2: torch.Tensor,
    hparams: Hparams,
    rule: int,
    step: int,
    *,
    fm: bool,
    window: int | None = None,
) -> None:
    """Sum each present row's gradient over the batch and apply the rule in place (FM when
    ``fm``: grad is dL/dlogit [B] and sums the forward's [B, K]; else the FNN gather: grad is
    dL/dz [B, F D]). ``window`` overrides the lookups per program (a power of two; tests use a
    tiny one so that runs cross windows)."""
    batch, slots = ids.shape
    lookups = batch * slots
    if lookups == 0:
        return
    if rule not in (SGD, ADAGRAD, ROWWISE_ADAGRAD, ADAM):
        raise ValueError(f"unknown rule {rule}")
    num_rows, dim = table.shape
    block_d = next_power_of_2(dim)
    window = window or window_size(dim)
    if window & (window - 1):
        raise ValueError(f"window must be a power of two, got {window}")

    # Sorting 32-bit keys takes half the radix passes of 64-bit ones.
    flat = ids.reshape(-1)
    keys = flat.to(torch.int32) if num_rows <= torch.iinfo(torch.int32).max else flat
    keys, order = torch.sort(keys, stable=True)

    windows = triton.cdiv(lookups, window)
    partial = torch.empty(windows * 2 * dim, dtype=torch.float32, device=table.device)
    partial_c = partial
    if fm:
        partial_c = torch.empty(windows * 2, dtype=torch.float32, device=table.device)
    lr, weight_decay, eps, beta1, beta2 = hparams
    step_size = adam_step_size(lr, beta1, beta2, step) if rule == ADAM else 0.0
    scalars = (lr, weight_decay, eps, beta1, beta2, step_size)
    with on_device(table):
        _window_update_kernel[(windows,)](
            keys, order, values if values is not None else grad, grad,
            sums if sums is not None else grad, slot_fields if slot_fields is not None else order,
            table, state1, state2, partial, partial_c,
            lookups, slots, dim, num_rows, grad.shape[1] if grad.dim() == 2 else 0, scalars,
            FM=fm, HAS_VALUES=values is not None, HAS_SLOT_FIELDS=slot_fields is not None,
            RULE=rule, WINDOW=window, BLOCK_D=block_d,
            num_warps=max(1, min(8, window * block_d // 256)),  # 8 elements per thread
        )  # fmt: skip
        if windows > 1:
            _combine_kernel[(windows - 1,)](
                keys, table, state1, state2, partial, partial_c, lookups, dim, num_rows, scalars,
                FM=fm, RULE=rule, WINDOW=window, BLOCK_W=min(64, next_power_of_2(windows)),
                BLOCK_D=block_d, num_warps=1,
            )  # fmt: skip
