"""``fnn-fast bench``: its options and what it does with them."""

from __future__ import annotations

import argparse
import shlex
import sys

from fnn_fast.bench.cases import PRESETS


def _names(text: str | None) -> list[str] | None:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    return names or None


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--quick", action="store_true", help="the quick preset: a few minutes on 2 cores"
    )
    which.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="which cases (default: full); --list describes them",
    )
    p.add_argument("--json", metavar="PATH", help="write the machine and every record as JSON")
    p.add_argument(
        "--plots", metavar="DIR", help="write PNG plots: samples/s against batch and table size"
    )
    p.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated backends, peers or bounds to run (default: all the preset has): "
        "reference, compiled, compiled-static, compiled-autotune, native, triton, cuda, fbgemm, "
        "fbgemm-infer-fp32, fbgemm-infer-fp16, torchfm, torch-adagrad, torch-sparseadam, "
        "deepctr-deepfm, deepctr-pnn, gather-bound, index_select, mlp-only",
    )
    p.add_argument(
        "--cases",
        metavar="PATTERNS",
        help="comma-separated filters on case names (substrings, or globs with * ?), "
        "e.g. fm_train_step or 'fnn_*/avazu*'",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="where tables and batches live (default: cuda when available, else cpu)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--list", action="store_true", help="list the presets, the chosen one's cases and exit"
    )


def run(args) -> int:
    import torch

    from fnn_fast.bench import report, runner

    preset = PRESETS["quick" if args.quick else args.preset or "full"]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    patterns = _names(args.cases)
    if args.list:
        for p in PRESETS.values():
            print(f"{p.name}: {p.description}")
        cases = runner.select_cases(preset.cases(device), patterns)
        print(f"\n{preset.name} on {device}: {len(cases)} cases")
        for case in cases:
            print(f"  {case.name}")
        return 0
    command = "fnn-fast " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    print(f"preset {preset.name}: {preset.description}", file=sys.stderr)
    result = runner.run(preset, device, _names(args.backends), patterns, command)
    print(report.format_table(result))
    if args.json:
        report.write_json(args.json, result)
        print(f"records written to {args.json}")
    if args.plots:
        paths = report.write_plots(args.plots, result)
        print(f"{len(paths)} plot(s) written to {args.plots}")
    if result.errors():
        print(f"{len(result.errors())} measurement(s) failed: see the table", file=sys.stderr)
        return 1
    return 0
