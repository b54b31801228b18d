"""What the default settings give on iPinYou 2997, seed by seed: the figures behind the bounds of
tests/test_ipinyou.py.

For each seed s, as ``fnn-fast train --seed s`` does: the training file split 80/20 with seed s
(validation rows for early stopping), the encoder fit on the training part, then logistic
regression (the FM stage with no factors), the FM and the FNN from that FM, all with the default
TrainConfig; their validation and test AUC. Prints one line per seed, then the mean and standard
deviation of each figure.

    python benchmarks/ipinyou_seeds.py --seeds 5 --threads 1 --json ipinyou-seeds.json

``--bootstrap N``: how far the test file's 50 clicks alone move a test AUC. Each seed's test
rows are drawn again N times (clicks and non-clicks each with replacement, so every draw keeps
the file's counts) and every model scored on each draw: the standard deviation of each model's
AUC over the draws, and of the FNN's difference from LR and from the FM on the same draws.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fnn_fast.data import FeatureEncoder, Schema, load_rows
from fnn_fast.metrics import roc_auc
from fnn_fast.train import Split, TrainConfig, evaluate, predict_probabilities, train_fm, train_fnn

DATA = Path(os.environ.get("FNN_FAST_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))


def splits(seed: int, valid_fraction: float = 0.2):
    """train, valid, test and the encoder, as the CLI's train command builds them."""
    folder = DATA / "ipinyou-2997"
    schema = Schema(format="libfm", featindex=str((folder / "featindex.fm.txt").resolve()))
    rows = load_rows(folder / "train.fm.txt", schema, progress=False)
    order = np.random.default_rng(seed).permutation(len(rows.labels))
    cut = int(round(len(order) * (1 - valid_fraction)))
    train_index, valid_index = np.sort(order[:cut]), np.sort(order[cut:])
    encoder = FeatureEncoder.fit(
        rows.keys[train_index], rows.slot_fields, rows.field_names, value_fields=rows.value_fields
    )
    test_rows = load_rows(folder / "test.fm.txt", schema, progress=False)
    return (
        Split.encode(rows, encoder, train_index),
        Split.encode(rows, encoder, valid_index),
        Split.encode(test_rows, encoder),
        encoder,
    )


def bootstrap_spread(labels: np.ndarray, scores: dict, draws: int, seed: int) -> dict:
    """Standard deviations over ``draws`` stratified redraws of the rows: each model's AUC, and
    the FNN's AUC minus LR's and minus the FM's (paired: the same rows each draw)."""
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels > 0.5), np.flatnonzero(labels <= 0.5)
    aucs = {name: [] for name in scores}
    for _ in range(draws):
        rows = np.concatenate([rng.choice(positives, len(positives)),
                               rng.choice(negatives, len(negatives))])  # fmt: skip
        for name, score in scores.items():
            aucs[name].append(roc_auc(labels[rows], score[rows]))
    spread = {f"{name}_test_auc_bootstrap_std": float(np.std(a)) for name, a in aucs.items()}
    for other in ("lr", "fm"):
        difference = np.subtract(aucs["fnn"], aucs[other])
        spread[f"fnn_minus_{other}_bootstrap_std"] = float(np.std(difference))
    return spread


def run_seed(seed: int, bootstrap: int = 0) -> dict:
    train, valid, test, encoder = splits(seed)
    config = replace(TrainConfig(), seed=seed)
    slot_fields = [int(f) for f in encoder.slot_fields]
    result = {"seed": seed}
    started = time.perf_counter()
    lr, _ = train_fm(train, valid, encoder.num_features, replace(config, factors=0), progress=False)
    fm, _ = train_fm(train, valid, encoder.num_features, config, progress=False)
    fnn, _ = train_fnn(train, valid, fm, encoder.num_features, slot_fields, config, progress=False)
    labels, test_scores = test.labels.numpy(), {}
    for name, model in (("lr", lr), ("fm", fm), ("fnn", fnn)):
        result[f"{name}_valid_auc"] = evaluate(model, valid)["auc"]
        test_scores[name] = predict_probabilities(model, test)  # scored once, for the bootstrap too
        result[f"{name}_test_auc"] = roc_auc(labels, test_scores[name])
    result["seconds"] = time.perf_counter() - started
    if bootstrap:
        result.update(bootstrap_spread(labels, test_scores, bootstrap, seed))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: unchanged)")
    parser.add_argument("--json", default=None, help="write every seed's figures here")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="redraw the test rows N times: the spread of a test AUC from the "
                        "test file alone")  # fmt: skip
    args = parser.parse_args(argv)
    from fnn_fast.bench.machine import require_native

    info = require_native()  # refuse to time the pure-PyTorch path where the native one is meant
    print(f"fnn_fast: {info['path']}, backends {info['backends']['available']}", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, args.bootstrap))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    keys = [k for k in runs[0] if k not in ("seed", "seconds")]
    summary = {
        k: (statistics.fmean(r[k] for r in runs), statistics.stdev(r[k] for r in runs))
        for k in keys
    }
    summary["fnn_minus_fm_test_auc"] = (
        statistics.fmean(r["fnn_test_auc"] - r["fm_test_auc"] for r in runs),
        statistics.stdev(r["fnn_test_auc"] - r["fm_test_auc"] for r in runs),
    )
    for k, (mean, std) in summary.items():
        print(f"{k}: {mean:.4f} ± {std:.4f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"fnn_fast": info, "runs": runs, "summary": summary}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
