"""The C++ CPU kernels of fnn_fast._C as plain functions on CPU tensors: each checks its
arguments (``fnn_fast.ops.checks``) before a raw address crosses into a kernel, allocates the
outputs and turns a kernel's report of a bad id into an error. ``fnn_fast.ops.gpu`` has the
same six functions for CUDA tensors; ``fnn_fast.ops.library`` registers both as custom ops.

The kernels check each id's range as they read it (no pass of its own): an id outside the table
is never read, and the error names the first one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fnn_fast.ops import checks
from fnn_fast.ops.checks import hyperparameters

try:
    from fnn_fast import _C
except ImportError as error:  # the package stays usable through the reference path
    _C = None
    _build_error = Path(__file__).parents[1] / "native_build_error.txt"
    IMPORT_ERROR: str | None = (
        _build_error.read_text().strip() if _build_error.exists() else str(error)
    )
else:
    IMPORT_ERROR = None


def available() -> bool:
    """Whether fnn_fast._C (the C++ kernels) was built and loads."""
    return _C is not None


def _address(t: Tensor | None) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _raise_if_bad(first_bad: int, ids: Tensor, num_rows: int) -> None:
    """A kernel's report: -1, or the flat position of the first id outside the table."""
    if first_bad >= 0:
        raise checks.out_of_range(int(ids.reshape(-1)[first_bad]), num_rows)


def _fm_kernel(table: Tensor, ids: Tensor, values: Tensor | None, sums: Tensor | None) -> Tensor:
    logits = torch.empty(ids.shape[0], dtype=torch.float32)
    bad = _C.fm_forward(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        ids.shape[0], ids.shape[1], logits.data_ptr(), _address(sums),
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])
    return logits


def fm_forward(table: Tensor, ids: Tensor, values: Tensor | None) -> Tensor:
    """FM logits without the bias w0 [B] (inference: no sums kept for a backward)."""
    checks.check_fm_args(table, ids, values)
    return _fm_kernel(table, ids, values, None)


def fm_forward_train(
    table: Tensor, ids: Tensor, values: Tensor | None, state1: Tensor, state2: Tensor,
    step: Tensor, hparams: Tensor, rule: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(logits without w0 [B], sums [B, K]): what :func:`fm_backward_update` needs."""
    checks.check_fm_args(table, ids, values)
    checks.check_update(table, state1, state2, step, hparams, rule)
    sums = torch.empty(ids.shape[0], table.shape[1] - 1, dtype=torch.float32)
    return _fm_kernel(table, ids, values, sums), sums


def fm_backward_update(
    table: Tensor, ids: Tensor, values: Tensor | None, sums: Tensor, grad_logits: Tensor,
    state1: Tensor, state2: Tensor, step: Tensor, hparams: Tensor, rule: int,
) -> None:  # fmt: skip
    """Groups the batch's ids by row, sums each row's gradient and applies the update rule to
    the table and its optimizer state in place."""
    checks.check_fm_backward_args(
        table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule
    )
    step.add_(1)
    grad_logits = grad_logits.to(torch.float32).contiguous()
    bad = _C.fm_backward_update(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        ids.shape[0], ids.shape[1], sums.data_ptr(), grad_logits.data_ptr(), rule,
        *hyperparameters(hparams), int(step), _address(state1), _address(state2),
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])


def fnn_fields(
    table: Tensor, ids: Tensor, values: Tensor | None, slot_fields: Tensor | None,
    num_fields: int, width: int = 0,
) -> Tensor:  # fmt: skip
    """The value-weighted rows of each field, [B, num_fields * (1 + K)] (no w0 column), zero
    padded to ``width`` columns when that is larger."""
    checks.check_fields_args(table, ids, values, slot_fields, num_fields, width)
    z = torch.empty(ids.shape[0], checks.z_width(table, num_fields, width), dtype=torch.float32)
    bad = _C.fnn_fields(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        ids.shape[0], ids.shape[1], _address(slot_fields), num_fields, z.data_ptr(),
        z.shape[1],
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])
    return z


def fnn_fields_train(
    table: Tensor, ids: Tensor, values: Tensor | None, slot_fields: Tensor | None,
    num_fields: int, state1: Tensor, state2: Tensor, step: Tensor, hparams: Tensor, rule: int,
    width: int = 0,
) -> Tensor:  # fmt: skip
    """:func:`fnn_fields`, its optimizer state checked for :func:`fnn_fields_backward_update`."""
    checks.check_fields_args(table, ids, values, slot_fields, num_fields, width)
    checks.check_update(table, state1, state2, step, hparams, rule)
    return fnn_fields(table, ids, values, slot_fields, num_fields, width)


def fnn_fields_backward_update(
    table: Tensor, ids: Tensor, values: Tensor | None, slot_fields: Tensor | None,
    num_fields: int, grad_z: Tensor, state1: Tensor, state2: Tensor, step: Tensor,
    hparams: Tensor, rule: int,
) -> None:  # fmt: skip
    """The update of :func:`fm_backward_update` from z's gradient [B, >= z's width] (padding
    columns are not read)."""
    checks.check_fields_backward_args(
        table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
    )
    step.add_(1)
    grad_z = grad_z.to(torch.float32).contiguous()
    bad = _C.fnn_fields_backward_update(
        table.data_ptr(), table.shape[0], table.shape[1], ids.data_ptr(), _address(values),
        ids.shape[0], ids.shape[1], _address(slot_fields), num_fields, grad_z.data_ptr(),
        grad_z.shape[1], rule, *hyperparameters(hparams), int(step), _address(state1),
        _address(state2),
    )  # fmt: skip
    _raise_if_bad(bad, ids, table.shape[0])
