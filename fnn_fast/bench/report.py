"""What a run shows: the terminal table, the JSON file and the PNG plots."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from fnn_fast.bench.machine import describe
from fnn_fast.bench.runner import BenchResult
from fnn_fast.bench.shapes import format_count


def _rate(x: float) -> str:
    for scale, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _seconds(x: float) -> str:
    return f"{x:.3g} s" if x >= 1 else f"{x * 1e3:.3g} ms"


def _cells(r: dict) -> list[str]:
    if r["status"] != "ok":
        return [r["backend"], "", "", "", "", "", "", f"{r['status']}: {r['reason']}"]
    speedup = f"{r['speedup']:.2f}x" if r["speedup"] is not None else ""
    bound = f"{r['vs_bound']:.0%}" if r["vs_bound"] is not None else ""
    gbs = f"{r['gb_per_s']:.2f}" if r["gb_per_s"] is not None else ""
    auc = f"{r['auc']:.4f}" if r["auc"] is not None else ""
    trains = r["op"].endswith(("_train", "_train_step")) or r["op"] == "sparse_update"
    settings = r["optimizer"] or ""
    # the update rule is noise on a forward or scoring case; a peer's or bound's settings are not
    shown = trains or r["level"] == "quality" or r["kind"] == "bound" or "lr " not in settings
    notes = [settings if shown else ""]
    if r["level"] == "quality":
        time_cell = _seconds(r["seconds"])
        notes.insert(0, f"logloss {r['logloss']:.4f}")
    else:
        time_cell = _seconds(r["median_s"])
        if r["auc"] is not None:
            notes.insert(0, f"after {r['steps']} steps")
        if r["read_gb_per_s"] is not None:
            notes.insert(0, f"random reads {r['read_gb_per_s']:.2f} GB/s (64-byte lines)")
    note = "; ".join(n for n in notes if n)
    return [r["backend"], _rate(r["samples_per_s"]), speedup, bound, gbs, time_cell, auc, note]


HEADER = ["backend", "samples/s", "vs ref", "vs bound", "GB/s", "time", "AUC", ""]
WIDTHS = [19, 10, 8, 9, 7, 11, 7, 0]


def _row(cells: list[str]) -> str:
    out = f"  {cells[0]:<{WIDTHS[0] - 2}}"
    for cell, width in zip(cells[1:-1], WIDTHS[1:-1], strict=True):
        out += f"{cell:>{width}}"
    return (out + "  " + cells[-1]).rstrip()


def format_table(result: BenchResult) -> str:
    """Per case: one line per contender with samples/s, speed-up against the eager reference,
    GB/s from the byte model, median time per step (total training time for quality), AUC."""
    lines = [
        f"fnn-fast bench: preset {result.preset}, device {result.device}, {result.started}",
        f"machine: {describe(result.machine)}",
        "",
        _row(HEADER),
    ]
    # A contender skipped everywhere for one reason is named once, not on every case.
    reasons: dict[str, set] = defaultdict(set)
    for r in result.records:
        reasons[r["backend"]].add(r["reason"] if r["status"] == "skipped" else None)
    not_run = {b: next(iter(rs)) for b, rs in reasons.items() if len(rs) == 1 and None not in rs}
    by_case: dict[str, list[dict]] = defaultdict(list)
    for r in result.records:
        if r["backend"] not in not_run:
            by_case[r["case"]].append(r)
    for case, records in by_case.items():
        lines.append(case)
        lines += [_row(_cells(r)) for r in records]
        bayes = next((r["bayes_auc"] for r in records if r["bayes_auc"] is not None), None)
        if bayes is not None:
            lines.append(_row(["(Bayes-optimal)", "", "", "", "", "", f"{bayes:.4f}", ""]))
    skipped = sum(r["status"] == "skipped" for r in result.records)
    errors = sum(r["status"] == "error" for r in result.records)
    if not_run:
        lines += ["", "not run:"] + [f"  {b}: {reason}" for b, reason in not_run.items()]
    lines += [
        "",
        f"{len(result.records)} records ({skipped} skipped, {errors} errors) in "
        f"{result.seconds:.0f} s. GB/s: bytes the op must move (fnn_fast/bench/traffic.py) per "
        "second; vs bound: share of the gather bound's samples/s (a C++ prefetching read of the "
        "batch's rows); time: median per step (quality: total training time); AUC: on held-out "
        "batches of the planted model after the steps named (model cases, every contender the "
        "same steps) or after the epochs (quality cases). Cases named -fresh, and model cases, "
        "draw a new batch for every call.",
    ]
    if result.command:
        lines.append(f"reproduce: {result.command}")
    return "\n".join(lines)


def write_json(path: Path, result: BenchResult) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=1) + "\n")


def _sweeps(records: list[dict], axis: str) -> dict[tuple, list[dict]]:
    """Ok op and model records grouped by everything but ``axis`` ('batch' or 'rows'), where
    the group covers at least two values of it."""
    keys = ("op", "rule", "dataset", "factors", "ids", "rows", "batch", "device")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok" and r["level"] in ("op", "model"):
            groups[tuple(r[k] for k in keys if k != axis)].append(r)
    return {k: v for k, v in groups.items() if len({r[axis] for r in v}) >= 2}


def write_plots(directory: Path, result: BenchResult) -> list[Path]:
    """One PNG per sweep: samples/s against batch size, or against table size, one line per
    backend or peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for axis, label in (("batch", "batch size"), ("rows", "table rows")):
        for group in _sweeps(result.records, axis).values():
            first = group[0]
            fixed = "batch" if axis == "rows" else "rows"
            figure, ax = plt.subplots(figsize=(6.4, 4.2))
            lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for r in group:
                lines[r["backend"]].append((r[axis], r["samples_per_s"]))
            for backend, points in lines.items():
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", label=backend)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = sorted({r[axis] for r in group})
            ax.set_xticks(ticks, [format_count(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel(label)
            ax.set_ylabel("samples/s")
            rule = f", {first['rule']}" if first["op"] == "sparse_update" else ""
            ax.set_title(
                f"{first['op']}{rule}: {first['dataset']}-like F={first['fields']}, "
                f"K={first['factors']}, {fixed} {format_count(first[fixed])}, {first['ids']} ids, "
                f"{first['device']}",
                fontsize=9,
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            figure.tight_layout()
            name = (
                f"{first['op']}{rule.replace(', ', '-')}-vs-{axis}-{first['dataset']}-"
                f"K{first['factors']}-{fixed}{first[fixed]}-{first['ids']}-{first['device']}.png"
            )
            path = directory / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            figure.savefig(path, dpi=110)
            plt.close(figure)
            written.append(path)
    return written
