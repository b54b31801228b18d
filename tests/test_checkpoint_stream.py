"""Out-of-core training and checkpoints: streamed batches, kill -9 and --resume, refused resumes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import planted_libfm_files

from fnn_fast.data import FeatureEncoder, Schema
from fnn_fast.data.cache import ensure_entry, open_rows
from fnn_fast.stream import CacheStream, entry_columns
from fnn_fast.train import Split, TrainConfig, train_two_stage

FAST = [
    "--fm-epochs", "3", "--fnn-epochs", "3", "--hidden", "16,8", "--factors", "4",
    "--fm-lr", "0.05", "--fm-initial-accumulator", "0", "--fnn-lr", "1e-3", "--batch-size", "64",
    "--dropout", "0.2", "--fnn-optimizer", "adagrad", "--no-progress", "--format", "libfm",
]  # fmt: skip
STREAM = ["--stream", "--stream-chunk-rows", "100", "--shuffle-buffer", "700"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    paths = planted_libfm_files(folder, 20, (("train", 3000), ("valid", 800), ("test", 800)))
    paths["cache"] = folder / "cache"
    return paths


def train_command(files, out, *extra, stream=False):
    args = [a for n in ("train", "valid", "test") for a in (f"--{n}", str(files[n]))]
    if stream:
        args += [*STREAM, "--cache-dir", str(files["cache"])]
    return [sys.executable, "-m", "fnn_fast", "train", *args, *FAST, "--out", str(out), *extra]


def run(command, kill=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("FNN_FAST_TEST_KILL", None)
    if kill is not None:
        env["FNN_FAST_TEST_KILL"] = kill
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def uninterrupted(files, tmp_path_factory):
    """The model each mode writes without a kill (and without checkpoints)."""
    models = {}
    for stream in (False, True):
        out = tmp_path_factory.mktemp("whole")
        done = run(train_command(files, out, stream=stream))
        assert done.returncode == 0, done.stderr
        models[stream] = (out / "model.safetensors").read_bytes()
    return models


# 47 steps an epoch, 3 epochs a stage, a checkpoint every 20 steps and at each epoch's end:
# checkpoints 1-7 are stage 1's (FM), 8 on stage 2's (FNN).
KILLS = [
    ("checkpoint:3", False),  # right after a checkpoint at an epoch's end (FM)
    ("writing:4", False),  # in the middle of writing a checkpoint (FM, mid-epoch)
    ("step:100", False),  # mid-epoch, 13 steps after the last checkpoint (FM)
    ("checkpoint:9", False),  # right after a checkpoint in stage 2
    ("step:200", True),  # mid-epoch in stage 2, streamed
    ("writing:3", True),  # while writing a checkpoint, streamed
]


@pytest.mark.parametrize("kill, stream", KILLS)
def test_kill_and_resume_writes_the_same_model(files, uninterrupted, tmp_path, kill, stream):
    out = tmp_path / "run"
    command = train_command(files, out, "--checkpoint-every", "20", stream=stream)
    killed = run(command, kill)
    assert killed.returncode == -9, killed.stderr  # SIGKILL
    assert (out / "checkpoint" / "state.json").exists()
    assert not (out / "model.safetensors").exists()
    resumed = run([*command, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stderr
    assert (out / "model.safetensors").read_bytes() == uninterrupted[stream]  # bit-identical
    assert not (out / "checkpoint").exists()  # removed once the model is written
    manifest = json.loads((out / "manifest.json").read_text())
    assert "in_progress" not in manifest and "model.safetensors" in manifest["files"]


def test_refused_resumes(files, tmp_path):
    out = tmp_path / "run"
    command = train_command(files, out, "--checkpoint-every", "20")
    assert run(command, "checkpoint:2").returncode == -9

    other_rate = run([*command, "--resume", "--fm-lr", "0.1"])
    assert other_rate.returncode == 2
    assert "--resume refused" in other_rate.stderr and "fm_lr: 0.05 (checkpoint) vs 0.1 (now)" in (
        other_rate.stderr
    )
    swapped = [files["test"] if a == str(files["valid"]) else a for a in command]
    other_data = run([*map(str, swapped), "--resume"])
    assert other_data.returncode == 2 and "data valid" in other_data.stderr

    state = out / "checkpoint" / "state.safetensors"
    good = state.read_bytes()
    state.write_bytes(good[:-10] + b"x" * 10)
    corrupt = run([*command, "--resume"])
    assert corrupt.returncode == 2
    assert "is corrupt" in corrupt.stderr and "checkpoint.prev" in corrupt.stderr
    assert (out / "checkpoint.prev" / "state.json").exists()  # the previous good one is kept

    state.write_bytes(good)
    assert run([*command, "--resume"]).returncode == 0
    finished = run([*command, "--resume"])
    assert finished.returncode == 2 and "nothing to resume" in finished.stderr
    never = run(train_command(files, tmp_path / "new", "--resume"))
    assert never.returncode == 2 and "no unfinished model run" in never.stderr


def test_a_kill_before_the_first_checkpoint_starts_over(files, tmp_path):
    out = tmp_path / "run"
    command = train_command(files, out, "--checkpoint-every", "1000")
    assert run(command, "step:5").returncode == -9
    resumed = run([*command, "--resume"])
    assert resumed.returncode == 0 and "no checkpoint was written yet" in resumed.stderr


@pytest.fixture(scope="module")
def entries(files):
    schema = Schema(format="libfm")
    return {n: ensure_entry(files[n], schema, files["cache"]) for n in ("train", "valid")}


def stream_of(entry, encoder, **kwargs):
    return CacheStream(entry, encoder, chunk_rows=100, window_chunks=7, **kwargs)


def test_stream_order_is_a_function_of_seed_and_epoch(entries):
    keys, slot_fields, names = entry_columns(entries["train"])
    encoder = FeatureEncoder.fit(keys, slot_fields, names)
    stream = stream_of(entries["train"], encoder)
    assert stream.id_dtype == np.int32  # ids held as int32 where the vocabulary allows
    order = stream.epoch_order(5, 1)
    assert sorted(order.tolist()) == list(range(3000))
    assert not np.array_equal(order, stream.epoch_order(5, 2))
    assert np.array_equal(order, stream_of(entries["train"], encoder).epoch_order(5, 1))
    assert np.array_equal(stream.epoch_order(5, None), np.arange(3000))

    rows = open_rows(entries["train"])
    all_ids, _ = encoder.transform(rows.keys, rows.values)
    batches = list(stream.batches(64, epoch=1, seed=5))
    assert sum(len(b[2]) for b in batches) == 3000
    seen = torch.cat([b[0] for b in batches]).numpy()
    assert np.array_equal(seen, all_ids[order])  # the batches follow epoch_order
    # A resumed epoch skips to its step (here inside the second window) without other change.
    for start in (0, 11, 46):
        tail = list(stream.batches(64, epoch=1, seed=5, start_step=start))
        assert len(tail) == len(batches) - start
        for (a, _, la), (b, _, lb) in zip(tail, batches[start:], strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)


class OrderedSplit(Split):
    """An in-memory split that visits its rows in a stream's order (the same order of rows)."""

    stream: CacheStream

    def batches(self, batch_size, generator=None, *, epoch=None, seed=0, start_step=0, **_):
        if epoch is None:
            yield from super().batches(batch_size, start_step=start_step)
            return
        order = torch.from_numpy(self.stream.epoch_order(seed, epoch))
        for start in range(start_step * batch_size, len(self), batch_size):
            index = order[start : start + batch_size]
            values = None if self.values is None else self.values[index]
            yield self.ids[index], values, self.labels[index]


def test_streaming_equals_in_memory_training_for_the_same_order(entries):
    keys, slot_fields, names = entry_columns(entries["train"])
    encoder = FeatureEncoder.fit(keys, slot_fields, names)
    config = TrainConfig(
        factors=4, batch_size=64, fm_epochs=2, fnn_epochs=2, hidden=[16, 8], dropout=0.2,
        fm_lr=0.05, fm_initial_accumulator=0.0, fnn_lr=1e-3, seed=3,
    )  # fmt: skip
    train_stream = stream_of(entries["train"], encoder)
    valid_stream = stream_of(entries["valid"], encoder, shuffle=False)
    streamed = train_two_stage(train_stream, valid_stream, None, encoder, config, progress=False)

    memory = Split.encode(open_rows(entries["train"]), encoder)
    memory = OrderedSplit(memory.ids, memory.values, memory.labels)
    memory.stream = train_stream
    valid = Split.encode(open_rows(entries["valid"]), encoder)
    in_memory = train_two_stage(memory, valid, None, encoder, config, progress=False)

    for which in ("fm", "fnn"):
        a = getattr(streamed, which).state_dict()
        b = getattr(in_memory, which).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (which, key)
    assert streamed.metrics == in_memory.metrics


def test_windows_with_and_without_values_give_the_rows_values(tmp_path):
    """A window whose values are all 1 hands out no values; a batch that spans it and a window
    with other values gets both windows' values, 1 where there were none."""
    lines = []
    for row in range(3000):
        value = "1" if row < 1500 else f"{0.25 + (row % 7) / 8:g}"  # the second half carries values
        lines.append(f"{row % 2} {row % 13}:{value} {100 + row % 17}:1 {200 + row % 5}:{value}")
    path = tmp_path / "values.libfm"
    path.write_text("\n".join(lines) + "\n")
    entry = ensure_entry(path, Schema(format="libfm"), tmp_path / "cache")
    keys, slot_fields, names = entry_columns(entry)
    encoder = FeatureEncoder.fit(keys, slot_fields, names)
    rows = open_rows(entry)
    all_ids, all_values = encoder.transform(rows.keys, rows.values)
    stream = stream_of(entry, encoder)
    for epoch in (None, 1, 2):
        order = stream.epoch_order(4, epoch)
        batches = list(stream.batches(64, epoch=epoch, seed=4))
        ids = torch.cat([b[0] for b in batches]).numpy()
        values = torch.cat(
            [torch.ones(b[0].shape) if b[1] is None else b[1] for b in batches]
        ).numpy()
        assert np.array_equal(ids, all_ids[order])
        assert np.array_equal(values, all_values[order])
        if epoch is None:  # stored order: the first windows have no values, the last ones have
            assert batches[0][1] is None and batches[-1][1] is not None
