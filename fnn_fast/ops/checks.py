"""The checks every backend shares: each argument a kernel indexes with, checked before any
address crosses into one, with the same error whichever backend would have run.

The public ops (``fnn_fast.ops``) call them with ``kernels=False`` (the reference also takes
float64 tables and int32 ids); the kernels' functions (``fnn_fast.ops.cpu`` and ``.gpu``) with
``kernels=True``, through the ``check_*_args`` below. They read shapes, dtypes and devices
only: no pass over a batch and no device sync. Id and slot_fields ranges are checked where
reading them is already paid for (the CPU kernels as they read, ``ops.check_ids``, the GPU
functions' optional check, FNN when built).
"""

from __future__ import annotations

import torch
from torch import Tensor

RULES = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 2, "adam": 3}


def _is_tensor(t) -> bool:
    return isinstance(t, Tensor)


def _described(t) -> str:
    if not _is_tensor(t):
        return type(t).__name__
    return f"{t.dtype} {tuple(t.shape)} on {t.device}"


def check_table(table, kernels: bool = False) -> None:
    """[rows, 1 + K] floats (K >= 0: a table of one column is logistic regression); the
    kernels need it float32 and contiguous, as they update it in place."""
    if not _is_tensor(table) or table.dim() != 2 or table.shape[1] < 1:
        raise ValueError(f"table must be a [rows, 1 + K] tensor, got {_described(table)}")
    if not table.is_floating_point() or (kernels and table.dtype != torch.float32):
        kind = "float32" if kernels else "floating point"
        raise TypeError(f"table must be {kind}, got {table.dtype}")
    if kernels and not table.is_contiguous():
        raise ValueError("table must be contiguous (the kernels update it in place)")
    if kernels and table.device.type not in ("cpu", "cuda"):
        raise ValueError(f"the fused kernels need CPU or CUDA tensors, got {table.device}")


def _check_on(name: str, t: Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(
            f"{name} is on {t.device} but the table on {device}: move it with .to({device!r})"
        )


def check_batch(table, ids, values, kernels: bool = False) -> None:
    """ids int [batch, slots] and values float [batch, slots] (or None), on the table's device;
    for the kernels int64 ids, float32 values, both contiguous."""
    check_table(table, kernels)
    if not _is_tensor(ids) or ids.dim() != 2:
        raise ValueError(f"ids must be an int tensor [batch, slots], got {_described(ids)}")
    allowed = (torch.int64,) if kernels else (torch.int32, torch.int64)
    if ids.dtype not in allowed:
        names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"ids must be {names}, got {ids.dtype}")
    _check_on("ids", ids, table.device)
    if kernels and not ids.is_contiguous():
        raise ValueError("ids must be contiguous")
    if values is None:
        return
    if not _is_tensor(values) or values.shape != ids.shape:
        raise ValueError(
            f"values must have the ids' shape {tuple(ids.shape)}, got {_described(values)}"
        )
    if not values.is_floating_point() or (kernels and values.dtype != torch.float32):
        raise TypeError(f"values must be {'float32' if kernels else 'floats'}, got {values.dtype}")
    _check_on("values", values, table.device)
    if kernels and not values.is_contiguous():
        raise ValueError("values must be contiguous")


def check_fields(ids: Tensor, slot_fields, num_fields, kernels: bool = False) -> int:
    """The FNN's field layout: without slot_fields, one id column per field; with it, one entry
    per id column. Returns num_fields. That each entry is a field in [0, num_fields) is checked
    apart (check_slot_fields_range), by whoever reads slot_fields anyway: the modules once when
    built, the CPU kernels as they start, the GPU ops with the ids' range check."""
    slots = ids.shape[1]
    if num_fields is None and slot_fields is None:
        num_fields = slots
    check_num_fields(num_fields)
    if slot_fields is None:
        if slots != num_fields:
            raise ValueError(
                f"expected {num_fields} id columns, one per field (num_fields={num_fields}), got "
                f"{slots}; for several columns per field give slot_fields"
            )
        return num_fields
    if not _is_tensor(slot_fields) or slot_fields.dim() != 1:
        raise ValueError(f"slot_fields must be a 1-D int64 tensor, got {_described(slot_fields)}")
    if slot_fields.numel() != slots:
        raise ValueError(
            f"expected {slot_fields.numel()} id columns, one per entry of slot_fields, got {slots}"
        )
    if slot_fields.dtype != torch.int64:
        raise TypeError(f"slot_fields must be int64, got {slot_fields.dtype}")
    if slot_fields.device != ids.device:
        raise ValueError(f"slot_fields is on {slot_fields.device} but the ids on {ids.device}")
    if kernels and not slot_fields.is_contiguous():
        raise ValueError("slot_fields must be contiguous")
    return num_fields


def check_num_fields(num_fields) -> None:
    if isinstance(num_fields, bool) or not isinstance(num_fields, int):
        raise TypeError(f"num_fields must be an int, got {num_fields!r}")
    if num_fields < 1:
        raise ValueError(f"num_fields must be at least 1, got {num_fields}")


def check_slot_fields_range(low: int, high: int, num_fields: int) -> None:
    """slot_fields' smallest and largest entries (read by the caller) within [0, num_fields)."""
    if low < 0 or high >= num_fields:
        raise ValueError(
            f"slot_fields maps a column to field {low if low < 0 else high}, outside the "
            f"{num_fields} fields (num_fields={num_fields})"
        )


def check_width(width) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 0:
        raise ValueError(f"width must be an int >= 0, got {width!r}")


def check_update(table: Tensor, state1, state2, step, hparams, rule) -> None:
    """The optimizer state laid out as the kernels index it (RowUpdate.new_state), the step
    counter and the five hyperparameters [lr, weight_decay, eps, beta1, beta2]."""
    if isinstance(rule, bool) or rule not in RULES.values():
        raise ValueError(f"unknown update rule {rule!r}; choose from {RULES}")
    rows = table.shape[0]
    shapes = {
        RULES["sgd"]: ((0,), (0,)),
        RULES["adagrad"]: (tuple(table.shape), (0,)),
        RULES["rowwise_adagrad"]: ((rows,), (0,)),
        RULES["adam"]: (tuple(table.shape), tuple(table.shape)),
    }[rule]
    for name, state, shape in (("state1", state1, shapes[0]), ("state2", state2, shapes[1])):
        if not _is_tensor(state):
            raise ValueError(f"{name} must be a tensor, got {_described(state)}")
        if shape == (0,) and state.numel() == 0:
            continue  # a state the rule does not use
        if tuple(state.shape) != shape or state.dtype != torch.float32:
            raise ValueError(
                f"{name} of rule {rule} must be float32 {shape}, got {_described(state)}: make "
                "it with RowUpdate.new_state(table) (or call fuse_update again)"
            )
        if state.device != table.device:
            raise ValueError(
                f"optimizer state on {state.device} but the table on {table.device}: move the "
                "module after fuse_update, or call fuse_update again"
            )
        if not state.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the kernels update it in place)")
    if not _is_tensor(step) or step.numel() != 1 or step.dtype != torch.int64:
        raise ValueError(f"step must be an int64 tensor of one element, got {_described(step)}")
    if not _is_tensor(hparams) or hparams.numel() != 5 or not hparams.is_floating_point():
        raise ValueError(
            "hparams must be a float tensor [lr, weight_decay, eps, beta1, beta2] "
            f"(RowUpdate.hparams()), got {_described(hparams)}"
        )


def check_grad(name: str, grad, shape: tuple, device: torch.device) -> None:
    if not _is_tensor(grad) or tuple(grad.shape) != tuple(shape):
        raise ValueError(f"{name} must be {tuple(shape)}, got {_described(grad)}")
    if not grad.is_floating_point():
        raise TypeError(f"{name} must be floats, got {grad.dtype}")
    _check_on(name, grad, device)


# --- The kernels' arguments, op by op: what fnn_fast.ops.cpu and .gpu (and the custom ops' fake
# implementations, which stand in for them under torch.compile) check before any kernel runs.


def check_fm_args(table: Tensor, ids: Tensor, values: Tensor | None) -> None:
    check_batch(table, ids, values, kernels=True)


def check_fields_args(table, ids, values, slot_fields, num_fields, width) -> None:
    check_batch(table, ids, values, kernels=True)
    check_fields(ids, slot_fields, num_fields, kernels=True)
    check_width(width)


def check_fm_backward_args(
    table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule
):  # fmt: skip
    check_fm_args(table, ids, values)
    check_grad("sums", sums, (ids.shape[0], table.shape[1] - 1), table.device)
    check_grad("grad_logits", grad_logits, (ids.shape[0],), table.device)
    check_update(table, state1, state2, step, hparams, rule)


def check_fields_backward_args(
    table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
):  # fmt: skip
    check_fields_args(table, ids, values, slot_fields, num_fields, 0)
    if not (
        isinstance(grad_z, Tensor) and grad_z.dim() == 2 and grad_z.shape[0] == ids.shape[0]
        and grad_z.shape[1] >= num_fields * table.shape[1]
    ):  # fmt: skip
        raise ValueError(
            f"grad_z must be [{ids.shape[0]}, >= {num_fields * table.shape[1]}] (z's shape), "
            f"got {_described(grad_z)}"
        )
    check_grad("grad_z", grad_z, grad_z.shape, table.device)
    check_update(table, state1, state2, step, hparams, rule)


def out_of_range(bad: int, num_rows: int) -> IndexError:
    return IndexError(f"feature id {bad} is outside the table of {num_rows} rows")


def z_width(table: Tensor, num_fields: int, width: int) -> int:
    """z's row length: num_fields * (1 + K), or ``width`` when that is larger (zero padding)."""
    return max(width, num_fields * table.shape[1])


def hyperparameters(hparams: Tensor) -> tuple[float, float, float, float, float]:
    """(lr, weight_decay, eps, beta1, beta2) as the kernels take them."""
    lr, weight_decay, eps, beta1, beta2 = hparams.tolist()
    return lr, weight_decay, eps, beta1, beta2
