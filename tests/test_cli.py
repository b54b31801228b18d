"""The fnn-fast command end to end on small files: train, evaluate, score, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import planted_libfm_files

from fnn_fast.cli import build_parser, main
from fnn_fast.data import Schema, read_rows
from fnn_fast.saved import load_model
from fnn_fast.score import predict

# Few epochs on small files: faster rates than the defaults (tuned for sparse real logs).
FAST = [
    "--fm-epochs", "3", "--fnn-epochs", "3", "--hidden", "16,8", "--factors", "4",
    "--fm-optimizer", "adagrad", "--fm-lr", "0.05", "--fm-initial-accumulator", "0",
    "--fnn-lr", "1e-3", "--batch-size", "64",
    "--no-progress",
]  # fmt: skip


def train_libfm(files, out, *extra, held_out="--test"):
    """`fnn-fast train` on the libFM fixture files; held_out names the role of files["test"]."""
    return main(["train", "--train", str(files["train"]), held_out, str(files["test"]),
                 "--format", "libfm", "--out", str(out), *extra, *FAST])  # fmt: skip


@pytest.fixture(scope="module")
def libfm_files(tmp_path_factory):
    return planted_libfm_files(tmp_path_factory.mktemp("libfm"), 20)


@pytest.fixture(scope="module")
def trained(libfm_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = train_libfm(libfm_files, out, "--seed", "3")
    assert code == 0
    return out


def test_train_writes_model_and_metrics(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    for stage in ("fm", "fnn"):
        for key in ("valid_auc", "valid_logloss", "test_auc", "test_logloss"):
            assert np.isfinite(metrics[stage][key]), (stage, key)
        assert metrics[stage]["test_auc"] > 0.6  # it learned something
    for name in ("model.safetensors", "config.json", "encoder/encoder.json", "history.json"):
        assert (trained / name).exists(), name
    history = json.loads((trained / "history.json").read_text())
    assert {"train_auc", "valid_auc", "train_logloss", "valid_logloss"} <= set(history["fm"][0])


def test_saved_model_scores_like_the_trained_one(trained, libfm_files, tmp_path, capsys):
    saved = load_model(trained)
    rows = read_rows(libfm_files["test"], Schema("libfm"), progress=False)
    probabilities = predict(saved, rows)
    out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "score",
                "--model",
                str(trained),
                "--input",
                str(libfm_files["test"]),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0] == '"prediction"' and len(lines) == 1 + 800
    np.testing.assert_allclose([float(x) for x in lines[1:]], probabilities, rtol=1e-6)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained),
                "--data",
                str(libfm_files["test"]),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert report["fnn"]["auc"] == pytest.approx(metrics["fnn"]["test_auc"])
    assert report["fm"]["auc"] == pytest.approx(metrics["fm"]["test_auc"])
    assert report["rows"] == 800


def test_seed_makes_runs_repeatable(trained, libfm_files, tmp_path):
    assert train_libfm(libfm_files, tmp_path, "--seed", "3") == 0
    first = json.loads((trained / "metrics.json").read_text())
    second = json.loads((tmp_path / "metrics.json").read_text())
    assert first == second


def test_random_init_and_npy_output(libfm_files, tmp_path):
    out = tmp_path / "run"
    assert train_libfm(libfm_files, out, "--fnn-init", "random", held_out="--valid") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fnn"]["init"] == "random" and "test_auc" not in metrics["fnn"]
    assert (
        main(
            [
                "score",
                "--model",
                str(out),
                "--input",
                str(libfm_files["test"]),
                "--output",
                str(tmp_path / "p.npy"),
                "--which",
                "fm",
                "--no-progress",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "p.npy").shape == (800,)


def test_bad_line_stops_with_file_and_line(libfm_files, tmp_path, capsys):
    bad = tmp_path / "bad.libfm"
    lines = libfm_files["train"].read_text().splitlines()
    lines[41] = "2 " + lines[41].split(" ", 1)[1]
    bad.write_text("\n".join(lines) + "\n")
    args = ["train", "--train", str(bad), "--format", "libfm", "--out", str(tmp_path / "o"), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}:42:" in err and "label" in err and "--skip-bad-lines" in err
    assert main([*args, "--skip-bad-lines"]) == 0
    assert "skipped 1 bad line" in capsys.readouterr().err


def test_criteo_and_csv_inputs(tmp_path):
    rng = np.random.default_rng(0)
    header = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    rows = []
    for _ in range(600):
        ints = [str(int(v)) if rng.random() > 0.1 else "" for v in rng.integers(0, 50, 13)]
        cats = [f"{v:08x}" for v in rng.integers(0, 30, 26)]
        label = int(rng.random() < 0.3 + 0.4 * (cats[0] < "00000010"))
        rows.append([str(label), *ints, *cats])
    tsv = tmp_path / "day.tsv"
    tsv.write_text("".join("\t".join(r) + "\n" for r in rows))
    out = tmp_path / "criteo"
    assert main(["train", "--train", str(tsv), "--format", "criteo", "--out", str(out), *FAST]) == 0
    assert json.loads((out / "config.json").read_text())["schema"]["format"] == "criteo"
    csv = tmp_path / "day.csv"
    csv.write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    out = tmp_path / "csv"
    assert (
        main(
            [
                "train",
                "--train",
                str(csv),
                "--format",
                "csv",
                "--label",
                "label",
                "--numeric",
                ",".join(header[1:14]),
                "--categorical",
                ",".join(header[14:]),
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "score",
                "--model",
                str(out),
                "--input",
                str(csv),
                "--output",
                str(tmp_path / "s.parquet"),
                "--no-progress",
            ]
        )
        == 0
    )


def test_console_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "fnn_fast", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train", "evaluate", "score", "demo"):
        assert command in result.stdout


def test_train_checks_every_path_before_parsing(libfm_files, tmp_path, capsys):
    """A bad --out or a missing input ends the run at once, before any file is parsed."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert train_libfm(libfm_files, blocker / "run") == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file" in err and "training rows" not in err
    missing = dict(libfm_files, test=tmp_path / "no-such-test.libfm")
    assert train_libfm(missing, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"--test {missing['test']}: no such file" in err and "training rows" not in err
    assert not (tmp_path / "run").exists()


def positional_to_featindex(source, target, featindex, width: int = 20):
    """A positional libFM file rewritten with global ids, and its feature dictionary."""
    lines = []
    for line in source.read_text().splitlines():
        label, *cells = line.split()
        ids = [f * width + int(c.split(":")[0]) for f, c in enumerate(cells)]
        lines.append(label + "".join(f" {i}:1" for i in ids))
    target.write_text("\n".join(lines) + "\n")
    featindex.write_text("".join(f"f{i // width}:{i % width}\t{i}\n" for i in range(5 * width)))


def test_train_replaces_only_its_own_model_directory(libfm_files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert train_libfm(libfm_files, mine) == 2  # not fnn-fast's: never written into
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    run = tmp_path / "run"
    files = {"train": tmp_path / "train.libfm", "test": tmp_path / "test.libfm"}
    featindex = tmp_path / "featindex.txt"
    positional_to_featindex(libfm_files["train"], files["train"], featindex)
    positional_to_featindex(libfm_files["test"], files["test"], featindex)
    assert train_libfm(files, run, "--featindex", str(featindex)) == 0
    assert (run / "featindex.txt").exists()
    assert train_libfm(libfm_files, run) == 2  # an earlier model: only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    (run / "notes.txt").write_text("the user's")
    assert train_libfm(libfm_files, run, "--overwrite") == 0
    assert not (run / "featindex.txt").exists()  # the earlier run's file, not this one's
    assert (run / "notes.txt").read_text() == "the user's"
    assert json.loads((run / "config.json").read_text())["schema"]["featindex"] is None


def strict_json(text: str):
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def test_evaluate_on_one_class_writes_valid_json(trained, libfm_files, tmp_path, capsys):
    no_clicks = tmp_path / "no-clicks.libfm"
    lines = libfm_files["test"].read_text().splitlines()
    no_clicks.write_text("".join("0 " + line.split(" ", 1)[1] + "\n" for line in lines))
    assert main(["evaluate", "--model", str(trained), "--data", str(no_clicks)]) == 0
    captured = capsys.readouterr()
    report = strict_json(captured.out)
    assert report["fnn"]["auc"] is None and report["fnn"]["logloss"] > 0
    assert "one class only" in captured.err
    out = tmp_path / "run"
    assert train_libfm({"train": libfm_files["train"], "test": no_clicks}, out) == 0
    metrics = strict_json((out / "metrics.json").read_text())
    assert metrics["fnn"]["test_auc"] is None and isinstance(metrics["fnn"]["valid_auc"], float)


def test_skip_hint_only_where_skipping_helps(libfm_files, trained, tmp_path, capsys):
    args = ["train", "--train", str(libfm_files["train"]), "--out", str(tmp_path / "o"), *FAST]
    assert main([*args, "--format", "criteo"]) == 2  # every line fails: the format is wrong
    err = capsys.readouterr().err
    assert "check that" in err and "--format criteo" in err and "--skip-bad-lines" not in err
    assert main([*args, "--format", "criteo", "--skip-bad-lines"]) == 2  # nothing left
    assert "none could be read as criteo input" in capsys.readouterr().err
    csv = tmp_path / "no-label.csv"
    csv.write_text("a,b\nx,1\n")
    model = tmp_path / "csv-model"
    assert main(["train", "--train", str(csv), "--format", "csv", "--out", str(model)]) == 2
    assert "--numeric and/or --categorical" in capsys.readouterr().err
    assert not model.exists()


def test_bad_score_outputs_are_one_line_errors(trained, libfm_files, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["score", "--model", str(trained), "--input", str(libfm_files["test"]), "--no-progress"]
    assert main([*args, "--output", str(blocker / "s.csv")]) == 2
    assert f"{blocker} is a file, not a directory" in capsys.readouterr().err
    model_files = sorted(p.name for p in trained.iterdir())
    assert main([*args, "--output", str(trained), "--overwrite"]) == 2  # a typo: the model
    assert "holds a model written by fnn-fast, not a score output" in capsys.readouterr().err
    assert sorted(p.name for p in trained.iterdir()) == model_files


def test_help_shows_defaults_and_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--factors FACTORS K (default: 10)" in text and "(default: 0.2)" in text
    description = " ".join(build_parser().description.split())
    for command in ("train", "compare", "evaluate", "score", "demo", "bench"):
        assert command in description


def test_demo_baselines_finish_before_their_epoch_caps(tmp_path, capsys):
    """Every model of the demo ends by early stopping, not at its epoch cap, so the comparison
    is between finished models (a small run; the default 400,000 rows: demo.DEMO_CONFIG)."""
    from fnn_fast.demo import DEMO_CONFIG, run_demo

    metrics = run_demo(tmp_path / "demo", rows=20_000, progress=False)
    history = json.loads((tmp_path / "demo" / "history.json").read_text())
    caps = {"fm": DEMO_CONFIG.fm_epochs, "fnn": DEMO_CONFIG.fnn_epochs,
            "fnn_random": DEMO_CONFIG.fnn_epochs}  # fmt: skip
    for name, cap in caps.items():
        best = next(r["epoch"] for r in history[name] if r.get("best"))
        assert best < len(history[name]) < cap, (name, best, len(history[name]))
        assert 0.5 < metrics[name]["test_auc"] <= metrics["bayes_optimal"]["test_auc"]
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "planted by fnn-fast demo" in page  # the report names its data
