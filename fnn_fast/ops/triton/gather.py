"""The FNN input: value-weighted rows summed per field, and its backward fused with the optimizer.

z[b, f D:(f + 1) D] = sum over the slots s of field f of x_{b,s} table[ids[b, s]]. Usually each
field has one slot; a multi-valued field has several (slot_fields maps slots to fields), and
a field with none gets zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fnn_fast.ops.triton._common import check_device, on_device
from fnn_fast.ops.triton.fm import lookup_blocks
from fnn_fast.ops.triton.sparse_update import sparse_update


@triton.jit
def _fnn_fields_kernel(
    table_ptr,  # float32 [R, D]
    ids_ptr,  # int64 [B, S]
    values_ptr,  # float32 [B, S] (read when HAS_VALUES)
    field_slots_ptr,  # int64 [S]: the slots ordered by field (read when GROUPED)
    field_starts_ptr,  # int64 [F]: where each field's slots begin in field_slots
    field_counts_ptr,  # int64 [F]: how many slots each field has
    z_ptr,  # float32 [B, F * D] out
    B,
    S,
    F,
    D,
    R,
    HAS_VALUES: tl.constexpr,
    GROUPED: tl.constexpr,  # False: slot s is field s
    BLOCK_B: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    samples = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    fields = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    sample_ok = samples < B
    field_ok = fields < F
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    if GROUPED:
        first = tl.load(field_starts_ptr + fields, mask=field_ok, other=0)
        count = tl.load(field_counts_ptr + fields, mask=field_ok, other=0)
        longest = tl.max(count, 0)
    else:
        first = fields
        count = field_ok.to(tl.int32)
        longest = 1
    total = tl.zeros([BLOCK_B, BLOCK_F, BLOCK_D], tl.float32)
    for j in range(0, longest):
        taken = field_ok & (j < count)
        if GROUPED:
            slots = tl.load(field_slots_ptr + first + j, mask=taken, other=0)
        else:
            slots = first
        at = samples[:, None] * S + slots[None, :]
        present = sample_ok[:, None] & taken[None, :]
        ids = tl.load(ids_ptr + at, mask=present, other=0)
        # Callers check ids; this keeps a bad one from reading outside the table.
        present = present & (ids >= 0) & (ids < R)
        if HAS_VALUES:
            x = tl.load(values_ptr + at, mask=present, other=0.0)
        else:
            x = present.to(tl.float32)
        rows = tl.load(
            table_ptr + ids[:, :, None] * D + cols[None, None, :],
            mask=present[:, :, None] & col_ok[None, None, :],
            other=0.0,
        )
        total += x[:, :, None] * rows
    tl.store(
        z_ptr + samples[:, None, None] * (F * D) + fields[None, :, None] * D + cols[None, None, :],
        total,
        mask=sample_ok[:, None, None] & field_ok[None, :, None] & col_ok[None, None, :],
    )


def fnn_fields(
    table: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None,
    slot_fields: torch.Tensor | None,
    num_fields: int,
) -> torch.Tensor:
    """z [B, num_fields * D], the FNN input without its w0 column."""
    check_device(table)
    batch, slots = ids.shape
    dim = table.shape[1]
    z = torch.empty(batch, num_fields * dim, dtype=torch.float32, device=table.device)
    if batch == 0 or num_fields == 0:
        return z
    if slot_fields is not None:
        # Three tiny device ops, no host sync: the slots grouped by field.
        field_slots = torch.sort(slot_fields, stable=True).indices
        counts = torch.zeros(num_fields, dtype=torch.int64, device=table.device)
        counts.scatter_add_(0, slot_fields, torch.ones_like(slot_fields))
        starts = torch.cumsum(counts, 0) - counts
    else:
        field_slots = starts = counts = ids
    block_b, block_f, block_d = lookup_blocks(batch, num_fields, dim, table.device, True)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(num_fields, block_f))
    with on_device(table):
        _fnn_fields_kernel[grid](
            table, ids, values if values is not None else table, field_slots, starts, counts,
            z, batch, slots, num_fields, dim, table.shape[0],
            HAS_VALUES=values is not None, GROUPED=slot_fields is not None,
            BLOCK_B=block_b, BLOCK_F=block_f, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return z


def fnn_fields_backward_update(
    table: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None,
    slot_fields: torch.Tensor | None,
    num_fields: int,
    grad_z: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor,
    hparams: tuple[float, float, float, float, float],
    rule: int,
    step: int,
    *,
    window: int | None = None,
) -> None:
    """Sum each present row's gradient x dL/dz[b, field block] over the batch and apply the
    rule to it in place (``window``: see sparse_update)."""
    check_device(table)
    if grad_z.shape != (ids.shape[0], num_fields * table.shape[1]):
        raise ValueError(
            f"grad_z must be [{ids.shape[0]}, {num_fields * table.shape[1]}], "
            f"got {tuple(grad_z.shape)}"
        )
    sparse_update(
        table, ids, values, grad_z, None, slot_fields, state1, state2, hparams, rule, step,
        fm=False, window=window,
    )  # fmt: skip
