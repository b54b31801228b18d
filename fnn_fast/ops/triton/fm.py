"""The FM: lookup fused with the interaction, and its backward fused with the optimizer.

For a sample with lookups (row i_s, value x_s), s < S, and rows (w_i, v_i) of D = 1 + K floats:

    logit = sum_s x_s w_s + 1/2 sum_k [(sum_s x_s v_sk)^2 - sum_s (x_s v_sk)^2]

so one pass over the rows, keeping sum_s x_s row_s and sum_s (x_s row_s)^2 (column 0 of the
first is the linear term), gives the logit in O(S D). Training keeps sums = sum_s x_s v_s
[B, K] for the backward (see sparse_update).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fnn_fast.ops.checks import Hparams
from fnn_fast.ops.triton._common import (
    check_device,
    load_weighted_rows,
    multiprocessors,
    next_power_of_2,
    on_device,
)
from fnn_fast.ops.triton.sparse_update import sparse_update


@triton.jit
def _fm_forward_kernel(
    table_ptr,  # float32 [R, D]: w_i in column 0, v_i after it
    ids_ptr,  # int64 [B, S]
    values_ptr,  # float32 [B, S] (read when HAS_VALUES; else every x is 1)
    logits_ptr,  # float32 [B] out: the logits without w0
    sums_ptr,  # float32 [B, D - 1] out (when STORE_SUMS): sum_s x_s v_s
    B,
    S,
    D,
    R,
    HAS_VALUES: tl.constexpr,
    STORE_SUMS: tl.constexpr,
    BLOCK_B: tl.constexpr,  # samples per program
    BLOCK_S: tl.constexpr,  # slots gathered at once: more rows in flight
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two (masked)
):
    samples = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    sample_ok = samples < B
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    total = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    squares = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    for first_slot in range(0, S, BLOCK_S):
        slots = first_slot + tl.arange(0, BLOCK_S)
        at = samples[:, None] * S + slots[None, :]
        present = sample_ok[:, None] & (slots < S)[None, :]
        weighted = load_weighted_rows(
            table_ptr, ids_ptr, values_ptr, at, present, cols, D, R, HAS_VALUES
        )
        total += tl.sum(weighted, axis=1)
        squares += tl.sum(weighted * weighted, axis=1)
    linear = tl.sum(tl.where((cols == 0)[None, :], total, 0.0), axis=1)
    pairwise = tl.sum(tl.where((cols >= 1)[None, :], total * total - squares, 0.0), axis=1)
    tl.store(logits_ptr + samples, linear + 0.5 * pairwise, mask=sample_ok)
    if STORE_SUMS:
        tl.store(
            sums_ptr + samples[:, None] * (D - 1) + cols[None, :] - 1,
            total,
            mask=sample_ok[:, None] & ((cols >= 1) & col_ok)[None, :],
        )


def lookup_blocks(
    batch: int, slots: int, dim: int, device: torch.device, slot_programs: bool = False
) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_S, BLOCK_D) for a gather of [B, S] rows of dim floats: tiles of about
    2048 elements (16 per thread of 4 warps), up to 32 slots at once so that many independent
    row loads are in flight, and, on a GPU, at least 4 programs per multiprocessor where the
    batch allows (``slot_programs``: the grid splits the slots too, as the FNN gather's)."""
    block_d = next_power_of_2(dim)
    block_s = min(next_power_of_2(slots), max(1, 512 // block_d))
    block_b = max(1, min(64, 2048 // (block_s * block_d)))
    slot_blocks = triton.cdiv(slots, block_s) if slot_programs else 1
    target = 4 * multiprocessors(device)
    while block_b > 1 and triton.cdiv(batch, block_b) * slot_blocks < target:
        block_b //= 2
    return block_b, block_s, block_d


def fm_forward(
    table: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None,
    sums: torch.Tensor | None,
) -> torch.Tensor:
    """FM logits [B] without the bias w0; fills ``sums`` [B, K] when given (training)."""
    check_device(table)
    batch, slots = ids.shape
    logits = torch.empty(batch, dtype=torch.float32, device=table.device)
    if batch == 0:
        return logits
    block_b, block_s, block_d = lookup_blocks(batch, slots, table.shape[1], table.device)
    with on_device(table):
        _fm_forward_kernel[(triton.cdiv(batch, block_b),)](
            table, ids, values if values is not None else table, logits,
            sums if sums is not None else logits, batch, slots, table.shape[1], table.shape[0],
            HAS_VALUES=values is not None, STORE_SUMS=sums is not None,
            BLOCK_B=block_b, BLOCK_S=block_s, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return logits


def fm_backward_update(
    table: torch.Tensor, ids: torch.Tensor, values: torch.Tensor | None, sums: torch.Tensor,
    grad_logits: torch.Tensor, state1: torch.Tensor, state2: torch.Tensor, hparams: Hparams,
    rule: int, step: int, *, window: int | None = None,
) -> None:  # fmt: skip
    """Sum each present row's gradient g_b x (1, sums_b - x v_i) over the batch and apply the
    rule to it in place (``window``: see sparse_update)."""
    check_device(table)
    sparse_update(
        table, ids, values, grad_logits, sums, None, state1, state2, hparams, rule, step,
        fm=True, window=window,
    )  # fmt: skip
