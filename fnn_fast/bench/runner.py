"""The runner: each contender on each case, timed the same way, one record per measurement.

A record is a plain dict (the JSON schema, see RECORD_FIELDS): ``status`` is ``ok``,
``skipped`` (with the ``reason``: not installed, wrong device, a case it cannot express, not
enough memory, left out of the preset) or ``error`` (the exception; the run goes on).
``median_s`` is the median step, ``seconds`` a quality run's training time, ``wall_s`` all the
time a record took (batches, setup, warmup and timed calls, or training and scoring). Op and
model cases time their contenders side by side (see :func:`measure_together`), each on its own
cursor over the same batches. ``vs_bound`` is an op's share of the gather bound's rate in the
same case; the gather bound's own record gives the random-read rate it reached
(``read_gb_per_s``). A model training case trains every contender on all of its fresh batches
(the timed steps among them, the rest untimed) and scores held-out batches: ``auc``,
``logloss`` and ``steps`` come from the same run as the speed.

A run refuses to start (:class:`~fnn_fast.bench.machine.NativeMissing`) when the native backend
is among its contenders on CPU but fnn_fast's native build is not importable: the run would time
the pure-PyTorch path where the native one was meant (an uninstalled source tree does this).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch

import torch

from fnn_fast.bench.cases import Case, Preset, Timing
from fnn_fast.bench.contenders import (
    CONTENDER_NAMES,
    Contender,
    ModelStep,
    SkipCase,
    all_contenders,
)
from fnn_fast.bench.machine import available_memory, machine_info, require_native, total_memory
from fnn_fast.bench.shapes import CaseData
from fnn_fast.bench.traffic import op_bytes

SCHEMA = "fnn-fast-bench/2"
RECORD_FIELDS = (
    "case", "level", "op", "dataset", "fields", "factors", "rows", "batch", "ids", "rule",
    "device", "backend", "kind", "optimizer", "status", "reason", "samples_per_s", "median_s",
    "repeats", "bytes", "gb_per_s", "speedup", "vs_bound", "read_gb_per_s", "fresh", "steps",
    "auc", "logloss", "bayes_auc", "epochs", "seconds", "wall_s",
)  # fmt: skip
MAX_REPEATS = 1000
TURN_SECONDS = 0.25  # of timed calls a contender makes in a row, side by side with others
MEMORY_HEADROOM = 0.8  # skip a contender whose tables would need more of the free memory
# ... after leaving this share of the machine's memory free for its other users (CPU)
MEMORY_RESERVE = 0.25


@dataclass
class BenchResult:
    preset: str
    device: str
    command: str
    started: str
    machine: dict
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def errors(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "error"]

    def to_json(self) -> dict:
        from fnn_fast.bench import traffic

        return {
            "schema": SCHEMA,
            "command": self.command,
            "preset": self.preset,
            "device": self.device,
            "date": self.started,
            "seconds": round(self.seconds, 1),
            "machine": self.machine,
            "byte_model": traffic.__doc__.strip(),
            "records": self.records,
        }


def measure(step: Callable[[], object], timing: Timing, sync: Callable[[], None]):
    """(median seconds per call, timed calls) of one step alone."""
    (result,) = measure_together([_Timed("step", step)], timing, sync).values()
    if isinstance(result, BaseException):
        raise result
    return result


@dataclass
class _Timed:
    name: str
    step: Callable[[], object]
    active: Callable[[], object] = nullcontext
    left: Callable[[], int | None] = lambda: None  # calls the step may still make (None: any)
    times: list[float] = field(default_factory=list)
    total: float = 0.0
    done: bool = False

    def timed_call(self, sync: Callable[[], None]) -> float:
        started = time.perf_counter()
        self.step()
        sync()
        return time.perf_counter() - started


def measure_together(entries: list[_Timed], timing: Timing, sync: Callable[[], None]) -> dict:
    """Time several contenders' steps side by side: warmup calls each, then turns of about
    TURN_SECONDS each, until each has met both minimums, would overrun its budget, or reached
    MAX_REPEATS. The contenders see the same state of the machine (its clock, its neighbours'
    load) instead of one after the other, so their ratios hold on a host whose speed drifts.
    A turn starts with one untimed call: the contender before it has filled the caches with its
    own tables, and a step is timed in the state its own previous step leaves.
    A step with a limited number of calls (fresh batches: ``left``) stops when they are used.
    Returns {name: (median seconds, timed calls)}, or {name: the exception} for a step that
    failed (the others go on)."""
    results: dict = {}

    def calls_left(entry: _Timed) -> float:
        left = entry.left()
        return float("inf") if left is None else left

    for entry in entries:
        try:
            with entry.active():
                for _ in range(timing.warmup):
                    if calls_left(entry) <= 1:
                        break  # keep a call for timing
                    if entry.timed_call(sync) > timing.max_time:
                        break  # a call slower than the whole budget: one warmup is enough
        except Exception as error:  # noqa: BLE001 - one failure must not end the others
            results[entry.name], entry.done = error, True
    settle = len(entries) > 1
    while not all(entry.done for entry in entries):
        for entry in entries:
            if entry.done:
                continue
            try:
                with entry.active():
                    if settle and entry.times and calls_left(entry) > 1:
                        entry.timed_call(sync)  # untimed: rebuild this contender's cache state
                    turn, calls = 0.0, 0
                    while not entry.done and (calls == 0 or turn < TURN_SECONDS):
                        if calls_left(entry) <= 0:
                            entry.done = True
                            break
                        calls += 1
                        elapsed = entry.timed_call(sync)
                        entry.times.append(elapsed)
                        entry.total += elapsed
                        turn += elapsed
                        met = len(entry.times) >= timing.min_repeats
                        entry.done = (
                            (met and entry.total >= timing.min_time)
                            or entry.total + elapsed > timing.max_time
                            or len(entry.times) >= MAX_REPEATS
                            or calls_left(entry) <= 0
                        )
            except Exception as error:  # noqa: BLE001
                results[entry.name], entry.done = error, True
    for entry in entries:
        if entry.name not in results:
            results[entry.name] = (statistics.median(entry.times), len(entry.times))
    return results


def select_cases(cases: Iterable[Case], patterns: list[str] | None) -> list[Case]:
    """Cases whose name contains a pattern (or matches it, with * or ?); all when None."""
    if not patterns:
        return list(cases)

    def matches(name: str, pattern: str) -> bool:
        return fnmatch(name, pattern) if any(c in pattern for c in "*?[") else pattern in name

    return [c for c in cases if any(matches(c.name, p) for p in patterns)]


def _base_record(case: Case, contender: Contender, device: str) -> dict:
    s = case.shape
    record = dict.fromkeys(RECORD_FIELDS)
    record.update(
        case=case.name, level=case.level, op=case.op, dataset=s.dataset, fields=s.fields,
        factors=s.factors, rows=s.rows, batch=s.batch, ids=s.ids, rule=case.rule, device=device,
        backend=contender.name, kind=contender.kind, optimizer=contender.optimizer(case),
    )  # fmt: skip
    if case.quality is not None:
        record.update(ids="planted", epochs=case.quality.epochs, rows=None)
    return record


def _rates(records: list[dict], backend: str) -> dict[str, float]:
    return {
        r["case"]: r["samples_per_s"]
        for r in records
        if r["backend"] == backend and r["status"] == "ok"
    }


def _add_speedups(records: list[dict]) -> None:
    """Each ok record's samples/s over the eager reference's in the same case, and an op's
    over the gather bound's."""
    reference, bound = _rates(records, "reference"), _rates(records, "gather-bound")
    for r in records:
        if r["status"] == "ok" and reference.get(r["case"]):
            r["speedup"] = r["samples_per_s"] / reference[r["case"]]
        if r["status"] == "ok" and r["level"] == "op" and bound.get(r["case"]):
            r["vs_bound"] = r["samples_per_s"] / bound[r["case"]]


def _progress_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['case']}  {r['backend']}: {r['status']}: {r['reason']}"
    auc = f", AUC {r['auc']:.4f} after {r['steps']} steps" if r["auc"] is not None else ""
    if r["level"] == "quality" and r["auc"] is not None:
        auc = f", AUC {r['auc']:.4f}"
    return f"{r['case']}  {r['backend']}: {r['samples_per_s']:,.0f} samples/s{auc}"


class Workspace:
    """The data a case runs on, kept while consecutive cases share it: the batches of a shape
    (op and model cases) or the planted splits (quality cases)."""

    def __init__(self, device: str):
        self.device = device
        self._key, self._data = None, None

    def data_for(self, case: Case):
        if case.level == "quality":
            key = ("planted", case.quality, case.shape.fields)
        else:
            key = (case.shape, case.pool, case.fresh)
        if key != self._key:
            self._key, self._data = None, None  # free the previous data first
            if case.level == "quality":
                from fnn_fast.bench.quality import planted_data

                self._data = planted_data(case.quality, case.shape.fields)
            else:
                self._data = CaseData(case.shape, case.pool, self.device, fresh=case.fresh)
            self._key = key
        return self._data


def skip_reason(
    contender: Contender, case: Case, preset: Preset, device: str, named: bool = False
) -> str | None:
    """Why this contender does not run this case here (None: it runs). ``named``: the user
    asked for it, so a preset's leaving it out does not apply."""
    left_out = None if named else preset.left_out.get(contender.name)
    reason = left_out or contender.unavailable(device) or contender.why_not(case)
    if reason is None and case.level != "quality":
        free = available_memory(device)
        needed = contender.memory_bytes(case)
        usable = None if free is None else free - MEMORY_RESERVE * (total_memory(device) or 0)
        if usable is not None and needed > MEMORY_HEADROOM * usable:
            reason = (
                f"needs about {needed / 2**30:.1f} GB, {free / 2**30:.1f} GB free (a quarter "
                "of the memory is left to the machine's other users)"
            )
    return reason


def bytes_moved(case: Case, contender: Contender, data: CaseData) -> int | None:
    """What the op must move per step (fnn_fast.bench.traffic); None above op level."""
    if case.level != "op":
        return None
    s = case.shape
    op = "index_select" if contender.name == "index_select" else case.op
    return op_bytes(op, s.batch, s.fields, s.dim, data.distinct_rows, case.rule)


def check_native(contenders: list[Contender], device: str) -> None:
    """Refuse a CPU run that means to time the native backend where it is not importable."""
    if device == "cpu" and any(c.name == "native" for c in contenders):
        require_native(
            "or leave the native backend out by naming the others (--backends reference,...)"
        )


def chosen_contenders(preset: Preset, backends: list[str] | None) -> list[Contender]:
    """Those named in backends (any the preset has, when None)."""
    if backends:
        unknown = sorted(set(backends) - set(CONTENDER_NAMES))
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; choose from {list(CONTENDER_NAMES)}")
        return [c for c in all_contenders() if c.name in backends]
    return [c for c in all_contenders() if preset.only is None or c.name in preset.only]


def device_sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def run(
    preset: Preset,
    device: str = "cpu",
    backends: list[str] | None = None,
    case_patterns: list[str] | None = None,
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the preset's cases (those matching case_patterns) with every contender that can do
    them (those named in backends, when given)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    contenders = chosen_contenders(preset, backends)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here")
    check_native(contenders, device)
    started = time.perf_counter()
    result = BenchResult(
        preset.name, device, command,
        datetime.now(timezone.utc).isoformat(timespec="seconds"), machine_info(device),
    )  # fmt: skip
    workspace = Workspace(device)
    for case in select_cases(preset.cases(device), case_patterns):
        runners = [c for c in contenders if c.supports(case)]
        if case.level == "quality":
            records = [_run_quality(c, case, preset, device, workspace, bool(backends), log)
                       for c in runners]  # fmt: skip
        else:
            records = _run_side_by_side(runners, case, preset, device, workspace,
                                        bool(backends), log)  # fmt: skip
        for record in records:
            result.records.append(record)
            log(_progress_line(record))
    _add_speedups(result.records)
    result.seconds = time.perf_counter() - started
    return result


def _failure(error: BaseException, log) -> dict:
    if isinstance(error, SkipCase):
        return {"status": "skipped", "reason": str(error)}
    log("".join(traceback.format_exception(error)).rstrip())
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return {"status": "error", "reason": f"{type(error).__name__}: {first}"}


def _run_side_by_side(contenders, case, preset, device, workspace, named, log) -> list[dict]:
    """Every contender's step for an op or model case, set up first, then timed together, each
    on its own view of the case's batches."""
    sync = device_sync(device)
    records, entries, steps = {}, [], {}
    # Set up fnn_fast's own backends and the bounds first: where memory runs short (cold
    # tables), the compiled variants and the peers are the ones skipped for it.
    order = sorted(contenders, key=lambda c: (c.name.startswith("compiled"), c.kind == "peer"))
    try:
        for contender in order:
            record = records[contender.name] = _base_record(case, contender, device)
            record["fresh"] = case.fresh
            reason = skip_reason(contender, case, preset, device, named=named)
            if reason is not None:
                record.update(status="skipped", reason=reason)
                continue
            started = time.perf_counter()
            data = workspace.data_for(case)
            try:
                data.prepare(contender.layouts)
                view = data.view()
                with contender.active():
                    step = contender.setup(case, view)
            except Exception as error:  # noqa: BLE001 - one failure must not end the run
                record.update(_failure(error, log))
                continue
            record["wall_s"] = time.perf_counter() - started
            entries.append(_Timed(contender.name, step, contender.active, view.left))
            steps[contender.name] = (step, view)
            step = None
        started = time.perf_counter()
        results = measure_together(entries, preset.timing, sync)
        shared = (time.perf_counter() - started) / max(len(entries), 1)
        data = workspace.data_for(case)
        for contender in contenders:
            result = results.get(contender.name)
            if result is None:
                continue
            record = records[contender.name]
            if isinstance(result, BaseException):
                record.update(_failure(result, log))
                continue
            median, repeats = result
            moved = bytes_moved(case, contender, data)
            record.update(
                status="ok", samples_per_s=case.shape.batch / median, median_s=median,
                repeats=repeats, bytes=moved,
                gb_per_s=None if moved is None else moved / median / 1e9,
                wall_s=record["wall_s"] + shared,
            )  # fmt: skip
            if contender.name == "gather-bound":
                record["read_gb_per_s"] = 64 * data.lines_per_batch / median / 1e9
            step, view = steps[contender.name]
            if case.fresh and case.level == "op":
                record["steps"] = view._next
            if isinstance(step, ModelStep) and step.train and contender.trains:
                started = time.perf_counter()
                try:
                    with contender.active():
                        record.update(finish_training(step, view, data))
                except Exception as error:  # noqa: BLE001
                    record.update(_failure(error, log))
                record["wall_s"] += time.perf_counter() - started
    finally:
        entries.clear()
        steps.clear()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return [records[c.name] for c in contenders]


def finish_training(step: ModelStep, view: CaseData, data: CaseData) -> dict:
    """Train on the rest of the view's batches (untimed), so that every contender has taken the
    same steps on the same batches, then score the held-out batches: AUC, log loss, and the
    planted truth's own AUC (the best any model can reach)."""
    import numpy as np

    from fnn_fast.metrics import log_loss, roc_auc

    while view.left():
        step()
    scores = [step.model.score(batch).float().cpu() for batch in data.held_out]
    probabilities = torch.cat(scores).double().numpy()
    labels = torch.cat([b.labels.cpu() for b in data.held_out]).numpy()
    if not np.isfinite(probabilities).all():
        raise FloatingPointError("the model's held-out scores are not finite: training diverged")
    return {
        "steps": view._next,
        "auc": roc_auc(labels, probabilities),
        "logloss": log_loss(labels, probabilities),
        "bayes_auc": roc_auc(labels, data.held_out_probabilities),
    }


def _run_quality(contender, case, preset, device, workspace, named, log) -> dict:
    record = _base_record(case, contender, device)
    reason = skip_reason(contender, case, preset, device, named=named)
    if reason is not None:
        record.update(status="skipped", reason=reason)
        return record
    started = time.perf_counter()
    data = workspace.data_for(case)
    try:
        with contender.active():
            from fnn_fast.bench.quality import train_and_test

            record.update(status="ok", **train_and_test(contender, case, data, device,
                                                        device_sync(device)))  # fmt: skip
    except Exception as error:  # noqa: BLE001 - one failure must not end the whole run
        record.update(_failure(error, log))
    finally:
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    record["wall_s"] = time.perf_counter() - started
    return record
