"""Op level: lookup + FM forward, FM train step, FNN gather forward and train, sparse update,
for every fnn_fast backend (plus FBGEMM, the C++ gather bound and index_select)."""

from conftest import time_case

LEVEL = "op"


def test_op(benchmark, bench_prepare):
    info = time_case(benchmark, bench_prepare)
    assert benchmark.disabled or (info["samples_per_s"] > 0 and info["gb_per_s"] > 0)
