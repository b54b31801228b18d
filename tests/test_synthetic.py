"""The synthetic generator, and the two acceptance checks it exists for: a trained FM comes
within 0.01 AUC of the Bayes-optimal AUC on a pure-FM truth, and FNN beats FM when the truth has
a non-linear term."""

import numpy as np
import pytest

from fnn_fast.data.synthetic import criteo_like_cardinalities, plant_model
from fnn_fast.demo import planted_splits
from fnn_fast.metrics import roc_auc
from fnn_fast.train import TrainConfig, evaluate, train_fm, train_fnn


def test_rows_follow_the_planted_model():
    truth = plant_model((30, 200, 5), num_factors=3, seed=1)
    a, b = truth.sample(20_000, seed=7), truth.sample(20_000, seed=7)
    np.testing.assert_array_equal(a.rows.keys, b.rows.keys)  # seeded: repeatable
    assert a.rows.keys.shape == (20_000, 3)
    assert (a.rows.keys >= 0).all() and (a.rows.keys < truth.cardinalities).all()
    # Zipf popularity: the most popular value of the 200-value field is far above uniform.
    counts = np.bincount(a.rows.keys[:, 1], minlength=200)
    assert counts.max() > 10 * 20_000 / 200
    # Labels are drawn from the true probabilities, whose AUC on them is the reported Bayes AUC.
    assert abs(a.rows.labels.mean() - a.probabilities.mean()) < 0.01
    assert a.bayes_auc == pytest.approx(roc_auc(a.rows.labels, a.probabilities))
    assert 0.6 < a.bayes_auc < 1.0


def test_nonlinear_term_changes_the_truth():
    ids = plant_model((20,) * 6, seed=3).draw_ids(1000, np.random.default_rng(0))
    pure = plant_model((20,) * 6, seed=3).logits(ids)
    mixed = plant_model((20,) * 6, nonlinear=1.0, seed=3).logits(ids)
    assert np.std(mixed - pure) == pytest.approx(1.0, rel=0.2)


def test_criteo_like_cardinalities():
    cards = criteo_like_cardinalities(39, largest=5000)
    assert len(cards) == 39 and cards.min() >= 4 and cards.max() <= 5000


def _splits(truth, n_train, seed=0):
    encoder, splits, parts = planted_splits(truth, (n_train, n_train // 4, n_train // 4), seed)
    return encoder, splits, parts[2].bayes_auc


@pytest.mark.slow
def test_fm_reaches_bayes_optimal_auc_on_fm_truth():
    truth = plant_model((30,) * 8, num_factors=4, seed=0)
    encoder, (train, valid, test), bayes = _splits(truth, 100_000)
    config = TrainConfig(
        factors=4,
        batch_size=512,
        fm_optimizer="adagrad",
        fm_lr=0.05,
        fm_initial_accumulator=0.0,  # plain Adagrad: this test is about what an FM can fit
        fm_weight_decay=1e-5,
        fm_epochs=15,
    )
    fm, _ = train_fm(train, valid, encoder.num_features, config, progress=False)
    assert evaluate(fm, test)["auc"] > bayes - 0.01


@pytest.mark.slow
def test_fnn_beats_fm_on_nonlinear_truth():
    truth = plant_model((50,) * 8, num_factors=4, nonlinear=2.0, seed=0)
    encoder, (train, valid, test), _ = _splits(truth, 100_000)
    config = TrainConfig(
        factors=4,
        batch_size=512,
        fm_optimizer="adagrad",
        fm_lr=0.05,
        fm_initial_accumulator=0.0,  # plain Adagrad: this test is about what an FM can fit
        fm_weight_decay=1e-5,
        fm_epochs=15,
        fnn_epochs=15,
        fnn_lr=1e-3,
        fnn_optimizer="adagrad",
        fnn_embedding_lr=0.005,
        dropout=0.0,
        hidden=[128, 64],
    )
    fm, _ = train_fm(train, valid, encoder.num_features, config, progress=False)
    fnn, _ = train_fnn(
        train, valid, fm, encoder.num_features, list(range(8)), config, progress=False
    )
    fm_auc, fnn_auc = evaluate(fm, test)["auc"], evaluate(fnn, test)["auc"]
    assert fnn_auc > fm_auc + 0.003, (fnn_auc, fm_auc)
