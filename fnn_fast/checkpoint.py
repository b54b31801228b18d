"""Checkpoints of a training run, written atomically, for ``fnn-fast train --resume``.

A checkpoint is a directory ``OUT/checkpoint/`` holding

- ``state.safetensors``: the tensors: the model being trained (``model.*``), the fused row
  optimizer's state kept beside its table (``fused.*``), every optimizer's state (``opt<i>.*``),
  the best-validation weights so far (``best.*``), the finished FM in stage 2 (``fm.*``), the
  random number generators' states (``rng.*``);
- ``state.json``: the rest: the stage, the data position (epoch, step), the epoch's running loss,
  the early-stopping state and history, the optimizers' scalar state and settings, the
  fingerprint of the data and settings, and the sha256 of ``state.safetensors``.

It is written into ``.checkpoint.tmp/``, which then replaces ``checkpoint/`` by renames; the one it
replaces is kept as ``checkpoint.prev/``. A kill at any moment leaves a complete checkpoint (the
new one or the previous one). A checkpoint whose files do not match their recorded hash is
refused with an error (the previous one stays on disk), and one written for other data or
settings is refused naming what differs.

Under ``torchrun`` (:class:`ShardedCheckpointer`) the same directory holds one file per rank,
``shard-RRRRR-of-NNNNN.safetensors``: that rank's rows of the table (``model.embedding.table``,
``best.embedding.table``, in stage 2 the finished FM's ``fm.embedding.table``) and of their row
optimizer state (``fused.state1``, ``fused.state2``); ``dense.safetensors`` (rank 0):
everything else (w0, the layers, the optimizers, the random number generators); and
``state.json``, the manifest, written by rank 0 last, after every rank has written and hashed
its shard: the world size and row map the shards were cut by, and every file's sha256. A
checkpoint is valid only with its manifest, so a kill while any rank writes leaves the previous
one. On load each rank reads the rows it owns now from the shards that hold them (resharding
when the world size changed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_VERSION = 1
NAME, TEMPORARY, PREVIOUS = "checkpoint", ".checkpoint.tmp", "checkpoint.prev"
# Tests: "checkpoint:N" kills the process (SIGKILL) right after its N-th checkpoint, "writing:N"
# in the middle of writing it, "step:N" after its N-th training step.
KILL_HOOK = "FNN_FAST_TEST_KILL"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (corrupt, or for other data or settings)."""


def parse_every(text: str) -> tuple[int | None, float | None]:
    """``--checkpoint-every``: "500" (steps) or "10m" / "90s" (minutes / seconds of training)."""
    text = str(text).strip().lower()
    try:
        if text.endswith("m"):
            seconds = float(text[:-1]) * 60
        elif text.endswith("s"):
            seconds = float(text[:-1])
        else:
            steps = int(text)
            if steps < 1:
                raise ValueError
            return steps, None
        if not seconds > 0:
            raise ValueError
        return None, seconds
    except ValueError:
        raise ValueError(
            f"--checkpoint-every {text!r}: give a number of steps (500) or of minutes (10m) or "
            "seconds (90s)"
        ) from None


def _kill_hook() -> tuple[str, int] | None:
    value = os.environ.get(KILL_HOOK)
    if not value:
        return None
    what, _, count = value.partition(":")
    return what, int(count)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpointer:
    """Decides when to write a checkpoint into ``out`` and writes or reads it.

    ``fingerprint``: what a resume must match (data files, settings). ``every_steps`` /
    ``every_seconds``: how often (None for both: never, except what ``save`` is asked)."""

    def __init__(self, out, fingerprint: dict, every_steps=None, every_seconds=None):
        self.out = Path(out)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.steps_since = 0
        self.last_time = time.monotonic()
        self.saves = 0
        self.steps = 0
        self.kill = _kill_hook()
        self.resumed: tuple[dict, dict] | None = None  # (meta, tensors) of a loaded checkpoint
        self.extra_tensors: dict[str, torch.Tensor] = {}  # what the run adds (stage 2: the FM)
        self.extra_meta: dict = {}

    sharded = False  # the torchrun layout (ShardedCheckpointer) or one process's

    @property
    def directory(self) -> Path:
        return self.out / NAME

    # -- when ---------------------------------------------------------------------------------

    def step_done(self) -> bool:
        """Count a training step; True when a checkpoint is due."""
        self.steps += 1
        self.steps_since += 1
        if self.kill is not None and self.kill == ("step", self.steps):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.due()

    def due(self) -> bool:
        if self.every_steps is not None and self.steps_since >= self.every_steps:
            return True
        if self.every_seconds is not None:
            return time.monotonic() - self.last_time >= self.every_seconds
        return False

    # -- writing ------------------------------------------------------------------------------

    def save(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.saves += 1
        tensors = {**self.extra_tensors, **tensors}
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        temporary = self.out / TEMPORARY
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        save_file(tensors, str(temporary / "state.safetensors"))
        with open(temporary / "state.safetensors", "rb+") as file:
            os.fsync(file.fileno())
        if self.kill == ("writing", self.saves):
            os.kill(os.getpid(), signal.SIGKILL)
        record = {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "sha256": _sha256(temporary / "state.safetensors"),
            **self.extra_meta,
            **meta,
        }
        with open(temporary / "state.json", "w") as file:
            file.write(json.dumps(record, indent=1))
            file.flush()
            os.fsync(file.fileno())
        self._commit(temporary)
        self.steps_since = 0
        self.last_time = time.monotonic()
        if self.kill == ("checkpoint", self.saves):
            os.kill(os.getpid(), signal.SIGKILL)

    def _commit(self, temporary: Path) -> None:
        """The complete checkpoint in ``temporary`` replaces the current one (kept as prev)."""
        current, previous = self.directory, self.out / PREVIOUS
        if current.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(current, previous)
        os.rename(temporary, current)
        _fsync_dir(self.out)

    def remove(self) -> None:
        for name in (NAME, PREVIOUS, TEMPORARY):
            shutil.rmtree(self.out / name, ignore_errors=True)

    # -- reading ------------------------------------------------------------------------------

    def load(self) -> tuple[dict, dict] | None:
        """The checkpoint in ``out`` (None where none was written yet), checked: complete, and
        for the same data and settings. Raises CheckpointError otherwise."""
        if not self._settle():
            return None
        meta, tensors = self._read(self.directory)
        self.check_fingerprint(meta["fingerprint"])
        self.resumed = (meta, tensors)
        self.saves = 0
        return self.resumed

    def _settle(self) -> bool:
        """Put the last complete checkpoint in place; False when there is none."""
        current, temporary = self.directory, self.out / TEMPORARY
        if not current.exists():
            # Killed between the renames: the new one is complete in .checkpoint.tmp (it has
            # state.json, written last), else checkpoint.prev is the last good one.
            if (temporary / "state.json").exists():
                os.rename(temporary, current)
            elif (self.out / PREVIOUS).exists():
                os.rename(self.out / PREVIOUS, current)
            else:
                return False
        return True

    def _keep_hint(self, directory: Path) -> str:
        previous = self.out / PREVIOUS
        return (
            f" The previous checkpoint is kept in {previous}: to resume from it, put it in "
            f"place of {directory}."
            if previous.exists()
            else " Start the run again without --resume (and with --overwrite)."
        )

    def _read_meta(self, directory: Path) -> dict:
        keep = self._keep_hint(directory)
        try:
            meta = json.loads((directory / "state.json").read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"the checkpoint {directory} is corrupt or incomplete (state.json: {error}).{keep}"
            ) from None
        if not isinstance(meta, dict) or meta.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"the checkpoint {directory} has format {meta.get('version')!r}, this version "
                f"reads {CHECKPOINT_VERSION}.{keep}"
            )
        self._check_layout(directory, meta)
        return meta

    def _check_file(self, directory: Path, name: str, expected: str | None) -> Path:
        """``directory/name``, checked against the sha256 recorded when it was written."""
        path = directory / name
        try:
            digest = _sha256(path)
        except OSError as error:
            raise CheckpointError(
                f"the checkpoint {directory} is incomplete ({error}).{self._keep_hint(directory)}"
            ) from None
        if digest != expected:
            raise CheckpointError(
                f"the checkpoint {directory} is corrupt: {name} does not match the sha256 "
                f"recorded when it was written.{self._keep_hint(directory)}"
            )
        return path

    def _read(self, directory: Path) -> tuple[dict, dict]:
        meta = self._read_meta(directory)
        path = self._check_file(directory, "state.safetensors", meta.get("sha256"))
        return meta, load_file(str(path))

    def _check_layout(self, directory: Path, meta: dict) -> None:
        written = meta.get("ranks")
        if self.sharded and not written:
            raise CheckpointError(
                f"the checkpoint {directory} was written by one process: resume it with one "
                "process (the same command without torchrun)"
            )
        if not self.sharded and written:
            raise CheckpointError(
                f"the checkpoint {directory} was written by {written['world_size']} ranks under "
                "torchrun: resume it under torchrun (any number of ranks from 2: the tables are "
                "resharded on load)"
            )

    def check_fingerprint(self, saved: dict) -> None:
        differ = []
        for group in sorted(set(saved) | set(self.fingerprint)):
            old, new = saved.get(group, {}), self.fingerprint.get(group, {})
            if not isinstance(old, dict) or not isinstance(new, dict):
                if old != new:
                    differ.append(f"{group}: {old!r} (checkpoint) vs {new!r} (now)")
                continue
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    differ.append(
                        f"{group} {key}: {old.get(key)!r} (checkpoint) vs {new.get(key)!r} (now)"
                    )
        if differ:
            more = f"; and {len(differ) - 6} more" if len(differ) > 6 else ""
            shown = "; ".join(differ[:6]) + more
            raise CheckpointError(
                f"--resume refused: the checkpoint in {self.out} was written for other data or "
                f"settings: {shown}. Resume with the same command, or start again with "
                "--overwrite"
            )


# -- torchrun: one shard per rank ---------------------------------------------------------------

# The tensors cut by rows (each rank saves its rows): the table, the best epoch's table, the
# fused rule's row state and, in stage 2, the finished FM's table. Everything else is the same
# on every rank and saved by rank 0.
ROW_KEYS = (
    "model.embedding.table",
    "best.embedding.table",
    "fused.state1",
    "fused.state2",
    "fm.embedding.table",
)
DENSE = "dense.safetensors"


def shard_file(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}.safetensors"


def _write(tensors: dict[str, torch.Tensor], path: Path) -> str:
    save_file(tensors, str(path))
    with open(path, "rb+") as file:
        os.fsync(file.fileno())
    return _sha256(path)


class ShardedCheckpointer(Checkpointer):
    """The checkpoints of a ``torchrun`` job (the layout: the module's doc). Every rank makes
    every call, in the same order (they hold collectives): ``save`` at the same step on all
    ranks (a time-based ``--checkpoint-every`` is decided by rank 0's clock), ``load`` on all.
    ``num_features`` and ``scheme``: the row map of the tables this job trains. Several
    machines need ``out`` on a file system they all see."""

    sharded = True

    def __init__(self, out, fingerprint: dict, every_steps=None, every_seconds=None, *,
                 ranks, num_features: int, scheme: str = "block"):  # fmt: skip
        from fnn_fast.distributed import RowSharding

        super().__init__(out, fingerprint, every_steps, every_seconds)
        self.ranks = ranks
        self.sharding = RowSharding(num_features, ranks.world_size, scheme)

    def due(self) -> bool:
        due = super().due()
        if self.every_seconds is not None:  # the ranks' clocks differ: rank 0's decides
            due = bool(self.ranks.broadcast(float(due)))
        return due

    def save(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        ranks, rank, world = self.ranks, self.ranks.rank, self.ranks.world_size
        self.saves += 1
        tensors = {**self.extra_tensors, **tensors}
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        temporary = self.out / TEMPORARY
        if ranks.main:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        # A row state is cut by rows where the rule keeps one (an SGD rule's is empty on every
        # rank; a rank may own no rows at all). The gather also waits for the folder.
        present = [k for k in ROW_KEYS if k in tensors and tensors[k].numel()]
        row_keys = sorted(set().union(*ranks.all_gather(present)))
        rows = self.sharding.shard_rows(rank)
        for key in row_keys:
            if tensors[key].dim() < 1 or tensors[key].shape[0] != rows:
                raise RuntimeError(
                    f"checkpoint: {key} on rank {rank} has shape {tuple(tensors[key].shape)}, "
                    f"not this rank's {rows} rows"
                )
        shard = {k: tensors.pop(k) for k in row_keys}
        name = shard_file(rank, world)
        digest = _write(shard, temporary / name)
        layout = {k: [list(v.shape[1:]), str(v.dtype).removeprefix("torch.")]
                  for k, v in shard.items()}  # fmt: skip
        if ranks.main:
            dense_digest = _write(tensors, temporary / DENSE)
        written = ranks.all_gather((name, digest, ranks.rows_trained))
        if ranks.main:
            if self.kill == ("writing", self.saves):
                os.kill(os.getpid(), signal.SIGKILL)
            record = {
                "version": CHECKPOINT_VERSION,
                "fingerprint": self.fingerprint,
                "ranks": {
                    "world_size": world,
                    "scheme": self.sharding.scheme,
                    "num_features": self.sharding.num_rows,
                    "row_keys": layout,
                    "files": {DENSE: dense_digest, **{n: d for n, d, _ in written}},
                    "rows_trained": [r for _, _, r in written],
                },
                **self.extra_meta,
                **meta,
            }
            with open(temporary / "state.json", "w") as file:  # the manifest: written last
                file.write(json.dumps(record, indent=1))
                file.flush()
                os.fsync(file.fileno())
            self._commit(temporary)
        ranks.all_gather(None)  # every rank leaves with the checkpoint in place
        self.steps_since = 0
        self.last_time = time.monotonic()
        if self.kill == ("checkpoint", self.saves):
            os.kill(os.getpid(), signal.SIGKILL)

    def load(self) -> tuple[dict, dict] | None:
        ranks = self.ranks
        found, error = False, None
        if ranks.main:  # one rank settles the folders; then all read
            try:
                found = self._settle()
            except OSError as failure:
                error = f"the checkpoint in {self.out} cannot be put in place: {failure}"
        found, error = ranks.all_gather((found, error))[0]
        if error is None and not found:
            return None
        result = None
        if error is None:
            try:
                result = self._read(self.directory)
                if ranks.main:  # other machines' copies of the data have their own mtimes
                    self.check_fingerprint(result[0]["fingerprint"])
            except CheckpointError as failure:
                error = str(failure)
        errors = [e for e in ranks.all_gather(error) if e]
        if errors:  # every rank raises the same error
            raise CheckpointError(errors[0])
        meta, tensors = result
        saved = meta["ranks"]["rows_trained"]
        if len(saved) == ranks.world_size:
            ranks.rows_trained = saved[ranks.rank]
        else:  # another world size: the rows so far, spread as a global batch is
            from fnn_fast.distributed import batch_slice

            part = batch_slice(sum(saved), ranks.rank, ranks.world_size)
            ranks.rows_trained = part.stop - part.start
        self.resumed = (meta, tensors)
        self.saves = 0
        return self.resumed

    def _read(self, directory: Path) -> tuple[dict, dict]:
        """The dense tensors and this rank's rows of the row-cut ones, read from the shards
        that hold them under the saved row map (resharding when the world size changed)."""
        from safetensors import safe_open

        from fnn_fast.distributed import RowSharding

        meta = self._read_meta(directory)
        info = meta["ranks"]
        files = info["files"]
        new, rank = self.sharding, self.ranks.rank
        if info["num_features"] != new.num_rows:
            raise CheckpointError(
                f"the checkpoint {directory} holds tables of {info['num_features']} rows, this "
                f"run's have {new.num_rows}: resume with the same data and settings"
            )
        tensors = load_file(str(self._check_file(directory, DENSE, files.get(DENSE))))
        old = RowSharding(info["num_features"], info["world_size"], info["scheme"])
        mine = new.shard_rows(rank)
        out = {
            key: torch.zeros((mine, *shape), dtype=getattr(torch, dtype))
            for key, (shape, dtype) in info["row_keys"].items()
        }
        filled = 0
        for source in range(old.world_size):
            held = old.global_rows(source)
            positions = (new.owner(held) == rank).nonzero().squeeze(1)
            if not len(positions):
                continue
            local = new.local(held[positions], torch.full_like(positions, rank))
            name = shard_file(source, old.world_size)
            path = self._check_file(directory, name, files.get(name))
            first, last = int(positions[0]), int(positions[-1]) + 1
            with safe_open(str(path), framework="pt") as file:
                for key in out:
                    rows = file.get_slice(key)[first:last]  # block rows: just these
                    if last - first != len(positions):  # another scheme: pick them
                        rows = rows[positions - first]
                    out[key][local] = rows
            filled += len(positions)
        if filled != mine:
            raise CheckpointError(
                f"the checkpoint {directory} holds {filled} of the {mine} rows rank {rank} owns"
            )
        tensors.update(out)
        return meta, tensors


# -- helpers for what a trainer saves ----------------------------------------------------------


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str):
    """(json, tensors) of an optimizer's state_dict."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def load_optimizer_state(optimizer, saved: dict, tensors: dict, prefix: str) -> None:
    state: dict = {}
    for name, value in saved["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    groups = saved["param_groups"]
    for group in groups:  # JSON made the tuples lists
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
