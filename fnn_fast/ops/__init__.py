"""fnn_fast ops: one public function per op, several implementations behind it.

The reference (pure PyTorch) always works; the native C++ kernels (fnn_fast._C) are used where
they apply. ``FNN_FAST_BACKEND=reference`` or :func:`set_backend` forces the reference.
"""

from __future__ import annotations

import os

import torch

from fnn_fast.ops import native, reference

_BACKENDS = ("auto", "reference", "native")
_forced = os.environ.get("FNN_FAST_BACKEND", "auto")
if _forced not in _BACKENDS:
    raise ValueError(f"FNN_FAST_BACKEND={_forced!r}; choose one of {', '.join(_BACKENDS)}")


def set_backend(name: str) -> None:
    """Choose the backend: 'auto' (fastest available), 'reference' or 'native'."""
    global _forced
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    if name == "native" and not native.available():
        raise RuntimeError(f"native backend unavailable: {native.IMPORT_ERROR}")
    _forced = name


def backends() -> dict:
    """Which backends exist here and which one runs."""
    return {
        "available": ["reference"] + (["native"] if native.available() else []),
        "selected": _forced,
        "active": "native" if _use_native() else "reference",
        "native_error": native.IMPORT_ERROR,
    }


def _use_native() -> bool:
    return _forced != "reference" and native.available()


def check_ids(ids: torch.Tensor, num_features: int, slot_names=None) -> None:
    """Raise a clear error for ids outside [0, num_features), naming the offending field."""
    if ids.dim() != 2:
        raise ValueError(f"ids must be an int tensor [batch, fields], got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ids must be int32 or int64, got {ids.dtype}")
    if ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= num_features)
    if bool(bad.any()):
        row, slot = (int(i) for i in bad.nonzero()[0])
        name = slot_names[slot] if slot_names is not None else f"in column {slot}"
        raise IndexError(
            f"feature id {int(ids[row, slot])} of field {name} (row {row}) is outside the "
            f"table of {num_features} rows"
        )


def fm_forward(table, w0, ids, values=None, sparse=True):
    """FM logits [B]; the native kernel serves calls that need no gradient."""
    needs_grad = torch.is_grad_enabled() and (table.requires_grad or w0.requires_grad)
    if not needs_grad and _use_native() and table.device.type == "cpu":
        return native.fm_forward(table, w0, ids, values)
    return reference.fm_forward(table, w0, ids, values, sparse)


def fnn_input(table, w0, ids, values=None, slot_fields=None, num_fields=None, sparse=True):
    """The FNN's dense input z [B, 1 + F (1 + K)]."""
    return reference.fnn_input(table, w0, ids, values, slot_fields, num_fields, sparse)
