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


# The values' gradients of the fused training ops, which update the table in their backward and
# so compute these from the rows before the update.


def fm_values_grad(table, ids, values, sums, grad_logits):
    """d loss / d values of the FM logits: g_b (w_i + <v_i, sums_b> - x v_i . v_i)."""
    rows = F.embedding(ids, table)
    w, v = rows[..., 0], rows[..., 1:]
    dot = (v * sums.unsqueeze(1)).sum(-1) - values * v.square().sum(-1)
    return grad_logits.unsqueeze(1) * (w + dot)


def fnn_fields_values_grad(table, ids, slot_fields, num_fields, grad_z):
    """d loss / d values of z: the dot of each lookup's row with its field's block of grad_z
    (whose padding columns, if any, are not read)."""
    dim = table.shape[1]
    grad_fields = grad_z[:, : num_fields * dim].reshape(ids.shape[0], num_fields, dim)
    if slot_fields is not None:
        grad_fields = grad_fields.index_select(1, slot_fields)
    return (F.embedding(ids, table) * grad_fields).sum(-1)
