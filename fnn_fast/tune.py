"""``fnn-fast tune``: random search over each stage's rates, L2 and dropout, judged on validation.

Stage 1 draws FM settings and keeps the one with the best validation AUC (validation logloss
breaks ties); stage 2 draws FNN settings, each trained from that best FM. The budget (trials or
minutes) is split evenly between the stages. Trial ``i`` of a stage draws its settings from a
generator seeded by (seed, stage, i), so a search killed at any moment and started again with
``resume`` redoes only the trial it was in: ``tune.json`` is rewritten (atomically) after every
trial. ``best.json`` holds the whole training config of the best trials; ``fnn-fast train
--config best.json`` trains with it. The test split is never read.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fnn_fast.metrics import finite_or_none
from fnn_fast.train import (
    Split,
    TrainConfig,
    TrainingDiverged,
    best_epoch,
    evaluate,
    train_fm,
    train_fnn,
)

# Each setting: (low, high, scale). Rates and L2 are drawn log-uniformly, dropout uniformly;
# an L2 range starting at 0 draws 0 a quarter of the time (no regularization is a candidate);
# "choice" draws one of the words in ``low``. The layers' start is searched too: the FM start
# (the default) suits small click logs, the random one learned faster on a set with more for
# the network to learn (README "What each part is worth").
FM_SPACE = {
    "fm_lr": (None, None, "log-around-default"),
    "fm_weight_decay": (1e-7, 1e-3, "log-or-zero"),
}
FNN_SPACE = {
    "fnn_lr": (1e-5, 3e-3, "log"),
    "fnn_embedding_lr": (None, None, "log-around-default"),
    "fnn_weight_decay": (1e-7, 1e-3, "log-or-zero"),
    "fnn_layer_weight_decay": (1e-7, 1e-3, "log-or-zero"),
    "dropout": (0.0, 0.5, "uniform"),
    "fnn_layer_init": (("fm", "glorot"), None, "choice"),
}
STAGES = {"fm": FM_SPACE, "fnn": FNN_SPACE}


def draw(space: dict, base: TrainConfig, rng: np.random.Generator) -> dict:
    """One point of ``space``; rates ``log-around-default`` span 30x either side of base's."""
    point = {}
    for name, (low, high, scale) in space.items():
        if scale == "log-around-default":
            low, high, scale = getattr(base, name) / 30, getattr(base, name) * 30, "log"
        if scale == "log":
            point[name] = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        elif scale == "log-or-zero":
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
            point[name] = 0.0 if rng.random() < 0.25 else float(value)
        elif scale == "choice":
            point[name] = str(low[int(rng.integers(len(low)))])
        else:
            point[name] = float(rng.uniform(low, high))
    return point


def _better(trial: dict, best: dict | None) -> bool:
    if "valid_auc" not in trial:
        return False
    if best is None:
        return True
    return (trial["valid_auc"], -trial["valid_logloss"]) > (
        best["valid_auc"],
        -best["valid_logloss"],
    )


def best_trial(trials: list[dict], stage: str) -> dict | None:
    best = None
    for trial in trials:
        if trial["stage"] == stage and _better(trial, best):
            best = trial
    return best


def _write_json(path: Path, payload) -> None:
    # Written whole then renamed: a kill leaves the previous file, never half of one.
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        json.dump(payload, file, indent=1, allow_nan=False)
    os.replace(staging, path)


def run_tune(
    train: Split,
    valid: Split,
    encoder,
    base: TrainConfig,
    out: Path,
    *,
    trials: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    resume: bool = False,
    settings: dict | None = None,
    progress: bool = True,
) -> dict:
    """Search, write ``out/tune.json`` and ``out/best.json``; returns the best config as a dict.

    ``settings`` (the data and options the search ran with) is recorded, and a resume whose
    settings differ is refused: its trials would not be comparable."""
    if (trials is None) == (minutes is None):
        raise ValueError("give the budget as trials or as minutes (one of them)")
    if trials is not None and trials < 2:
        raise ValueError("tune needs at least 2 trials (one per stage)")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "tune.json"
    header = {"seed": seed, "base": asdict(base), "settings": settings or {},
              "trials": trials, "minutes": minutes}  # fmt: skip
    done: list[dict] = []
    if log_path.exists():
        if not resume:
            raise FileExistsError(f"{log_path} exists: add --resume to continue that search")
        previous = json.loads(log_path.read_text())
        if {k: previous.get(k) for k in header} != header:
            raise ValueError(
                f"{log_path} was written by a search with other settings; --resume continues "
                "only the same search (use another --out for a new one)"
            )
        done = previous["done"]
    slot_fields = [int(f) for f in encoder.slot_fields]
    started = time.monotonic() - sum(t["seconds"] for t in done)
    budget = {"fm": None, "fnn": None}
    if trials is not None:
        budget = {"fm": (trials + 1) // 2, "fnn": trials // 2}
    bar = tqdm(total=trials, desc="tune", unit="trial", disable=None if progress else True)
    bar.update(len(done))
    kept_fm = None  # (index, model) of the best FM trial run in this process
    best_fm_model = None
    config = base
    for stage_index, stage in enumerate(("fm", "fnn")):
        if stage == "fnn":
            fm_best = best_trial(done, "fm")
            if fm_best is None:
                raise TrainingDiverged("FM", 0, 0, "every FM trial diverged", "the FM rates")
            config = replace(base, seed=seed, **fm_best["params"])
            if kept_fm is not None and kept_fm[0] == fm_best["index"]:
                best_fm_model = kept_fm[1]
            else:  # its trial ran before a resume; deterministic kernels give the same model
                best_fm_model, _ = train_fm(
                    train, valid, encoder.num_features, config, progress=False
                )
        index = 0
        while True:
            if budget[stage] is not None and index >= budget[stage]:
                break
            if minutes is not None:
                elapsed = (time.monotonic() - started) / 60
                if elapsed >= minutes * (stage_index + 1) / 2:
                    break
            index += 1
            if any(t["stage"] == stage and t["index"] == index for t in done):
                continue
            rng = np.random.default_rng([seed, stage_index, index])
            params = draw(STAGES[stage], base, rng)
            trial_config = replace(config, seed=seed, **params)
            began = time.monotonic()
            trial = {"stage": stage, "index": index, "params": params}
            try:
                if stage == "fm":
                    model, history = train_fm(
                        train, valid, encoder.num_features, trial_config, progress=False
                    )
                else:
                    model, history = train_fnn(
                        train, valid, best_fm_model, encoder.num_features, slot_fields,
                        trial_config, progress=False,
                    )  # fmt: skip
                metrics = evaluate(model, valid)
                trial.update(
                    valid_auc=finite_or_none(metrics["auc"]),
                    valid_logloss=finite_or_none(metrics["logloss"]),
                    best_epoch=best_epoch(history),
                )
                if trial["valid_auc"] is None:
                    del trial["valid_auc"]
            except TrainingDiverged as error:
                trial["diverged"] = str(error)
            trial["seconds"] = time.monotonic() - began
            done.append(trial)
            if stage == "fm" and best_trial(done, "fm") is trial:
                kept_fm = (index, model)
            _write_json(log_path, {**header, "done": done})
            bar.update(1)
            shown = (
                f"valid auc {trial['valid_auc']:.4f} logloss {trial['valid_logloss']:.4f}"
                if "valid_auc" in trial
                else "diverged"
            )
            tqdm.write(f"{stage} trial {index}: {shown}  {params}")
    bar.close()
    fm_best, fnn_best = best_trial(done, "fm"), best_trial(done, "fnn")
    if fm_best is None or fnn_best is None:
        raise TrainingDiverged("tune", 0, 0, "no trial of a stage finished", "the rates")
    best = asdict(replace(base, seed=seed, **fm_best["params"], **fnn_best["params"]))
    _write_json(
        out / "best.json",
        {"config": best, "fm_trial": fm_best, "fnn_trial": fnn_best},
    )
    return best
