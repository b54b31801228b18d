"""The benchmark suite's machinery on the tiny preset: records, JSON, plots, skipped peers, the
command line, the id generators and the byte model. No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fnn_fast.bench import report, runner
from fnn_fast.bench.cases import PRESETS, Case, Timing
from fnn_fast.bench.contenders import CONTENDER_NAMES, all_contenders
from fnn_fast.bench.shapes import CaseData, Shape, draw_batches
from fnn_fast.bench.traffic import op_bytes
from fnn_fast.cli import main
from fnn_fast.ops import cpu

TINY = PRESETS["tiny"]
OWN_BACKENDS = ("reference", "compiled", "native", "triton", "cuda")
PEERS = ("fbgemm", "torchfm", "torch-sparse")


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    result = runner.run(TINY, "cpu", command="fnn-fast bench --preset tiny", log=quiet)
    report.write_json(folder / "bench.json", result)
    plots = report.write_plots(folder / "plots", result)
    return result, folder, plots


def by(records, **match):
    return [r for r in records if all(r[k] == v for k, v in match.items())]


def test_every_supported_pair_has_one_record(tiny_run):
    result, _, _ = tiny_run
    expected = [
        (case.name, c.name)
        for case in TINY.cases("cpu")
        for c in all_contenders()
        if c.supports(case)
    ]
    assert [(r["case"], r["backend"]) for r in result.records] == expected
    assert not result.errors(), result.errors()


def test_records_are_complete(tiny_run):
    result, _, _ = tiny_run
    for r in result.records:
        assert r["status"] in ("ok", "skipped")
        if r["status"] == "skipped":
            assert r["reason"] and r["samples_per_s"] is None
            continue
        assert r["samples_per_s"] > 0
        if r["level"] == "op":  # op level: timed, bytes counted
            assert r["median_s"] > 0 and r["repeats"] >= 1
            assert r["bytes"] > 0
            assert r["gb_per_s"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
        else:
            assert r["bytes"] is None and r["gb_per_s"] is None
    for r in by(result.records, backend="reference"):
        assert r["status"] == "ok" and r["speedup"] == pytest.approx(1.0)
    # Every case the eager reference runs gets speed-ups; GPU backends skip here, saying why.
    for r in by(result.records, backend="triton") + by(result.records, backend="cuda"):
        assert r["status"] == "skipped" and "--device cuda" in r["reason"]
    for r in by(result.records, backend="compiled"):
        assert r["status"] == "skipped" and "left out of this preset" in r["reason"]


@pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")
def test_native_runs_every_case(tiny_run):
    result, _, _ = tiny_run
    native_records = by(result.records, backend="native")
    assert native_records and all(r["status"] == "ok" for r in native_records)


def test_equal_quality_records(tiny_run):
    """The same model, data, epochs and batch order: the reference and native backends (and
    FBGEMM, exact row-wise Adagrad from the same start, K = 3 so no padding) reach the same AUC."""
    result, _, _ = tiny_run
    for model in ("fm", "fnn"):
        records = by(result.records, op=f"{model}_quality", status="ok")
        auc = {r["backend"]: r["auc"] for r in records}
        assert "reference" in auc
        for r in records:
            assert 0 <= r["auc"] <= 1 and r["logloss"] > 0 and 0.5 < r["bayes_auc"] <= 1
            assert r["epochs"] == 1 and r["seconds"] > 0 and r["rows"] > 0
        for same in ("native", "fbgemm"):
            if same in auc:
                assert auc[same] == pytest.approx(auc["reference"], abs=0.01)


def test_json_schema(tiny_run):
    _, folder, _ = tiny_run
    data = json.loads((folder / "bench.json").read_text())
    assert data["schema"] == runner.SCHEMA and data["preset"] == "tiny"
    assert data["command"] == "fnn-fast bench --preset tiny" and data["date"]
    machine = data["machine"]
    for key in ("cpu", "cores", "gpu", "versions", "fnn_fast_backends"):
        assert key in machine
    assert machine["versions"]["torch"] == torch.__version__
    assert "bytes" in data["byte_model"]
    for r in data["records"]:
        assert set(r) == set(runner.RECORD_FIELDS)
        assert r["backend"] in CONTENDER_NAMES and r["case"].startswith(r["op"] + "/")


def test_plots(tiny_run):
    _, _, plots = tiny_run
    names = sorted(p.name for p in plots)
    assert any("fm_train_step-vs-batch" in n for n in names)
    assert any("fm_train_step-vs-rows" in n for n in names)
    for path in plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table(tiny_run):
    result, _, _ = tiny_run
    table = report.format_table(result)
    assert "samples/s" in table and "vs ref" in table and "GB/s" in table and "AUC" in table
    assert "fm_train_step/ipinyou-K3-R1e3-B64-zipf" in table
    assert "reproduce: fnn-fast bench --preset tiny" in table


def test_missing_peers_are_skipped(monkeypatch):
    """A peer that is not installed is reported as skipped, with how to install it."""
    for module in ("torchfm", "torchfm.model.fm", "torchfm.model.fnn", "fbgemm_gpu"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    for module in [m for m in sys.modules if m.startswith("fbgemm_gpu.")]:
        monkeypatch.setitem(sys.modules, module, None)
    result = runner.run(TINY, "cpu", ["reference", *PEERS], ["fm_train/"], log=quiet)
    status = {r["backend"]: r for r in result.records}
    assert set(status) == {"reference", *PEERS}
    assert status["torchfm"]["status"] == "skipped"
    assert "pip install torchfm" in status["torchfm"]["reason"]
    assert status["fbgemm"]["status"] == "skipped"
    assert "pip install fbgemm-gpu-cpu" in status["fbgemm"]["reason"]
    assert status["torch-sparse"]["status"] == "ok" and status["reference"]["status"] == "ok"


def test_command_line(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(
        ["bench", "--preset", "tiny", "--cases", "fm_forward,fnn_score",
         "--backends", "reference,torch-sparse", "--json", str(out), "--plots", str(tmp_path)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "fm_forward/ipinyou-K3-R1e3-B64-zipf" in printed and "torch-sparse" in printed
    records = json.loads(out.read_text())["records"]
    assert {r["op"] for r in records} == {"fm_forward", "fnn_score"}
    assert {r["backend"] for r in records} == {"reference", "torch-sparse"}


def test_command_line_list_and_errors(capsys):
    assert main(["bench", "--quick", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "quick on cpu:" in listed and "cpu-kernels:" in listed
    assert "fm_train_step/criteo-K10-R1e6-B4096-zipf" in listed
    assert main(["bench", "--preset", "tiny", "--backends", "nonesuch"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_presets_build():
    for preset in PRESETS.values():
        for device in ("cpu", "cuda"):
            names = [c.name for c in preset.cases(device)]
            assert names and len(names) == len(set(names)), preset.name
    full_gpu = {c.shape.rows for c in PRESETS["full"].cases("cuda")}
    assert 100_000_000 in full_gpu and 100_000_000 not in {
        c.shape.rows for c in PRESETS["full"].cases("cpu")
    }
    datasets = {(c.shape.dataset, c.shape.fields) for c in PRESETS["full"].cases("cpu")}
    assert {("criteo", 39), ("avazu", 22), ("ipinyou", 16)} <= datasets
    kernels = PRESETS["cpu-kernels"]
    kernel_ops = {c.op for c in kernels.cases("cpu")}
    assert kernel_ops == {"fm_forward", "fm_train_step", "fnn_score", "fnn_train"}
    assert {"native", "fbgemm", "index_select", "mlp-only"} <= set(kernels.only)


def test_measure_stops_on_repeats_or_budget():
    calls = []
    step = lambda: calls.append(1)  # noqa: E731
    _, repeats = runner.measure(step, Timing(3, 0.0, 60.0, warmup=2), lambda: None)
    assert repeats == 3 and len(calls) == 5
    _, repeats = runner.measure(step, Timing(100, 60.0, 0.0, warmup=0), lambda: None)
    assert repeats == 1  # a spent budget still times one call


def test_measure_together_interleaves_and_isolates_failures():
    calls = []

    def failing():
        calls.append("b")
        if len([c for c in calls if c == "b"]) > 4:
            raise RuntimeError("broke mid-run")

    entries = [
        runner._Timed("a", lambda: calls.append("a")),
        runner._Timed("b", failing),
        runner._Timed("c", lambda: calls.append("c")),
    ]
    runner.TURN_SECONDS, turn = 0.0, runner.TURN_SECONDS  # one timed call a turn
    try:
        results = runner.measure_together(entries, Timing(4, 0.0, 60.0, warmup=1), lambda: None)
    finally:
        runner.TURN_SECONDS = turn
    assert results["a"][1] == 4 and results["c"][1] == 4
    assert isinstance(results["b"], RuntimeError)
    # after the warmups, a and c take turns: one call, then an untimed one and a timed one
    timed = [c for c in calls[3:] if c != "b"]
    assert timed == ["a", "c"] + ["a", "a", "c", "c"] * 3


def test_case_filter():
    cases = PRESETS["tiny"].cases("cpu")
    assert {c.op for c in runner.select_cases(cases, ["sparse_update"])} == {"sparse_update"}
    picked = runner.select_cases(cases, ["fm_train_step/*B128*"])
    assert [c.name for c in picked] == ["fm_train_step/ipinyou-K3-R1e3-B128-zipf"]
    with pytest.raises(ValueError, match="unknown rule"):
        Case("sparse_update", Shape(), rule="lion")


@pytest.mark.parametrize("ids", ["zipf", "uniform"])
def test_ids_stay_in_their_field(ids):
    shape = Shape("avazu", factors=4, rows=1003, batch=5000, ids=ids)
    (batch,) = draw_batches(shape, 1, np.random.default_rng(3))
    dims = shape.field_dims()
    offsets = np.cumsum(dims) - dims
    assert dims.sum() == 1003 and batch.shape == (5000, 22)
    local = batch - offsets
    assert (local >= 0).all() and (local < dims).all()
    counts = np.bincount(local[:, 0], minlength=dims[0])
    if ids == "zipf":  # one hot row per field, about a tenth of the draws; no pile-up at the end
        assert counts.max() > 0.05 * 5000 and counts[-1] < counts.max()
    else:
        assert counts.max() < 0.1 * 5000 and (counts > 0).all()


def test_case_data_cycles_batches():
    data = CaseData(Shape("ipinyou", rows=500, batch=8), pool=2, device="cpu")
    first, second, third = data.next(), data.next(), data.next()
    assert first is third and first is not second
    assert torch.equal(first.local_ids + first.offsets, first.ids)
    assert torch.equal(first.field_major, first.ids.t().flatten())
    assert 1 <= data.distinct_rows <= 8 * 16


def test_byte_model():
    # B = 2, F = 3, D = 4: n = 6 lookups, u = 5 distinct rows, row-wise Adagrad (1 state float).
    n, ids, rows, update = 6, 48, 96, 2 * 4 * 5 * 5
    assert op_bytes("fm_forward", 2, 3, 4, 5, "rowwise_adagrad") == ids + rows + 8
    assert op_bytes("fm_train_step", 2, 3, 4, 5, "rowwise_adagrad") == ids + rows + 16 + update
    assert op_bytes("fnn_fields_train", 2, 3, 4, 5, "sgd") == ids + rows + 2 * 96 + 2 * 4 * 4 * 5
    assert op_bytes("sparse_update", 2, 3, 4, 5, "adam") == ids + rows + 2 * 4 * 12 * 5
    assert op_bytes("index_select", 2, 3, 4, 5, "sgd") == ids + 2 * rows
    assert op_bytes("fm_train", 2, 3, 4, 5, "sgd") is None
    assert n * 8 == ids


@pytest.mark.slow
def test_compiled_backend():
    """torch.compile runs the forward ops; where it cannot (sparse gradients on torch 2.13) the
    case is skipped with the compiler's reason, never an error."""
    patterns = ["fm_forward/", "fm_train_step/ipinyou-K3-R1e3-B64", "sparse_update/*rowwise*"]
    result = runner.run(TINY, "cpu", ["reference", "compiled"], patterns, log=quiet)
    compiled = {r["op"]: r for r in by(result.records, backend="compiled")}
    assert compiled["fm_forward"]["status"] == "ok"
    for op in ("fm_train_step", "sparse_update"):
        if compiled[op]["status"] == "skipped":
            assert "torch.compile" in compiled[op]["reason"]
        else:
            assert compiled[op]["status"] == "ok"


@pytest.mark.slow
def test_pytest_benchmarks_run_the_same_cases():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--bench-preset", "tiny", "-q",
         "--benchmark-disable", "-p", "no:cacheprovider", "-k", "fm_ and not sparse"],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
