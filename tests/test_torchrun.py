"""`torchrun ... -m fnn_fast train` end to end: two gloo ranks on 127.0.0.1 write the model and
metrics one process writes (to ~1e-5), record the world size and each rank's rows, and a rank
that dies stops the others with an error within --dist-timeout instead of a hang. With
--checkpoint-every: torchrun's restart (--max-restarts 1) after a rank died resumes from the last
sharded checkpoint, and a checkpoint of 2 ranks resumes on 3; both end with one process's
metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import planted_libfm_files

from fnn_fast.cli import main
from fnn_fast.data import DataError
from fnn_fast.saved import load_model

FAST = [
    "--fm-epochs", "3", "--fnn-epochs", "2", "--hidden", "16,8", "--factors", "4",
    "--fm-optimizer", "adagrad", "--fm-lr", "0.05", "--fm-initial-accumulator", "0",
    "--fnn-lr", "1e-3", "--batch-size", "64", "--seed", "3", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    paths = planted_libfm_files(folder, 20, (("train", 2000), ("test", 500), ("valid", 300)))
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


@pytest.fixture(scope="module")
def one_process(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "model"
    assert main(train_args(files, out)) == 0
    return {**json.loads((out / "metrics.json").read_text()), "out": out}


def torchrun(files, out, ranks, *extra, restarts=0, die=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(ranks), "--max-restarts", str(restarts), "--monitor-interval", "0.2",
         "-m", "fnn_fast", *train_args(files, out, "--dist-timeout", "30", *extra)],
        env=env(**({"FNN_FAST_TEST_DIE": die} if die else {})),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def assert_same_metrics(one, two, rows=True):
    for stage in ("fm", "fnn"):
        assert one[stage]["epochs"] == two[stage]["epochs"]
        for key, value in one[stage].items():
            if isinstance(value, float):
                assert two[stage][key] == pytest.approx(value, abs=1e-5), (stage, key)
    if rows:  # each rank trained on its slice of every batch: together, one process's rows
        assert sum(two["rows_per_rank"]) == one["rows_per_rank"][0]


def test_two_ranks_write_what_one_process_writes(files, one_process, tmp_path):
    run = torchrun(files, tmp_path / "two", 2)
    assert run.returncode == 0, run.stderr[-3000:]
    one = one_process
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(two["rows_per_rank"]) == 2
    assert min(two["rows_per_rank"]) > 0.45 * one["rows_per_rank"][0]
    assert_same_metrics(one, two)
    # the ordinary model directory: score and evaluate read it as one process's
    model, alone = load_model(tmp_path / "two"), load_model(one["out"])
    assert model.fnn is not None
    assert not (tmp_path / "two" / "checkpoint").exists()
    # the vocabulary merged from the ranks' counts is the one process's
    assert len(model.encoder.vocabs) == len(alone.encoder.vocabs)
    for mine, theirs in zip(model.encoder.vocabs, alone.encoder.vocabs, strict=True):
        assert mine.tolist() == theirs.tolist()
    # each rank read its share of the file (half of the lines, give or take a line's bytes)
    assert "training rows (rank 0 of 2 holds" in run.stderr


@pytest.mark.parametrize("kind", ["libfm", "csv", "criteo"])
def test_the_ranks_shares_make_the_file(kind, files, tmp_path):
    """_read_share for 1 to 5 ranks (and more ranks than lines): the shares in rank order are
    the rows one read of the whole file gives; a bad line is named by its line in the file."""
    from fnn_fast.cli import _read_share, _schema_from_args, build_parser
    from fnn_fast.data.readers import read_rows
    from fnn_fast.data.schema import CRITEO_COLUMNS
    from fnn_fast.train import Ranks

    path = tmp_path / "train.libfm"  # a copy: a bad line is written into it below
    path.write_text(files["train"].read_text())
    options = ["--format", kind]
    if kind != "libfm":
        rows = [line.split() for line in path.read_text().splitlines()]
        if kind == "csv":
            path = tmp_path / "train.csv"
            body = [",".join([r[0]] + [c.split(":")[0] for c in r[1:]]) for r in rows]
            path.write_text("label,a,b,c,d,e\n" + "\n".join(body) + "\n")
            options += ["--label", "label", "--categorical", "a,b,c,d,e"]
        else:
            path = tmp_path / "train.criteo"
            width = len(CRITEO_COLUMNS) - 1
            body = ["\t".join([r[0]] + [""] * 13 + [c.split(":")[0] for c in r[1:]]
                              + [""] * (width - 13 - len(r) + 1)) for r in rows]  # fmt: skip
            path.write_text("\n".join(body) + "\n")
    args = build_parser().parse_args(["train", "--train", str(path), "--out", "x", *options])
    schema = _schema_from_args(args)
    whole = read_rows(path, schema, progress=False)
    for world in (1, 2, 3, 5, 4000):
        shares = [_read_share(path, schema, args, Ranks(rank, world)) for rank in range(world)]
        assert all(s.field_names == whole.field_names for s in shares if len(s))
        assert np.array_equal(np.concatenate([s.labels for s in shares]), whole.labels)
        assert np.array_equal(np.concatenate([s.keys for s in shares if len(s)]), whole.keys)
        assert np.array_equal(np.concatenate([s.values for s in shares if len(s)]), whole.values)
    # a bad line in the last share: its line number in the file
    text = path.read_text().splitlines()
    text[-3] = "x" if kind != "csv" else "1,2"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=rf"{path.name}:{len(text) - 2}: "):
        _read_share(path, schema, args, Ranks(2, 3))


def test_a_valid_file_and_hashed_features_on_two_ranks(files, tmp_path):
    """--valid (read whole by every rank) and --hash-buckets (the collision report from every
    rank's keys) on 2 ranks give one process's metrics and encoder."""
    extra = ["--valid", str(files["valid"]), "--hash-buckets", "64"]
    assert main(train_args(files, tmp_path / "one", *extra)) == 0
    run = torchrun(files, tmp_path / "two", 2, *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert_same_metrics(one, two)
    assert two["hashing"] == one["hashing"] and one["hashing"]


def test_rbm_pretraining_on_two_ranks(files, tmp_path):
    """--pretrain rbm: every rank reads the whole file and pre-trains on every training row,
    so 2 ranks end with one process's metrics."""
    extra = ["--pretrain", "rbm", "--rbm-epochs", "1", "--fnn-epochs", "1"]
    assert main(train_args(files, tmp_path / "one", *extra)) == 0
    run = torchrun(files, tmp_path / "two", 2, *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert_same_metrics(one, two)


def test_restarted_workers_resume_from_the_last_checkpoint(files, one_process, tmp_path):
    """Rank 1 dies in the 4th epoch's step 20 (the FNN's first; 25 steps an epoch, 75 in the
    FM); torchrun restarts both workers, which resume from the checkpoint of the FNN's step 15
    (the 90th step) and finish the run."""
    out = tmp_path / "run"
    run = torchrun(files, out, 2, "--checkpoint-every", "10", restarts=1, die="1:20:4")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "exiting at step 20 (FNN_FAST_TEST_DIE)" in run.stderr
    assert "resuming from the checkpoint of 2 ranks on 2 ranks" in run.stderr
    assert "FNN: resuming at epoch 1, step 15" in run.stderr, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert_same_metrics(one_process, metrics)
    assert metrics["world_size"] == 2 and len(metrics["rows_per_rank"]) == 2
    assert not any((out / name).exists() for name in ("checkpoint", "checkpoint.prev"))
    assert load_model(out).fnn is not None


def test_a_checkpoint_of_two_ranks_resumes_on_three(files, one_process, tmp_path):
    out = tmp_path / "run"
    """Rank 1 dies in the FM's second epoch, step 20 (25 steps an epoch): the checkpoint of its
    step 15 (the 40th) holds the table, the best epoch's table and the Adagrad sums cut in 2;
    3 ranks read them back and finish with one process's metrics."""
    died = torchrun(files, out, 2, "--checkpoint-every", "10", die="1:20:2")
    assert died.returncode != 0 and "FNN_FAST_TEST_DIE" in died.stderr
    saved = json.loads((out / "checkpoint" / "state.json").read_text())
    assert saved["stage"] == "fm" and (saved["fit"]["epoch"], saved["fit"]["step"]) == (2, 15)
    assert saved["ranks"]["world_size"] == 2
    assert sorted(saved["ranks"]["row_keys"]) == [
        "best.embedding.table", "fused.state1", "model.embedding.table",
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "dense.safetensors", "shard-00000-of-00002.safetensors",
        "shard-00001-of-00002.safetensors", "state.json",
    ]  # fmt: skip
    # one process refuses it, naming what to do; so do ranks with other settings
    assert main(train_args(files, out, "--checkpoint-every", "10", "--resume")) == 2
    other = torchrun(files, out, 2, "--checkpoint-every", "10", "--resume",
                     "--fm-weight-decay", "0.001")  # fmt: skip
    assert other.returncode != 0
    assert "--resume refused" in other.stderr and "fm_weight_decay" in other.stderr
    run = torchrun(files, out, 3, "--checkpoint-every", "10", "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming from the checkpoint of 2 ranks on 3 ranks" in run.stderr
    assert "FM: resuming at epoch 2, step 15" in run.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 3 and len(metrics["rows_per_rank"]) == 3
    assert_same_metrics(one_process, metrics)


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


def test_torchrun_refuses_stream_for_now(files, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(train_args(files, tmp_path / "out", "--stream")) == 2


def test_numbers_on_two_ranks_make_one_process_encoder(tmp_path):
    """Numeric columns (rule 3: a value of its own from --value-min-count rows, a rarer one its
    bucket's): the counts merged from 2 ranks give one process's encoder and metrics."""
    from helpers import CATEGORICAL, NUMERIC, write_csv

    data = write_csv(tmp_path / "train.csv", 2000, seed=4)  # n1: 60 integers, n2: near-unique
    args = ["train", "--train", str(data), "--format", "csv", "--label", "label",
            "--categorical", CATEGORICAL, "--numeric", NUMERIC, *FAST]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fnn_fast", *args, "--out", str(tmp_path / "two"), "--dist-timeout", "30"],
        env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    alone, model = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    assert model.encoder.value_fields == alone.encoder.value_fields == [0, 1]
    for mine, theirs in zip(model.encoder.vocabs, alone.encoder.vocabs, strict=True):
        assert mine.tolist() == theirs.tolist()
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert_same_metrics(one, two)
