"""The two-stage trainer: stage 1 fits an FM, stage 2 an FNN initialized from the best FM.

Both stages use mini-batch training with sparse row updates for the embedding table
(:class:`fnn_fast.optim.SparseRowOptimizer`) and early stopping on validation AUC: the weights of
the best epoch are kept. The test split is only ever evaluated, never used to choose anything.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from fnn_fast.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_optimizer_state,
    optimizer_state,
    prefixed,
)
from fnn_fast.metrics import log_loss, roc_auc
from fnn_fast.modules import FM, FNN, fm_start_unfit, start_as_fm
from fnn_fast.optim import RowUpdate
from fnn_fast.rbm import pretrain_tanh_layers

if TYPE_CHECKING:
    from fnn_fast.data import FeatureEncoder, ParsedRows


LAYER_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class TrainConfig:
    """Hyper-parameters of both stages. Defaults suit sparse click logs such as iPinYou."""

    factors: int = 10
    batch_size: int = 256
    seed: int = 0
    patience: int = 4  # epochs without a better validation metric before stopping
    # The validation metric that picks each stage's best epoch (and stops it): auc, logloss, or
    # auto: AUC where the validation split holds AUC_STOPPING_MIN_CLASS rows of each class,
    # else logloss (see stopping_metric).
    fm_early_stopping: str = "auto"
    fnn_early_stopping: str = "auto"
    # Stage 1: FM. Adagrad whose sums start at 0.001: a rare feature's few small gradients move
    # it as SGD at lr / sqrt(0.001) would (plain Adagrad gives it full-size steps and overfits
    # sparse logs; sums from 0.01, the default before, moved it three times slower), while a
    # frequent feature's steps shrink as its sum grows (plain SGD at a rate that suits 0.1 %
    # clicks diverges at 24 %). Chosen on validation over four data sets and five seeds:
    # benchmarks/choose_defaults.py, README "How the defaults were chosen".
    fm_epochs: int = 60
    fm_optimizer: str = "adagrad"
    fm_lr: float = 0.05
    # L2 on the rows present in a batch. 3e-4 (1e-4 before) gave the FM, and the FNN built on
    # it, more held-out AUC on all four sets (choose_defaults.py --stage both, five seeds).
    fm_weight_decay: float = 3e-4
    fm_init_std: float = 0.01
    fm_initial_accumulator: float = 0.001  # Adagrad rules: the starting sum of squared gradients
    # Stage 2: FNN.
    fnn_epochs: int = 40
    fnn_init: str = "fm"  # "fm": embedding from the trained FM; "random": the baseline
    hidden: list[int] = field(default_factory=lambda: [200, 300, 100])  # the paper's diamond
    activation: str = "tanh"
    dropout: float = 0.0
    fnn_optimizer: str = "sgd"  # rule for the sparse embedding update
    fnn_embedding_lr: float = 0.1  # FM-initialized embedding (sparse SGD by default)
    fnn_weight_decay: float = 1e-5  # L2 on embedding rows present in a batch
    fnn_initial_accumulator: float = 0.0  # Adagrad rules for the embedding: the starting sum
    fnn_layer_optimizer: str = "adam"  # hidden and output layers: "adam" or "sgd"
    fnn_lr: float = 3e-5  # hidden and output layers: slow, the FM input overfits fast
    # Layer-wise rates: one per hidden layer, then the output layer; None: fnn_lr for all.
    fnn_layer_lrs: list[float] | None = None
    fnn_layer_weight_decay: float = 0.0  # L2 on the hidden and output layers
    fnn_init_std: float = 0.01  # embedding std when fnn_init == "random"
    # The hidden layers' start with an FM embedding: "fm", set so that the FNN computes the
    # FM's function before its first step (modules.start_as_fm; tanh layers only, else
    # glorot), or "glorot", random (the paper's). Chosen on validation over four data sets:
    # benchmarks/choose_defaults.py, README "How the defaults were chosen".
    fnn_layer_init: str = "fm"
    # Refit: once early stopping has chosen each stage's epoch count, train both stages again
    # on the training and validation rows together for that many epochs (one process, rows in
    # memory; twice the training time). The validation figures then stay the early-stopped
    # models'. Measured on held-out rows: README "How the defaults were chosen".
    refit: bool = False
    # Optional RBM pre-training of the hidden layers (tanh only), layer by layer with CD-k.
    pretrain: str = "none"  # or "rbm"
    rbm_epochs: int = 1
    rbm_lr: float = 0.01
    rbm_k: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def row_update(self, stage: str) -> RowUpdate:
        """The sparse rule that updates a stage's table rows: the FM's ("fm") or the FNN's
        embedding ("fnn")."""
        if stage == "fm":
            return RowUpdate(self.fm_optimizer, self.fm_lr, self.fm_weight_decay,
                             initial_accumulator_value=self.fm_initial_accumulator)  # fmt: skip
        return RowUpdate(self.fnn_optimizer, self.fnn_embedding_lr, self.fnn_weight_decay,
                         initial_accumulator_value=self.fnn_initial_accumulator)  # fmt: skip


@dataclass
class Split:
    """Encoded rows as tensors, ready for batching."""

    ids: torch.Tensor  # int64 [N, S]
    values: torch.Tensor | None  # float32 [N, S]; None when every value is 1
    labels: torch.Tensor  # float32 [N]

    @classmethod
    def encode(cls, rows: ParsedRows, encoder: FeatureEncoder, index=None) -> Split:
        """The rows (those ``index`` selects, when given) as tensors, laid out in the encoder's
        slots (a file's multi-valued field may have fewer slots; more values than the model
        has slots for is a DataError naming the line)."""
        from fnn_fast.data.errors import DataError
        from fnn_fast.data.parts import conform_slots, overflow_reason

        keys, values, overflow = conform_slots(rows, encoder)
        if overflow.any():
            row = int(np.flatnonzero(overflow)[0])
            raise DataError(rows.source, int(rows.lines[row]), overflow_reason(rows, encoder, row))
        labels = rows.labels
        if index is not None:
            keys, values, labels = keys[index], values[index], labels[index]
        ids, values = encoder.transform(keys, values)
        values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        return cls(
            ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
            values=None if bool((values == 1).all()) else values,
            labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
        )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, *, start_step: int = 0,
        **_,
    ):  # fmt: skip
        """(ids, values, labels) mini-batches, shuffled when a generator is given (the order is
        drawn when the first batch is asked for), from batch ``start_step`` on. Other keywords
        (``epoch``, ``seed``: what orders a streamed split) are accepted and not needed."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for start in range(start_step * batch_size, n, batch_size):
            if order is None:
                rows = slice(start, start + batch_size)
                values = None if self.values is None else self.values[rows]
                yield self.ids[rows], values, self.labels[rows]
                continue
            # index_select, not self.ids[index]: on the CPU, advanced indexing splits even a
            # batch of 256 rows between all of torch's threads (1.2 ms a batch on a shared
            # 2-core host, 40 us with index_select, which keeps small gathers on one thread).
            index = order[start : start + batch_size]
            values = None if self.values is None else self.values.index_select(0, index)
            yield self.ids.index_select(0, index), values, self.labels.index_select(0, index)

    def for_evaluation(self) -> Split:
        """The rows evaluated after each epoch: all of them."""
        return self

    def click_rate(self) -> float:
        """The share of positive labels, exactly (a float64 sum of 0/1)."""
        return float(self.labels.sum(dtype=torch.float64)) / len(self) if len(self) else 0.5

    def joined(self, other: Split) -> Split:
        """This split's rows, then ``other``'s (values of 1 where a side has none)."""
        values = None
        if self.values is not None or other.values is not None:
            values = torch.cat([torch.ones(s.ids.shape) if s.values is None else s.values
                                for s in (self, other)])  # fmt: skip
        return Split(torch.cat([self.ids, other.ids]), values,
                     torch.cat([self.labels, other.labels]))  # fmt: skip


@dataclass
class Ranks:
    """This process's place in a ``torchrun`` job: every rank trains on its slice
    (:func:`fnn_fast.distributed.batch_slice`) of each global batch, with the table sharded
    over the ranks (:mod:`fnn_fast.distributed`). ``rows_trained`` counts the training rows this
    rank stepped on (all epochs, both stages)."""

    rank: int
    world_size: int
    group: object = None
    rows_trained: int = 0

    @classmethod
    def current(cls, group=None) -> Ranks:
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slice(self, total: int) -> slice:
        from fnn_fast.distributed import batch_slice

        return batch_slice(total, self.rank, self.world_size)

    def _tensor(self, values, dtype, device="cpu") -> torch.Tensor:
        device = torch.device(device)
        if dist.get_backend(self.group) == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        return torch.as_tensor(values, dtype=dtype, device=device)

    def sum(self, value: float) -> float:
        """The sum of ``value`` over the ranks (collective)."""
        return float(self.sums([value])[0])

    def sums(self, values) -> torch.Tensor:
        """Each of ``values`` (numbers, or a tensor) summed over the ranks, in one collective:
        a float64 CPU tensor."""
        t = self._tensor(values, torch.float64).clone()  # the caller's tensor stays as it was
        dist.all_reduce(t, group=self.group)
        return t.cpu()

    def any(self, flag: bool) -> bool:
        t = self._tensor([int(flag)], torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t)

    def broadcast(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (collective): decisions all ranks must share."""
        t = self._tensor([value], torch.float64)
        dist.broadcast(t, dist.get_global_rank(self.group, 0) if self.group else 0,
                       group=self.group)  # fmt: skip
        return float(t)

    def all_gather(self, value) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out


_FAULT_SEEN: list[int] = [0]


def _test_fault(ranks: Ranks | None, step: int) -> None:
    """Tests only: FNN_FAST_TEST_DIE="RANK:STEP[:TIMES]" makes that rank exit at the TIMES-th
    (default: first) training step numbered STEP within an epoch (counted over the epochs of
    both stages), as a killed or crashed rank would; not in workers that torchrun restarted
    (TORCHELASTIC_RESTART_COUNT > 0)."""
    spec = os.environ.get("FNN_FAST_TEST_DIE")
    if ranks is None or not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    rank, at, times = ([int(x) for x in spec.split(":")] + [1])[:3]
    if ranks.rank != rank or step != at:
        return
    _FAULT_SEEN[0] += 1
    if _FAULT_SEEN[0] == times:
        print(f"fnn-fast: rank {rank}: exiting at step {step} (FNN_FAST_TEST_DIE)",
              file=sys.stderr, flush=True)  # fmt: skip
        os._exit(17)


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when there is a GPU) as a torch.device;
    a CUDA device that is not here is a ValueError saying why."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ValueError(f"device {device!r}: fnn_fast trains on cpu or cuda (cuda:N)")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
        raise ValueError(
            f"device {device!r}: CUDA is not available here (torch {torch.__version__} with "
            f"{build}, {torch.cuda.device_count()} GPUs visible); train with --device cpu"
        )
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r}: only {torch.cuda.device_count()} GPU(s) here (cuda:0.."
            f"cuda:{torch.cuda.device_count() - 1})"
        )
    return resolved


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batches, device: torch.device):
    """The (ids, values, labels) batches on ``device``. For CUDA each batch is pinned and copied
    on a side stream one batch ahead, so the copy of batch i + 1 overlaps the compute of batch
    i; the compute stream waits for a batch's copy before using it."""
    if device.type != "cuda":
        yield from batches
        return
    copy_stream = torch.cuda.Stream(device)

    def ahead(batch):
        with torch.cuda.stream(copy_stream):
            moved = tuple(
                None if t is None else t.pin_memory().to(device, non_blocking=True) for t in batch
            )
        done = torch.cuda.Event()
        done.record(copy_stream)
        return moved, done

    pending = None
    for batch in batches:
        incoming = ahead(batch)
        if pending is not None:
            yield _arrived(*pending, device)
        pending = incoming
    if pending is not None:
        yield _arrived(*pending, device)


def _arrived(batch, done, device):
    compute = torch.cuda.current_stream(device)
    compute.wait_event(done)
    for t in batch:
        if t is not None:
            t.record_stream(compute)  # its memory is not reused before compute is done with it
    return batch


@torch.no_grad()
def predict_logits(model: torch.nn.Module, split, batch_size: int = 8192) -> np.ndarray:
    """Logits [N] (float32, on the host), computed on the model's device."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    batches = to_device(split.batches(batch_size), device)
    out = [model(ids, values) for ids, values, _ in batches]
    model.train(was_training)
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def predict_logits_ranks(model: torch.nn.Module, split, ranks: Ranks,
                         batch_size: int = 8192) -> np.ndarray:  # fmt: skip
    """As :func:`predict_logits` for a sharded model (collective): each rank computes its slice
    of every batch and the slices are summed into one [N] vector (each row comes from one rank,
    the others add zeros), the same on every rank. A split the ranks hold between them
    (:class:`fnn_fast.distributed.RankSplit`) predicts its own."""
    if getattr(split, "per_rank", False):
        return split.predict_logits(model, batch_size)
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = torch.zeros(len(split), dtype=torch.float32, device=device)
    start = 0
    for ids, values, _ in split.batches(batch_size):
        n = ids.shape[0]
        s = ranks.slice(n)
        ids, values = ids[s].to(device), None if values is None else values[s].to(device)
        out[start + s.start : start + s.stop] = model(ids, values).to(torch.float32)
        start += n
    model.train(was_training)
    comm = out if dist.get_backend(ranks.group) != "nccl" else out.cuda()
    dist.all_reduce(comm, group=ranks.group)
    return comm.cpu().numpy()


def predict_probabilities(model: torch.nn.Module, split: Split, batch_size: int = 8192,
                          ranks: Ranks | None = None):  # fmt: skip
    """Click probabilities [N] (float64)."""
    if ranks is None:
        logits = predict_logits(model, split, batch_size)
    else:
        logits = predict_logits_ranks(model, split, ranks, batch_size)
    logits = logits.astype(np.float64)
    return torch.sigmoid(torch.from_numpy(logits)).numpy()  # no overflow for large |logit|


def evaluate(model: torch.nn.Module, split: Split, ranks: Ranks | None = None) -> dict:
    """AUC and logloss of the model on the split (``ranks``: a sharded model, collective)."""
    probabilities = predict_probabilities(model, split, ranks=ranks)
    labels = split.labels.numpy()
    return {"auc": roc_auc(labels, probabilities), "logloss": log_loss(labels, probabilities)}


class TrainingDiverged(FloatingPointError):
    """A stage's loss or parameters became non-finite: the run must fail, not save a model."""

    def __init__(self, stage: str, epoch: int, step: int, what: str, rate_hint: str):
        self.stage, self.epoch, self.step = stage, epoch, step
        super().__init__(
            f"{stage} training diverged in epoch {epoch}, step {step}: {what}. The learning "
            f"rate is most likely too high for this data: lower {rate_hint}"
        )


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, None when all are finite."""
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            return name
    return None


def logistic_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """The mean (``reduction="sum"``: the sum) binary cross-entropy of ``logits`` against 0/1
    ``labels``, as ``F.binary_cross_entropy_with_logits`` gives it (equal up to rounding):
    softplus(x) - y x.
    Not that function itself: on the CPU it calls log_sigmoid, whose kernel (torch 2.x) splits
    even a batch of 256 between all of torch's threads, and on a shared 2-core host each step
    then waited milliseconds for a descheduled thread (20x slower training at batch 256:
    benchmarks/RESULTS.md, "Training in memory and streamed"). softplus and the mean split only
    tensors of tens of thousands of elements."""
    losses = F.softplus(logits) - labels * logits
    return losses.sum() if reduction == "sum" else losses.mean()


# Early stopping on AUC needs enough rows of the validation split's rarer class: AUC's standard
# error is about sqrt(AUC (1 - AUC) / n) for n such rows (0.07 at iPinYou's 51 validation
# clicks), more than an epoch's typical gain, while logloss averages over every row. On
# validation data (README, "Early stopping"), stopping on logloss where the rarer class has
# fewer rows raised the FNN's held-out AUC on iPinYou by 0.014; Adult and the planted sets
# hold 450 or more and keep AUC.
AUC_STOPPING_MIN_CLASS = 200


def stopping_metric(choice: str, valid) -> tuple[str, str | None]:
    """('auc' or 'logloss', why, for ``choice="auto"``) of an early-stopping choice."""
    if choice not in ("auto", "auc", "logloss"):
        raise ValueError(f"early stopping metric {choice!r}: choose auto, auc or logloss")
    if choice != "auto" or valid is None or len(valid) == 0:
        return ("auc" if choice == "auto" else choice), None
    positives = int(round(float(valid.labels.sum())))
    rarer = min(positives, len(valid) - positives)
    if rarer >= AUC_STOPPING_MIN_CLASS:
        return "auc", None
    return "logloss", (
        f"the validation split has {rarer} rows of its rarer class (fewer than "
        f"{AUC_STOPPING_MIN_CLASS}, too few for a steady AUC)"
    )


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def fit(
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    train: Split,
    valid: Split | None,
    *,
    epochs: int,
    batch_size: int,
    patience: int,
    seed: int,
    name: str,
    progress: bool = True,
    rate_hint: str = "the learning rate",
    early_stopping: str = "auto",
    checkpoint: Checkpointer | None = None,
    stage: str = "",
    ranks: Ranks | None = None,
    measure_start: bool = False,
) -> list[dict]:
    """Mini-batch training with early stopping on validation AUC (``early_stopping="logloss"``:
    validation logloss; ``"auto"``: AUC or logloss as :func:`stopping_metric` decides; a
    validation split of one class has no AUC and uses its logloss too).
    The model ends holding the weights of its best epoch; returns one record per epoch. A
    non-finite loss or parameter raises :class:`TrainingDiverged` naming the stage, epoch and
    step (``rate_hint``: the setting to lower). ``train`` and ``valid``: in-memory
    :class:`Split` or streamed (:class:`fnn_fast.stream.CacheStream`) rows. With ``checkpoint``,
    the whole training state is written when it is due, and a checkpoint it loaded for this
    ``stage`` is resumed from.

    With ``ranks`` (a ``torchrun`` job, the model sharded: :mod:`fnn_fast.distributed`), every
    rank draws the same order of global batches and steps on its slice of each, its summed loss
    divided by the global batch's size and the dense gradients summed over the ranks: one
    process's step on the whole batch. Metrics and early stopping are the same on all ranks;
    only rank 0 logs. The checkpoint is then a
    :class:`fnn_fast.checkpoint.ShardedCheckpointer` (each rank saves its rows)."""
    log = _log if ranks is None or ranks.main else (lambda message: None)
    progress = progress and (ranks is None or ranks.main)
    early_stopping, why = stopping_metric(early_stopping, valid)
    if why is not None:
        log(f"{name}: early stopping on validation logloss: {why}")
    generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    best_score, best_state, best_epoch = -math.inf, None, 0
    first_epoch, start_step, total_loss, seen = 1, 0, 0.0, 0
    resumed = checkpoint.resumed if checkpoint is not None else None
    if resumed is not None and resumed[0]["stage"] == stage:
        position = _restore_fit(model, optimizers, generator, *resumed)
        first_epoch, start_step = position["epoch"], position["step"]
        total_loss, seen = position["total_loss"], position["seen"]
        history, best_epoch = position["history"], position["best_epoch"]
        best_score = -math.inf if position["best_score"] is None else position["best_score"]
        best = {k[5:]: v for k, v in resumed[1].items() if k.startswith("best.")}
        best_state = best if position["has_best"] else None
        checkpoint.resumed = None
        log(f"{name}: resuming at epoch {first_epoch}, step {start_step}")

    def save(epoch: int, step: int, epoch_rng: torch.Tensor) -> None:
        meta = {
            "stage": stage,
            "fit": {
                "epoch": epoch, "step": step, "total_loss": total_loss, "seen": seen,
                "history": history, "best_epoch": best_epoch, "has_best": best_state is not None,
                "best_score": None if best_score == -math.inf else best_score,
            },
        }  # fmt: skip
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"fused.{k}": v for k, v in _fused_state(model).items()})
        if best_state is not None:
            tensors.update({f"best.{k}": v for k, v in best_state.items()})
        optimizer_meta = []
        for i, optimizer in enumerate(optimizers):
            saved, optimizer_tensors = optimizer_state(optimizer, f"opt{i}")
            optimizer_meta.append(saved)
            tensors.update(optimizer_tensors)
        meta["optimizers"] = optimizer_meta
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.epoch"] = epoch_rng
        checkpoint.save(meta, tensors)

    def measure(record: dict, step: int) -> float:
        """The record's train and validation metrics, logged; returns its early-stopping score."""
        train_metrics = evaluate(model, train.for_evaluation(), ranks)
        record.update(train_auc=train_metrics["auc"], train_logloss=train_metrics["logloss"])
        record.setdefault("train_loss", train_metrics["logloss"])  # the start: no steps yet
        if valid is not None:
            valid_metrics = evaluate(model, valid, ranks)
            record.update(valid_auc=valid_metrics["auc"], valid_logloss=valid_metrics["logloss"])
        history.append(record)
        log(
            f"{name} epoch {record['epoch']}: train auc {record['train_auc']:.4f} "
            f"logloss {record['train_logloss']:.4f}"
            + (
                f" | valid auc {record['valid_auc']:.4f} logloss {record['valid_logloss']:.4f}"
                if valid is not None
                else ""
            )
            + (f" | {record['samples_per_s']:,.0f} rows/s" if record["epoch"] else " | the start")
        )
        if valid is None:
            score = -record["train_loss"]
        elif early_stopping == "logloss" or math.isnan(record["valid_auc"]):
            # logloss by choice, or for a validation split of one class (no AUC)
            score = -record["valid_logloss"]
        else:
            score = record["valid_auc"]
        if ranks is not None:  # every rank computed it; rank 0's decides for all
            score = ranks.broadcast(score)
        if math.isnan(score):
            raise TrainingDiverged(
                name, record["epoch"], step, "the validation metric is NaN", rate_hint
            )
        return score

    if measure_start and first_epoch == 1 and start_step == 0 and not history:
        # The start is a function worth keeping (an FNN started as its FM): it is epoch 0,
        # and stays the best unless training beats it on validation.
        score = measure({"epoch": 0, "seconds": 0.0, "samples_per_s": 0.0}, 0)
        best_score, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), 0

    for epoch in range(first_epoch, epochs + 1):
        model.train()
        started = time.perf_counter()
        if epoch != first_epoch:
            start_step, total_loss, seen = 0, 0.0, 0
        epoch_rng = generator.get_state()  # before this epoch's order is drawn
        step = start_step
        bar = tqdm(
            total=len(train),
            initial=min(start_step * batch_size, len(train)),
            desc=f"{name} epoch {epoch}/{epochs}",
            unit="rows",
            unit_scale=True,
            leave=False,
            disable=None if progress else True,
        )
        sizes: deque[int] = deque()  # the global batches' sizes, in order
        if getattr(train, "per_rank", False):  # each rank holds its rows of the split
            batches = train.batches(batch_size, generator, start_step=start_step, sizes=sizes)
        else:
            batches = train.batches(
                batch_size, generator, epoch=epoch, seed=seed, start_step=start_step
            )
            batches = _rank_slices(batches, ranks, sizes)
        batches = to_device(batches, model_device(model))
        for step, (ids, values, labels) in enumerate(batches, start_step + 1):
            global_rows = sizes.popleft()
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            if ranks is None:
                loss = logistic_loss(model(ids, values), labels)
                loss_value = loss.item()
            else:
                _test_fault(ranks, step)
                loss = logistic_loss(model(ids, values), labels, reduction="sum") / global_rows
                loss_value = ranks.sum(loss.item())  # the global batch's mean: same everywhere
                ranks.rows_trained += labels.shape[0]
            # Checked before the update: a non-finite loss would write NaN into every row of the
            # batch (the fused kernels update the table inside backward).
            if not math.isfinite(loss_value):
                bar.close()
                raise TrainingDiverged(name, epoch, step, f"the training loss is {loss_value}",
                                       rate_hint)  # fmt: skip
            loss.backward()
            if ranks is not None:
                model.allreduce_dense_grads()
            for optimizer in optimizers:
                optimizer.step()
            total_loss += loss_value * global_rows
            seen += global_rows
            bar.update(global_rows)
            if checkpoint is not None and checkpoint.step_done():
                save(epoch, step, epoch_rng)
        bar.close()
        bad = first_non_finite(model)
        if ranks is not None and ranks.any(bad is not None) and bad is None:
            bad = "on another rank"
        if bad is not None:
            raise TrainingDiverged(name, epoch, step, f"parameter {bad} is not finite", rate_hint)
        record = {
            "epoch": epoch,
            "train_loss": total_loss / max(seen, 1),
            "seconds": time.perf_counter() - started,
            "samples_per_s": seen / max(time.perf_counter() - started, 1e-9),
        }
        score = measure(record, step)
        if score > best_score:
            best_score, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= patience:
            log(f"{name}: stopping early, best epoch {best_epoch}")
            break
        if checkpoint is not None and checkpoint.due():
            total_loss, seen = 0.0, 0
            save(epoch + 1, 0, generator.get_state())
    if best_state is not None:
        model.load_state_dict(best_state)
    for record in history:
        record["best"] = record["epoch"] == best_epoch
    return history


def _rank_slices(batches, ranks: Ranks | None, sizes: deque):
    """The batches (this rank's slice of each, with ``ranks``); each global batch's size is
    appended to ``sizes`` as it is read."""
    for ids, values, labels in batches:
        sizes.append(labels.shape[0])
        if ranks is not None:
            s = ranks.slice(labels.shape[0])
            ids, values, labels = ids[s], None if values is None else values[s], labels[s]
        yield ids, values, labels


def _fused_state(model: torch.nn.Module) -> dict:
    return model.fused_state() if hasattr(model, "fused_state") else {}


def _restore_fit(model, optimizers, generator, meta: dict, tensors: dict) -> dict:
    """Load a checkpoint's training state into the model, its optimizers and the epoch order's
    generator; returns the position and early-stopping state."""
    model.load_state_dict(prefixed(tensors, "model"))
    if hasattr(model, "load_fused_state"):
        model.load_fused_state(prefixed(tensors, "fused"))
    if len(meta["optimizers"]) != len(optimizers):
        raise CheckpointError("the checkpoint holds the state of another set of optimizers")
    for i, (optimizer, saved) in enumerate(zip(optimizers, meta["optimizers"], strict=True)):
        load_optimizer_state(optimizer, saved, tensors, f"opt{i}")
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.epoch"])
    return meta["fit"]


def base_rate_logit(split: Split) -> float:
    """log(p / (1 - p)) of the training click rate: the bias to start from. Starting at 0 on
    rare clicks makes every feature weight absorb the missing bias first."""
    rate = split.click_rate()
    rate = min(max(rate, 1e-6), 1 - 1e-6)
    return math.log(rate / (1 - rate))


def epochs_trained(history: list[dict]) -> int:
    """The epochs a stage trained: its history less the start's record (epoch 0), if any."""
    return sum(record["epoch"] > 0 for record in history)


def best_epoch(history: list[dict]) -> int | None:
    """The epoch whose weights a stage kept (0: its start); None for a stage of no epochs."""
    return next((record["epoch"] for record in history if record["best"]), None)


def _stage_settings(config: TrainConfig, stage: str) -> dict:
    """fit's settings that a stage ("fm" or "fnn") takes from the config."""
    return {
        "epochs": getattr(config, f"{stage}_epochs"), "batch_size": config.batch_size,
        "patience": config.patience, "stage": stage,
        "early_stopping": getattr(config, f"{stage}_early_stopping"),
    }  # fmt: skip


def train_fm(
    train: Split, valid: Split | None, num_features: int, config: TrainConfig, slot_names=None,
    progress: bool = True, checkpoint: Checkpointer | None = None,
    device: str | torch.device = "cpu", ranks: Ranks | None = None,
) -> tuple[FM, list[dict]]:  # fmt: skip
    """Stage 1: an FM trained with sparse row updates, on ``device`` (``checkpoint``: see
    :func:`fit`). With ``ranks``, each rank builds its rows of the FM one process builds and
    trains them (:class:`fnn_fast.distributed.ShardedFM`); the best FM is returned sharded."""
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    if ranks is None:
        fm = FM(num_features, config.factors, init_std=config.fm_init_std, slot_names=slot_names)
    else:
        from fnn_fast.distributed import ShardedFM

        fm = ShardedFM.like_fm(num_features, config.factors, init_std=config.fm_init_std,
                               group=ranks.group, slot_names=slot_names)  # fmt: skip
    with torch.no_grad():
        fm.w0.fill_(base_rate_logit(train))
    fm.to(device)
    # The native kernels apply the table's update inside backward; on the reference backend the
    # table gets a sparse gradient and the optimizer below applies the same rule.
    rule = config.row_update("fm")
    fm.fuse_update(rule)
    optimizer = rule.optimizer(fm.parameters())
    history = fit(
        fm, [optimizer], train, valid, **_stage_settings(config, "fm"), seed=config.seed,
        name="FM", progress=progress, checkpoint=checkpoint, ranks=ranks,
        rate_hint=f"--fm-lr (now {config.fm_lr:g}, rule {config.fm_optimizer})",
    )  # fmt: skip
    if ranks is not None:  # the row state is done with: stage 2 starts from the shards
        fm.fuse_update(None)
    return fm, history


def _whole_fm(sharded) -> FM:
    """The whole FM of a ShardedFM, on every rank (collective)."""
    table = sharded.embedding.gather_table(None)
    fm = FM(sharded.num_features, sharded.num_factors, init_std=0.0,
            slot_names=sharded.slot_names)  # fmt: skip
    with torch.no_grad():
        fm.table.copy_(table.cpu())
        fm.w0.copy_(sharded.w0.detach().cpu())
    return fm


def build_fnn(fm: FM | None, num_features: int, slot_fields, config: TrainConfig, slot_names=None):
    kwargs = dict(
        hidden=config.hidden,
        activation=config.activation,
        dropout=config.dropout,
        slot_fields=slot_fields,
        slot_names=slot_names,
    )
    num_fields = int(max(slot_fields)) + 1
    if config.fnn_init == "fm":
        if fm is None:
            raise ValueError("fnn_init='fm' needs a trained FM")
        return FNN.from_fm(fm, num_fields, **kwargs)
    if config.fnn_init != "random":
        raise ValueError(f"fnn_init must be 'fm' or 'random', got {config.fnn_init!r}")
    return FNN(num_features, num_fields, config.factors, init_std=config.fnn_init_std, **kwargs)


def fnn_optimizers(fnn: FNN, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """Layer-wise learning rates: the embedding (sparse rows) gets its own, smaller rate."""
    embedding = config.row_update("fnn").optimizer(fnn.embedding_parameters())
    if config.fnn_layer_optimizer not in LAYER_OPTIMIZERS:
        raise ValueError(
            f"fnn_layer_optimizer must be one of {list(LAYER_OPTIMIZERS)}, "
            f"got {config.fnn_layer_optimizer!r}"
        )
    groups = fnn.layer_parameters()
    rates = config.fnn_layer_lrs or [config.fnn_lr] * len(groups)
    if len(rates) != len(groups):
        raise ValueError(
            f"fnn_layer_lrs needs {len(groups)} rates (one per hidden layer, then the output "
            f"layer), got {len(rates)}"
        )
    layers = LAYER_OPTIMIZERS[config.fnn_layer_optimizer](
        [{"params": group, "lr": rate} for group, rate in zip(groups, rates, strict=True)],
        lr=config.fnn_lr,
        weight_decay=config.fnn_layer_weight_decay,
    )
    return [embedding, layers]


def pretrain_rbm(fnn: FNN, train: Split, config: TrainConfig, progress: bool = True):
    """Initialize the FNN's tanh layers by layer-wise RBM pre-training on its input z."""
    if fnn.activation != "tanh":
        raise ValueError("RBM pre-training initializes tanh layers: use activation 'tanh'")
    linears = [m for m in fnn.hidden_layers if isinstance(m, torch.nn.Linear)]

    def batches():
        with torch.no_grad():
            for ids, values, _ in to_device(train.batches(config.batch_size), model_device(fnn)):
                yield fnn.input(ids, values)

    torch.manual_seed(config.seed + 2)
    return pretrain_tanh_layers(
        batches, linears, epochs=config.rbm_epochs, lr=config.rbm_lr, k=config.rbm_k,
        progress=progress,
    )  # fmt: skip


FM_START_STREAM_ROWS = 1 << 20  # a streamed split's rows that start_as_fm measures


def start_fnn_as_fm(fnn, fm, train, config: TrainConfig, ranks=None, progress=True) -> bool:
    """fnn_layer_init="fm": the FNN's layers set to compute its FM's function, where the
    network allows it (True); else they keep their random start, and the run says why."""
    reason = fm_start_unfit(fnn)
    if reason:
        if progress and (ranks is None or ranks.main):
            print(f"FNN: the layers start random (glorot): {reason}", file=sys.stderr)
        return False
    device = model_device(fnn)

    def batches():  # this rank's rows in order (a streamed split: its first rows)
        local = getattr(train, "local", train)
        calls, seen = 0, 0
        for ids, values, _ in to_device(local.batches(8192), device):
            yield ids, values
            calls, seen = calls + 1, seen + ids.shape[0]
            if seen >= FM_START_STREAM_ROWS and not hasattr(local, "ids"):
                return
        # The forward passes are collective under torchrun: each rank makes as many as the
        # rank with the most rows, the rest on no rows.
        for _ in range(calls, -(-max(train.counts) // 8192) if ranks is not None else 0):
            no_values = None if local.values is None else local.values[:0].to(device)
            yield local.ids[:0].to(device), no_values

    if progress and (ranks is None or ranks.main):
        print(f"FNN: the layers start as the FM's function ({1 + 2 * fnn.num_factors} carried "
              "units; --fnn-layer-init glorot starts them random)", file=sys.stderr)  # fmt: skip
    start_as_fm(fnn, fm, batches, None if ranks is None else ranks.sums)
    return True


def train_fnn(
    train: Split, valid: Split | None, fm: FM | None, num_features: int, slot_fields,
    config: TrainConfig, slot_names=None, progress: bool = True,
    checkpoint: Checkpointer | None = None, device: str | torch.device = "cpu",
    ranks: Ranks | None = None,
) -> tuple[FNN | None, list[dict]]:  # fmt: skip
    """Stage 2: an FNN, from the FM's embedding (or a random one), fine-tuned end to end on
    ``device``. With ``ranks`` (``fm`` sharded), each rank builds its rows of the FNN one
    process builds and trains them; with RBM pre-training the FNN is built whole (the FM
    gathered) and pre-trained on each rank's rows, rank 0's layers kept, then sharded. The best
    FNN is gathered on rank 0 (None elsewhere)."""
    device = resolve_device(device)
    if ranks is not None and config.pretrain == "rbm" and fm is not None:
        fm = _whole_fm(fm)  # before the seed: building it draws from the global generator
    torch.manual_seed(config.seed + 1)
    if ranks is not None and config.pretrain != "rbm":
        from fnn_fast.distributed import ShardedFNN

        if config.fnn_init not in ("fm", "random"):
            raise ValueError(f"fnn_init must be 'fm' or 'random', got {config.fnn_init!r}")
        fnn = ShardedFNN.like_fnn(
            num_features, int(max(slot_fields)) + 1, config.factors, config.hidden,
            fm=fm if config.fnn_init == "fm" else None, init_std=config.fnn_init_std,
            group=ranks.group, activation=config.activation, dropout=config.dropout,
            slot_fields=slot_fields, slot_names=slot_names,
        )  # fmt: skip
    else:
        fnn = build_fnn(fm, num_features, slot_fields, config, slot_names)
    fnn.to(device)
    with torch.no_grad():
        fnn.output.bias.fill_(base_rate_logit(train))
    fnn.fuse_update(config.row_update("fnn"))
    resuming = checkpoint is not None and checkpoint.resumed is not None
    started_as_fm = False
    if config.pretrain == "rbm" and not resuming:  # a resumed stage loads the trained layers
        pretrain_rbm(fnn, train, config, progress and (ranks is None or ranks.main))
    elif config.pretrain != "none":
        raise ValueError(f"pretrain must be 'none' or 'rbm', got {config.pretrain!r}")
    elif config.fnn_layer_init == "fm" and config.fnn_init == "fm" and not resuming:
        started_as_fm = start_fnn_as_fm(fnn, fm, train, config, ranks, progress)
    elif config.fnn_layer_init not in ("fm", "glorot"):
        raise ValueError(f"fnn_layer_init must be 'fm' or 'glorot', got {config.fnn_layer_init!r}")
    if ranks is not None and config.pretrain == "rbm":
        from fnn_fast.distributed import ShardedFNN

        full = fnn.cpu()
        fnn = ShardedFNN.from_fnn(full, group=ranks.group).to(device)
        del full  # each rank keeps its rows only
        if config.pretrain == "rbm" and not resuming:  # pre-trained on the rank's rows
            fnn.broadcast_dense()  # (all of them, or its share): rank 0's layers for all
        fnn.fuse_update(config.row_update("fnn"))
    history = fit(
        fnn, fnn_optimizers(fnn, config), train, valid, **_stage_settings(config, "fnn"),
        seed=config.seed + 1, name="FNN" if config.fnn_init == "fm" else "FNN(random)",
        progress=progress, checkpoint=checkpoint, ranks=ranks, measure_start=started_as_fm,
        rate_hint=(
            f"--fnn-embedding-lr (now {config.fnn_embedding_lr:g}, rule {config.fnn_optimizer}) "
            f"or --fnn-lr (now {config.fnn_lr:g})"
        ),
    )  # fmt: skip
    if ranks is not None:
        fnn = fnn.to_fnn(0)
    return fnn, history


def _check_refit(train, valid, checkpoint, ranks) -> None:
    """refit's conditions, checked before any training."""
    if ranks is not None:
        raise ValueError("--refit trains in one process: it cannot be used under torchrun")
    if checkpoint is not None:
        raise ValueError("--refit cannot be combined with checkpoints (--checkpoint-every, "
                         "--resume)")  # fmt: skip
    if not isinstance(train, Split) or not isinstance(valid, Split):
        raise ValueError("--refit needs the training and validation rows in memory: it cannot "
                         "be used with --stream, and needs a validation split")  # fmt: skip


def refit_stages(train: Split, valid: Split, fm_history, fnn_history, encoder, config,
                 slot_names=None, progress: bool = True, device="cpu"):  # fmt: skip
    """TrainConfig.refit: both stages again on train + valid, for the epochs early stopping
    chose in ``fm_history`` and ``fnn_history`` (an FNN that kept its start: that start, from
    the new FM). (fm, fnn, what was refit)."""
    both = train.joined(valid)
    epochs = {"fm_epochs": max(1, best_epoch(fm_history)), "fnn_epochs": best_epoch(fnn_history)}
    _log(f"refit: FM for {epochs['fm_epochs']} and FNN for {epochs['fnn_epochs']} epochs on the "
         f"{len(both):,} training and validation rows")  # fmt: skip
    config = replace(config, **epochs)
    fm, _ = train_fm(both, None, encoder.num_features, config, slot_names, progress, None, device)
    slot_fields = [int(f) for f in encoder.slot_fields]
    fnn, _ = train_fnn(both, None, fm, encoder.num_features, slot_fields, config, slot_names,
                       progress, None, device)  # fmt: skip
    return fm, fnn, {"rows": len(both), **epochs}


@dataclass
class TwoStageResult:
    fm: FM
    fnn: FNN
    metrics: dict  # {"fm": {...}, "fnn": {...}}: valid/test AUC and logloss
    history: dict  # {"fm": [...], "fnn": [...]}: one record per epoch


def _split_metrics(model, valid: Split | None, test: Split | None) -> dict:
    metrics = {}
    for name, split in (("valid", valid), ("test", test)):
        if split is not None:
            result = evaluate(model, split)
            metrics[f"{name}_auc"], metrics[f"{name}_logloss"] = result["auc"], result["logloss"]
    return metrics


def train_two_stage(
    train: Split,
    valid: Split | None,
    test: Split | None,
    encoder: FeatureEncoder,
    config: TrainConfig,
    progress: bool = True,
    checkpoint: Checkpointer | None = None,
    device: str | torch.device = "cpu",
    ranks: Ranks | None = None,
) -> TwoStageResult | None:
    """Stage 1 (FM) then stage 2 (FNN from the best FM, or from a random embedding), both on
    ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``): the splits stay in host memory and
    each batch is copied over as it is needed. The result's models are back on the CPU. With
    ``checkpoint`` (:class:`fnn_fast.checkpoint.Checkpointer`), the run writes checkpoints as
    they fall due and continues from the one ``checkpoint.load()`` read, if any. With ``ranks``
    (every rank of a ``torchrun`` job calls this with the same data): both stages train sharded
    over the ranks; rank 0 returns the result, the other ranks None."""
    device = resolve_device(device)
    if config.refit:
        _check_refit(train, valid, checkpoint, ranks)
    slot_fields = [int(f) for f in encoder.slot_fields]
    slot_names = [encoder.field_names[f] for f in slot_fields]
    resumed = None if checkpoint is None else checkpoint.resumed
    if resumed is not None and resumed[0]["stage"] == "fnn":  # stage 1 is done: its best FM
        meta, tensors = resumed
        if ranks is None:
            fm = FM(encoder.num_features, config.factors, init_std=config.fm_init_std,
                    slot_names=slot_names)  # fmt: skip
        else:  # this rank's rows of it
            from fnn_fast.distributed import ShardedFM

            fm = ShardedFM(encoder.num_features, config.factors, init_std=0.0,
                           group=ranks.group, slot_names=slot_names)  # fmt: skip
        fm.load_state_dict(prefixed(tensors, "fm"))
        fm_history = meta["fm_history"]
    else:
        fm, fm_history = train_fm(
            train, valid, encoder.num_features, config, slot_names, progress, checkpoint, device,
            ranks,
        )  # fmt: skip
    if checkpoint is not None:  # stage 2's checkpoints carry the finished FM
        checkpoint.extra_tensors = {f"fm.{k}": v.cpu() for k, v in fm.state_dict().items()}
        checkpoint.extra_meta = {"fm_history": fm_history}
    fnn, fnn_history = train_fnn(
        train, valid, fm, encoder.num_features, slot_fields, config, slot_names, progress,
        checkpoint, device, ranks,
    )  # fmt: skip
    if ranks is not None:  # the whole FM on rank 0
        fm = fm.to_fm(0)
        if not ranks.main:
            return None
        fm = fm.to(device)  # as one process: the final metrics on the device it trained on
    fm_valid, fnn_valid = _split_metrics(fm, valid, None), _split_metrics(fnn, valid, None)
    refit = None
    if config.refit:
        fm, fnn, refit = refit_stages(train, valid, fm_history, fnn_history, encoder, config,
                                      slot_names, progress, device)  # fmt: skip
    metrics = {
        "fm": {**fm_valid, **_split_metrics(fm, None, test), "epochs": epochs_trained(fm_history)},
        "fnn": {
            **fnn_valid,
            **_split_metrics(fnn, None, test),
            "epochs": epochs_trained(fnn_history),
            "init": config.fnn_init,
        },
    }
    if refit is not None:
        metrics["refit"] = refit
    if device.type != "cpu":
        fm.cpu()
        fnn.cpu()
    return TwoStageResult(fm, fnn, metrics, {"fm": fm_history, "fnn": fnn_history})
