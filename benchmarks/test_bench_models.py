"""Model level: FM and FNN training steps and scoring, fnn_fast's backends against plain PyTorch
(nn.Embedding(sparse=True) with Adagrad or SparseAdam), FBGEMM (training and inference TBE),
pytorch-fm, DeepCTR-Torch and the bare MLP; a training case's held-out AUC after its steps goes
into extra_info."""

from conftest import time_case

LEVEL = "model"


def test_model(benchmark, bench_prepare):
    info = time_case(benchmark, bench_prepare)
    assert benchmark.disabled or (info["samples_per_s"] > 0)
