"""The benchmark suite's machinery on the tiny preset: records, JSON, plots, skipped peers, the
command line, the id generators, the byte model, the contenders' outputs against the reference
and the refusal to time the reference where the native backend was meant. No timing is
asserted."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fnn_fast
from fnn_fast.bench import report, runner
from fnn_fast.bench.cases import COMPILED, PRESETS, Case, Timing
from fnn_fast.bench.contenders import CONTENDER_NAMES, all_contenders
from fnn_fast.bench.shapes import CaseData, Shape, draw_batches
from fnn_fast.bench.traffic import op_bytes
from fnn_fast.cli import main
from fnn_fast.ops import cpu

TINY = PRESETS["tiny"]
OWN_BACKENDS = ("reference", *COMPILED, "native", "triton", "cuda")
PEERS = ("fbgemm", "fbgemm-infer-fp32", "fbgemm-infer-fp16", "torchfm", "torch-adagrad",
         "torch-sparseadam", "deepctr-deepfm", "deepctr-pnn")  # fmt: skip
# Without the native build, a run must leave the native backend out by name.
RUNNABLE = None if cpu.available() else [n for n in CONTENDER_NAMES if n != "native"]


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    result = runner.run(TINY, "cpu", RUNNABLE, command="fnn-fast bench --preset tiny", log=quiet)
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
        if c.supports(case) and (RUNNABLE is None or c.name in RUNNABLE)
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
    if RUNNABLE is None:  # compiling is left out of the preset unless named
        for name in COMPILED:
            for r in by(result.records, backend=name):
                assert r["status"] == "skipped" and "left out of this preset" in r["reason"]
    # Every op record's share of the gather bound; the bound's own random-read rate.
    bound = {r["case"] for r in by(result.records, backend="gather-bound", status="ok")}
    for r in by(result.records, level="op", status="ok"):
        assert (r["vs_bound"] is not None) == (r["case"] in bound)
        assert (r["read_gb_per_s"] is not None) == (r["backend"] == "gather-bound")
    if cpu.available():
        assert bound and all(
            r["vs_bound"] == 1.0 for r in by(result.records, backend="gather-bound")
        )


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


def test_model_training_cases_report_auc_after_the_same_steps(tiny_run):
    """Model training cases run on planted labels: every training contender takes all of the
    case's fresh batches, then scores the same held-out batches; fnn_fast's backends, the same
    model and steps, reach the same AUC."""
    result, _, _ = tiny_run
    for op in ("fm_train", "fnn_train"):
        records = by(result.records, op=op, status="ok")
        (case,) = [c for c in TINY.cases("cpu") if c.op == op]
        trained = [r for r in records if r["kind"] != "bound"]
        assert len(trained) >= 3
        for r in trained:
            assert r["steps"] == case.pool and 0 <= r["auc"] <= 1 and r["logloss"] > 0
            assert 0.5 < r["bayes_auc"] <= 1 and r["fresh"]
        auc = {r["backend"]: r["auc"] for r in trained}
        if "native" in auc:
            assert auc["native"] == pytest.approx(auc["reference"], abs=1e-3)
        for r in by(result.records, op=op, kind="bound"):
            assert r["auc"] is None
    for r in by(result.records, op="fm_score", status="ok"):
        assert r["auc"] is None


def test_json_schema(tiny_run):
    _, folder, _ = tiny_run
    data = json.loads((folder / "bench.json").read_text())
    assert data["schema"] == runner.SCHEMA and data["preset"] == "tiny"
    assert data["command"] == "fnn-fast bench --preset tiny" and data["date"]
    machine = data["machine"]
    for key in ("cpu", "cores", "gpu", "versions", "fnn_fast_backends", "fnn_fast_path"):
        assert key in machine
    package = Path(fnn_fast.__file__).resolve().parent
    recorded = Path(machine["fnn_fast_path"])
    assert not recorded.is_absolute()  # records name no machine's paths
    if package.is_relative_to(Path.cwd().resolve()):
        assert Path.cwd().resolve() / recorded == package
    else:  # an installed copy: its site-packages/fnn_fast tail
        assert recorded == Path(package.parent.name, package.name)
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
    for module in ("torchfm", "torchfm.model.fm", "torchfm.model.fnn", "fbgemm_gpu",
                   "deepctr_torch", "deepctr_torch.models"):  # fmt: skip
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    for module in [m for m in sys.modules if m.startswith(("fbgemm_gpu.", "deepctr_torch."))]:
        monkeypatch.setitem(sys.modules, module, None)
    result = runner.run(TINY, "cpu", ["reference", *PEERS], ["fnn_train/", "fnn_score/"],
                        log=quiet)  # fmt: skip
    status = {r["backend"]: r for r in result.records if r["op"] == "fnn_score"}
    assert set(status) == {"reference", *PEERS}
    install = {"torchfm": "pip install torchfm", "fbgemm": "pip install fbgemm-gpu-cpu",
               "fbgemm-infer-fp32": "pip install fbgemm-gpu-cpu",
               "deepctr-pnn": "pip install deepctr-torch"}  # fmt: skip
    for name, how in install.items():
        assert status[name]["status"] == "skipped" and how in status[name]["reason"]
    for name in ("reference", "torch-adagrad", "torch-sparseadam"):
        assert status[name]["status"] == "ok"
    trained = {r["backend"] for r in result.records if r["op"] == "fnn_train"}
    assert "fbgemm-infer-fp32" not in trained  # an inference table does not train


def test_command_line(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(
        ["bench", "--preset", "tiny", "--cases", "fm_forward,fnn_score",
         "--backends", "reference,torch-adagrad", "--json", str(out), "--plots", str(tmp_path)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "fm_forward/ipinyou-K3-R1e3-B64-zipf" in printed and "torch-adagrad" in printed
    records = json.loads(out.read_text())["records"]
    assert {r["op"] for r in records} == {"fm_forward", "fnn_score"}
    assert {r["backend"] for r in records} == {"reference", "torch-adagrad"}


def test_command_line_list_and_errors(capsys):
    assert main(["bench", "--quick", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "quick on cpu:" in listed and "cpu-kernels:" in listed
    assert "fm_train_step/criteo-K10-R1e6-B4096-zipf" in listed
    assert main(["bench", "--preset", "tiny", "--backends", "nonesuch"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def _without_native(monkeypatch):
    """fnn_fast as an uninstalled source tree sees itself: no native backend."""
    info = fnn_fast.backends()
    fake = dict(info, available=[n for n in info["available"] if n != "native"],
                active="reference", native_error="fnn_fast._C is not built")  # fmt: skip
    monkeypatch.setattr(fnn_fast, "backends", lambda: fake)


def test_refuses_to_time_the_reference_for_native(monkeypatch, capsys):
    """Where the native backend is meant (the preset has it on CPU) but not built, the run
    stops with what to do instead of timing the pure-PyTorch path."""
    from fnn_fast.bench.machine import NativeMissing, require_native

    _without_native(monkeypatch)
    with pytest.raises(NativeMissing, match="refusing to time the pure-PyTorch reference"):
        runner.run(TINY, "cpu", None, ["fm_forward/"], log=quiet)
    with pytest.raises(NativeMissing, match="python -P"):
        require_native()
    assert main(["bench", "--preset", "tiny", "--cases", "fm_forward/"]) == 2
    err = capsys.readouterr().err
    assert "has no native backend" in err and str(Path(fnn_fast.__file__).parent) in err
    # Naming the contenders without native runs the reference alone, as asked.
    result = runner.run(TINY, "cpu", ["reference"], ["fm_forward/"], log=quiet)
    assert {r["status"] for r in result.records} == {"ok"}


@pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")
def test_backend_must_be_active_while_timed(monkeypatch):
    """A backend whose selection leaves another one active is an error, not a record under
    the wrong name."""
    from fnn_fast.bench.contenders import FnnFastBackend

    real = fnn_fast.backends

    def reference_active():
        return dict(real(), active="reference")

    monkeypatch.setattr(fnn_fast, "backends", reference_active)
    with pytest.raises(RuntimeError, match="refusing to time another path"):
        with FnnFastBackend("native").active():
            pass


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
    assert {"native", "fbgemm", "gather-bound", "index_select", "mlp-only"} <= set(kernels.only)
    assert {"compiled-static", "fbgemm-infer-fp16", "torch-adagrad"} <= set(kernels.only)
    cold = [c for c in kernels.cases("cpu") if c.shape.rows >= 50_000_000]
    assert cold and all(c.fresh and c.pool >= 100 for c in cold)
    assert {c.shape.ids for c in cold} == {"zipf", "uniform"}
    for preset in PRESETS.values():  # model cases draw fresh batches
        assert all(c.fresh for c in preset.cases("cpu") if c.level == "model")


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


def test_measure_together_stops_when_fresh_batches_are_used():
    left = {"a": 5, "b": 3}

    def step(name):
        def call():
            assert left[name] > 0
            left[name] -= 1

        return call

    entries = [runner._Timed(n, step(n), left=lambda n=n: left[n]) for n in ("a", "b")]
    results = runner.measure_together(entries, Timing(100, 60.0, 60.0, warmup=2), lambda: None)
    assert left == {"a": 0, "b": 0}
    assert results["a"][1] >= 1 and results["b"][1] >= 1  # warmup keeps a call for timing


def test_fresh_case_data_views():
    """Fresh: each view walks the same batches from the first, once; warm views cycle."""
    data = CaseData(Shape("ipinyou", rows=500, batch=8), pool=3, device="cpu", fresh=True)
    a, b = data.view(), data.view()
    assert [a.next() for _ in range(3)] == data.batches and a.left() == 0
    assert b.left() == 3 and b.next() is data.batches[0]
    with pytest.raises(RuntimeError, match="fresh batches used"):
        a.next()
    warm = CaseData(Shape("ipinyou", rows=500, batch=8), pool=2, device="cpu").view()
    assert warm.left() is None and warm.next() is not warm.next() and warm.next()


def test_planted_labels():
    """Labels follow a planted FM over the ids: fixed per id, not constant, learnable."""
    from fnn_fast.bench.shapes import planted_probabilities
    from fnn_fast.metrics import roc_auc

    shape = Shape("criteo", rows=10_000, batch=4000)
    (ids,) = draw_batches(shape, 1, np.random.default_rng(0))
    p = planted_probabilities(ids)
    assert p.shape == (4000,) and ((0 < p) & (p < 1)).all() and p.std() > 0.05
    np.testing.assert_array_equal(p, planted_probabilities(ids.copy()))
    assert not np.allclose(p, planted_probabilities(ids, seed=1))
    data = CaseData(shape, pool=2, device="cpu", fresh=True)
    labels = torch.cat([b.labels for b in data.held_out]).numpy()
    assert 0.65 < roc_auc(labels, data.held_out_probabilities) < 1


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
    patterns = ["fm_forward/ipinyou-K3-R1e3-B64-zipf", "fm_train_step/ipinyou-K3-R1e3-B64-zipf",
                "sparse_update/*rowwise*"]  # fmt: skip
    result = runner.run(TINY, "cpu", ["reference", "compiled", "compiled-static"], patterns,
                        log=quiet)  # fmt: skip
    for name in ("compiled", "compiled-static"):
        compiled = {r["op"]: r for r in by(result.records, backend=name)}
        assert compiled["fm_forward"]["status"] == "ok"
        assert f"dynamic={name == 'compiled'}" in compiled["fm_forward"]["optimizer"]
        for op in ("fm_train_step", "sparse_update"):
            if compiled[op]["status"] == "skipped":
                assert "torch.compile" in compiled[op]["reason"]
            else:
                assert compiled[op]["status"] == "ok"


@pytest.mark.slow
def test_static_compile_matches_the_reference():
    """The static-shape compile of the reference computes the reference's FM logits and FNN
    input, on an odd shape."""
    from fnn_fast.bench.contenders import CompiledReference
    from fnn_fast.ops import reference

    generator = torch.Generator().manual_seed(2)
    table = torch.randn(ODD.rows, ODD.dim, generator=generator)
    w0 = torch.tensor(0.25)
    ids = CaseData(ODD, 1, "cpu").batches[0].ids
    contender = CompiledReference("compiled-static", dynamic=False)
    with contender.active(), torch.no_grad():
        for fn, args in (
            (reference.fm_forward, (table, w0, ids, None, False)),
            (reference.fnn_input, (table, w0, ids, None, None, None, False)),
        ):
            torch.testing.assert_close(contender._compile(fn)(*args), fn(*args))


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


# --- Each contender's outputs against the reference, on small odd shapes -------------------

ODD = Shape("avazu", factors=5, rows=777, batch=13)


def _spec(model_rule="rowwise_adagrad"):
    from fnn_fast.bench.contenders import ModelSpec

    dims = tuple(int(d) for d in ODD.field_dims())
    return ModelSpec(ODD.rows, dims, ODD.factors, model_rule, "cpu", hidden=(7, 3))


@pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")
def test_gather_bound_sums_each_samples_rows():
    from fnn_fast.bench.contenders.bounds import gather_sum

    generator = torch.Generator().manual_seed(5)
    for dim in (11, 17, 3):  # compiled-in widths and a generic one
        table = torch.randn(ODD.rows, dim, generator=generator)
        ids = torch.randint(0, ODD.rows, (ODD.batch, 22), generator=generator)
        out = gather_sum(table, ids, torch.empty(ODD.batch, dim))
        torch.testing.assert_close(out, table[ids].sum(1))
    ids[4, 7] = ODD.rows
    with pytest.raises(IndexError, match="at flat position 95"):
        gather_sum(table, ids, out)


@pytest.mark.parametrize("model", ["fm", "fnn"])
def test_torch_adagrad_peer_is_the_adagrad_rule(model):
    """The like-for-like peer (nn.Embedding(sparse=True) + torch.optim.Adagrad) computes the same
    model as fnn_fast from the same start and, under fnn_fast's element-wise adagrad rule, takes
    the same steps; SparseAdam starts the same."""
    from fnn_fast.bench.contenders import FnnFastBackend
    from fnn_fast.bench.contenders.peers import TorchSparse

    data = CaseData(ODD, 3, "cpu")
    with FnnFastBackend("reference").active():
        ours = FnnFastBackend("reference").build(model, _spec("adagrad"))
        peer = TorchSparse("adagrad").build(model, _spec("adagrad"))
        adam = TorchSparse("sparseadam").build(model, _spec("adagrad"))
        first = data.batches[0]
        torch.testing.assert_close(peer.score(first), ours.score(first))
        torch.testing.assert_close(adam.score(first), ours.score(first))
        for batch in data.batches:
            ours.train_step(batch)
            peer.train_step(batch)
        torch.testing.assert_close(peer.score(first), ours.score(first), rtol=1e-5, atol=1e-6)


def test_fnn_layers_are_the_fnn():
    """Peers' FNN head (w0 folded into the first layer, no concatenation) is FNN.forward."""
    from fnn_fast import FNN
    from fnn_fast.bench.contenders.base import FnnLayers

    fnn = FNN(ODD.rows, ODD.fields, ODD.factors, (7, 3), init_std=0.1)
    with torch.no_grad():
        fnn.w0.fill_(0.3)
    ids = CaseData(ODD, 1, "cpu").batches[0].ids
    with _reference():
        expected = fnn(ids)
    got = FnnLayers(fnn.hidden_layers, fnn.output)(fnn.table[ids], fnn.w0)
    torch.testing.assert_close(got, expected)


def _reference():
    from fnn_fast.bench.contenders import FnnFastBackend

    return FnnFastBackend("reference").active()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fbgemm_inference_scores_as_the_reference(precision):
    pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_inference")
    from fnn_fast.bench.contenders import FnnFastBackend
    from fnn_fast.bench.contenders.peers import FbgemmInference

    batch = CaseData(ODD, 1, "cpu").batches[0]
    tolerance = 1e-5 if precision == "fp32" else 2e-3
    for model in ("fm", "fnn"):
        with _reference():
            expected = FnnFastBackend("reference").build(model, _spec()).score(batch)
        got = FbgemmInference(precision).build(model, _spec()).score(batch)
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("variant", ["deepfm", "pnn"])
def test_deepctr_peers_train(variant):
    """DeepCTR-Torch's models (their own networks: no reference to match) give probabilities
    for the batch and move with a training step."""
    from fnn_fast.bench.contenders import DeepCTR

    contender = DeepCTR(variant)
    if contender.unavailable("cpu"):
        pytest.skip(contender.unavailable("cpu"))
    batch = CaseData(ODD, 1, "cpu").batches[0]
    model = contender.build("fnn", _spec())
    before = model.score(batch)
    assert before.shape == (ODD.batch,) and bool(((before > 0) & (before < 1)).all())
    model.train_step(batch)
    assert not torch.equal(model.score(batch), before)
