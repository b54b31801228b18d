"""`torchrun ... -m fnn_fast train` end to end: two gloo ranks on 127.0.0.1 write the model and
metrics one process writes (to ~1e-5), record the world size and each rank's rows, and a rank
that dies stops the others with an error within --dist-timeout instead of a hang."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from fnn_fast.cli import main
from fnn_fast.data.synthetic import plant_model, write_libfm
from fnn_fast.saved import load_model

FAST = [
    "--fm-epochs", "3", "--fnn-epochs", "2", "--hidden", "16,8", "--factors", "4",
    "--fm-optimizer", "adagrad", "--fm-lr", "0.05", "--fm-initial-accumulator", "0",
    "--fnn-lr", "1e-3", "--batch-size", "64", "--seed", "3", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    truth = plant_model((20,) * 5, num_factors=3, nonlinear=1.0, seed=0)
    paths = {}
    for seed, (name, rows) in enumerate((("train", 2000), ("test", 500))):
        sample = truth.sample(rows, seed=seed).rows
        paths[name] = folder / f"{name}.libfm"
        write_libfm(paths[name], sample.labels, sample.keys)
    return paths


def train_args(files, out, *extra):
    return ["train", "--train", str(files["train"]), "--test", str(files["test"]),
            "--format", "libfm", "--out", str(out), *extra, *FAST]  # fmt: skip


def env(**extra):
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**out, "OMP_NUM_THREADS": "1", **extra}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_write_what_one_process_writes(files, tmp_path):
    assert main(train_args(files, tmp_path / "one")) == 0
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fnn_fast", *train_args(files, tmp_path / "two", "--dist-timeout", "30")],
        env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    # each rank trained on half of every batch: together, what one process trained on
    assert len(two["rows_per_rank"]) == 2 and sum(two["rows_per_rank"]) == one["rows_per_rank"][0]
    assert min(two["rows_per_rank"]) > 0.45 * one["rows_per_rank"][0]
    for stage in ("fm", "fnn"):
        assert one[stage]["epochs"] == two[stage]["epochs"]
        for key, value in one[stage].items():
            if isinstance(value, float):
                assert two[stage][key] == pytest.approx(value, abs=1e-5), (stage, key)
    # the ordinary model directory: score and evaluate read it as one process's
    assert load_model(tmp_path / "two").fnn is not None
    assert not (tmp_path / "two" / "checkpoint").exists()


def test_a_dead_rank_stops_the_others_within_the_timeout(files, tmp_path):
    """Ranks started by hand (no torchrun agent to kill the survivor): rank 1 exits at step 5;
    rank 0 must fail with a clear error, not hang."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fnn_fast",
                *train_args(files, tmp_path / "out", "--dist-timeout", "10"),
            ],
            env=env(
                WORLD_SIZE="2",
                RANK=str(r),
                LOCAL_RANK=str(r),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                FNN_FAST_TEST_DIE="1:5",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    started = time.monotonic()
    try:
        results = [p.communicate(timeout=50) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert time.monotonic() - started < 50
    assert procs[1].returncode == 17 and "FNN_FAST_TEST_DIE" in results[1][1]
    assert procs[0].returncode != 0
    assert "another rank most likely died" in results[0][1], results[0][1][-2000:]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_torchrun_refuses_checkpoints_for_now(files, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = train_args(files, tmp_path / "out", "--checkpoint-every", "10")
    assert main(args) == 2
