"""Triton kernels for CUDA tensors: the FM forward, the FNN input gather, and their backward
passes fused with the sparse optimizer.

The same plain functions as ``fnn_fast.ops.cuda`` (the GPU kernel interface): callers have
checked devices, dtypes, shapes, contiguity and id ranges. Triton is optional: without it
:func:`available` is False and ``UNAVAILABLE_REASON`` says why. With ``TRITON_INTERPRET=1`` set
before this package is first imported, the kernels run on CPU tensors through Triton's
interpreter (slowly): that is how they are tested on machines without a GPU.
"""

from __future__ import annotations

import torch

try:
    import triton  # noqa: F401  (probes the install; the kernels import it themselves)
except ImportError as error:
    _IMPORT_ERROR: str | None = f"triton is not installed ({error})"
else:
    _IMPORT_ERROR = None

if _IMPORT_ERROR is None:
    from fnn_fast.ops.triton.fm import _fm_forward_kernel, fm_backward_update, fm_forward
    from fnn_fast.ops.triton.gather import fnn_fields, fnn_fields_backward_update

    # Triton decides when a kernel is defined whether it is compiled or interpreted.
    INTERPRETED = type(_fm_forward_kernel).__name__ == "InterpretedFunction"
    if INTERPRETED or torch.cuda.is_available():
        UNAVAILABLE_REASON: str | None = None
    else:
        UNAVAILABLE_REASON = (
            "no CUDA device (set TRITON_INTERPRET=1 before importing fnn_fast to run the "
            "Triton kernels on CPU tensors)"
        )
else:
    INTERPRETED = False
    UNAVAILABLE_REASON = _IMPORT_ERROR

    def _unavailable(*args, **kwargs):
        raise RuntimeError(f"the Triton kernels are unavailable: {UNAVAILABLE_REASON}")

    fm_forward = fm_backward_update = fnn_fields = fnn_fields_backward_update = _unavailable


def available() -> bool:
    """Whether the kernels can run here: triton is installed, and a CUDA device is present (or
    the interpreter runs them on CPU tensors)."""
    return UNAVAILABLE_REASON is None


__all__ = [
    "INTERPRETED",
    "UNAVAILABLE_REASON",
    "available",
    "fm_backward_update",
    "fm_forward",
    "fnn_fields",
    "fnn_fields_backward_update",
]
