"""A run whose loss or weights stop being finite fails loudly and writes no model."""

import math

import pytest
import torch

from fnn_fast.cli import main
from fnn_fast.data.synthetic import plant_model, write_libfm
from fnn_fast.demo import planted_splits
from fnn_fast.train import TrainConfig, TrainingDiverged, first_non_finite, train_fm, train_fnn

QUICK = dict(factors=4, batch_size=64, fm_epochs=2, fnn_epochs=2, hidden=[8])


@pytest.fixture(scope="module")
def planted():
    # 30 % positives: the share at which the old default FM rate (plain SGD at 3.0) blew up.
    truth = plant_model((30,) * 6, num_factors=3, bias=-1.0, seed=4)
    encoder, (train, valid), _ = planted_splits(truth, (2000, 500), 11)
    assert 0.2 < float(train.labels.mean()) < 0.45
    return train, valid, encoder


def test_huge_fm_rate_stops_with_stage_epoch_step_and_flag(planted):
    train, valid, encoder = planted
    config = TrainConfig(**QUICK, fm_optimizer="sgd", fm_lr=1e6)
    with pytest.raises(TrainingDiverged) as caught:
        train_fm(train, valid, encoder.num_features, config, progress=False)
    error = caught.value
    assert (error.stage, error.epoch) == ("FM", 1) and error.step >= 1
    assert "--fm-lr (now 1e+06, rule sgd)" in str(error)


def test_huge_embedding_rate_stops_the_fnn_stage(planted):
    train, valid, encoder = planted
    config = TrainConfig(**QUICK, fnn_optimizer="sgd", fnn_embedding_lr=1e9)
    fm, _ = train_fm(train, valid, encoder.num_features, TrainConfig(**QUICK), progress=False)
    slot_fields = [int(f) for f in encoder.slot_fields]
    with pytest.raises(TrainingDiverged, match="--fnn-embedding-lr") as caught:
        train_fnn(train, valid, fm, encoder.num_features, slot_fields, config, progress=False)
    assert caught.value.stage == "FNN"


def test_non_finite_parameter_is_found_by_name():
    layer = torch.nn.Linear(3, 2)
    assert first_non_finite(layer) is None
    with torch.no_grad():
        layer.bias[1] = math.inf
    assert first_non_finite(layer) == "bias"


def test_cli_exits_non_zero_and_writes_no_model(tmp_path, capsys):
    truth = plant_model((20,) * 4, num_factors=3, bias=-1.0, seed=0)
    sample = truth.sample(1500, seed=0).rows
    write_libfm(tmp_path / "train.libfm", sample.labels, sample.keys)
    out = tmp_path / "run"
    code = main(["train", "--train", str(tmp_path / "train.libfm"), "--format", "libfm",
                 "--out", str(out), "--fm-optimizer", "sgd", "--fm-lr", "1e6", "--factors", "3",
                 "--hidden", "8", "--no-progress"])  # fmt: skip
    assert code != 0
    assert "FM training diverged in epoch 1" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e39", "1e999"])
def test_non_finite_libfm_values_are_bad_lines(tmp_path, value):
    from fnn_fast.data import DataError, Schema, read_rows

    path = tmp_path / "rows.libfm"
    path.write_text(f"1 1:1 2:0.5\n0 1:{value} 2:1\n1 1:1 3:1\n")
    with pytest.raises(
        DataError, match=rf"rows.libfm:2: value '{value}' of feature 1 is not a fin"
    ):
        read_rows(path, Schema("libfm"), progress=False)
    rows = read_rows(path, Schema("libfm"), progress=False, skip_bad_lines=True)
    assert rows.bad_lines == 1 and len(rows.labels) == 2
