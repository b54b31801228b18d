"""How should a trained model score a key it never saw? Measured on iPinYou 2997, validation only.

Scoring rows often carry keys that training never saw: a new IP, a new creative, a new hour or
day. The encoder gives such a key its field's out-of-vocabulary row, which training never
touches (every training key has a row of its own), so it keeps its start (w = 0, v near 0): the
field then adds nothing to the row's score. The alternative measured here gives that row the
mean of the field's trained rows, weighted by how often each was seen: for the FM that is
exactly the field's expected contribution over the training keys.

Two ways to judge, neither reading the test file:

* ``fifth``: a random held-out fifth of the training file (the models stop on a validation fifth
  of the rest). New keys there are mostly IPs (about 45 % of rows).
* ``hour``: the training file holds four hours of one day; every row of one hour is held out,
  with a sixth as many rows of the other hours (a later period in which most rows bring a new
  hour key). The models train and stop on the rest.

Each model is judged as trained and with its unseen-key rows set to the field's mean.

    python benchmarks/unseen_keys.py --seeds 3 --threads 1 --json unseen-keys.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fnn_fast.data import FeatureEncoder, Schema, load_rows
from fnn_fast.train import Split, TrainConfig, evaluate, train_two_stage

DATA = Path(os.environ.get("FNN_FAST_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
HOUR_SLOT = 1  # iPinYou's second field


def mean_unseen_rows(model, encoder: FeatureEncoder, train: Split) -> None:
    """Set each field's out-of-vocabulary row to the count-weighted mean of its trained rows,
    where no training row used it."""
    present = None if train.values is None else (train.values != 0).numpy().ravel()
    counts = np.bincount(train.ids.numpy().ravel(), weights=present,
                         minlength=encoder.num_features)  # fmt: skip
    with torch.no_grad():
        for offset, size in zip(encoder.offsets.tolist(), encoder.sizes.tolist(), strict=True):
            seen = torch.tensor(counts[offset + 1 : offset + size], dtype=model.table.dtype)
            if counts[offset] > 0 or seen.sum() == 0:
                continue
            rows = model.table[offset + 1 : offset + size]
            model.table[offset] = (rows * seen[:, None]).sum(0) / seen.sum()


def judge(train: Split, valid: Split, judged: Split, encoder, seed: int) -> dict:
    result = train_two_stage(train, valid, None, encoder, TrainConfig(seed=seed), progress=False)
    record = {"judged_rows": len(judged.labels), "judged_clicks": int(judged.labels.sum())}
    for name, model in (("fm", result.fm), ("fnn", result.fnn)):
        record[name] = evaluate(model, judged)["auc"]
        mean_unseen_rows(model, encoder, train)
        record[f"{name}_mean_rows"] = evaluate(model, judged)["auc"]
    return record


def splits(rows, train_index, judged_index, seed: int):
    order = np.random.default_rng(seed).permutation(len(train_index))
    cut = int(round(len(order) * 0.8))
    fit_index, valid_index = np.sort(train_index[order[:cut]]), np.sort(train_index[order[cut:]])
    encoder = FeatureEncoder.fit(rows.keys[fit_index], rows.slot_fields, rows.field_names)
    return (*(Split.encode(rows, encoder, i) for i in (fit_index, valid_index, judged_index)),
            encoder)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, help="write every trial here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    schema = Schema(format="libfm", featindex=str(DATA / "ipinyou-2997" / "featindex.fm.txt"))
    rows = load_rows(DATA / "ipinyou-2997" / "train.fm.txt", schema, progress=False)
    everything = np.arange(len(rows.labels))
    hour = rows.keys[:, HOUR_SLOT]
    trials = []
    for seed in range(args.seeds):
        order = np.random.default_rng(seed + 100).permutation(everything)
        cut = int(round(len(order) * 0.8))
        plans = [("fifth", None, np.sort(order[:cut]), np.sort(order[cut:]))]
        for key in np.unique(hour):
            new, old = np.flatnonzero(hour == key), np.flatnonzero(hour != key)
            if rows.labels[new].sum() < 50:  # too few clicks to judge on
                continue
            old = np.random.default_rng(seed + 50).permutation(old)
            extra = len(new) // 6
            plans.append(("hour", int(key), np.sort(old[extra:]),
                          np.sort(np.concatenate([new, old[:extra]]))))  # fmt: skip
        for how, key, train_index, judged_index in plans:
            started = time.time()
            record = {"judged_on": how, "hour_key": key, "seed": seed,
                      **judge(*splits(rows, train_index, judged_index, seed), seed)}  # fmt: skip
            record["seconds"] = round(time.time() - started, 1)
            trials.append(record)
            print(json.dumps(record), flush=True)
    print("\njudged on | model | as trained | unseen rows as the field's mean | trials improved")
    for how in ("fifth", "hour"):
        for name in ("fm", "fnn"):
            pairs = [(t[name], t[f"{name}_mean_rows"]) for t in trials if t["judged_on"] == how]
            if not pairs:
                continue
            before, after = zip(*pairs, strict=True)
            better = sum(b > a for a, b in pairs)
            print(f"{how} | {name} | {statistics.mean(before):.4f} | {statistics.mean(after):.4f}"
                  f" | {better} of {len(pairs)}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"trials": trials}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
