"""Shared benchmark inputs: Criteo-like shapes (F = 39, K = 10, batch 4096) with Zipf ids.

Each benchmark records samples/s in extra_info; `--benchmark-json` keeps them.
"""

import numpy as np
import pytest
import torch

FIELDS, FACTORS, BATCH = 39, 10, 4096


def zipf_ids(num_rows: int, batch: int, fields: int, exponent: float = 1.1, seed: int = 0):
    """Ids [batch, fields] whose popularity follows a Zipf law, hot ids spread over the table."""
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(exponent, size=(batch, fields)) - 1
    permutation = rng.permutation(num_rows)
    return torch.from_numpy(permutation[np.minimum(ranks, num_rows - 1)])


@pytest.fixture(scope="session", params=[1_000_000, 10_000_000], ids=lambda n: f"rows={n:.0e}")
def table_rows(request):
    return request.param


@pytest.fixture(scope="session")
def criteo_batch(table_rows):
    torch.manual_seed(0)
    ids = zipf_ids(table_rows, BATCH, FIELDS)
    labels = torch.randint(0, 2, (BATCH,)).float()
    return table_rows, ids, labels


@pytest.fixture
def measure(benchmark):
    """benchmark(fn) that also records samples/s (BATCH per call) from the median time."""

    def run(fn, *args):
        result = benchmark(fn, *args)
        benchmark.extra_info["samples_per_s"] = BATCH / benchmark.stats.stats.median
        return result

    return run
