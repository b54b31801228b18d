"""Each stage keeps the weights of the epoch that its early-stopping metric rates best."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fnn_fast.demo import planted_at_rate, planted_splits
from fnn_fast.train import (
    AUC_STOPPING_MIN_CLASS,
    TrainConfig,
    evaluate,
    stopping_metric,
    train_fm,
    train_fnn,
)


@pytest.fixture(scope="module")
def planted():
    truth = planted_at_rate(0.3)
    encoder, (train, valid), _ = planted_splits(truth, (6_000, 2_000), 11)
    return train, valid, encoder


@pytest.mark.parametrize("metric", ["auc", "logloss"])
def test_each_stage_keeps_its_best_epoch_by_its_metric(planted, metric):
    train, valid, encoder = planted
    config = replace(
        TrainConfig(),
        fm_epochs=6,
        fnn_epochs=4,
        patience=100,
        fm_early_stopping=metric,
        fnn_early_stopping=metric,
    )
    fm, fm_history = train_fm(train, valid, encoder.num_features, config, progress=False)
    slot_fields = [int(f) for f in encoder.slot_fields]
    fnn, fnn_history = train_fnn(
        train, valid, fm, encoder.num_features, slot_fields, config, progress=False
    )
    for model, history in ((fm, fm_history), (fnn, fnn_history)):
        assert len(history) == len({r["epoch"] for r in history}) >= 4
        if metric == "auc":
            chosen = max(history, key=lambda r: r["valid_auc"])
        else:
            chosen = min(history, key=lambda r: r["valid_logloss"])
        assert [r["epoch"] for r in history if r["best"]] == [chosen["epoch"]]
        # the model holds that epoch's weights: its metrics are the recorded ones
        metrics = evaluate(model, valid)
        assert metrics["auc"] == pytest.approx(chosen["valid_auc"], abs=1e-9)
        assert metrics["logloss"] == pytest.approx(chosen["valid_logloss"], abs=1e-9)


def test_the_two_metrics_can_pick_different_epochs(planted):
    """Not a tautology: on this (seeded) set the two rules pick different FM epochs, so the
    setting reaches the stage."""
    train, valid, encoder = planted
    picks = {}
    for metric in ("auc", "logloss"):
        # The FM's L2 pinned (not the default's): at 3e-4 both rules happen to pick epoch 3.
        config = replace(TrainConfig(), fm_epochs=30, patience=100, fm_early_stopping=metric,
                         fm_weight_decay=1e-4)  # fmt: skip
        _, history = train_fm(train, valid, encoder.num_features, config, progress=False)
        picks[metric] = next(r["epoch"] for r in history if r["best"])
    assert picks["auc"] != picks["logloss"]


def test_auto_stops_on_logloss_where_the_rarer_class_is_small(planted, capsys):
    """auto: AUC on a validation split with 200 rows of each class or more, logloss below (and
    the run says why); it picks the same epochs as the metric it resolves to."""
    train, valid, encoder = planted
    rare = valid.labels.clone()
    rare[rare.nonzero()[AUC_STOPPING_MIN_CLASS - 1 :]] = 0.0  # 199 positives left
    few = replace(valid, labels=rare)
    assert stopping_metric("auto", valid) == ("auc", None)
    metric, why = stopping_metric("auto", few)
    assert metric == "logloss" and "199 rows of its rarer class" in why
    assert stopping_metric("auc", few) == ("auc", None)
    with pytest.raises(ValueError, match="choose auto, auc or logloss"):
        stopping_metric("accuracy", valid)
    picks = {}
    for choice in ("auto", "logloss"):
        config = replace(TrainConfig(), fm_epochs=8, patience=100, fm_early_stopping=choice)
        _, history = train_fm(train, few, encoder.num_features, config, progress=False)
        picks[choice] = next(r["epoch"] for r in history if r["best"])
    assert picks["auto"] == picks["logloss"]
    assert "early stopping on validation logloss: the validation split has 199" in (
        capsys.readouterr().err
    )
