"""pytest-benchmark over the cases of ``fnn-fast bench`` (fnn_fast/bench): one benchmark per
case and contender of a preset, the same setup as the command, timed by pytest-benchmark.

    pytest benchmarks/ --bench-preset quick [--bench-device cpu] [--bench-backends native,fbgemm]
        [--benchmark-json out.json]

extra_info holds the record fields of ``fnn-fast bench --json`` (samples_per_s, gb_per_s, auc),
and the session records which fnn_fast it measured (its path and backends). Like the command,
the session refuses to run when the native backend is meant but not built.
"""

import pytest
import torch

from fnn_fast.bench.cases import PRESETS
from fnn_fast.bench.contenders import ModelStep, SkipCase
from fnn_fast.bench.machine import installed
from fnn_fast.bench.runner import (
    Workspace,
    bytes_moved,
    check_native,
    chosen_contenders,
    device_sync,
    finish_training,
    skip_reason,
)


def pytest_addoption(parser):
    group = parser.getgroup("fnn-fast bench")
    group.addoption("--bench-preset", default="quick", choices=sorted(PRESETS))
    group.addoption("--bench-device", choices=("cpu", "cuda"), help="default: cuda if available")
    group.addoption("--bench-backends", help="comma-separated contenders (default: the preset's)")


def _settings(config):
    preset = PRESETS[config.getoption("--bench-preset")]
    device = config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    named = [n for n in (config.getoption("--bench-backends") or "").split(",") if n]
    return preset, device, named or None


def pytest_generate_tests(metafunc):
    """Parametrize ``bench_case`` with (case, contender) pairs of the module's LEVEL."""
    if "bench_case" not in metafunc.fixturenames:
        return
    preset, device, named = _settings(metafunc.config)
    contenders = chosen_contenders(preset, named)
    pairs = [
        (case, contender)
        for case in preset.cases(device)
        if case.level == metafunc.module.LEVEL
        for contender in contenders
        if contender.supports(case)
    ]
    metafunc.parametrize("bench_case", pairs, ids=[f"{c.name}[{k.name}]" for c, k in pairs])


def pytest_report_header(config):
    info = installed()
    return f"fnn_fast: {info['path']}, backends {info['backends']}"


@pytest.fixture(scope="session")
def bench_settings(pytestconfig):
    preset, device, named = _settings(pytestconfig)
    check_native(chosen_contenders(preset, named), device)
    return preset, device, named, Workspace(device)


@pytest.fixture
def bench_prepare(bench_case, bench_settings):
    """(case, contender, data, device) after skipping what cannot run here."""
    case, contender = bench_case
    preset, device, named, workspace = bench_settings
    reason = skip_reason(contender, case, preset, device, named=bool(named))
    if reason:
        pytest.skip(reason)
    return case, contender, workspace.data_for(case), device


def time_case(benchmark, prepared) -> dict:
    """Time the contender's step on the case with pytest-benchmark; record samples/s (and GB/s)
    in extra_info, which it returns; a model training case also its held-out AUC after the
    case's steps. A forward's or scoring's output must be finite."""
    case, contender, data, device = prepared
    sync = device_sync(device)
    data.prepare(contender.layouts)
    view = data.view()
    with contender.active():
        try:
            step = contender.setup(case, view)
        except SkipCase as skip:
            pytest.skip(str(skip))

        def timed():
            out = step()
            sync()
            return out

        left = view.left()
        if left is None:
            out = benchmark(timed)
        else:  # fresh batches: each used once
            out = benchmark.pedantic(timed, rounds=max(left - 1, 1), warmup_rounds=1)
        if isinstance(step, ModelStep) and step.train and contender.trains:
            benchmark.extra_info.update(finish_training(step, view, data))
    if isinstance(out, torch.Tensor):  # forward ops, scoring, the gather bound
        assert out.numel() and bool(torch.isfinite(out).all())
    benchmark.extra_info.update(
        case=case.name, backend=contender.name, kind=contender.kind,
        settings=contender.optimizer(case), fnn_fast=installed(),
    )  # fmt: skip
    if not benchmark.disabled:  # --benchmark-disable: one untimed call, nothing to record
        median = benchmark.stats.stats.median
        moved = bytes_moved(case, contender, data)
        benchmark.extra_info.update(
            samples_per_s=case.shape.batch / median,
            gb_per_s=None if moved is None else moved / median / 1e9,
        )
    return benchmark.extra_info
