"""A short training run of `fnn-fast train` on the GPU and on the CPU, metrics side by side.

Both runs get the same files, seed and settings; only ``--device`` differs. The data: iPinYou
2997 where ``--data`` holds it (default: ../shared/data/ipinyou-2997 beside the repository),
else a planted Criteo-shaped set generated here (39 fields, ``--rows`` rows). Prints one table
(valid/test AUC and logloss of FM and FNN, CPU, GPU, difference, and each run's seconds) and
writes it to ``--json``. Exit status 1 when a run fails, a metric is not finite, or a GPU AUC is
more than ``--auc-tolerance`` from the CPU's (the kernels sum in another order, so the runs
drift apart a little, not more).

    python benchmarks/gpu_train_check.py --json gpu_train.json
    python benchmarks/gpu_train_check.py --gpu-device cpu   # the script's path, on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IPINYOU = REPO / ".." / "shared" / "data" / "ipinyou-2997"
SETTINGS = ["--fm-epochs", "4", "--fnn-epochs", "3", "--patience", "10", "--seed", "0",
            "--no-progress"]  # fmt: skip
METRICS = ("valid_auc", "valid_logloss", "test_auc", "test_logloss")


def planted_files(folder: Path, rows: int) -> list[str]:
    from fnn_fast.data.synthetic import plant_model, write_libfm

    truth = plant_model((1000,) * 26 + (40,) * 13, num_factors=8, nonlinear=1.0, seed=0)
    for seed, (name, n) in enumerate((("train", rows), ("test", rows // 4))):
        sample = truth.sample(n, seed=seed).rows
        write_libfm(folder / f"{name}.libfm", sample.labels, sample.keys)
    return ["--train", str(folder / "train.libfm"), "--test", str(folder / "test.libfm"),
            "--format", "libfm"]  # fmt: skip


def ipinyou_files(data: Path) -> list[str]:
    return ["--train", str(data / "train.fm.txt"), "--test", str(data / "test.fm.txt"),
            "--format", "libfm", "--featindex", str(data / "featindex.fm.txt")]  # fmt: skip


def train(inputs: list[str], device: str, out: Path, timeout: float) -> tuple[dict | None, float]:
    # -P: the installed fnn_fast, not a source tree in the current folder
    command = [sys.executable, "-P", "-m", "fnn_fast", "train", *inputs, "--device", device,
               "--out", str(out), *SETTINGS]  # fmt: skip
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{device}: timed out after {timeout:.0f} s", file=sys.stderr)
        return None, time.perf_counter() - started
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(f"{device}: exit {done.returncode}\n{done.stderr[-3000:]}", file=sys.stderr)
        return None, seconds
    return json.loads((out / "metrics.json").read_text()), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=IPINYOU, help="an iPinYou 2997 directory")
    parser.add_argument("--rows", type=int, default=50_000, help="planted rows, without --data")
    parser.add_argument("--gpu-device", default="cuda", help="the device compared with cpu")
    parser.add_argument("--auc-tolerance", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=50, help="seconds per run")
    parser.add_argument("--json", help="write the comparison here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gpu-train-check-") as tmp:
        tmp = Path(tmp)
        if (args.data / "train.fm.txt").exists():
            data, inputs = f"iPinYou 2997 ({args.data.name})", ipinyou_files(args.data)
        else:
            data, inputs = f"planted, {args.rows:,} rows", planted_files(tmp, args.rows)
        cpu, cpu_s = train(inputs, "cpu", tmp / "run-cpu", args.timeout)
        gpu, gpu_s = train(inputs, args.gpu_device, tmp / "run-gpu", args.timeout)

    print(f"== training on {args.gpu_device} vs cpu: {data}; {' '.join(SETTINGS)}")
    print(f"{'stage':<6}{'metric':<15}{'cpu':>10}{args.gpu_device:>10}{'diff':>10}")
    ok = cpu is not None and gpu is not None
    rows = []
    for stage in ("fm", "fnn"):
        for metric in METRICS:
            a = None if cpu is None else cpu[stage].get(metric)
            b = None if gpu is None else gpu[stage].get(metric)
            diff = None if a is None or b is None else b - a
            rows.append({"stage": stage, "metric": metric, "cpu": a, "gpu": b, "diff": diff})
            cells = [f"{v:.4f}" if v is not None else "-" for v in (a, b)]
            cells.append(f"{diff:+.4f}" if diff is not None else "-")
            print(f"{stage:<6}{metric:<15}" + "".join(f"{c:>10}" for c in cells))
            if b is None or not math.isfinite(b):
                ok = False
            elif diff is not None and metric.endswith("auc") and abs(diff) > args.auc_tolerance:
                ok = False
    print(f"seconds: cpu {cpu_s:.1f}, {args.gpu_device} {gpu_s:.1f} (each with start-up)")
    print("GPU training check:", "passed" if ok else "FAILED")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"data": data, "settings": SETTINGS, "rows": rows, "seconds": {"cpu": cpu_s,
             "gpu": gpu_s}, "device": args.gpu_device, "passed": ok}, indent=2) + "\n")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
