"""GPU benchmark at a Criteo-like shape: the fused kernels' achieved bandwidth against the card's
copy bandwidth, and the FM / FNN scoring and train steps for every backend.

Shape: F = 39 fields, K = 10 factors (rows of D = 11 floats), batch 65536, tables of 10M and
100M rows, Zipf(1.1) ids (a hot head shared by every batch; the tail wrapped over the table and
scattered by a random permutation). Backends: the eager reference, the reference under
torch.compile, Triton and CUDA (fnn_fast.set_backend); the Triton and CUDA kernels are also timed
directly through the kernel interface they share (fm_forward, fm_backward_update, fnn_fields,
fnn_fields_backward_update) for their GB/s.

Timing: CUDA events around `inner` back-to-back calls (so Python's launch overhead hides behind
the GPU's queue), warm-up first, median of the repetitions; batches rotate among 4 so that a
batch's tail rows are not still in L2 from the previous call. Each case stops repeating at its
share of the time budget; a case that cannot run is reported as skipped, with the reason.

    python benchmarks/gpu_bench.py --budget 300 --json gpu_bench.json
    python benchmarks/gpu_bench.py --dry-run        # tiny, on CPU: exercises every code path
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import fnn_fast
from fnn_fast import FM, FNN, SparseRowOptimizer
from fnn_fast.bench.machine import installed
from fnn_fast.ops import cpu, library
from fnn_fast.optim import RowUpdate

RULE = RowUpdate("rowwise_adagrad", lr=0.05)
BATCHES = 4  # distinct id batches, used in turn
KERNEL_CASES = ("fm_forward", "fm_forward+sums", "fnn_fields", "fm_backward_update",
                "fnn_fields_backward_update")  # fmt: skip
# Settings of the CUDA kernels' knobs (fnn_fast.ops.cuda) timed besides the defaults, on the
# first table size: lanes per row, and the run length beyond which a hot row is split.
TUNING = [("lanes=4", {"ROW_LANES": 4}), ("lanes=16", {"ROW_LANES": 16}),
          ("long_run=16", {"LONG_RUN": 16}), ("long_run=256", {"LONG_RUN": 256})]  # fmt: skip


@dataclass
class Result:
    rows: int
    case: str
    backend: str
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    ms: float | None = None
    samples_per_s: float | None = None
    bytes: int | None = None
    gb_per_s: float | None = None
    fraction_of_copy: float | None = None
    reps: int = 0
    extra: dict = field(default_factory=dict)


class Clock:
    """Wall time of `inner` calls of fn, in ms per call: CUDA events on a GPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, fn, inner: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / inner
        begin = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - begin) * 1e3 / inner


class Budget:
    """The run's time limit, shared out among the cases still to come."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def share(self, cases_left: int, cap: float) -> float:
        return max(0.0, min(cap, self.left() / max(cases_left, 1)))


def timed(clock: Clock, fn, seconds: float, inner: int, warmup: int = 2, reps: int = 15):
    """(median ms per call, repetitions) within about `seconds` after warm-up."""
    for _ in range(warmup):
        fn()
    clock.sync()
    times = []
    stop = time.monotonic() + seconds
    while len(times) < reps and (not times or time.monotonic() < stop):
        times.append(clock.measure(fn, inner))
    return statistics.median(times), len(times)


# --- Inputs ------------------------------------------------------------------------------------


def zipf_batches(rows: int, batch: int, fields: int, device: str, seed: int = 0):
    """BATCHES id tensors [batch, fields] with Zipf(1.1) popularity: ranks above the table
    wrap around it (a uniform cold tail, rather than one row collecting them all), and a random
    permutation spreads the hot ranks over the table."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    permutation = torch.randperm(rows, device=device, generator=generator)
    batches = []
    for _ in range(BATCHES):
        ranks = torch.from_numpy((rng.zipf(1.1, size=(batch, fields)) - 1) % rows)
        batches.append(permutation[ranks.to(device)])
    del permutation
    return batches


def copy_bandwidth(clock: Clock, device: str, nbytes: int) -> dict:
    """Device-to-device copy, counting bytes read and written (what the kernels' counts use)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms, reps = timed(clock, lambda: dst.copy_(src), seconds=5.0, inner=5, warmup=3, reps=10)
    return {"bytes": 2 * nbytes, "ms": ms, "gb_per_s": 2 * nbytes / ms / 1e6, "reps": reps}


# --- Byte models: what each fused kernel must move --------------------------------------------
# n = batch * fields lookups, U = unique rows in the batch, D = 1 + K floats a row, K factors.


def fm_forward_bytes(batch, fields, dim, with_sums):
    # Reads n ids (8 B) and n rows of D floats; writes B logits (and B x K sums when training).
    n = batch * fields
    return 8 * n + 4 * n * dim + 4 * batch + (4 * batch * (dim - 1) if with_sums else 0)


def fnn_fields_bytes(batch, fields, dim):
    # Reads n ids and n rows; writes z, B x F x D floats.
    n = batch * fields
    return 8 * n + 4 * n * dim + 4 * n * dim


def sort_bytes(n, unique, rows):
    # Grouping by row, as csrc/cuda/backward.cu does it: 4-byte keys + 4-byte positions written
    # (8n); cub's radix sort reads the keys once for its histograms (4n), then per 8-bit digit
    # pass reads and writes keys and positions (16n); the run-start select reads the sorted keys
    # and the indices (8n) and writes U starts; the update kernels read the U starts, the n
    # sorted positions and the U run keys.
    passes = math.ceil(max(1, (rows - 1).bit_length()) / 8)
    return 8 * n + 4 * n + 16 * n * passes + 8 * n + 4 * unique + 4 * unique + 4 * n + 4 * unique


def update_bytes(n, unique, rows, dim, upstream, state_per_row):
    # Reads the n ids and the upstream gradient; reads and writes each unique row and its
    # optimizer state; plus the sort traffic.
    return 8 * n + upstream + 2 * unique * (4 * dim + state_per_row) + sort_bytes(n, unique, rows)


ROWWISE_STATE_BYTES = 4  # one float a row


# --- Kernel modules (the GPU kernel interface) -------------------------------------------------


class NativeCpuKernels:
    """The native CPU ops behind the GPU kernel interface: lets --dry-run exercise the
    kernel-level timing and byte accounting on a machine without a GPU."""

    ROW_LANES, LONG_RUN = 0, 64  # the CUDA module's knobs, here without effect

    def available(self):
        return cpu.available()

    def fm_forward(self, table, ids, values, sums):
        if sums is None:
            return library.fm_forward(table, ids, values)
        state = torch.empty(0)
        logits, got = library.fm_forward_train(
            table, ids, values, state, state, torch.zeros((), dtype=torch.int64),
            RULE.hparams(), 0,
        )  # fmt: skip
        sums.copy_(got)
        return logits

    def fm_backward_update(self, table, ids, values, sums, grad_logits, s1, s2, hp, rule, step):
        library.fm_backward_update(
            table, ids, values, sums, grad_logits, s1, s2,
            torch.tensor(step - 1, dtype=torch.int64), torch.tensor(hp, dtype=torch.float64), rule,
        )  # fmt: skip

    def fnn_fields(self, table, ids, values, slot_fields, num_fields):
        return library.fnn_fields(table, ids, values, slot_fields, num_fields)

    def fnn_fields_backward_update(
        self, table, ids, values, slot_fields, num_fields, grad_z, s1, s2, hp, rule, step
    ):
        library.fnn_fields_backward_update(
            table, ids, values, slot_fields, num_fields, grad_z, s1, s2,
            torch.tensor(step - 1, dtype=torch.int64), torch.tensor(hp, dtype=torch.float64), rule,
        )  # fmt: skip


def kernel_modules(device: str) -> dict:
    """name -> module or the reason it cannot run."""
    if not device.startswith("cuda"):
        return {"native-cpu": NativeCpuKernels() if cpu.available() else cpu.IMPORT_ERROR}
    found = {}
    for name in ("cuda", "triton"):
        try:
            module = __import__(f"fnn_fast.ops.{name}", fromlist=["available"])
        except Exception as error:  # noqa: BLE001 - a missing or broken module is a skip
            found[name] = f"cannot import fnn_fast.ops.{name}: {error}"
            continue
        if module.available():
            found[name] = module
        else:
            found[name] = str(getattr(module, "UNAVAILABLE_REASON", "unavailable"))
    return found


# --- The benchmark -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.clock = Clock(self.device)
        self.budget = Budget(args.budget)
        self.results: list[Result] = []
        self.dim = args.factors + 1

    def log(self, result: Result):
        self.results.append(result)
        if result.status == "ok":
            line = f"{result.ms:9.3f} ms  {result.samples_per_s / 1e6:8.2f} M samples/s"
            if result.gb_per_s is not None:
                line += f"  {result.gb_per_s:8.1f} GB/s ({100 * result.fraction_of_copy:.0f} %)"
        else:
            line = f"{result.status}: {result.reason}"
        print(f"[{self.budget.left():5.0f}s left] rows={result.rows:<11,} {result.case:<26} "
              f"{result.backend:<10} {line}", flush=True)  # fmt: skip

    def run_case(self, rows, case, backend, fn, cases_left, inner, nbytes=None, extra=None):
        result = Result(rows, case, backend, extra=extra or {})
        seconds = self.budget.share(cases_left, cap=self.args.case_seconds)
        if seconds < 0.2:
            result.status, result.reason = "skipped", "out of time"
            return self.log(result)
        try:
            ms, reps = timed(self.clock, fn, seconds, inner)
        except Exception as error:  # noqa: BLE001 - one broken case must not end the run
            result.status, result.reason = "failed", f"{type(error).__name__}: {error}"[:300]
            traceback.print_exc()
            return self.log(result)
        result.ms, result.reps = ms, reps
        result.samples_per_s = self.args.batch / (ms / 1e3)
        if nbytes is not None:
            result.bytes = int(nbytes)
            result.gb_per_s = nbytes / (ms / 1e3) / 1e9
            result.fraction_of_copy = result.gb_per_s / self.copy["gb_per_s"]
        return self.log(result)

    def skip(self, rows, case, backend, reason):
        self.log(Result(rows, case, backend, status="skipped", reason=str(reason)[:300]))

    # -- kernels, through the shared interface --

    def kernel_cases(self, rows, batches, unique):
        """The five fused kernels of each kernel module, on one table of `rows` rows; for the
        first table size also under each TUNING setting of the modules that have the knobs."""
        a, dim = self.args, self.dim
        table = torch.randn(rows, dim, device=self.device) * 0.01
        for name, module in kernel_modules(self.device).items():
            if isinstance(module, str):
                for case in KERNEL_CASES:
                    self.skip(rows, "kernel " + case, name, module)
                continue
            self.time_kernels(rows, batches, unique, table, name, module)
            if rows != a.rows[0] or not all(hasattr(module, k) for k in ("ROW_LANES", "LONG_RUN")):
                continue
            for label, settings in TUNING:
                saved = {key: getattr(module, key) for key in settings}
                try:
                    for key, value in settings.items():
                        setattr(module, key, value)
                    self.time_kernels(rows, batches, unique, table, f"{name}[{label}]", module)
                finally:
                    for key, value in saved.items():
                        setattr(module, key, value)
        self.cases_left -= len(KERNEL_CASES)

    def time_kernels(self, rows, batches, unique, table, name, module):
        a, dim = self.args, self.dim
        n = a.batch * a.fields
        state1, state2 = RULE.new_state(table)
        hparams, code = tuple(RULE.hparams().tolist()), 2  # rowwise_adagrad
        grad_logits = torch.randn(a.batch, device=self.device) * 1e-3
        grad_z = torch.randn(a.batch, a.fields * dim, device=self.device) * 1e-3
        sums = torch.empty(a.batch, dim - 1, device=self.device)
        # Each batch's sums, for the update to read (from its own forward, as in training).
        batch_sums = [torch.empty_like(sums) for _ in batches]
        for b, s in zip(batches, batch_sums, strict=True):
            module.fm_forward(table, b, None, s)
        turn = [0]

        def ids():
            turn[0] += 1
            return batches[turn[0] % BATCHES]

        def fm_update():
            turn[0] += 1
            i = turn[0] % BATCHES
            module.fm_backward_update(table, batches[i], None, batch_sums[i], grad_logits,
                                      state1, state2, hparams, code, turn[0])  # fmt: skip

        def fnn_update():
            turn[0] += 1
            module.fnn_fields_backward_update(
                table, batches[turn[0] % BATCHES], None, None, a.fields, grad_z, state1, state2,
                hparams, code, turn[0],
            )  # fmt: skip

        fm_upstream = 4 * a.batch + 4 * a.batch * (dim - 1)
        fnn_upstream = 4 * a.batch * a.fields * dim
        cases = {
            "fm_forward": (lambda: module.fm_forward(table, ids(), None, None),
                           fm_forward_bytes(a.batch, a.fields, dim, with_sums=False)),
            "fm_forward+sums": (lambda: module.fm_forward(table, ids(), None, sums),
                                fm_forward_bytes(a.batch, a.fields, dim, with_sums=True)),
            "fnn_fields": (lambda: module.fnn_fields(table, ids(), None, None, a.fields),
                           fnn_fields_bytes(a.batch, a.fields, dim)),
            "fm_backward_update": (fm_update, update_bytes(n, unique, rows, dim, fm_upstream,
                                                           ROWWISE_STATE_BYTES)),
            "fnn_fields_backward_update": (fnn_update, update_bytes(
                n, unique, rows, dim, fnn_upstream, ROWWISE_STATE_BYTES)),
        }  # fmt: skip
        for i, case in enumerate(KERNEL_CASES):
            fn, nbytes = cases[case]
            self.run_case(rows, "kernel " + case, name, fn, self.cases_left - i, inner=10,
                          nbytes=nbytes, extra={"unique_rows": unique})  # fmt: skip

    def check_cases(self, rows, batches, unique):
        """At this scale, hot rows included: each kernel module's FM forward and one fused
        update step against the reference (max abs difference, recorded, not asserted)."""
        a, dim = self.args, self.dim
        ids = batches[0]
        torch.manual_seed(1)
        table = torch.randn(rows, dim, device=self.device) * 0.1
        grad = torch.randn(a.batch, device=self.device) * 1e-2
        w0 = torch.zeros((), device=self.device)
        expected_logits = fnn_fast.ops.reference.fm_forward(table, w0, ids)
        ref_table = table.clone().requires_grad_()
        optimizer = SparseRowOptimizer([ref_table], "rowwise_adagrad", lr=RULE.lr)
        (fnn_fast.ops.reference.fm_forward(ref_table, w0, ids) * grad).sum().backward()
        optimizer.step()
        expected_state = optimizer.state[ref_table]["sum"]
        for name, module in kernel_modules(self.device).items():
            if isinstance(module, str):
                self.skip(rows, "check fm vs reference", name, module)
                continue
            result = Result(rows, "check fm vs reference", name)
            try:
                got = table.clone()
                state1, state2 = RULE.new_state(got)
                sums = torch.empty(a.batch, dim - 1, device=self.device)
                logits = module.fm_forward(got, ids, None, sums)
                module.fm_backward_update(got, ids, None, sums, grad, state1, state2,
                                          tuple(RULE.hparams().tolist()), 2, 1)  # fmt: skip
                self.clock.sync()
                scale = expected_logits.abs().max().item()
                result.extra = {
                    "logits_max_abs_error": (logits - expected_logits).abs().max().item(),
                    "logits_max_abs": scale,
                    "table_max_abs_error": (got - ref_table.detach()).abs().max().item(),
                    "state_max_abs_error": (state1 - expected_state).abs().max().item(),
                    "rows_updated": unique,
                }
                result.status = "ok"
                result.reason = ", ".join(f"{k}={v:.3g}" for k, v in result.extra.items())
                del got, state1, state2
            except Exception as error:  # noqa: BLE001
                result.status, result.reason = "failed", f"{type(error).__name__}: {error}"[:300]
                traceback.print_exc()
            self.results.append(result)
            print(f"[{self.budget.left():5.0f}s left] rows={rows:<11,} check {name}: "
                  f"{result.status} {result.reason}", flush=True)  # fmt: skip
        del table, ref_table, optimizer, expected_state

    # -- models, through the backends --

    def model_cases(self, rows, batches):
        """Every case on the fused backends and the eager reference first, then the reference
        under torch.compile (each compile takes tens of seconds: the first to go when time
        runs short), FNN train step first: it is the one with a target."""
        a = self.args
        labels = [torch.randint(0, 2, (a.batch,), device=self.device).float() for _ in batches]
        cases = [("fnn train step", "fnn", True), ("fm train step", "fm", True),
                 ("fnn scoring", "fnn", False), ("fm scoring", "fm", False)]  # fmt: skip
        plan = [(case, backend, False) for case in cases for backend in [*a.backends, "reference"]]
        plan += [(case, "reference", True) for case in cases]
        for (case, kind, train), backend, compiled in plan:
            self.model_case(rows, case, kind, train, backend, compiled, batches, labels)
            self.cases_left -= 1

    def model_case(self, rows, case, kind, train, backend, compiled, batches, labels):
        a = self.args
        name = "compiled" if compiled else backend
        selected = "reference" if compiled else backend
        if compiled and self.budget.left() < a.compile_seconds + 10:
            return self.skip(rows, case, name, "not enough time left to compile")
        try:
            fnn_fast.set_backend(selected)
        except (ValueError, RuntimeError) as error:
            return self.skip(rows, case, name, error)
        try:
            model, step, fused = self.build_model(kind, rows, train, selected, compiled, batches,
                                                  labels)  # fmt: skip
            turn = [0]

            def run():
                turn[0] += 1
                step(turn[0] % BATCHES)

            begin = time.monotonic()
            run()  # the first call compiles, under torch.compile
            self.clock.sync()
            extra = {"first_call_s": round(time.monotonic() - begin, 2)}
            if train:
                extra["fused_update"] = fused and model.table.grad is None
            self.run_case(rows, case, name, run, self.cases_left, inner=3, extra=extra)
        except Exception as error:  # noqa: BLE001 - e.g. torch.compile cannot trace a path
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            self.log(Result(rows, case, name, status="skipped" if compiled else "failed",
                            reason=reason[:300]))  # fmt: skip
            if not compiled:
                traceback.print_exc()
        finally:
            fnn_fast.set_backend("auto")
            torch._dynamo.reset()

    def build_model(self, kind, rows, train, backend, compiled, batches, labels):
        a = self.args
        torch.manual_seed(0)
        with torch.device(self.device):  # the table is made where it lives: no 4 GB host copy
            if kind == "fm":
                model = FM(rows, a.factors, init_std=0.01)
            else:
                model = FNN(rows, a.fields, a.factors, hidden=(200, 300, 100))
        fused = train and backend not in ("reference",)
        if fused:
            model.fuse_update(RULE)

        if not train:
            model.eval()
            forward = torch.compile(model) if compiled else model

            def score(i):
                with torch.inference_mode():
                    forward(batches[i])

            return model, score, False

        if kind == "fm":
            optimizers = [SparseRowOptimizer(model.parameters(), RULE.kind, lr=RULE.lr)]
        else:
            optimizers = [
                SparseRowOptimizer([model.table, model.w0], RULE.kind, lr=RULE.lr),
                torch.optim.Adam([p for g in model.layer_parameters() for p in g], lr=1e-3),
            ]

        def loss_of(ids, y):
            return F.binary_cross_entropy_with_logits(model(ids), y)

        loss = torch.compile(loss_of) if compiled else loss_of

        def train_step(i):
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss(batches[i], labels[i]).backward()
            for optimizer in optimizers:
                optimizer.step()

        return model, train_step, fused

    def run(self):
        a = self.args
        env = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if self.clock.cuda else platform.machine(),
            "backends": fnn_fast.backends(),
            "fnn_fast": installed()["path"],
            "args": vars(a),
        }
        print(json.dumps(env, default=str), flush=True)
        self.copy = copy_bandwidth(self.clock, self.device, a.copy_bytes)
        print(f"copy bandwidth: {self.copy['gb_per_s']:.0f} GB/s (read + write)", flush=True)
        per_table = 5 + 1 + 4 * (2 + len(a.backends))
        self.cases_left = per_table * len(a.rows)
        for rows in a.rows:
            batches = zipf_batches(rows, a.batch, a.fields, self.device)
            unique = int(statistics.mean(torch.unique(b).numel() for b in batches))
            print(f"rows={rows:,}: {unique:,} unique rows a batch on average", flush=True)
            self.kernel_cases(rows, batches, unique)
            if rows == a.rows[0]:
                self.check_cases(rows, batches, unique)
            self.cases_left -= 1
            self.model_cases(rows, batches)
            del batches
            if self.clock.cuda:
                torch.cuda.empty_cache()
        return env

    def report(self, env):
        """Notes first, then one short table: a row per case and table size, a column per
        backend; kernels in GB/s and % of the copy bandwidth, steps in M samples/s."""
        a = self.args
        ok = {(r.rows, r.case, r.backend): r for r in self.results if r.status == "ok" and r.ms}
        lines = [
            f"\n### fnn_fast GPU benchmark ({env['device']}, torch {env['torch']}, batch "
            f"{a.batch}, F={a.fields}, K={a.factors})",
            f"copy bandwidth {self.copy['gb_per_s']:.0f} GB/s (read + write). {a.note}",
        ]
        if a.json:
            lines.append(f"All results: {a.json}")
        for r in self.results:
            if r.case.startswith("check") and r.status == "ok":
                lines.append(f"- {r.case} @ {r.rows:.0e}, {r.backend}: {r.reason}")
        for r in self.results:
            if r.status != "ok":
                lines.append(f"- not measured: {r.case} / {r.backend} @ {r.rows:.0e}: "
                             f"{r.status}, {r.reason[:100]}")  # fmt: skip
        for rows in a.rows:
            lines += self.targets(rows, ok)
        lines += self.tuning(ok)
        backends = [b for b in ["reference", "compiled", *a.backends, *self.kernel_names()]
                    if any(key[2] == b for key in ok)]  # fmt: skip
        backends = list(dict.fromkeys(backends))
        lines += ["", "| rows | case | " + " | ".join(backends) + " |",
                  "|---|---|" + "---:|" * len(backends)]  # fmt: skip
        cases = list(dict.fromkeys((rows, case) for rows, case, _ in ok))
        for rows, case in cases:
            cells = []
            for backend in backends:
                r = ok.get((rows, case, backend))
                if r is None or r.ms is None:
                    cells.append("")
                elif r.gb_per_s is not None:
                    cells.append(f"{r.gb_per_s:.0f} GB/s {100 * r.fraction_of_copy:.0f}%")
                else:
                    cells.append(f"{r.samples_per_s / 1e6:.2f} M/s")
            lines.append(f"| {rows:.0e} | {case} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def kernel_names(self):
        """Kernel modules timed with their default settings."""
        return sorted(
            {
                r.backend
                for r in self.results
                if r.case.startswith("kernel ") and "[" not in r.backend
            }
        )

    def tuning(self, ok):
        """For the first table size, one line per TUNING setting beside the default: each
        kernel's % of the copy bandwidth."""
        rows = self.args.rows[0]
        variants = sorted({backend for _, _, backend in ok if "[" in backend})
        lines = []
        for name in self.kernel_names():
            mine = [v for v in variants if v.startswith(name + "[")]
            for backend in [name, *mine] if mine else []:
                cells = [
                    f"{case} {100 * ok[(rows, 'kernel ' + case, backend)].fraction_of_copy:.0f}%"
                    for case in KERNEL_CASES
                    if (rows, "kernel " + case, backend) in ok
                ]
                lines.append(f"- tuning @ {rows:.0e}, {backend}: " + ", ".join(cells))
        return lines

    def targets(self, rows, ok):
        """The acceptance figures: fused forward >= 70 % and fused backward + update >= 40 % of
        the copy bandwidth; FNN train step >= 2x the reference under torch.compile."""
        lines = []
        for name in self.kernel_names():
            for case, target in (("kernel fm_forward", 0.70), ("kernel fm_backward_update", 0.40)):
                r = ok.get((rows, case, name))
                if r is not None:
                    verdict = "meets" if r.fraction_of_copy >= target else "BELOW"
                    lines.append(f"- {rows:.0e} rows, {name} {case[7:]}: "
                                 f"{100 * r.fraction_of_copy:.0f} % of copy bandwidth, {verdict} "
                                 f"the {100 * target:.0f} % target")  # fmt: skip
        for case in ("fnn train step", "fm train step", "fnn scoring", "fm scoring"):
            base = ok.get((rows, case, "compiled")) or ok.get((rows, case, "reference"))
            if base is None:
                continue
            for backend in self.args.backends:
                r = ok.get((rows, case, backend))
                if r is None:
                    continue
                baseline = "compiled" if base.backend == "compiled" else "eager"
                speedup = base.ms / r.ms
                line = (
                    f"- {rows:.0e} rows, {case}: {backend} {speedup:.2f}x the {baseline} reference"
                )
                if case == "fnn train step" and baseline == "compiled":
                    line += " (target >= 2x)"
                lines.append(line)
        return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--rows", type=lambda s: [int(float(x)) for x in s.split(",")],
                   default=[10_000_000, 100_000_000])  # fmt: skip
    p.add_argument("--batch", type=int, default=65536)
    p.add_argument("--fields", type=int, default=39)
    p.add_argument("--factors", type=int, default=10)
    p.add_argument(
        "--backends",
        type=lambda s: s.split(","),
        default=["triton", "cuda"],
        help="fused backends to time besides the reference (set_backend names)",
    )
    p.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run")
    p.add_argument("--case-seconds", type=float, default=6.0, help="timing cap per case")
    p.add_argument("--compile-seconds", type=float, default=60.0,
                   help="time a torch.compile case needs left to start")  # fmt: skip
    p.add_argument("--copy-bytes", type=int, default=2 << 30)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--note", default="", help="a line for the report (e.g. the tests' outcome)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes on CPU, reference + native: checks the code paths")  # fmt: skip
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.rows, args.batch = "cpu", [2000, 20000], 512
        args.backends, args.copy_bytes, args.case_seconds = ["native"], 64 << 20, 1.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    bench = Bench(args)
    env = bench.run()
    table = bench.report(env)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"environment": env, "copy": bench.copy,
                       "results": [asdict(r) for r in bench.results]}, out, indent=1,
                      default=str)  # fmt: skip
    print(table, flush=True)
    failed = [r for r in bench.results if r.status == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
