"""The FNN's layers started as the FM's function (fnn_layer_init="fm", modules.start_as_fm)."""

import numpy as np
import pytest
import torch

from fnn_fast import FM, FNN
from fnn_fast.metrics import roc_auc as auc
from fnn_fast.modules import fm_start_unfit, start_as_fm
from fnn_fast.train import Split, TrainConfig, train_fnn


def trained_like_fm(num_features, factors, generator, scale=0.3):
    """An FM with the spread of a trained one: w ~ N(0, 0.5), v ~ N(0, scale)."""
    fm = FM(num_features, factors)
    with torch.no_grad():
        fm.table[:, 0] = torch.randn(num_features, generator=generator) * 0.5
        fm.table[:, 1:] = torch.randn(num_features, factors, generator=generator) * scale
        fm.w0.fill_(-1.2)
    return fm


def one_hot_rows(n, slot_fields, fields_sizes, generator, hot=None):
    """ids of one feature per slot, each field its own id range; duplicate and hot ids."""
    offsets = np.concatenate([[0], np.cumsum(fields_sizes)[:-1]])
    cols = []
    for slot, field in enumerate(slot_fields):
        col = torch.randint(0, fields_sizes[field], (n,), generator=generator) + int(offsets[field])
        if hot is not None and slot == 0:
            col[::3] = hot
        cols.append(col)
    return torch.stack(cols, 1), int(sum(fields_sizes))


def rank_correlation(a, b):
    return np.corrcoef(np.argsort(np.argsort(a.numpy())), np.argsort(np.argsort(b.numpy())))[0, 1]


@pytest.mark.parametrize(
    "factors,hidden,slot_fields",
    [
        (10, (200, 300, 100), [0, 1, 2, 3, 4, 5, 6]),  # the defaults' shape
        (3, (7,), [0, 1, 2, 3, 4]),  # one hidden layer, just wide enough (1 + 2K = 7)
        (5, (13, 9), [0, 1, 1, 2]),  # two slots of one field (a bag, or a repeated libFM field)
        (1, (4, 3, 2, 2), [0, 1, 2]),  # K = 1, four narrow layers
    ],
)
def test_fnn_starts_as_the_fm(factors, hidden, slot_fields):
    g = torch.Generator().manual_seed(factors * 7 + len(hidden))
    fields = max(slot_fields) + 1
    sizes = [5 + 3 * f for f in range(fields)]
    ids, num_features = one_hot_rows(4000, slot_fields, sizes, g, hot=2)
    fm = trained_like_fm(num_features, factors, g)
    before = fm.table.clone()
    errors = {}
    for spread in (0.25, 0.05):  # the default, and a finer one
        torch.manual_seed(1)
        fnn = FNN.from_fm(fm, slot_fields=slot_fields, hidden=hidden)
        random_layers = [m.weight.clone() for m in fnn.hidden_layers if hasattr(m, "weight")]
        halves = [(ids[:1500], None), (ids[1500:], None)]
        start_as_fm(fnn, fm, lambda h=halves: iter(h), spread=spread)
        with torch.no_grad():
            want, got = fm(ids), fnn(ids)
        errors[spread] = float((got - want).abs().mean() / want.std())
        # same mean logit; the ranking kept; the other units random, silent in the output
        assert abs(float(got.mean() - want.mean())) < 1e-3 * float(want.std())
        assert rank_correlation(got, want) > (0.995 if spread == 0.25 else 0.9999)
        layers = [m for m in fnn.hidden_layers if hasattr(m, "weight")]
        carried = 1 + 2 * factors if len(layers) == 1 else 1
        assert torch.equal(layers[0].weight[1 + 2 * factors :], random_layers[0][1 + 2 * factors :])
        assert torch.equal(fnn.output.weight[0, carried:], torch.zeros(hidden[-1] - carried))
    # tanh's curvature is the only error: it falls as the square of the spread
    assert errors[0.05] < 0.01 and errors[0.25] < 0.15 and errors[0.05] < errors[0.25] / 10
    assert torch.equal(fm.table, before)  # the FM is left as it was
    # w absorbed the pairwise sum's diagonal; v is the FM's
    torch.testing.assert_close(fnn.table[:, 1:], fm.table[:, 1:])
    torch.testing.assert_close(
        fnn.table[:, 0], fm.table[:, 0] - 0.5 * fm.table[:, 1:].square().sum(1)
    )


def test_fnn_start_with_dropout_and_valued_features_keeps_the_ranking():
    """Dropout is off while measuring; values in {0, 1} (an absent bag item) are exact."""
    g = torch.Generator().manual_seed(5)
    slot_fields = list(range(8))
    ids, num_features = one_hot_rows(3000, slot_fields, [6] * 8, g)
    values = (torch.rand(ids.shape, generator=g) < 0.8).float()
    fm = trained_like_fm(num_features, 4, g)
    torch.manual_seed(0)
    fnn = FNN.from_fm(fm, slot_fields=slot_fields, hidden=(64, 32, 16), dropout=0.3)
    fnn.train()
    start_as_fm(fnn, fm, lambda: iter([(ids, values)]), spread=0.05)
    assert fnn.training  # left as it was
    fnn.eval()
    with torch.no_grad():
        assert rank_correlation(fnn(ids, values), fm(ids, values)) > 0.9999


def test_fnn_start_refuses_networks_that_cannot_carry_the_fm():
    fm = FM(30, 4)
    assert fm_start_unfit(FNN.from_fm(fm, 3, hidden=(64,), activation="relu")) == (
        "it needs tanh hidden layers, not relu"
    )
    assert "needs a hidden layer" in fm_start_unfit(FNN.from_fm(fm, 3, hidden=()))
    narrow = FNN.from_fm(fm, 3, hidden=(8, 4))
    assert "at least 1 + 2K = 9 units, not 8" in fm_start_unfit(narrow)
    with pytest.raises(ValueError, match="cannot start as the FM"):
        start_as_fm(narrow, fm, lambda: iter([]))


def planted_split(n, slot_fields, generator):
    ids, num_features = one_hot_rows(n, slot_fields, [7] * (max(slot_fields) + 1), generator)
    truth = trained_like_fm(num_features, 3, generator)
    labels = (torch.rand(n, generator=generator) < torch.sigmoid(truth(ids).detach())).float()
    return Split(ids, None, labels), num_features, truth


def test_train_fnn_starts_from_the_fm_and_falls_back_to_glorot(capsys):
    g = torch.Generator().manual_seed(3)
    slot_fields = [0, 1, 2, 3]
    train, num_features, fm = planted_split(3000, slot_fields, g)
    config = TrainConfig(fnn_epochs=0, hidden=[32, 16], factors=3)
    fnn, _ = train_fnn(train, None, fm, num_features, slot_fields, config, progress=False)
    glorot, _ = train_fnn(train, None, fm, num_features, slot_fields,
                          TrainConfig(fnn_epochs=0, hidden=[32, 16], factors=3,
                                      fnn_layer_init="glorot"), progress=False)  # fmt: skip
    labels = train.labels.numpy()
    with torch.no_grad():
        fm_auc = auc(labels, fm(train.ids).numpy())
        started = auc(labels, fnn(train.ids).numpy())
        random_start = auc(labels, glorot(train.ids).numpy())
    assert abs(started - fm_auc) < 0.01 and random_start < fm_auc - 0.02
    relu = TrainConfig(fnn_epochs=0, hidden=[32], factors=3, activation="relu")
    train_fnn(train, None, fm, num_features, slot_fields, relu, progress=True)
    assert "the layers start random (glorot): it needs tanh hidden layers, not relu" in (
        capsys.readouterr().err
    )
