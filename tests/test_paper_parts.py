"""RBM pre-training, layer-wise learning rates, the training report and the ablation command."""

import json

import numpy as np
import pytest
import torch

import fnn_fast
from fnn_fast import FNN
from fnn_fast.cli import main
from fnn_fast.data.synthetic import plant_model, write_libfm
from fnn_fast.rbm import RBM, pretrain_tanh_layers
from fnn_fast.report import calibration_points, roc_points, write_report
from fnn_fast.train import TrainConfig, fnn_optimizers


def structured_data(n=2000, dim=12, seed=0):
    """Inputs on a low-dimensional manifold: an RBM can learn to reconstruct them."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2, (n, 3), generator=g).float()
    mixing = torch.randn(3, dim, generator=g)
    return codes @ mixing + 0.05 * torch.randn(n, dim, generator=g)


@pytest.mark.parametrize("gaussian", [True, False])
def test_rbm_reconstruction_error_falls(gaussian):
    torch.manual_seed(0)
    data = structured_data()
    if not gaussian:
        data = torch.sigmoid(data)
    else:
        data = (data - data.mean(0)) / data.std(0)
    rbm = RBM(12, 16, gaussian_visible=gaussian)
    before = rbm.reconstruction_error(data)
    for _ in range(30):
        for batch in data.split(100):
            rbm.contrastive_divergence(batch, lr=0.05, k=1)
    assert rbm.reconstruction_error(data) < 0.7 * before


def test_pretrained_weights_hand_off_into_tanh_layers():
    torch.manual_seed(1)
    z = structured_data(600, 10) * 3 + 1  # not standardized: the hand-off must absorb that
    fnn = FNN(10, 3, 2, hidden=(7, 5))
    linears = [m for m in fnn.hidden_layers if isinstance(m, torch.nn.Linear)]
    errors = pretrain_tanh_layers(lambda: z.split(100), linears, epochs=3, lr=0.05,
                                  progress=False)  # fmt: skip
    assert len(errors) == 2 and all(len(e) == 3 for e in errors)
    assert linears[0].weight.shape == (7, 10) and linears[1].weight.shape == (5, 7)
    # tanh(layer(z)) == 2 p - 1 with p the first RBM's hidden probabilities on standardized z:
    # check it against an RBM rebuilt from the layer (the inverse of the hand-off).
    standardized = (z - z.mean(0)) / z.std(0, unbiased=False)
    with torch.no_grad():
        tanh_out = torch.tanh(linears[0](z))
        weight = 2 * linears[0].weight * z.std(0, unbiased=False)
        bias = 2 * linears[0].bias + weight @ (z.mean(0) / z.std(0, unbiased=False))
        p = torch.sigmoid(standardized @ weight.t() + bias)
    torch.testing.assert_close(tanh_out, 2 * p - 1, atol=1e-4, rtol=1e-4)


def test_layer_wise_learning_rates():
    torch.manual_seed(0)
    fnn = FNN(20, 2, 2, hidden=(4, 3))
    config = TrainConfig(
        fnn_layer_optimizer="sgd",
        fnn_layer_lrs=[0.1, 0.01, 0.001],
        fnn_embedding_lr=0.5,
        fnn_optimizer="sgd",
        fnn_weight_decay=0.0,
    )
    optimizers = fnn_optimizers(fnn, config)
    groups = fnn.layer_parameters()
    before = [[p.detach().clone() for p in g] for g in groups]
    table_before = fnn.table.detach().clone()
    ids = torch.tensor([[1, 5], [2, 5]])
    torch.nn.functional.binary_cross_entropy_with_logits(
        fnn(ids), torch.tensor([1.0, 0.0])
    ).backward()
    grads = [[p.grad.clone() for p in g] for g in groups]
    table_grad = fnn.table.grad.to_dense().clone()
    for optimizer in optimizers:
        optimizer.step()
    for rate, group, old, grad in zip([0.1, 0.01, 0.001], groups, before, grads, strict=True):
        for p, p0, g in zip(group, old, grad, strict=True):
            torch.testing.assert_close(p.detach(), p0 - rate * g)
    torch.testing.assert_close(fnn.table.detach(), table_before - 0.5 * table_grad)
    with pytest.raises(ValueError, match="needs 3 rates"):
        fnn_optimizers(fnn, TrainConfig(fnn_layer_lrs=[0.1]))


def test_roc_and_calibration_points():
    labels = np.array([0, 0, 1, 1, 0, 1.0])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])
    fpr, tpr = roc_points(labels, scores)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert tpr[3] == 1 and fpr[3] == 0  # perfectly separated
    predicted, observed = calibration_points(labels, scores, bins=2)
    np.testing.assert_allclose(predicted, [0.2, 0.8])
    np.testing.assert_allclose(observed, [0.0, 1.0])


def test_report_files(tmp_path):
    history = {
        "fm": [{"epoch": e, "train_auc": 0.6 + e / 100, "valid_auc": 0.6, "train_logloss": 0.5,
                "valid_logloss": 0.5, "best": e == 2} for e in (1, 2, 3)],
        "fnn": [{"epoch": 1, "train_auc": 0.7, "valid_auc": 0.65, "train_logloss": 0.4,
                 "valid_logloss": 0.45, "best": True}],
    }  # fmt: skip
    labels = np.array([0, 1, 0, 1, 1, 0.0])
    predictions = {"fm": np.linspace(0.1, 0.6, 6), "fnn": np.linspace(0.6, 0.1, 6)}
    metrics = {"fm": {"test_auc": 0.61, "epochs": 3}, "fnn": {"test_auc": 0.64, "epochs": 1}}
    page = write_report(tmp_path, metrics, history, labels, predictions)
    for name in ("curves.png", "roc.png", "calibration.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3 and "0.6400" in text


def test_report_states_settings_data_date_version_and_the_roc_aucs(tmp_path):
    import datetime

    from fnn_fast.report import _roc, version

    history = {"fm": [{"epoch": 1, "valid_auc": 0.6, "valid_logloss": 0.5, "best": True}]}
    labels = np.array([0, 1, 0, 1.0])
    predictions = {"fm": np.array([0.1, 0.9, 0.2, 0.8]), "fnn": np.array([0.9, 0.1, 0.2, 0.8])}
    settings = TrainConfig(fm_epochs=7).to_dict()
    data = {"train": "runs/in/train.txt", "test": "runs/in/test.txt"}
    page = write_report(tmp_path, {"fm": {"test_auc": 1.0}}, history, labels, predictions,
                        settings=settings, data=data).read_text()  # fmt: skip
    assert "runs/in/train.txt" in page and "runs/in/test.txt" in page
    assert "<th>fm_epochs</th><td class='text'>7</td>" in page
    assert version() in page and version().startswith(fnn_fast.__version__)
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert today in page
    legend = _roc(labels, predictions, tmp_path / "roc2.png")
    assert legend == ["fm (AUC 1.0000)", "fnn (AUC 0.2500)"]


def test_train_with_rbm_writes_report_and_compare_runs(tmp_path, capsys):
    truth = plant_model((15,) * 4, num_factors=2, nonlinear=1.0, seed=0)
    for seed, name, rows in ((0, "train", 1500), (1, "test", 500)):
        sample = truth.sample(rows, seed=seed).rows
        write_libfm(tmp_path / f"{name}.libfm", sample.labels, sample.keys)
    fast = [
        "--fm-epochs",
        "2",
        "--fnn-epochs",
        "2",
        "--hidden",
        "8,4",
        "--factors",
        "3",
        "--fm-optimizer",
        "adagrad",
        "--fm-lr",
        "0.05",
        "--fnn-lr",
        "1e-3",
        "--no-progress",
    ]
    files = ["--train", str(tmp_path / "train.libfm"), "--test", str(tmp_path / "test.libfm"),
             "--format", "libfm"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", *files, "--out", str(run), "--pretrain", "rbm", "--rbm-epochs", "2",
                 "--fnn-layer-lrs", "1e-3,1e-3,1e-2", *fast]) == 0  # fmt: skip
    assert (run / "report.html").exists() and (run / "calibration.png").exists()
    page = (run / "report.html").read_text()
    assert str((tmp_path / "train.libfm").resolve()) in page  # the data paths
    assert "<th>pretrain</th><td class='text'>rbm</td>" in page  # the settings
    out = tmp_path / "compare"
    capsys.readouterr()
    assert main(["compare", *files, "--seeds", "2", "--out", str(out), "--peers", "none",
                 *fast]) == 0  # fmt: skip
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("compare: [")]
    assert said[0] == "compare: [1/14] logistic regression, seed 0"
    assert said[-1] == "compare: [14/14] FNN from FM, one learning rate, seed 1" and len(said) == 14
    summary = json.loads((out / "compare.json").read_text())["summary"]
    models = {"lr", "fm", "fnn_random", "fnn", "fnn_glorot", "fnn_rbm", "fnn_single_lr"}
    assert set(summary) == models
    # epoch 0 (the start) can be the best only for an FNN that starts as its FM
    assert all(0 <= s["test_auc"] <= 1 and s["best_epoch"] >= 1
               for name, s in summary.items() if name not in ("fnn", "fnn_single_lr"))  # fmt: skip
    assert all(s["best_epoch"] >= 0 for s in summary.values())
    assert "FNN from FM + RBM pre-training" in (out / "compare.md").read_text()
