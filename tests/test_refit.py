"""refit: after early stopping, both stages train again on the training and validation rows for
the epochs it chose; the validation figures stay the early-stopped models'."""

import json
from dataclasses import replace

import pytest
import torch
from helpers import planted_libfm_files

from fnn_fast import api
from fnn_fast.cli import main
from fnn_fast.data.synthetic import plant_model
from fnn_fast.demo import planted_splits
from fnn_fast.train import Split, TrainConfig, evaluate, train_two_stage

CONFIG = TrainConfig(factors=4, patience=2, fm_epochs=8, fnn_epochs=6, hidden=[24, 8])


@pytest.fixture(scope="module")
def planted():
    truth = plant_model((30,) * 6, num_factors=3, bias=-1.0, seed=4)
    encoder, splits, _ = planted_splits(truth, (3000, 1000, 1000), 11)
    return (*splits, encoder)


@pytest.fixture(scope="module")
def both_runs(planted):
    train, valid, test, encoder = planted
    stopped = train_two_stage(train, valid, test, encoder, CONFIG, progress=False)
    refit = train_two_stage(train, valid, test, encoder, replace(CONFIG, refit=True),
                            progress=False)  # fmt: skip
    return stopped, refit


def best_epoch(history):
    return next(r["epoch"] for r in history if r["best"])


def test_refit_trains_on_train_and_valid_for_the_chosen_epochs(planted, both_runs):
    train, valid, test, _ = planted
    stopped, refit = both_runs
    assert "refit" not in stopped.metrics
    assert refit.metrics["refit"] == {
        "rows": len(train) + len(valid),
        "fm_epochs": max(1, best_epoch(stopped.history["fm"])),
        "fnn_epochs": best_epoch(stopped.history["fnn"]),
    }
    # The early stopping runs are the same (same seed); their validation figures are reported.
    for stage in ("fm", "fnn"):
        assert [(r["epoch"], r["valid_auc"]) for r in refit.history[stage]] == [
            (r["epoch"], r["valid_auc"]) for r in stopped.history[stage]
        ]
    for stage in ("fm", "fnn"):
        for key in ("valid_auc", "valid_logloss"):
            assert refit.metrics[stage][key] == stopped.metrics[stage][key]
    # The returned models are the refit ones: new weights, the test figures theirs.
    assert not torch.equal(refit.fm.table, stopped.fm.table)
    for stage, model in (("fm", refit.fm), ("fnn", refit.fnn)):
        metrics = evaluate(model, test)
        assert refit.metrics[stage]["test_auc"] == pytest.approx(metrics["auc"], abs=1e-12)
        assert refit.metrics[stage]["test_logloss"] == pytest.approx(metrics["logloss"], abs=1e-12)
        assert 0.6 < metrics["auc"] <= 1.0


def test_joined_splits_keep_their_values():
    ids = torch.arange(6).reshape(3, 2)
    ones = Split(ids, None, torch.tensor([0.0, 1.0, 0.0]))
    valued = Split(ids[:2] + 10, torch.tensor([[0.5, 2.0], [1.0, 3.0]]), torch.tensor([1.0, 0.0]))
    joined = ones.joined(valued)
    assert torch.equal(joined.ids, torch.cat([ones.ids, valued.ids]))
    assert torch.equal(joined.labels, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(joined.values, torch.cat([torch.ones(3, 2), valued.values]))
    assert ones.joined(ones).values is None


def test_refit_is_refused_where_it_cannot_run(planted, tmp_path):
    train, valid, test, encoder = planted
    config = replace(CONFIG, refit=True)
    with pytest.raises(ValueError, match="needs the training and validation rows in memory"):
        train_two_stage(train, None, test, encoder, config, progress=False)
    with pytest.raises(ValueError, match="cannot be combined with checkpoints"):
        train_two_stage(train, valid, test, encoder, config, progress=False, checkpoint=object())
    with pytest.raises(ValueError, match="cannot be used under torchrun"):
        train_two_stage(train, valid, test, encoder, config, progress=False, ranks=object())
    # api.fit refuses before reading any row.
    missing = tmp_path / "never-read.txt"
    missing.write_text("1 0:1\n")
    for options in ({"stream": True}, {"checkpoint_every": 10, "out": tmp_path / "m"}):
        with pytest.raises(ValueError, match="--refit needs the rows in memory"):
            api.fit(missing.as_posix(), format="libfm", refit=True, **options)


def test_cli_train_refit_and_compare_refuses_it(tmp_path, capsys):
    files = planted_libfm_files(tmp_path, 20)
    train_file, test_file = files["train"], files["test"]
    out = tmp_path / "model"
    code = main([
        "train", "--train", str(train_file), "--test", str(test_file), "--format", "libfm",
        "--out", str(out), "--factors", "4", "--fm-epochs", "3", "--fnn-epochs", "2",
        "--hidden", "24", "--refit", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    assert "refit: FM for" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refit"]["rows"] > 0 and metrics["fnn"]["test_auc"] > 0.5
    config = tmp_path / "best.json"
    config.write_text('{"config": {"refit": true}}')
    code = main([
        "compare", "--train", str(train_file), "--test", str(test_file), "--format", "libfm",
        "--seeds", "1", "--peers", "none", "--config", str(config), "--out", str(tmp_path / "c"),
    ])  # fmt: skip
    assert code != 0
    assert "compare judges the early-stopped models" in capsys.readouterr().err
