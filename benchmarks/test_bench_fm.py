"""FM forward and train step, FNN scoring: reference (pure PyTorch) against native kernels.

Run: pytest benchmarks/ --benchmark-columns=median,ops
samples/s = BATCH * ops.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import BATCH, FACTORS, FIELDS

import fnn_fast
from fnn_fast import FM, FNN, SparseRowOptimizer
from fnn_fast.ops import native, reference

needs_native = pytest.mark.skipif(
    "native" not in fnn_fast.backends()["available"], reason="fnn_fast._C not built"
)


def test_fm_forward_reference(benchmark, criteo_batch):
    table, ids, _ = criteo_batch
    w0 = torch.tensor(0.1)
    benchmark.extra_info["samples_per_call"] = BATCH
    with torch.no_grad():
        benchmark(reference.fm_forward, table, w0, ids, None, False)


@needs_native
def test_fm_forward_native(benchmark, criteo_batch):
    table, ids, _ = criteo_batch
    w0 = torch.tensor(0.1)
    benchmark.extra_info["samples_per_call"] = BATCH
    benchmark(native.fm_forward, table, w0, ids, None)


def test_fm_train_step_reference_rowwise_adagrad(benchmark, criteo_batch):
    table, ids, labels = criteo_batch
    fm = FM(table.shape[0], FACTORS)
    optimizer = SparseRowOptimizer(fm.parameters(), "rowwise_adagrad", lr=0.05)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(fm(ids), labels).backward()
        optimizer.step()

    benchmark.extra_info["samples_per_call"] = BATCH
    benchmark(step)


def test_fnn_scoring_reference(benchmark, criteo_batch):
    table, ids, _ = criteo_batch
    fnn = FNN(table.shape[0], FIELDS, FACTORS).eval()
    benchmark.extra_info["samples_per_call"] = BATCH
    with torch.inference_mode():
        benchmark(fnn, ids)


def test_gather_bound(benchmark, criteo_batch):
    """Rows gathered by index_select: the memory bound a lookup kernel is measured against."""
    table, ids, _ = criteo_batch
    flat = ids.flatten()
    benchmark.extra_info["samples_per_call"] = BATCH
    benchmark(torch.index_select, table, 0, flat)
