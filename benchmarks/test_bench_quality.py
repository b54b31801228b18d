"""Equal quality: each contender trains the same model on the same planted data for the same
epochs; its test AUC goes beside its training throughput in extra_info."""

from fnn_fast.bench.quality import train_and_test
from fnn_fast.bench.runner import device_sync

LEVEL = "quality"


def test_quality(benchmark, bench_prepare):
    case, contender, data, device = bench_prepare
    with contender.active():
        result = benchmark.pedantic(
            train_and_test, (contender, case, data, device, device_sync(device)), rounds=1
        )
    benchmark.extra_info.update(case=case.name, backend=contender.name, **result)
    assert 0.0 <= result["auc"] <= 1.0 and result["samples_per_s"] > 0
