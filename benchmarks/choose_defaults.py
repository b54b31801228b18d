"""Choose the trainer's defaults on validation data only, over several data sets and seeds.

Each data set's training file is split 80/20 (a new split per seed) into training and validation
rows; no test file is read. Stage 1 candidates are FM settings, judged by the FM's validation AUC
and logloss; stage 2 candidates are FNN settings, each trained from the FM that the current
defaults give, judged the same way. A candidate that diverges on any data set and seed is out.

    python benchmarks/choose_defaults.py --stage fm --seeds 3 --json defaults-fm.json
    python benchmarks/choose_defaults.py --stage fnn --seeds 3 --json defaults-fnn.json
    python benchmarks/choose_defaults.py --stage both --seeds 3 --json defaults-run.json
    python benchmarks/choose_defaults.py --stage encoding --data adult --seeds 3

``--stage encoding`` compares ways of encoding the data: numeric columns (numeric rule 2's
buckets, rule 3's values from some number of rows on) and rare keys (the rows a key needs to be
a feature of its own): each candidate encodes the data its way, then trains the default FM and
the default FNN from it. Only sets with numeric columns (Adult) tell the numeric candidates
apart; every set has rare keys.

``--stage both`` trains each candidate's FM and then its FNN (settings of both stages, such as
early stopping). The training part is split once more: the models stop on a validation fifth
of it and are judged on a held-out fifth that nothing else sees, so that candidates which
differ in how they stop are compared fairly.

The data: iPinYou 2997 (0.1 % clicks) and UCI Adult (24 % positives) from ../shared/data
(``FNN_FAST_DATA`` overrides the folder), and two planted Criteo-shaped sets (39 fields) at 3 %
and 30 % positives. A candidate is ranked by its mean shortfall from the best candidate's
validation AUC on each data set (so each data set counts the same, whatever its AUC level), then
by mean validation logloss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fnn_fast.data import FeatureEncoder, Schema, load_rows
from fnn_fast.data.encoder import VALUE_MIN_COUNT
from fnn_fast.train import (
    Split,
    TrainConfig,
    TrainingDiverged,
    best_epoch,
    epochs_trained,
    evaluate,
    refit_stages,
    stopping_metric,
    train_fm,
    train_fnn,
)

DATA = Path(os.environ.get("FNN_FAST_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))

# How keys become features (--stage encoding): the schema's numeric rule and, under rule 3,
# the rows a value needs for a feature of its own (FeatureEncoder's value_min_count), and the
# rows any key needs (its min_count).
ENCODING_CANDIDATES = {
    "values from 10 rows": {"numeric_rule": 3, "value_min_count": 10},
    "values from 3 rows": {"numeric_rule": 3, "value_min_count": 3},
    "values from 5 rows": {"numeric_rule": 3, "value_min_count": 5},
    "values from 20 rows": {"numeric_rule": 3, "value_min_count": 20},
    "values from 50 rows": {"numeric_rule": 3, "value_min_count": 50},
    "buckets only (rule 2)": {"numeric_rule": 2},
    # Rare keys: a key seen fewer than min_count times in the training rows reads as its
    # field's unseen-key id (FeatureEncoder's min_count; 1 keeps every key). Every set has them.
    "keys from 2 rows": {"numeric_rule": 3, "value_min_count": 10, "min_count": 2},
    "keys from 3 rows": {"numeric_rule": 3, "value_min_count": 10, "min_count": 3},
    "keys from 5 rows": {"numeric_rule": 3, "value_min_count": 10, "min_count": 5},
    "keys from 10 rows": {"numeric_rule": 3, "value_min_count": 10, "min_count": 10},
}

# Stage 1 and stage 2 candidates: overrides of TrainConfig. The first of each list is the
# current default, so the table shows what a change gains.
# Each names every setting it changes from TrainConfig's (so that a name keeps its meaning
# when the defaults move): plain SGD and Adagrad with sums from 0 are the earlier defaults.
_SUMS_FROM_0 = {"fm_initial_accumulator": 0.0}
FM_CANDIDATES = {
    "default": {},
    "sgd-3": {"fm_optimizer": "sgd", "fm_lr": 3.0},
    "sgd-1": {"fm_optimizer": "sgd", "fm_lr": 1.0},
    "sgd-0.3": {"fm_optimizer": "sgd", "fm_lr": 0.3},
    "adagrad-0.01": {"fm_optimizer": "adagrad", "fm_lr": 0.01, **_SUMS_FROM_0},
    "adagrad-0.03": {"fm_optimizer": "adagrad", "fm_lr": 0.03, **_SUMS_FROM_0},
    "adagrad-0.1": {"fm_optimizer": "adagrad", "fm_lr": 0.1, **_SUMS_FROM_0},
    "rowwise-0.03": {"fm_optimizer": "rowwise_adagrad", "fm_lr": 0.03, **_SUMS_FROM_0},
    "rowwise-0.1": {"fm_optimizer": "rowwise_adagrad", "fm_lr": 0.1, **_SUMS_FROM_0},
    "adam-0.001": {"fm_optimizer": "adam", "fm_lr": 0.001},
    # Adagrad with a starting sum: a row's first steps are those of SGD at lr / sqrt(init).
    "adagrad-0.1-init0.1": {"fm_optimizer": "adagrad", "fm_lr": 0.1, "fm_initial_accumulator": 0.1},
    "adagrad-0.3-init1": {"fm_optimizer": "adagrad", "fm_lr": 0.3, "fm_initial_accumulator": 1.0},
    "adagrad-0.03-init0.01": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.03,
        "fm_initial_accumulator": 0.01,
    },
    "adagrad-0.1-init0.01": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.1,
        "fm_initial_accumulator": 0.01,
        "fm_epochs": 60,
    },
    "adagrad-0.05-init0.01": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.05,
        "fm_initial_accumulator": 0.01,
        "fm_epochs": 60,
    },
    "adagrad-0.03-init0.01-60": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.03,
        "fm_initial_accumulator": 0.01,
        "fm_epochs": 60,
    },
    "adagrad-0.3-init0.1": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.3,
        "fm_initial_accumulator": 0.1,
        "fm_epochs": 60,
    },
    # Smaller starting sums, and row-wise sums from the default's start: Adult's dense
    # features preferred sums from 0 (rule 3 numbers), the sparse sets the default.
    "adagrad-0.05-init0.001": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.05,
        "fm_initial_accumulator": 0.001,
    },
    "adagrad-0.03-init0.003": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.03,
        "fm_initial_accumulator": 0.003,
    },
    "adagrad-0.05-init0.0001": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.05,
        "fm_initial_accumulator": 0.0001,
    },
    "adagrad-0.03-init0.001": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.03,
        "fm_initial_accumulator": 0.001,
    },
    "adagrad-0.1-init0.001": {
        "fm_optimizer": "adagrad",
        "fm_lr": 0.1,
        "fm_initial_accumulator": 0.001,
    },
    "rowwise-0.05-init0.01": {
        "fm_optimizer": "rowwise_adagrad",
        "fm_lr": 0.05,
        "fm_initial_accumulator": 0.01,
    },
    "rowwise-0.03-init0.01": {
        "fm_optimizer": "rowwise_adagrad",
        "fm_lr": 0.03,
        "fm_initial_accumulator": 0.01,
    },
    "factors-16": {"factors": 16},
    "factors-32": {"factors": 32},
    "factors-4": {"factors": 4},
    "rowwise-0.1-init0.1": {
        "fm_optimizer": "rowwise_adagrad",
        "fm_lr": 0.1,
        "fm_initial_accumulator": 0.1,
    },
}
FNN_CANDIDATES = {
    "default": {},
    # The paper's start: the layers random (glorot); the default starts them as the FM.
    "glorot": {"fnn_layer_init": "glorot"},
    "fm-start-layers-1e-4": {"fnn_lr": 1e-4},
    "fm-start-emb-0.01": {"fnn_embedding_lr": 0.01},
    # Fourth grid: the embedding's rate around 0.01, down to (nearly) frozen, alone and with
    # faster layers, which on Adult learn more from the FM's start.
    "fm-start-emb-0.03": {"fnn_embedding_lr": 0.03},
    "fm-start-emb-0.003": {"fnn_embedding_lr": 0.003},
    "fm-start-emb-3e-5": {"fnn_embedding_lr": 3e-5},
    "fm-start-layers-1e-4-emb-0.01": {"fnn_lr": 1e-4, "fnn_embedding_lr": 0.01},
    "fm-start-layers-3e-4-emb-0.01": {"fnn_lr": 3e-4, "fnn_embedding_lr": 0.01},
    "layers-1e-4": {"fnn_lr": 1e-4},
    "layers-3e-4": {"fnn_lr": 3e-4},
    "layers-1e-3": {"fnn_lr": 1e-3},
    "layers-3e-4-dropout-0.2": {"fnn_lr": 3e-4, "dropout": 0.2},
    # Against stage 2's overfitting: a (nearly) frozen embedding, a smaller network, heavier
    # dropout, L2 on the layers.
    "emb-0.01": {"fnn_embedding_lr": 0.01},
    "emb-0.01-hidden-64": {"fnn_embedding_lr": 0.01, "hidden": [64]},
    "emb-0.01-dropout-0.5": {"fnn_embedding_lr": 0.01, "dropout": 0.5, "fnn_lr": 1e-4},
    "emb-0.01-layer-l2": {"fnn_embedding_lr": 0.01, "fnn_layer_weight_decay": 1e-3},
    # Third grid: layer L2 with faster layers, and dropout with a slower embedding.
    "layers-3e-4-l2-emb-0.01": {
        "fnn_lr": 3e-4,
        "fnn_layer_weight_decay": 1e-3,
        "fnn_embedding_lr": 0.01,
    },
    "layers-1e-4-dropout-0.3-emb-0.03": {"fnn_lr": 1e-4, "dropout": 0.3, "fnn_embedding_lr": 0.03},
    "layers-3e-4-emb-adagrad": {
        "fnn_lr": 3e-4,
        "fnn_optimizer": "adagrad",
        "fnn_embedding_lr": 0.005,
        "fnn_initial_accumulator": 0.01,
    },
}


STAGE_1_FM = "FM (stage 1, the FNNs' start)"

REFIT = "refit"  # a RUN_CANDIDATES key that is not a TrainConfig setting: see "refit"

# Whole-run candidates (--stage both): overrides for both stages, judged on a held-out part.
RUN_CANDIDATES = {
    "auto": {},
    "stop-on-auc": {"fm_early_stopping": "auc", "fnn_early_stopping": "auc"},
    "stop-on-logloss": {"fm_early_stopping": "logloss", "fnn_early_stopping": "logloss"},
    "fm-auc-fnn-logloss": {"fm_early_stopping": "auc", "fnn_early_stopping": "logloss"},
    "stop-on-logloss-layers-1e-4": {
        "fm_early_stopping": "logloss",
        "fnn_early_stopping": "logloss",
        "fnn_lr": 1e-4,
    },
    "stop-on-logloss-layers-3e-4-l2": {
        "fm_early_stopping": "logloss",
        "fnn_early_stopping": "logloss",
        "fnn_lr": 3e-4,
        "fnn_layer_weight_decay": 1e-3,
    },
    # Stage 1's L2, judged by the FNN built on it as well as the FM: on the sparse sets the FM
    # fits its training rows so closely that stage 2 has nothing left to learn from them.
    "fm-l2-3e-5": {"fm_weight_decay": 3e-5},
    "fm-l2-1e-4": {"fm_weight_decay": 1e-4},
    "fm-l2-3e-4": {"fm_weight_decay": 3e-4},
    "fm-l2-1e-3": {"fm_weight_decay": 1e-3},
    "fm-l2-3e-3": {"fm_weight_decay": 3e-3},
    "fnn-emb-l2-1e-4": {"fnn_weight_decay": 1e-4},
    "fnn-emb-l2-1e-3": {"fnn_weight_decay": 1e-3},
    # Both starts of the layers trained, the one better on validation (the FNN's stopping
    # metric) kept: each set's own start, at twice stage 2's cost.
    "pick-start": {"fnn_layer_init": ("fm", "glorot")},
    # Early stopping picks each stage's epoch count, then both stages train again on the
    # training and validation rows together for that many epochs (more rows, no stopping).
    "refit": {REFIT: True},
}


def _split_rows(rows, seed: int, valid_fraction: float = 0.2):
    order = np.random.default_rng(seed).permutation(len(rows.labels))
    cut = int(round(len(order) * (1 - valid_fraction)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def _file_splits(path: Path, schema: Schema, seed: int, holdout: bool = False,
                 encoding: dict | None = None):  # fmt: skip
    """(train, valid, encoder), or with ``holdout`` (train, valid, holdout, encoder): the
    training part split 80/20 once more, the last fifth held out to judge, never to stop on.
    ``encoding``: an ENCODING_CANDIDATES entry (default: the library's)."""
    encoding = dict(encoding or {})
    value_min_count = encoding.pop("value_min_count", VALUE_MIN_COUNT)
    min_count = encoding.pop("min_count", 1)
    schema = replace(schema, **encoding)
    rows = load_rows(path, schema, progress=False)
    train_index, valid_index = _split_rows(rows, seed)
    judged = None
    if holdout:
        order = np.random.default_rng(seed + 100).permutation(len(train_index))
        cut = int(round(len(order) * 0.8))
        train_index, valid_index, judged = (
            np.sort(train_index[order[:cut]]),
            np.sort(train_index[order[cut:]]),
            valid_index,
        )
    encoder = FeatureEncoder.fit(
        rows.keys[train_index], rows.slot_fields, rows.field_names, min_count,
        value_fields=rows.value_fields, value_min_count=value_min_count,
    )  # fmt: skip
    splits = [Split.encode(rows, encoder, index) for index in (train_index, valid_index, judged)
              if index is not None]  # fmt: skip
    return (*splits, encoder)


def _planted_splits(positive_rate: float, seed: int, rows: int = 60_000, holdout: bool = False,
                    encoding: dict | None = None):  # fmt: skip
    """A planted set's splits; of ``encoding`` only min_count applies (no numeric columns)."""
    from fnn_fast.demo import planted_at_rate, planted_splits

    truth = planted_at_rate(positive_rate)
    sizes = (rows, rows // 4, rows // 4) if holdout else (rows, rows // 4)
    min_count = (encoding or {}).get("min_count", 1)
    encoder, splits, _ = planted_splits(truth, sizes, 1000 * seed + 1, min_count)
    return (*splits, encoder)


def _synthetic_splits(seed: int, holdout: bool = False):
    from fnn_fast.cli import _synthetic_splits as synthetic

    if holdout:
        raise ValueError("the synthetic set has no held-out part: use it with --stage fm or fnn")
    train, valid, _, encoder = synthetic(100_000, seed)
    return train, valid, encoder


def data_sets(names: list[str], holdout: bool = False, encoding: dict | None = None):
    adult = Schema(
        format="csv",
        label="label",
        categorical="workclass,education,marital_status,occupation,relationship,race,sex,"
        "native_country".split(","),
        numeric="age,fnlwgt,education_num,capital_gain,capital_loss,hours_per_week".split(","),
    )
    ipinyou = Schema(
        format="libfm", featindex=str((DATA / "ipinyou-2997" / "featindex.fm.txt").resolve())
    )
    makers = {
        "ipinyou": lambda seed: _file_splits(
            DATA / "ipinyou-2997" / "train.fm.txt", ipinyou, seed, holdout, encoding
        ),
        "adult": lambda seed: _file_splits(
            DATA / "adult" / "train.csv", adult, seed, holdout, encoding
        ),
        "planted-3": lambda seed: _planted_splits(0.03, seed, holdout=holdout, encoding=encoding),
        "planted-30": lambda seed: _planted_splits(0.30, seed, holdout=holdout, encoding=encoding),
        # Not one of the sets the defaults are chosen on: `fnn-fast compare --synthetic`'s set
        # (a non-linear truth a network can learn), to see what a start costs there.
        "synthetic": lambda seed: _synthetic_splits(seed, holdout),
    }
    return {name: makers[name] for name in names}


def run_trial(stage, config, train, valid, encoder, fm=None, judged=None, keep=None):
    """Train one stage; its metrics on ``judged`` (default: the validation split). ``keep``: a
    dict that receives the trained model and its history."""
    slot_fields = [int(f) for f in encoder.slot_fields]
    started = time.perf_counter()
    try:
        if stage == "fm":
            model, history = train_fm(train, valid, encoder.num_features, config, progress=False)
        else:
            model, history = train_fnn(
                train, valid, fm, encoder.num_features, slot_fields, config, progress=False
            )
    except TrainingDiverged as error:
        return {"diverged": str(error)}
    if keep is not None:
        keep.update(model=model, history=history)
    metrics = evaluate(model, valid if judged is None else judged)
    return {
        "valid_auc": metrics["auc"],
        "valid_logloss": metrics["logloss"],
        "epochs": epochs_trained(history),
        "best_epoch": best_epoch(history),
        "seconds": time.perf_counter() - started,
    }


def rank(trials: list[dict], candidates) -> list[dict]:
    """Mean shortfall from the per-(data set, seed) best AUC, then mean logloss."""
    best = {}
    for t in trials:
        if "valid_auc" in t:
            key = (t["data"], t["seed"])
            best[key] = max(best.get(key, -math.inf), t["valid_auc"])
    table = []
    for name in candidates:
        mine = [t for t in trials if t["candidate"] == name]
        row = {"candidate": name, "diverged": sum("diverged" in t for t in mine)}
        ok = [t for t in mine if "valid_auc" in t]
        row["shortfall"] = float(
            np.mean([best[(t["data"], t["seed"])] - t["valid_auc"] for t in ok]) if ok else math.inf
        )
        for data in sorted({t["data"] for t in mine}):
            these = [t for t in ok if t["data"] == data]
            row[data] = (
                float(np.mean([t["valid_auc"] for t in these])) if these else float("nan"),
                float(np.mean([t["valid_logloss"] for t in these])) if these else float("nan"),
            )
        table.append(row)
    return sorted(table, key=lambda r: (r["diverged"] > 0, r["shortfall"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("fm", "fnn", "both", "encoding"), default="fm")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", default="ipinyou,adult,planted-3,planted-30")
    parser.add_argument("--candidates", default=None, help="comma-separated subset of names")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: unchanged)")
    parser.add_argument("--json", default=None, help="write every trial and the ranking here")
    args = parser.parse_args(argv)
    from fnn_fast.bench.machine import require_native

    info = require_native()  # refuse to time the pure-PyTorch path where the native one is meant
    print(f"fnn_fast: {info['path']}, backends {info['backends']['available']}", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = {"fm": FM_CANDIDATES, "fnn": FNN_CANDIDATES, "both": RUN_CANDIDATES,
            "encoding": ENCODING_CANDIDATES}[args.stage]  # fmt: skip
    names = args.candidates.split(",") if args.candidates else list(pool)
    base = TrainConfig()
    if args.stage == "encoding":
        trials = _encoding_trials(args, names, base)
        names = [f"{n} {model}" for model in ("FM", "FNN") for n in names]
    else:
        trials = _training_trials(args, pool, names, base)
    if args.stage == "both":
        names = [f"{n} {model}" for model in ("FM", "FNN") for n in names]
    if args.stage == "fnn":
        names = [*names, STAGE_1_FM]
    table = rank(trials, names)
    datas = args.data.split(",")
    print("| candidate | diverged | AUC shortfall | " + " | ".join(datas) + " |")
    print("|---|---:|---:|" + "---:|" * len(datas))
    for row in table:
        cells = [f"{row[d][0]:.4f} / {row[d][1]:.4f}" if d in row else "-" for d in datas]
        print(f"| {row['candidate']} | {row['diverged']} | {row['shortfall']:.4f} | "
              + " | ".join(cells) + " |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"fnn_fast": info, "trials": trials, "ranking": table}, indent=1)
        )
    return 0


def _picked_trial(config, train, valid, encoder, fm, judged, keep):
    """An FNN for each of the config's layer starts; the one better on validation (the FNN's
    stopping metric: its kept epoch's record), judged on ``judged``."""
    metric, _ = stopping_metric(config.fnn_early_stopping, valid)
    best = None
    for start in config.fnn_layer_init:
        kept = {}
        trial = run_trial("fnn", replace(config, fnn_layer_init=start), train, valid, encoder,
                          fm, judged, kept)  # fmt: skip
        if "model" not in kept:
            return trial
        record = next(r for r in kept["history"] if r["best"])
        score = record["valid_auc"] if metric == "auc" else -record["valid_logloss"]
        trial["start"] = start
        if best is None or score > best[0]:
            best = (score, trial, kept)
    keep.update(best[2])
    return best[1]


def _refit_trials(config, fm_kept, fnn_kept, train, valid, encoder, judged, name):
    """The library's refit (TrainConfig.refit) of the FM and FNN that ``fm_kept`` and
    ``fnn_kept`` hold, judged on ``judged``."""
    started = time.perf_counter()
    try:
        fm, fnn, refit = refit_stages(train, valid, fm_kept["history"], fnn_kept["history"],
                                      encoder, config, progress=False)  # fmt: skip
    except TrainingDiverged as error:
        return [(name + " FM", {"diverged": str(error)}), (name + " FNN", {"diverged": str(error)})]
    seconds = time.perf_counter() - started
    runs = []
    for stage, model in (("FM", fm), ("FNN", fnn)):
        metrics = evaluate(model, judged)
        epochs = refit[f"{stage.lower()}_epochs"]
        runs.append((f"{name} {stage}", {
            "valid_auc": metrics["auc"], "valid_logloss": metrics["logloss"], "epochs": epochs,
            "best_epoch": epochs, "seconds": seconds,
        }))  # fmt: skip
    return runs


def _show(data, seed, label, trial) -> None:
    shown = trial.get("diverged") or (
        f"auc {trial['valid_auc']:.4f} logloss {trial['valid_logloss']:.4f} "
        f"best epoch {trial['best_epoch']}/{trial['epochs']} {trial['seconds']:.0f}s"
    )
    print(f"{data} seed {seed} {label}: {shown}", file=sys.stderr, flush=True)


def _encoding_trials(args, names, base) -> list[dict]:
    """Each encoding's default FM, then the default FNN from it, on validation."""
    trials = []
    for data in args.data.split(","):
        for seed in range(args.seeds):
            for name in names:
                train, valid, encoder = data_sets([data], encoding=ENCODING_CANDIDATES[name])[data](
                    seed
                )
                config, kept = replace(base, seed=seed), {}
                runs = [(name + " FM", run_trial("fm", config, train, valid, encoder, keep=kept))]
                if "model" in kept:
                    trial = run_trial("fnn", config, train, valid, encoder, kept["model"])
                    runs.append((name + " FNN", trial))
                for label, trial in runs:
                    trial.update(data=data, seed=seed, candidate=label,
                                 encoding=ENCODING_CANDIDATES[name],
                                 num_features=encoder.num_features)  # fmt: skip
                    trials.append(trial)
                    _show(data, seed, label, trial)
    return trials


def _training_trials(args, pool, names, base) -> list[dict]:
    trials = []
    holdout = args.stage == "both"
    for data, make in data_sets(args.data.split(","), holdout).items():
        for seed in range(args.seeds):
            train, valid, *judged, encoder = make(seed)
            judged = judged[0] if judged else None
            fm = None
            if args.stage == "fnn":
                fm, _ = train_fm(
                    train, valid, encoder.num_features, replace(base, seed=seed), progress=False
                )
                # The FM itself, for the table: an FNN from it should not fall below it.
                fm_metrics = evaluate(fm, valid)
                trials.append({"valid_auc": fm_metrics["auc"],
                               "valid_logloss": fm_metrics["logloss"],
                               "data": data, "seed": seed, "candidate": STAGE_1_FM})  # fmt: skip
                print(
                    f"{data} seed {seed} {STAGE_1_FM}: auc {fm_metrics['auc']:.4f} "
                    f"logloss {fm_metrics['logloss']:.4f}",
                    file=sys.stderr,
                    flush=True,
                )
            for name in names:
                overrides = dict(pool[name])
                refit = overrides.pop(REFIT, False)
                config = replace(base, seed=seed, **overrides)
                if args.stage == "both":  # the FM, then the FNN from it, both judged held out
                    kept, fnn_kept = {}, {}
                    trial = run_trial("fm", config, train, valid, encoder, None, judged, kept)
                    runs = [(name + " FM", trial)]
                    if "model" in kept and isinstance(config.fnn_layer_init, tuple):
                        trial = _picked_trial(config, train, valid, encoder, kept["model"], judged,
                                              fnn_kept)  # fmt: skip
                        runs.append((name + " FNN", trial))
                    elif "model" in kept:
                        trial = run_trial(
                            "fnn", config, train, valid, encoder, kept["model"], judged, fnn_kept
                        )
                        runs.append((name + " FNN", trial))
                    if refit and "model" in fnn_kept:
                        runs = _refit_trials(config, kept, fnn_kept, train, valid, encoder,
                                             judged, name)  # fmt: skip
                else:
                    runs = [(name, run_trial(args.stage, config, train, valid, encoder, fm))]
                for label, trial in runs:
                    trial.update(data=data, seed=seed, candidate=label, overrides=pool[name])
                    trials.append(trial)
                    _show(data, seed, label, trial)
    return trials


if __name__ == "__main__":
    sys.exit(main())
