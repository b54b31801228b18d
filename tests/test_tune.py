"""The hyper-parameter search: every trial logged, the best config written, resumable."""

import json

import pytest

import fnn_fast.tune as tune
from fnn_fast.data.synthetic import plant_model
from fnn_fast.demo import planted_splits
from fnn_fast.train import TrainConfig

BASE = TrainConfig(factors=3, batch_size=128, fm_epochs=2, fnn_epochs=2, hidden=[8], patience=1)


@pytest.fixture(scope="module")
def planted():
    truth = plant_model((15,) * 5, num_factors=3, nonlinear=1.0, bias=-1.0, seed=2)
    encoder, (train, valid), _ = planted_splits(truth, (1500, 400), 5)
    return train, valid, encoder


def _trials(path):
    return [
        {k: v for k, v in t.items() if k != "seconds"} for t in json.loads(path.read_text())["done"]
    ]


def test_search_logs_every_trial_and_writes_the_best(planted, tmp_path):
    train, valid, encoder = planted
    best = tune.run_tune(train, valid, encoder, BASE, tmp_path, trials=5, seed=1, progress=False)
    log = json.loads((tmp_path / "tune.json").read_text())
    stages = [t["stage"] for t in log["done"]]
    assert stages == ["fm"] * 3 + ["fnn"] * 2
    finished = [t for t in log["done"] if "valid_auc" in t]
    assert finished, "every trial diverged"
    written = json.loads((tmp_path / "best.json").read_text())
    assert written["config"] == best
    fm_best = max((t for t in finished if t["stage"] == "fm"), key=lambda t: t["valid_auc"])
    assert written["fm_trial"]["index"] == fm_best["index"]
    for name, value in written["fm_trial"]["params"].items():
        assert best[name] == value
    for name, value in written["fnn_trial"]["params"].items():
        assert best[name] == value
    assert set(tune.FNN_SPACE) <= set(written["fnn_trial"]["params"])


def test_killed_search_resumes_to_the_same_trials(planted, tmp_path, monkeypatch):
    train, valid, encoder = planted
    whole = tmp_path / "whole"
    tune.run_tune(train, valid, encoder, BASE, whole, trials=4, seed=3, progress=False)

    killed = tmp_path / "killed"
    real_train_fnn, calls = tune.train_fnn, []

    def dies_in_second_fnn_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill in the middle of a trial
        return real_train_fnn(*args, **kwargs)

    monkeypatch.setattr(tune, "train_fnn", dies_in_second_fnn_trial)
    with pytest.raises(KeyboardInterrupt):
        tune.run_tune(train, valid, encoder, BASE, killed, trials=4, seed=3, progress=False)
    assert len(json.loads((killed / "tune.json").read_text())["done"]) == 3
    assert not (killed / "best.json").exists()
    monkeypatch.setattr(tune, "train_fnn", real_train_fnn)

    with pytest.raises(FileExistsError, match="--resume"):
        tune.run_tune(train, valid, encoder, BASE, killed, trials=4, seed=3, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        tune.run_tune(train, valid, encoder, BASE, killed, trials=6, seed=3, resume=True,
                      progress=False)  # fmt: skip
    tune.run_tune(train, valid, encoder, BASE, killed, trials=4, seed=3, resume=True,
                  progress=False)  # fmt: skip
    assert _trials(killed / "tune.json") == _trials(whole / "tune.json")
    assert (
        json.loads((killed / "best.json").read_text())["config"]
        == json.loads((whole / "best.json").read_text())["config"]
    )


def test_budget_must_be_trials_or_minutes(planted, tmp_path):
    train, valid, encoder = planted
    with pytest.raises(ValueError, match="trials or as minutes"):
        tune.run_tune(train, valid, encoder, BASE, tmp_path, progress=False)


def test_cli_tune_then_train_with_its_config(tmp_path, capsys):
    from fnn_fast.cli import main
    from fnn_fast.data.synthetic import write_libfm

    truth = plant_model((12,) * 4, num_factors=3, bias=-1.0, seed=1)
    sample = truth.sample(1200, seed=0).rows
    data = tmp_path / "train.libfm"
    write_libfm(data, sample.labels, sample.keys)
    small = ["--factors", "3", "--hidden", "8", "--fm-epochs", "2", "--fnn-epochs", "2",
             "--batch-size", "128", "--no-progress"]  # fmt: skip
    search = tmp_path / "search"
    args = [
        "tune",
        "--train",
        str(data),
        "--format",
        "libfm",
        "--trials",
        "2",
        "--out",
        str(search),
    ]
    assert main([*args, *small]) == 0
    best = json.loads((search / "best.json").read_text())["config"]
    assert "fnn-fast train --config" in capsys.readouterr().out
    assert main([*args, *small]) == 2  # the search exists: continuing it needs --resume
    assert "--resume" in capsys.readouterr().err

    run = tmp_path / "run"
    config = ["--config", str(search / "best.json"), "--fnn-epochs", "1", "--no-progress"]
    code = main(["train", "--train", str(data), "--format", "libfm", "--out", str(run), *config])
    assert code == 0
    used = json.loads((run / "config.json").read_text())["train"]
    assert used["fm_lr"] == best["fm_lr"] and used["dropout"] == best["dropout"]
    assert used["hidden"] == [8] and used["fnn_epochs"] == 1  # the file's, then the flag's

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fm_rate": 1}))
    assert main(["train", "--train", str(data), "--format", "libfm", "--out", str(tmp_path / "x"),
                 "--config", str(bad)]) == 2  # fmt: skip
    assert "unknown settings: fm_rate" in capsys.readouterr().err
