"""Wrappers over the torch-free kernels of fnn_fast._C: every check happens here, before a raw
pointer crosses into C++."""

from __future__ import annotations

import torch

try:
    from fnn_fast import _C
except ImportError as error:  # the package stays usable through the reference path
    _C = None
    IMPORT_ERROR: str | None = str(error)
else:
    IMPORT_ERROR = None


def available() -> bool:
    return _C is not None


def _check_table_and_ids(table: torch.Tensor, ids: torch.Tensor, values: torch.Tensor | None):
    if table.device.type != "cpu" or ids.device.type != "cpu":
        raise ValueError("native CPU kernels need CPU tensors")
    if table.dtype != torch.float32 or table.dim() != 2:
        raise ValueError(
            f"table must be float32 [rows, 1 + K], got {table.dtype} {tuple(table.shape)}"
        )
    if ids.dim() != 2:
        raise ValueError(f"ids must be [batch, fields], got shape {tuple(ids.shape)}")
    if values is not None and (values.shape != ids.shape or values.dtype != torch.float32):
        raise ValueError(
            f"values must be float32 of the ids' shape {tuple(ids.shape)}, "
            f"got {values.dtype} {tuple(values.shape)}"
        )


def fm_forward(
    table: torch.Tensor, w0: torch.Tensor, ids: torch.Tensor, values: torch.Tensor | None = None
) -> torch.Tensor:
    """FM logits through the fused C++ kernel (no autograd: scoring and evaluation)."""
    _check_table_and_ids(table, ids, values)
    table = table.detach().contiguous()
    ids = ids.to(torch.int64).contiguous()
    values = None if values is None else values.detach().contiguous()
    logits = torch.empty(ids.shape[0], dtype=torch.float32)
    if ids.numel():
        _C.fm_forward(
            table.data_ptr(),
            table.shape[1],
            ids.data_ptr(),
            0 if values is None else values.data_ptr(),
            ids.shape[0],
            ids.shape[1],
            float(w0),
            logits.data_ptr(),
        )
    return logits
