"""Pure PyTorch implementations of the fnn_fast ops: the oracle every kernel is tested against
and the fallback when no faster backend is available.

Tables are float32 [num_features, 1 + K]: column 0 holds the linear weight w_i, columns 1..K the
factors v_i, so one lookup reads everything a feature contributes (one row per feature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lookup(table: torch.Tensor, ids: torch.Tensor, values: torch.Tensor | None, sparse: bool):
    """Value-weighted rows x_bs * table[ids_bs]: [B, S, 1 + K], in the table's dtype (as the
    kernels compute them)."""
    rows = F.embedding(ids, table, sparse=sparse)
    if values is not None:
        rows = rows * values.to(rows.dtype).unsqueeze(-1)
    return rows


def fm_forward(
    table: torch.Tensor,
    w0: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None = None,
    sparse: bool = True,
) -> torch.Tensor:
    """FM logits [B] in O(S K) per sample:

    w0 + sum_s x_s w_s + 1/2 sum_k [(sum_s x_s v_sk)^2 - sum_s (x_s v_sk)^2]
    """
    rows = lookup(table, ids, values, sparse)
    linear = rows[..., 0].sum(dim=1)
    factors = rows[..., 1:]
    pairwise = 0.5 * (factors.sum(dim=1).square() - factors.square().sum(dim=1)).sum(dim=1)
    return w0 + linear + pairwise


def fnn_fields(
    table: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None = None,
    slot_fields: torch.Tensor | None = None,
    num_fields: int | None = None,
    sparse: bool = True,
) -> torch.Tensor:
    """z_1, ..., z_F with z_f = sum over slots of field f of x_s [w_s, v_s]: [B, F (1 + K)]."""
    rows = lookup(table, ids, values, sparse)
    batch, slots, dim = rows.shape
    if slot_fields is not None:
        # Multi-valued fields: several slots share one field, their rows are summed.
        fields = torch.zeros(batch, num_fields, dim, dtype=rows.dtype, device=rows.device)
        rows = fields.index_add(1, slot_fields, rows)
    return rows.reshape(batch, rows.shape[1] * dim)


def fnn_input(
    table: torch.Tensor,
    w0: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None = None,
    slot_fields: torch.Tensor | None = None,
    num_fields: int | None = None,
    sparse: bool = True,
) -> torch.Tensor:
    """The FNN's dense input z = [w0, z_1, ..., z_F]: [B, 1 + F (1 + K)]."""
    z = fnn_fields(table, ids, values, slot_fields, num_fields, sparse)
    return torch.cat([w0.reshape(1, 1).expand(z.shape[0], 1), z], dim=1)
