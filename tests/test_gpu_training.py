"""Both training stages on a GPU against the CPU (benchmarks/gpu_check.sh runs this file)."""

import numpy as np
import pytest
import torch

from fnn_fast.data.synthetic import plant_model
from fnn_fast.demo import planted_splits
from fnn_fast.train import TrainConfig, train_two_stage

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

CONFIG = TrainConfig(factors=4, batch_size=128, fm_epochs=2, fnn_epochs=2, hidden=[8, 4],
                     fnn_lr=1e-3)  # fmt: skip


def small_splits():
    truth = plant_model((12,) * 4, num_factors=3, nonlinear=1.0, seed=0)
    encoder, splits, _ = planted_splits(truth, (1200, 300, 300), 1)
    return encoder, splits


def test_cuda_training_matches_cpu():
    encoder, (train, valid, test) = small_splits()
    cpu = train_two_stage(train, valid, test, encoder, CONFIG, progress=False)
    gpu = train_two_stage(train, valid, test, encoder, CONFIG, progress=False, device="cuda")
    assert gpu.fm.table.device.type == "cpu" and gpu.fnn.table.device.type == "cpu"
    for stage in ("fm", "fnn"):
        for key in ("valid_auc", "test_auc"):
            assert gpu.metrics[stage][key] == pytest.approx(cpu.metrics[stage][key], abs=0.01)
        assert np.isfinite(gpu.metrics[stage]["test_logloss"])


def test_cuda_rbm_pretraining_runs_on_the_gpu():
    encoder, (train, valid, _) = small_splits()
    config = TrainConfig(**{**CONFIG.to_dict(), "pretrain": "rbm", "fnn_epochs": 1})
    result = train_two_stage(train, valid, None, encoder, config, progress=False, device="cuda")
    assert np.isfinite(result.metrics["fnn"]["valid_auc"])
