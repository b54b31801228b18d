"""The fused training ops as the modules call them: ``fm_forward_train`` and
``fnn_fields_train``, whose backward updates the table and its optimizer state in place.

Outside torch.compile the custom ops' Python dispatch (forward op, autograd node, mutating
backward op) costs about 0.2 ms per training step, a tenth of a whole FM step at batch 4096.
Eager training therefore calls the same functions (``fnn_fast.ops.cpu`` / ``.gpu``) through an
autograd.Function, saving the same tensors and bumping the same version counters; under tracing
the custom ops of ``fnn_fast.ops.library`` run. ``tests/test_op_wiring.py`` holds the two
wirings to bit-identical outputs, gradients and updates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fnn_fast.ops import cpu, gpu, library, reference

_FM = {"cpu": (cpu.fm_forward_train, cpu.fm_backward_update),
       "cuda": (gpu.fm_forward_train, gpu.fm_backward_update)}  # fmt: skip
_FIELDS = {"cpu": (cpu.fnn_fields_train, cpu.fnn_fields_backward_update),
           "cuda": (gpu.fnn_fields_train, gpu.fnn_fields_backward_update)}  # fmt: skip


def _eager(ids: Tensor) -> bool:
    # Tracers (dynamo, make_fx) hand over tensor subclasses; only plain tensors take the shortcut.
    return not torch.compiler.is_compiling() and type(ids) is torch.Tensor


class _FMTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, ids, values, state1, state2, step, hparams, rule):
        forward, ctx.update = _FM[table.device.type]
        logits, sums = forward(table, ids, values, state1, state2, step, hparams, rule)
        ctx.save_for_backward(table, ids, values, sums, state1, state2, step, hparams)
        ctx.rule = rule
        ctx.mark_non_differentiable(sums)
        return logits, sums

    @staticmethod
    def backward(ctx, grad_logits, grad_sums):
        table, ids, values, sums, state1, state2, step, hparams = ctx.saved_tensors
        grad_values = None
        if ctx.needs_input_grad[2]:  # before the update changes the rows
            grad_values = reference.fm_values_grad(table, ids, values, sums, grad_logits)
        ctx.update(table, ids, values, sums, grad_logits, state1, state2, step, hparams, ctx.rule)
        torch.autograd.graph.increment_version((table, state1, state2))
        return None, None, grad_values, *(None,) * 5


class _FieldsTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, ids, values, slot_fields, num_fields, state1, state2, step, hparams,
                rule, width):  # fmt: skip
        forward, ctx.update = _FIELDS[table.device.type]
        z = forward(table, ids, values, slot_fields, num_fields, state1, state2, step, hparams,
                    rule, width)  # fmt: skip
        ctx.save_for_backward(table, ids, values, slot_fields, state1, state2, step, hparams)
        ctx.num_fields, ctx.rule = num_fields, rule
        return z

    @staticmethod
    def backward(ctx, grad_z):
        table, ids, values, slot_fields, state1, state2, step, hparams = ctx.saved_tensors
        grad_values = None
        if ctx.needs_input_grad[2]:  # before the update changes the rows
            grad_values = reference.fnn_fields_values_grad(
                table, ids, slot_fields, ctx.num_fields, grad_z
            )
        ctx.update(table, ids, values, slot_fields, ctx.num_fields, grad_z, state1, state2, step,
                   hparams, ctx.rule)  # fmt: skip
        torch.autograd.graph.increment_version((table, state1, state2))
        return None, None, grad_values, *(None,) * 8


def fm_forward_train(table, ids, values, state1, state2, step, hparams, rule):
    """(logits without w0, sums) whose backward updates table and state in place."""
    if _eager(ids):
        return _FMTrain.apply(table, ids, values, state1, state2, step, hparams, rule)
    return library.fm_forward_train(table, ids, values, state1, state2, step, hparams, rule)


def fnn_fields_train(
    table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule, width=0
):  # fmt: skip
    """z without w0 (zero padded to ``width`` columns) whose backward updates table and state
    in place."""
    args = (table, ids, values, slot_fields, num_fields, state1, state2, step, hparams, rule)
    if _eager(ids):
        return _FieldsTrain.apply(*args, width)
    return library.fnn_fields_train(*args, width)
