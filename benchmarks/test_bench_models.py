"""Model level: FM and FNN training steps and scoring, fnn_fast's backends against
pytorch-fm, plain PyTorch (EmbeddingBag + SparseAdam), FBGEMM and the bare MLP."""

from conftest import time_case

LEVEL = "model"


def test_model(benchmark, bench_prepare):
    info = time_case(benchmark, bench_prepare)
    assert benchmark.disabled or (info["samples_per_s"] > 0)
