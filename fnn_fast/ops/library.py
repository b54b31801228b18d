"""The fused kernels as PyTorch custom ops (``torch.ops.fnn_fast.*``): the functions of
``fnn_fast.ops.cpu`` for CPU tensors and of ``fnn_fast.ops.gpu`` for CUDA tensors.

Each op is registered with ``torch.library`` (a fake implementation for tracing, and autograd
where it has a backward), so ``torch.compile(fullgraph=True)`` and ``opcheck`` work through them.

The training ops fuse the optimizer into backward, following FBGEMM: the forward op takes the
table *and its optimizer state*; its backward calls an op declared as mutating them, which
groups the batch's ids by row, sums each row's gradient and applies the update in place. The
table's ``.grad`` stays None: no gradient the size of the table, nor of the batch's rows, is made.
Eager training calls the same functions through ``fnn_fast.ops.eager`` (cheaper to call).
"""

from __future__ import annotations

import torch

from fnn_fast.ops import checks, cpu, gpu, reference

_MUTATED = ("table", "state1", "state2", "step")


def _op(name: str, cpu_kernel, gpu_kernel, mutates_args=()):
    op = torch.library.custom_op(f"fnn_fast::{name}", mutates_args=mutates_args,
                                 device_types="cpu")(cpu_kernel)  # fmt: skip
    op.register_kernel("cuda")(gpu_kernel)
    return op


# The fake implementations check too: they stand in for the kernels under torch.compile, and
# run (instead of a kernel) when any argument is on the meta device.

# --- FM ----------------------------------------------------------------------------------------

fm_forward = _op("fm_forward", cpu.fm_forward, gpu.fm_forward)


@fm_forward.register_fake
def _(table, ids, values):
    checks.check_fm_args(table, ids, values)
    return table.new_empty(ids.shape[0])


fm_forward_train = _op("fm_forward_train", cpu.fm_forward_train, gpu.fm_forward_train)


@fm_forward_train.register_fake
def _(table, ids, values, state1, state2, step, hparams, rule):
    checks.check_fm_args(table, ids, values)
    checks.check_update(table, state1, state2, step, hparams, rule)
    return table.new_empty(ids.shape[0]), table.new_empty(ids.shape[0], table.shape[1] - 1)


fm_backward_update = _op(
    "fm_backward_update", cpu.fm_backward_update, gpu.fm_backward_update, _MUTATED
)


@fm_backward_update.register_fake
def _(table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule):
    checks.check_fm_backward_args(
        table, ids, values, sums, grad_logits, state1, state2, step, hparams, rule
    )
    return None


def _fm_setup_context(ctx, inputs, output):
    table, ids, values, state1, state2, step, hparams, rule = inputs
    ctx.save_for_backward(table, ids, values, output[1], state1, state2, step, hparams)
    ctx.rule = rule


def _fm_backward(ctx, grad_logits, grad_sums):
    table, ids, values, sums, state1, state2, step, hparams = ctx.saved_tensors
    grad_values = None
    if ctx.needs_input_grad[2]:  # before the update changes the rows
        grad_values = reference.fm_values_grad(table, ids, values, sums, grad_logits)
    fm_backward_update(table, ids, values, sums, grad_logits, state1, state2, step, hparams,
                       ctx.rule)  # fmt: skip
    return None, None, grad_values, None, None, None, None, None


fm_forward_train.register_autograd(_fm_backward, setup_context=_fm_setup_context)


# --- FNN fields (z without w0) -----------------------------------------------------------------

fnn_fields = _op("fnn_fields", cpu.fnn_fields, gpu.fnn_fields)


@fnn_fields.register_fake
def _(table, ids, values, slot_fields, num_fields, width=0):
    checks.check_fields_args(table, ids, values, slot_fields, num_fields, width)
    return table.new_empty(ids.shape[0], checks.z_width(table, num_fields, width))


fnn_fields_train = _op("fnn_fields_train", cpu.fnn_fields_train, gpu.fnn_fields_train)


@fnn_fields_train.register_fake
def _(table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule, width=0):
    checks.check_fields_args(table, ids, values, slot_fields, num_fields, width)
    checks.check_update(table, state1, state2, step, hparams, rule)
    return table.new_empty(ids.shape[0], checks.z_width(table, num_fields, width))


fnn_fields_backward_update = _op(
    "fnn_fields_backward_update", cpu.fnn_fields_backward_update,
    gpu.fnn_fields_backward_update, _MUTATED,
)  # fmt: skip


@fnn_fields_backward_update.register_fake
def _(table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule):
    checks.check_fields_backward_args(
        table, ids, values, slot_fields, num_fields, grad_z, state1, state2, step, hparams, rule
    )
    return None


def _fields_setup_context(ctx, inputs, output):
    table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule, _ = inputs
    ctx.save_for_backward(table, ids, values, slot_fields, state1, state2, step, hparams)
    ctx.num_fields, ctx.rule = num_fields, rule


def _fields_backward(ctx, grad_z):
    table, ids, values, slot_fields, state1, state2, step, hparams = ctx.saved_tensors
    grad_values = None
    if ctx.needs_input_grad[2]:  # before the update changes the rows
        grad_values = reference.fnn_fields_values_grad(
            table, ids, slot_fields, ctx.num_fields, grad_z
        )
    fnn_fields_backward_update(table, ids, values, slot_fields, ctx.num_fields, grad_z, state1,
                               state2, step, hparams, ctx.rule)  # fmt: skip
    return None, None, grad_values, *(None,) * 8


fnn_fields_train.register_autograd(_fields_backward, setup_context=_fields_setup_context)
