"""Scoring on a GPU: the Scorer's CUDA path (pinned copies, CUDA graphs, bf16) against the CPU.

    python benchmarks/gpu_scoring_check.py [--device cuda] [--rows 400000] [--json PATH]

Builds a Criteo-shaped model (39 fields, K = 10, FNN 200-300-100; weights random: speed and
agreement do not depend on training) and encoded rows, then checks that the GPU scores match the
CPU's (float32: 1e-4 absolute; bf16: 2e-2) and measures rows/s for each mode. ``--device cpu``
runs every code path on the CPU, as a dry run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from fnn_fast import FM, FNN
from fnn_fast.data import FeatureEncoder, Schema
from fnn_fast.data.synthetic import criteo_like_cardinalities, plant_model
from fnn_fast.saved import SavedModel
from fnn_fast.score import Scorer


def build(rows: int):
    truth = plant_model(criteo_like_cardinalities(39, 100_000), num_factors=4, seed=0)
    keys = truth.sample(rows, seed=1).rows.keys
    encoder = FeatureEncoder.fit(keys, np.arange(39), [f"f{i}" for i in range(39)])
    torch.manual_seed(0)
    fm = FM(encoder.num_features, 10, init_std=0.1)
    fnn = FNN.from_fm(fm, num_fields=39)
    ids, _ = encoder.transform(keys, np.ones(keys.shape, np.float32))
    return SavedModel(fm, fnn.eval(), encoder, Schema.criteo(), {}), ids


def timed(scorer: Scorer, ids: np.ndarray) -> tuple[np.ndarray, float]:
    scorer.predict_ids(ids[: scorer.batch_size * 2])  # warm up (and capture graphs)
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = scorer.predict_ids(ids)
    return out, len(ids) / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from fnn_fast.bench.machine import require_native

    info = require_native()  # refuse to time the pure-PyTorch path where the native one is meant
    print(f"fnn_fast: {info['path']}, backends {info['backends']['available']}", file=sys.stderr)
    saved, ids = build(args.rows)
    cpu_scores, cpu_rate = timed(Scorer(saved, batch_size=args.batch_size), ids)
    results = [{"mode": "cpu (native kernels)", "rows_per_s": cpu_rate, "max_abs_diff": 0.0}]
    modes = [
        ("eager", False, False),
        ("CUDA graphs", True, False),
        ("CUDA graphs + bf16", True, True),
    ]
    for name, graphs, bf16 in modes:
        if args.device == "cpu" and bf16:
            continue
        scorer = Scorer(saved, batch_size=args.batch_size, device=args.device, bf16=bf16,
                        cuda_graphs=graphs)  # fmt: skip
        scores, rate = timed(scorer, ids)
        diff = float(np.abs(scores - cpu_scores).max())
        tolerance = 2e-2 if bf16 else 1e-4
        results.append({"mode": f"{args.device} {name}", "rows_per_s": rate, "max_abs_diff": diff,
                        "ok": diff <= tolerance})  # fmt: skip
        saved.fnn.cpu()
        saved.fm.cpu()
    print("\n| scoring mode | rows/s | max abs diff vs CPU | ok |\n|---|---:|---:|---|")
    for r in results:
        print(f"| {r['mode']} | {r['rows_per_s']:,.0f} | {r['max_abs_diff']:.2e} | "
              f"{r.get('ok', '-')} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"fnn_fast": info, "results": results}, out, indent=1)
    return 0 if all(r.get("ok", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
