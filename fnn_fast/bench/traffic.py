"""The byte model: what each op must move through memory, for GB/s.

One batch has B samples of S slots (one per field here, S = F), n = B S lookups of rows of
D = 1 + K float32, u distinct rows among them, and an update rule that keeps s state floats per
row (sgd 0, row-wise Adagrad 1, Adagrad D, Adam 2 D). Counted once, the least any
implementation must move:

    ids                      8 n          (int64, read once)
    rows read                4 D n        (every lookup reads its row; a hot row is counted at
                                           each lookup, as a kernel reads it at each)
    update                   2 * 4 (D + s) u   (each distinct row and its state, read and
                                                written once)
    fm_forward               ids + rows + 4 B (logits)
    fm_train_step            fm_forward + 4 B (labels) + update
    fnn_fields_forward       ids + rows + 4 B F D (z written)
    fnn_fields_train         fnn_fields_forward + 4 B F D (grad z read) + update
    sparse_update            ids + 4 D n (gradient rows read) + update
    index_select (the bound) ids + rows + 4 D n (the gathered rows written)

Model-level cases count no bytes: their MLP does arithmetic, not traffic.
"""

from __future__ import annotations

STATE_FLOATS = {"sgd": 0, "rowwise_adagrad": 1}  # adagrad: D; adam: 2 D


def state_floats(rule: str, dim: int) -> int:
    return STATE_FLOATS.get(rule, dim if rule == "adagrad" else 2 * dim)


def op_bytes(op: str, batch: int, fields: int, dim: int, distinct: float, rule: str) -> int | None:
    """Bytes op must move for one batch (see the module docstring); None when not counted."""
    n = batch * fields
    ids, rows = 8 * n, 4 * dim * n
    update = 2 * 4 * (dim + state_floats(rule, dim)) * distinct
    z = 4 * batch * fields * dim
    moved = {
        "fm_forward": ids + rows + 4 * batch,
        "fm_train_step": ids + rows + 8 * batch + update,
        "fnn_fields_forward": ids + rows + z,
        "fnn_fields_train": ids + rows + 2 * z + update,
        "sparse_update": ids + rows + update,
        "index_select": ids + 2 * rows,
    }.get(op)
    return None if moved is None else int(round(moved))
