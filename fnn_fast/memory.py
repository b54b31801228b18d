"""Embedding tables in huge pages.

Every lookup and every sparse update reads rows at random addresses. With 4 KB pages a table of
10^7 rows x 11 floats spans 107k pages, far more than the TLB holds, so nearly every row read
also walks the page table; with 2 MB pages the same table is 210 pages. Linux backs an
anonymous mapping with huge pages when asked (``madvise(MADV_HUGEPAGE)``) before the pages are
first touched, which is what :func:`table_zeros` does. Elsewhere, or where transparent huge
pages are off, it returns an ordinary tensor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

HUGE_PAGE = 2 << 20
# Below this a table's pages fit the TLB's reach anyway.
MIN_BYTES = 16 * HUGE_PAGE
_MADV_HUGEPAGE = 14

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):
        _libc = None


def table_zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A zeroed contiguous CPU tensor, in huge pages where the OS allows it (a view into a
    slightly larger buffer, aligned to a huge page)."""
    count = 1
    for size in shape:
        count *= size
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    if _libc is None or nbytes < MIN_BYTES:
        return torch.zeros(*shape, dtype=dtype)
    raw = torch.empty(nbytes + HUGE_PAGE, dtype=torch.uint8)  # untouched pages: not yet backed
    start = -raw.data_ptr() % HUGE_PAGE
    length = nbytes // HUGE_PAGE * HUGE_PAGE
    _libc.madvise(raw.data_ptr() + start, length, _MADV_HUGEPAGE)  # a hint: failure is harmless
    table = raw[start : start + nbytes].view(dtype).view(*shape)
    return table.zero_()


def zeros_like_table(table: torch.Tensor) -> torch.Tensor:
    """Optimizer state shaped like ``table``, in huge pages on the CPU."""
    if table.device.type != "cpu":
        return torch.zeros_like(table)
    return table_zeros(*table.shape, dtype=table.dtype)
