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
        current, previous = self.directory, self.out / PREVIOUS
        if current.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(current, previous)
        os.rename(temporary, current)
        _fsync_dir(self.out)
        self.steps_since = 0
        self.last_time = time.monotonic()
        if self.kill == ("checkpoint", self.saves):
            os.kill(os.getpid(), signal.SIGKILL)

    def remove(self) -> None:
        for name in (NAME, PREVIOUS, TEMPORARY):
            shutil.rmtree(self.out / name, ignore_errors=True)

    # -- reading ------------------------------------------------------------------------------

    def load(self) -> tuple[dict, dict] | None:
        """The checkpoint in ``out`` (None where none was written yet), checked: complete, and
        for the same data and settings. Raises CheckpointError otherwise."""
        current, temporary = self.directory, self.out / TEMPORARY
        if not current.exists():
            # Killed between the renames: the new one is complete in .checkpoint.tmp (it has
            # state.json, written last), else checkpoint.prev is the last good one.
            if (temporary / "state.json").exists():
                os.rename(temporary, current)
            elif (self.out / PREVIOUS).exists():
                os.rename(self.out / PREVIOUS, current)
            else:
                return None
        meta, tensors = self._read(current)
        self.check_fingerprint(meta["fingerprint"])
        self.resumed = (meta, tensors)
        self.saves = 0
        return self.resumed

    def _read(self, directory: Path) -> tuple[dict, dict]:
        previous = self.out / PREVIOUS
        keep = (
            f" The previous checkpoint is kept in {previous}: to resume from it, put it in "
            f"place of {directory}."
            if previous.exists()
            else " Start the run again without --resume (and with --overwrite)."
        )
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
        path = directory / "state.safetensors"
        try:
            digest = _sha256(path)
        except OSError as error:
            raise CheckpointError(
                f"the checkpoint {directory} is incomplete ({error}).{keep}"
            ) from None
        if digest != meta.get("sha256"):
            raise CheckpointError(
                f"the checkpoint {directory} is corrupt: state.safetensors does not match the "
                f"sha256 recorded when it was written.{keep}"
            )
        return meta, load_file(str(path))

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
