"""Row-wise sharded tables over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

The design TorchRec calls row-wise sharding: each rank owns a block of the table's rows and
their optimizer state, so a table takes 1/N of its memory per rank. One training step, per rank:

1. forward: the rank's ids are made unique (sorted) and bucketed by owner; the counts go out
   first (``all_to_all_single`` on a [N] tensor), then the ids (with input/output split sizes);
   each owner gathers the rows it was asked for with the native gather kernel and sends them
   back. The rank computes its logits from these rows as the single-process module would.
2. backward: the rows' gradients (summed over the rank's occurrences of each id) go back to
   their owners along the same splits; each owner applies the fused row update
   (:class:`fnn_fast.optim.RowUpdate`, the native kernel that groups ids by row) to everything it
   received at once, in rank order, so a row used on several ranks gets one update with the sum
   of their gradients, exactly as one process coalesces the duplicates of its batch.
3. the dense parameters (w0, the FNN's layers) are data-parallel: every rank holds a replica;
   :func:`allreduce_dense_grads` sums their gradients over the ranks before the optimizer step.

With the loss of each rank taken as (sum of its per-sample losses) / (global batch size)
(:func:`global_batch_size`), N ranks stepping on N slices of a global batch compute the same
gradients, and so the same tables, layers and predictions, as one process on the whole batch
(up to fp32 summation order).

Every rank must call forward and backward the same number of times in the same order (they are
collectives), also for evaluation: an empty local batch is fine, a skipped call is a hang.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from fnn_fast import ops
from fnn_fast.memory import table_zeros
from fnn_fast.modules import FM, FNN, InputLinear, _FusedUpdate, fnn_head
from fnn_fast.ops import checks, cpu, library, reference
from fnn_fast.optim import RowUpdate

SCHEMES = ("block", "cyclic")


# --- the row map -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSharding:
    """Which rank owns which rows of a table of ``num_rows`` rows over ``world_size`` ranks.

    ``block`` (TorchRec's row-wise sharding): rank r owns rows [r R, (r + 1) R) with
    R = ceil(num_rows / world_size), the last rank possibly fewer (or none). ``cyclic``: rank r
    owns the rows i with i % world_size == r (spreads the low ids, which an encoder that numbers
    features by frequency makes the hot ones).
    """

    num_rows: int
    world_size: int
    scheme: str = "block"

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown sharding scheme {self.scheme!r}; choose from {SCHEMES}")
        if self.world_size < 1 or self.num_rows < 0:
            raise ValueError(f"need world_size >= 1 and num_rows >= 0, got {self}")

    @property
    def block(self) -> int:
        return max(1, -(-self.num_rows // self.world_size))

    def shard_rows(self, rank: int) -> int:
        """How many rows rank ``rank`` owns."""
        if self.scheme == "block":
            return max(0, min(self.num_rows - rank * self.block, self.block))
        return max(0, -(-(self.num_rows - rank) // self.world_size))

    def owner(self, ids: torch.Tensor) -> torch.Tensor:
        if self.scheme == "block":
            return torch.div(ids, self.block, rounding_mode="floor")
        return torch.remainder(ids, self.world_size)

    def local(self, ids: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """The row index within its owner's shard."""
        if self.scheme == "block":
            return ids - owner * self.block
        return torch.div(ids, self.world_size, rounding_mode="floor")

    def global_rows(self, rank: int, device=None) -> torch.Tensor:
        """The global ids of rank ``rank``'s rows, in shard order."""
        n = self.shard_rows(rank)
        if self.scheme == "block":
            return torch.arange(rank * self.block, rank * self.block + n, device=device)
        return torch.arange(n, device=device) * self.world_size + rank


# --- what the exchanges cost -------------------------------------------------------------------


@dataclass
class CommStats:
    """Bytes this rank handed to collectives for other ranks, and the seconds spent in them
    (waiting for the slowest rank included). ``by_kind`` splits both by exchange."""

    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    calls: int = 0
    by_kind: dict = field(default_factory=dict)

    def add(self, kind: str, sent: int, received: int, seconds: float) -> None:
        self.bytes_sent += sent
        self.bytes_received += received
        self.seconds += seconds
        self.calls += 1
        entry = self.by_kind.setdefault(kind, [0, 0, 0.0])
        entry[0] += sent
        entry[1] += received
        entry[2] += seconds

    def reset(self) -> None:
        self.bytes_sent = self.bytes_received = self.calls = 0
        self.seconds = 0.0
        self.by_kind = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _world(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call init_process_group first")
    return dist.get_rank(group), dist.get_world_size(group)


def _comm_device(group, device: torch.device) -> torch.device:
    """Where a collective's tensors must be: NCCL takes CUDA tensors only, so CPU ones (a
    module still on the CPU, a batch size) are staged on the current GPU."""
    if device.type == "cpu" and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _all_to_all(stats, kind, output, tensor, out_splits, in_splits, rank, group):
    """all_to_all_single along dim 0 with row counts; counted and timed."""
    width = math.prod(tensor.shape[1:])
    started = time.perf_counter()
    _sync(tensor.device)
    dist.all_to_all_single(output, tensor, out_splits, in_splits, group=group)
    _sync(tensor.device)
    elapsed = time.perf_counter() - started
    if stats is not None:
        size = tensor.element_size() * width
        sent = (sum(in_splits) - in_splits[rank]) * size
        received = (sum(out_splits) - out_splits[rank]) * size
        stats.add(kind, sent, received, elapsed)
    return output


# --- the owner's side: gather and update with the fused kernels --------------------------------


def _owner_gather(table: torch.Tensor, local_ids: torch.Tensor) -> torch.Tensor:
    """The rows [n, 1 + K] of the shard asked for, by the native gather kernel where it runs."""
    if ops._fused_kernels_apply(table) and local_ids.numel():
        return library.fnn_fields(table.detach(), local_ids.view(-1, 1), None, None, 1)
    if local_ids.numel() and (int(local_ids.min()) < 0 or int(local_ids.max()) >= len(table)):
        raise IndexError(f"a row asked for is outside this rank's shard of {len(table)} rows")
    return table.detach().index_select(0, local_ids)


@torch.no_grad()
def _reference_row_update(kind, rule: RowUpdate, table, state1, state2, step, ids, grads):
    """The fused update's rule in PyTorch (csrc/row_update.h, fnn_fast/optim.py): duplicates of
    a row summed in the order given, then one update per row."""
    step.add_(1)
    if not ids.numel():
        return
    rows, inverse = torch.unique(ids, return_inverse=True)
    g = grads.new_zeros(len(rows), table.shape[1]).index_add_(0, inverse, grads)
    w = table[rows]
    if rule.weight_decay:
        g = g + rule.weight_decay * w
    lr, eps = rule.lr, rule.resolved_eps
    if kind == "sgd":
        table[rows] = w - lr * g
    elif kind == "adagrad":
        sums = state1[rows] + g.square()
        state1[rows] = sums
        table[rows] = w - lr * g / (sums.sqrt() + eps)
    elif kind == "rowwise_adagrad":
        sums = state1[rows] + g.square().mean(dim=1)
        state1[rows] = sums
        table[rows] = w - (lr / (sums.sqrt() + eps)).unsqueeze(1) * g
    else:
        beta1, beta2 = rule.betas
        t = int(step)
        m = state1[rows] + (g - state1[rows]) * (1 - beta1)
        v = state2[rows] + (g.square() - state2[rows]) * (1 - beta2)
        size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        state1[rows], state2[rows] = m, v
        table[rows] = w - size * m / (v.sqrt() + eps)


# --- a shard of one process's random start ----------------------------------------------------

DRAW_ROWS = 1 << 16  # rows drawn at a time (a multiple of 16: randn's blocks of 16 values)


def drawn_rows(num_rows: int, width: int, rows: torch.Tensor, draw) -> torch.Tensor:
    """Rows ``rows`` (sorted global ids) of a [num_rows, width] table as one ``draw`` over the
    whole table fills it from the global generator, drawn DRAW_ROWS rows at a time: O(chunk)
    memory, the generator left where the whole draw leaves it. ``draw(n)`` fills [n, width]
    the way the module does (FM: normal_ of the factor columns; FNN: randn). Holds because
    torch's CPU normal_ of a strided view draws value by value, and randn (and normal_ of a
    contiguous tensor, which a one-row view is) in blocks of 16, the last block of a call
    redrawn: chunks hold a multiple of 16 values but the last, which holds 16 or more and
    two rows or more, so the blocks fall alike. tests/test_distributed.py checks it against
    the whole draw."""
    out = torch.zeros(len(rows), width)
    start = 0
    while start < num_rows:
        stop = min(start + DRAW_ROWS, num_rows)
        left = num_rows - stop
        if left == 1 or 0 < left * width < 16:  # a short last chunk joins this one
            stop = num_rows
        chunk = draw(stop - start)
        low, high = (int(torch.searchsorted(rows, x)) for x in (start, stop))
        out[low:high] = chunk[rows[low:high] - start]
        start = stop
    return out


def fm_draw(num_factors: int, init_std: float):
    """What FM(num_features, num_factors, init_std=init_std) draws for n rows of its table."""

    def draw(n: int) -> torch.Tensor:
        table = torch.zeros(n, 1 + num_factors)
        table[:, 1:].normal_(0.0, init_std)
        return table

    return draw


def fnn_draw(num_factors: int, init_std: float):
    """What FNN(num_features, ..., num_factors, init_std=init_std) draws for n rows."""
    return lambda n: torch.randn(n, 1 + num_factors).mul_(init_std)


# --- the sharded table -------------------------------------------------------------------------


class ShardedTable(_FusedUpdate, nn.Module):
    """This rank's rows of a packed [num_features, 1 + K] table, with their optimizer state.

    ``lookup(ids)`` returns ``(rows, inverse)``: the rows [U, 1 + K] of the batch's U distinct
    ids (fetched from their owners) and the position of each id among them, [B, S]; the
    single-process math then runs on ``rows`` with ``inverse`` as ids. In training (grad
    enabled) the backward of ``rows`` sends their gradients to the owners, who apply the fused
    update (:meth:`fuse_update`, required for training). ``table`` is the shard, a Parameter
    whose ``.grad`` stays None, as with the fused single-process modules.
    """

    def __init__(
        self,
        num_features: int,
        num_factors: int,
        *,
        scheme: str = "block",
        group=None,
        init_std: float = 0.01,
        seed: int = 0,
        device=None,
    ):
        super().__init__()
        self.group = group
        self.rank, self.world_size = _world(group)
        self.num_features, self.num_factors = num_features, num_factors
        self.sharding = RowSharding(num_features, self.world_size, scheme)
        rows = self.sharding.shard_rows(self.rank)
        table = table_zeros(rows, 1 + num_factors)
        if init_std:
            # A fresh shard: its own stream of normals (depends on the world size; build from a
            # full table with load_full for a start that does not).
            generator = torch.Generator().manual_seed(seed * 1_000_003 + self.rank)
            table[:, 1:].normal_(0.0, init_std, generator=generator)
        self.table = nn.Parameter(table.to(device) if device is not None else table)
        self.stats = CommStats()
        self._init_fused_update()

    # lookups ---------------------------------------------------------------------------------

    def lookup(self, ids: torch.Tensor, slot_names=None) -> tuple[torch.Tensor, torch.Tensor]:
        ops.check_ids(ids, self.num_features, slot_names)
        ids = ids.to(device=self.table.device, dtype=torch.int64)
        unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        if torch.is_grad_enabled() and self.table.requires_grad:
            if self.row_update is None:
                raise RuntimeError(
                    "training a sharded table needs its update rule: "
                    "call fuse_update(RowUpdate(...))"
                )
            rows = _ShardedLookup.apply(self.table, self, unique)
        else:
            rows, _ = self._fetch(unique)
        return rows, inverse

    def _plan(self, unique: torch.Tensor):
        """Bucket the distinct ids by owner; exchange the counts, then the ids."""
        owner = self.sharding.owner(unique)
        order = None
        if self.sharding.scheme != "block":  # sorted ids are grouped by owner in block sharding
            order = torch.argsort(owner, stable=True)
            unique, owner = unique[order], owner[order]
        local = self.sharding.local(unique, owner)
        send_counts = torch.bincount(owner, minlength=self.world_size)
        recv_counts = torch.empty_like(send_counts)
        ones = [1] * self.world_size
        _all_to_all(self.stats, "counts", recv_counts, send_counts, ones, ones, self.rank,
                    self.group)  # fmt: skip
        in_splits, out_splits = send_counts.tolist(), recv_counts.tolist()
        asked = local.new_empty(sum(out_splits))
        _all_to_all(self.stats, "ids", asked, local, out_splits, in_splits, self.rank, self.group)
        return order, in_splits, out_splits, asked

    def _fetch(self, unique: torch.Tensor):
        plan = self._plan(unique)
        order, in_splits, out_splits, asked = plan
        rows = _owner_gather(self.table, asked)
        back = rows.new_empty(sum(in_splits), rows.shape[1])
        _all_to_all(self.stats, "rows", back, rows, in_splits, out_splits, self.rank, self.group)
        if order is not None:
            back = back.new_empty(back.shape).index_copy_(0, order, back)
        return back, plan

    def _push(self, grad_rows: torch.Tensor, plan) -> None:
        """Send the rows' gradients to their owners; each owner updates what it received."""
        order, in_splits, out_splits, asked = plan
        grad_rows = grad_rows.to(torch.float32).contiguous()
        if order is not None:
            grad_rows = grad_rows[order]
        received = grad_rows.new_empty(sum(out_splits), grad_rows.shape[1])
        _all_to_all(self.stats, "grads", received, grad_rows, out_splits, in_splits, self.rank,
                    self.group)  # fmt: skip
        self._apply_update(asked, received)

    @torch.no_grad()
    def _apply_update(self, local_ids: torch.Tensor, grads: torch.Tensor) -> None:
        """One update of the owned rows named in ``local_ids`` (duplicates summed in order)."""
        table, args = self.table, self._fused_args()
        if ops._fused_kernels_apply(table):
            library.fnn_fields_backward_update(
                table, local_ids.view(-1, 1), None, None, 1, grads, args.state1, args.state2,
                args.step, args.hparams, checks.RULES[args.kind],
            )  # fmt: skip
        else:
            _reference_row_update(args.kind, self.row_update, table, args.state1, args.state2,
                                  args.step, local_ids, grads)  # fmt: skip

    # whole tables ----------------------------------------------------------------------------

    def _gather_rows(self, shard: torch.Tensor, dst: int | None) -> torch.Tensor | None:
        """The full tensor of ``shard``s (rows along dim 0) on rank ``dst`` (None: on every
        rank); None elsewhere. Collective. The receiving ranks gather into one buffer, which
        under block sharding is the full tensor already (no second copy); the others allocate
        nothing but their padded shard."""
        block = max(self.sharding.shard_rows(r) for r in range(self.world_size))
        rest = tuple(shard.shape[1:])
        comm = _comm_device(self.group, shard.device)
        padded = shard.new_zeros((block, *rest), device=comm)
        padded[: len(shard)] = shard
        receiving = dst is None or self.rank == dst
        buffer = pieces = None
        if receiving:
            buffer = shard.new_empty((self.world_size * block, *rest), device=comm)
            pieces = list(buffer.split(block))
        if dst is None:
            dist.all_gather(pieces, padded, group=self.group)
        else:
            root = dst if self.group is None else dist.get_global_rank(self.group, dst)
            dist.gather(padded, pieces, dst=root, group=self.group)
        del padded, pieces
        if not receiving:
            return None
        buffer = buffer.to(shard.device)
        if self.sharding.scheme == "block":  # rank r's rows start at r * block
            return buffer[: self.num_features]
        full = shard.new_empty((self.num_features, *rest))
        for r in range(self.world_size):
            rows = self.sharding.shard_rows(r)
            full[self.sharding.global_rows(r, shard.device)] = buffer[r * block : r * block + rows]
        return full

    @torch.no_grad()
    def gather_table(self, dst: int | None = 0) -> torch.Tensor | None:
        """The full table on rank ``dst`` (every rank with ``dst=None``), None elsewhere."""
        return self._gather_rows(self.table.detach(), dst)

    @torch.no_grad()
    def load_table(self, full: torch.Tensor) -> None:
        """Take this rank's rows of a full table (every rank passes the same table)."""
        if tuple(full.shape) != (self.num_features, 1 + self.num_factors):
            raise ValueError(
                f"a full table must be [{self.num_features}, {1 + self.num_factors}], "
                f"got {tuple(full.shape)}"
            )
        rows = self.sharding.global_rows(self.rank, full.device)
        self.table.copy_(full[rows].to(self.table.device))

    def _state_names(self) -> tuple[str, ...]:
        """The row-shaped optimizer state this rule keeps (the same on every rank)."""
        if self.row_update is None:
            raise RuntimeError("no update rule: call fuse_update first")
        kind = self.row_update.kind
        return {"sgd": (), "adam": ("state1", "state2")}.get(kind, ("state1",))

    @torch.no_grad()
    def gather_state(self, dst: int | None = 0) -> dict | None:
        """The optimizer state of the full table on rank ``dst`` (every rank with None), None
        elsewhere: ``state1``, ``state2`` laid out as :meth:`RowUpdate.new_state` lays out a
        full table's (empty where the rule keeps none), and ``step``. Collective."""
        out = {"state1": self.update_state1.new_zeros(0), "state2": self.update_state2.new_zeros(0)}
        for name in self._state_names():
            out[name] = self._gather_rows(getattr(self, f"update_{name}"), dst)
        if dst is not None and self.rank != dst:
            return None
        out["step"] = self.update_step.clone()
        return out

    @torch.no_grad()
    def load_state(self, state: dict) -> None:
        """Take this rank's rows of a full optimizer state (as :meth:`gather_state` gives)."""
        rows = self.sharding.global_rows(self.rank)
        for name in self._state_names():
            mine = getattr(self, f"update_{name}")
            mine.copy_(state[name][rows.to(state[name].device)].to(mine.device))
        self.update_step.copy_(state["step"])


class _ShardedLookup(torch.autograd.Function):
    """Forward: fetch the rows of the distinct ids; backward: push their gradients to the
    owners, who update their rows (the table gets no .grad)."""

    @staticmethod
    def forward(ctx, table, module: ShardedTable, unique):
        rows, plan = module._fetch(unique)
        ctx.module, ctx.plan = module, plan
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        ctx.module._push(grad_rows, ctx.plan)
        torch.autograd.graph.increment_version(ctx.module.table)
        return None, None, None


# --- the rank's math on the fetched rows ----------------------------------------------------
# The single-process modules fuse the update into backward; here the rows' gradients must be
# handed back instead. The forwards run the native kernels on the fetched rows (with the batch's
# positions among them as ids); the backwards sum each row's gradient over its occurrences with
# index_add_ (in batch order). The reference (autograd) serves where the kernels do not apply.


def _native_rows(rows: torch.Tensor) -> bool:
    return rows.device.type == "cpu" and ops._fused_kernels_apply(rows)


def _no_update(device) -> tuple:
    """The optimizer arguments of a plain SGD rule, for forwards that only read them."""
    empty = torch.zeros(0, device=device)
    return empty, empty, torch.zeros((), dtype=torch.int64), RowUpdate("sgd", 1.0).hparams()


class _RowsFM(torch.autograd.Function):
    """FM logits without w0 from rows [U, 1 + K] and positions [B, S]; backward: the rows'
    summed gradients (and the values')."""

    @staticmethod
    def forward(ctx, rows, inverse, values):
        logits, sums = cpu.fm_forward_train(rows, inverse, values, *_no_update("cpu"), 0)
        ctx.save_for_backward(rows, inverse, values, sums)
        return logits

    @staticmethod
    def backward(ctx, grad_logits):
        rows, inverse, values, sums = ctx.saved_tensors
        grad_logits = grad_logits.contiguous()
        batch, slots = inverse.shape
        scale = grad_logits.unsqueeze(1).expand(batch, slots)  # d logit / d w = x
        if values is not None:
            scale = scale * values
        flat = inverse.reshape(-1)
        grad = rows.new_zeros(rows.shape)
        grad[:, 0].index_add_(0, flat, scale.reshape(-1))
        # d logit / d v_s = x_s (sums - x_s v_s): the sums' part per occurrence, the v part per row
        per = (scale.unsqueeze(2) * sums.unsqueeze(1)).reshape(batch * slots, rows.shape[1] - 1)
        grad[:, 1:].index_add_(0, flat, per)
        square = scale if values is None else scale * values
        own = rows.new_zeros(len(rows)).index_add_(0, flat, square.reshape(-1))
        grad[:, 1:] -= own.unsqueeze(1) * rows[:, 1:]
        grad_values = None
        if ctx.needs_input_grad[2]:
            grad_values = reference.fm_values_grad(rows, inverse, values, sums, grad_logits)
        return grad, None, grad_values


class _RowsGather(torch.autograd.Function):
    """FNN fields z (no w0 column, zero padded to ``width``) from rows and positions."""

    @staticmethod
    def forward(ctx, rows, inverse, values, slot_fields, num_fields, width):
        ctx.save_for_backward(rows, inverse, values, slot_fields)
        ctx.num_fields = num_fields
        return cpu.fnn_fields(rows, inverse, values, slot_fields, num_fields, width)

    @staticmethod
    def backward(ctx, grad_z):
        rows, inverse, values, slot_fields = ctx.saved_tensors
        batch, slots = inverse.shape
        dim = rows.shape[1]
        blocks = grad_z[:, : ctx.num_fields * dim].reshape(batch, ctx.num_fields, dim)
        if slot_fields is not None:
            blocks = blocks.index_select(1, slot_fields)
        if values is not None:
            blocks = blocks * values.unsqueeze(2)
        grad = rows.new_zeros(rows.shape)
        grad.index_add_(0, inverse.reshape(-1), blocks.reshape(batch * slots, dim))
        grad_values = None
        if ctx.needs_input_grad[2]:
            grad_values = reference.fnn_fields_values_grad(
                rows, inverse, slot_fields, ctx.num_fields, grad_z
            )
        return grad, None, grad_values, None, None, None


def rows_fm(rows, w0, inverse, values=None) -> torch.Tensor:
    """FM logits [B] from a lookup's rows and positions (as ``FM.forward`` on the table)."""
    if _native_rows(rows):
        values = None if values is None else values.to(torch.float32).contiguous()
        return w0 + _RowsFM.apply(rows, inverse.contiguous(), values)
    return reference.fm_forward(rows, w0, inverse, values, sparse=False)


def rows_fields(rows, inverse, values, slot_fields, num_fields, width=0) -> torch.Tensor:
    """The FNN's z without w0, [B, >= F (1 + K)], from a lookup's rows and positions."""
    if _native_rows(rows):
        values = None if values is None else values.to(torch.float32).contiguous()
        return _RowsGather.apply(rows, inverse.contiguous(), values, slot_fields, num_fields,
                                 width)  # fmt: skip
    return reference.fnn_fields(rows, inverse, values, slot_fields, num_fields, sparse=False)


# --- the dense, data-parallel part -------------------------------------------------------------


def global_batch_size(local: int, group=None, device=None) -> int:
    """The sum of the ranks' batch sizes (collective). Divide each rank's summed loss by it."""
    device = _comm_device(group, torch.device(device or "cpu"))
    total = torch.tensor([local], dtype=torch.int64, device=device)
    dist.all_reduce(total, group=group)
    return int(total)


def batch_slice(total: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous slice of a global batch of ``total`` rows, as
    ``torch.tensor_split`` cuts it (the first ``total % world_size`` ranks one row more)."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def broadcast_dense(parameters: Iterable[torch.Tensor], src: int = 0, group=None) -> None:
    """Give every rank the replica of rank ``src`` (collective)."""
    tensors = [p.data for p in parameters]
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    flat = flat.to(_comm_device(group, flat.device))
    root = src if group is None else dist.get_global_rank(group, src)
    dist.broadcast(flat, root, group=group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def allreduce_dense_grads(
    parameters: Iterable[torch.Tensor], group=None, stats: CommStats | None = None
) -> None:
    """Sum the dense parameters' gradients over the ranks (one all-reduce of one flat buffer).
    With each rank's loss divided by the global batch size, the sum is the single-process
    gradient of the whole batch. A parameter no rank gave a gradient keeps ``.grad`` None."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = params[0].device
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    parts.append(torch.tensor([p.grad is not None for p in params], dtype=parts[0].dtype,
                              device=device))  # fmt: skip
    flat = torch.cat([t.to(torch.float32) for t in parts])
    flat = flat.to(_comm_device(group, flat.device))
    started = time.perf_counter()
    _sync(flat.device)
    dist.all_reduce(flat, group=group)
    _sync(flat.device)
    elapsed = time.perf_counter() - started
    if stats is not None:
        world = dist.get_world_size(group)
        ring = 2 * (world - 1) * flat.numel() * flat.element_size() // world
        stats.add("allreduce", ring, ring, elapsed)
    flags = flat[-len(params) :]
    offset = 0
    for p, flag in zip(params, flags.tolist(), strict=True):
        n = p.numel()
        if flag:
            p.grad = flat[offset : offset + n].view_as(p).to(device=p.device, dtype=p.dtype)
        offset += n


# --- the models --------------------------------------------------------------------------------


class _ShardedModel(nn.Module):
    embedding: ShardedTable

    @property
    def stats(self) -> CommStats:
        return self.embedding.stats

    @property
    def table(self) -> nn.Parameter:
        """This rank's shard of the table."""
        return self.embedding.table

    def fuse_update(self, rule: RowUpdate | None):
        """The table's row update rule, applied by each owner in backward (required to train)."""
        self.embedding.fuse_update(rule)
        return self

    def fused_state(self) -> dict[str, torch.Tensor]:
        """The row update's state of this rank's rows, and its step count (a checkpoint's)."""
        return self.embedding.fused_state()

    def load_fused_state(self, state: dict[str, torch.Tensor]) -> None:
        self.embedding.load_fused_state(state)

    def dense_parameters(self) -> list[nn.Parameter]:
        """The replicated parameters (everything but the table shard)."""
        return [p for p in self.parameters() if p is not self.embedding.table]

    def allreduce_dense_grads(self) -> None:
        """Sum the dense gradients over the ranks: call after backward, before the step."""
        allreduce_dense_grads(self.dense_parameters(), self.embedding.group, self.stats)

    def broadcast_dense(self, src: int = 0) -> None:
        broadcast_dense(self.dense_parameters(), src, self.embedding.group)


class ShardedFM(_ShardedModel):
    """:class:`fnn_fast.FM` with its table sharded row-wise over the ranks of ``group``.

    Train as the FM, plus one call::

        model = ShardedFM.from_fm(fm).fuse_update(RowUpdate("adagrad", lr=0.05))
        opt = SparseRowOptimizer([model.w0], "adagrad", lr=0.05)   # the dense part
        n = global_batch_size(len(labels))
        loss = F.binary_cross_entropy_with_logits(model(ids), labels, reduction="sum") / n
        loss.backward()                  # the owners update their rows here
        model.allreduce_dense_grads(); opt.step()
    """

    def __init__(self, num_features: int, num_factors: int = 10, *, scheme: str = "block",
                 group=None, init_std: float = 0.01, seed: int = 0, slot_names=None):  # fmt: skip
        super().__init__()
        self.num_features, self.num_factors = num_features, num_factors
        self.slot_names = list(slot_names) if slot_names is not None else None
        self.w0 = nn.Parameter(torch.zeros(()))
        self.embedding = ShardedTable(
            num_features, num_factors, scheme=scheme, group=group, init_std=init_std, seed=seed
        )
        self.broadcast_dense()

    def config(self) -> dict:
        return {"num_features": self.num_features, "num_factors": self.num_factors}

    @classmethod
    def like_fm(cls, num_features: int, num_factors: int = 10, *, init_std: float = 0.01,
                scheme: str = "block", group=None, slot_names=None) -> ShardedFM:  # fmt: skip
        """The shards of the FM that ``FM(num_features, num_factors, init_std=init_std)`` would
        draw from the global generator now (every rank draws the whole stream a chunk at a
        time and keeps its rows; the generator ends where FM leaves it): one process's start,
        without a whole table on any rank."""
        model = cls(num_features, num_factors, scheme=scheme, group=group, init_std=0.0,
                    slot_names=slot_names)  # fmt: skip
        embedding = model.embedding
        rows = embedding.sharding.global_rows(embedding.rank)
        table = drawn_rows(num_features, 1 + num_factors, rows, fm_draw(num_factors, init_std))
        with torch.no_grad():
            embedding.table.copy_(table)
        return model

    @classmethod
    def from_fm(cls, fm: FM, *, scheme: str = "block", group=None) -> ShardedFM:
        """Shard a full FM (every rank passes the same one)."""
        model = cls(fm.num_features, fm.num_factors, scheme=scheme, group=group, init_std=0.0,
                    slot_names=fm.slot_names)  # fmt: skip
        with torch.no_grad():
            model.w0.copy_(fm.w0)
        model.embedding.load_table(fm.table.detach())
        return model

    def to_fm(self, dst: int = 0) -> FM | None:
        """The ordinary FM (table gathered) on rank ``dst``, None elsewhere. Collective."""
        full = self.embedding.gather_table(dst)
        if full is None:
            return None
        fm = FM(self.num_features, self.num_factors, init_std=0.0, slot_names=self.slot_names)
        with torch.no_grad():
            fm.table.copy_(full)
            fm.w0.copy_(self.w0)
        return fm

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        rows, inverse = self.embedding.lookup(ids, self.slot_names)
        if values is not None:
            values = values.to(rows.device)
        return rows_fm(rows, self.w0, inverse, values)


class ShardedFNN(_ShardedModel):
    """:class:`fnn_fast.FNN` with its table sharded row-wise; the layers and w0 replicated
    (data-parallel: :meth:`allreduce_dense_grads` after backward). Same arguments as FNN."""

    def __init__(self, num_features: int, num_fields: int, num_factors: int = 10,
                 hidden: Sequence[int] = (200, 300, 100), *, activation: str = "tanh",
                 dropout: float = 0.0, slot_fields=None, init_std: float = 0.01,
                 scheme: str = "block", group=None, seed: int = 0,
                 slot_names=None):  # fmt: skip
        super().__init__()
        # The layers as FNN builds them (an FNN of no rows lends them, drawing nothing else).
        template = FNN(0, num_fields, num_factors, hidden, activation=activation,
                       dropout=dropout, slot_fields=slot_fields, init_std=0.0)  # fmt: skip
        self.num_features, self.num_factors = num_features, num_factors
        self.num_fields, self.hidden = template.num_fields, template.hidden
        self.activation, self.dropout = activation, dropout
        self.slot_names = list(slot_names) if slot_names is not None else None
        self.register_buffer("slot_fields", template.slot_fields, persistent=False)
        self.w0 = template.w0
        self.hidden_layers, self.output = template.hidden_layers, template.output
        self.embedding = ShardedTable(
            num_features, num_factors, scheme=scheme, group=group, init_std=init_std, seed=seed
        )
        self.broadcast_dense()

    config = FNN.config
    layer_parameters = FNN.layer_parameters

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.embedding.table, self.w0]

    @classmethod
    def from_fnn(cls, fnn: FNN, *, scheme: str = "block", group=None) -> ShardedFNN:
        """Shard a full FNN (every rank passes the same one)."""
        model = cls(fnn.num_features, fnn.num_fields, fnn.num_factors, fnn.hidden,
                    activation=fnn.activation, dropout=fnn.dropout, slot_fields=fnn.slot_fields,
                    init_std=0.0, scheme=scheme, group=group,
                    slot_names=fnn.slot_names)  # fmt: skip
        dense = {k: v for k, v in fnn.state_dict().items() if k != "table"}
        model.load_state_dict(dense, strict=False)
        model.embedding.load_table(fnn.table.detach())
        return model

    @classmethod
    def from_sharded_fm(cls, fm: ShardedFM, num_fields: int | None = None,
                        **kwargs) -> ShardedFNN:  # fmt: skip
        """The FNN from a sharded FM (FNN.from_fm's start): each rank copies its own shard."""
        kwargs.setdefault("slot_names", fm.slot_names)
        model = cls(fm.num_features, num_fields, fm.num_factors, init_std=0.0,
                    scheme=fm.embedding.sharding.scheme, group=fm.embedding.group,
                    **kwargs)  # fmt: skip
        with torch.no_grad():
            model.embedding.table.copy_(fm.embedding.table)
            model.w0.copy_(fm.w0)
        return model

    @classmethod
    def like_fnn(cls, num_features: int, num_fields: int, num_factors: int = 10,
                 hidden: Sequence[int] = (200, 300, 100), *, fm: ShardedFM | None = None,
                 init_std: float = 0.01, group=None, **kwargs) -> ShardedFNN:  # fmt: skip
        """The shards of the FNN that ``FNN(num_features, num_fields, num_factors, hidden,
        init_std=init_std, **kwargs)`` would draw from the global generator now, or with ``fm``
        ``FNN.from_fm`` of the whole of that sharded FM (each rank copies its shard): the table's
        draws are made a chunk at a time (kept, or only passed over for ``fm``), then the layers
        are drawn as FNN draws them. One process's start without a whole table on any rank."""
        if fm is not None:
            group, num_features = fm.embedding.group, fm.num_features
            num_factors, kwargs["scheme"] = fm.num_factors, fm.embedding.sharding.scheme
            kwargs.setdefault("slot_names", fm.slot_names)
        sharding = RowSharding(num_features, _world(group)[1], kwargs.get("scheme", "block"))
        rank = _world(group)[0]
        rows = sharding.global_rows(rank) if fm is None else torch.zeros(0, dtype=torch.int64)
        table = drawn_rows(num_features, 1 + num_factors, rows, fnn_draw(num_factors, init_std))
        model = cls(num_features, num_fields, num_factors, hidden, init_std=0.0, group=group,
                    **kwargs)  # fmt: skip
        with torch.no_grad():
            if fm is None:
                model.embedding.table.copy_(table)
            else:
                model.embedding.table.copy_(fm.embedding.table)
                model.w0.copy_(fm.w0)
        return model

    def to_fnn(self, dst: int = 0) -> FNN | None:
        """The ordinary FNN (table gathered) on rank ``dst``, None elsewhere. Collective."""
        full = self.embedding.gather_table(dst)
        if full is None:
            return None
        fnn = FNN(self.num_features, self.num_fields, self.num_factors, self.hidden,
                  activation=self.activation, dropout=self.dropout, slot_fields=self.slot_fields,
                  init_std=0.0, slot_names=self.slot_names)  # fmt: skip
        dense = {k: v for k, v in self.state_dict().items() if not k.startswith("embedding.")}
        fnn.load_state_dict(dense, strict=False)
        with torch.no_grad():
            fnn.table.copy_(full)
        return fnn

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        rows, inverse = self.embedding.lookup(ids, self.slot_names)
        if values is not None:
            values = values.to(rows.device)
        # As FNN.forward: w0's column of the first layer folds into its bias, and in training
        # on the CPU z is zero padded to a multiple of 16 columns.
        layers = list(self.hidden_layers)
        first = layers[0] if layers else self.output
        width = self.num_fields * (1 + self.num_factors)
        padded = (
            -(-width // 16) * 16 if torch.is_grad_enabled() and rows.device.type == "cpu" else 0
        )
        fields = rows_fields(rows, inverse, values, self.slot_fields, self.num_fields, padded)
        if not isinstance(first, InputLinear):
            z = torch.cat([self.w0.reshape(1, 1).expand(fields.shape[0], 1), fields], dim=1)
            return self.output(self.hidden_layers(z[:, : 1 + width])).squeeze(-1)
        return fnn_head(fields, self.w0, self.hidden_layers, self.output)


# --- the training rows, shared out between the ranks -------------------------------------------


class RankSplit:
    """This rank's rows of a training split the ranks hold between them: rank r holds the
    global rows [offset_r, offset_r + n_r) (the ranks' shares in order make the split one
    process reads). Every rank draws the same order of global batches, as one process over the
    whole split (``batches`` with a generator), and steps on the rows of each batch it holds
    (any number, none included); so N ranks take the steps one process takes on the same
    global batches. ``labels``: the whole split's labels (every rank holds them, for the
    metrics), ``len``: the whole split's rows.

    ``local``: this rank's rows (an in-memory :class:`fnn_fast.train.Split`); ``counts``:
    every rank's number of rows, in rank order; ``labels``: every rank's labels concatenated."""

    per_rank = True

    def __init__(self, local, counts: Sequence[int], labels: torch.Tensor, group=None):
        self.local, self.group = local, group
        self.rank, self.world_size = _world(group)
        self.counts = [int(c) for c in counts]
        if len(self.counts) != self.world_size or self.counts[self.rank] != len(local):
            raise ValueError(f"counts {self.counts} do not fit rank {self.rank}'s "
                             f"{len(local)} rows of {self.world_size} ranks")  # fmt: skip
        self.offset = sum(self.counts[: self.rank])
        self.total = sum(self.counts)
        if len(labels) != self.total:
            raise ValueError(f"{len(labels)} labels for {self.total} rows")
        self.labels = labels

    def __len__(self) -> int:
        return self.total

    def click_rate(self) -> float:
        """The whole split's share of positive labels (as Split.click_rate)."""
        return float(self.labels.sum(dtype=torch.float64)) / self.total if self.total else 0.5

    def for_evaluation(self) -> RankSplit:
        return self

    def batches(self, batch_size: int, generator: torch.Generator | None = None, *,
                start_step: int = 0, sizes=None, **_):  # fmt: skip
        """With ``generator``: the rows this rank holds of each global batch (in the order the
        generator draws, as Split.batches over the whole split), each global batch's size
        appended to ``sizes``. Without: this rank's rows in batches (RBM pre-training)."""
        local = self.local
        if generator is None:
            yield from local.batches(batch_size, start_step=start_step)
            return
        order = torch.randperm(self.total, generator=generator)
        low, high = self.offset, self.offset + len(local)
        for start in range(start_step * batch_size, self.total, batch_size):
            rows = order[start : start + batch_size]
            index = rows[(rows >= low) & (rows < high)] - low
            if sizes is not None:
                sizes.append(len(rows))
            values = None if local.values is None else local.values.index_select(0, index)
            yield local.ids.index_select(0, index), values, local.labels.index_select(0, index)

    @torch.no_grad()
    def predict_logits(self, model: nn.Module, batch_size: int = 8192):
        """Logits [N] of the whole split (numpy float32), the same on every rank (collective):
        each rank predicts its rows, in as many calls as the rank with the most rows needs."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = torch.zeros(self.total, dtype=torch.float32, device=device)
        local = self.local
        for start in range(0, max(self.counts), batch_size):
            rows = slice(min(start, len(local)), min(start + batch_size, len(local)))
            ids = local.ids[rows].to(device)
            values = None if local.values is None else local.values[rows].to(device)
            at = self.offset + rows.start
            out[at : at + ids.shape[0]] = model(ids, values).to(torch.float32)
        model.train(was_training)
        out = out.to(_comm_device(self.group, out.device))
        dist.all_reduce(out, group=self.group)
        return out.cpu().numpy()
