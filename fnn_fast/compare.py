"""``fnn-fast compare``: what each part of FNN is worth. On the same data and splits, for
several seeds: logistic regression, FM, FNN from a random embedding, FNN from FM, FNN from FM with
RBM pre-training, and FNN from FM with a single learning rate for every layer; then, where
installed, the peers of :mod:`fnn_fast.peers` (pytorch-fm's FM and FNN, DeepCTR-Torch's DeepFM
and PNN), trained on the same splits with early stopping on the same validation rows."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from fnn_fast import peers as peer_models
from fnn_fast.metrics import finite_or_none
from fnn_fast.train import Split, TrainConfig, best_epoch, evaluate, train_fm, train_fnn

VARIANTS = {
    "lr": "logistic regression",
    "fm": "FM",
    "fnn_random": "FNN, random embedding",
    "fnn": "FNN from FM",
    "fnn_glorot": "FNN from FM, random layers (the paper's start)",
    "fnn_rbm": "FNN from FM + RBM pre-training",
    "fnn_single_lr": "FNN from FM, one learning rate",
}


def label(name: str) -> str:
    """The table's name of a row: one of VARIANTS or of fnn_fast.peers.PEERS."""
    return VARIANTS[name] if name in VARIANTS else peer_models.PEERS[name].label


def run_compare(
    train: Split,
    valid: Split,
    test: Split,
    encoder,
    config: TrainConfig,
    seeds,
    progress=False,
    peers=(),
    notes: list | None = None,
) -> dict:
    """Per variant, per seed: test AUC, test logloss and the epoch of the best validation
    metric (and the valid AUC and logloss of that epoch). ``peers``: names of
    fnn_fast.peers.PEERS to add (installed ones: see peers.resolve); a peer that diverges in a
    seed leaves that seed out of its row, with a line in ``notes``. A line on stderr says which
    model and seed train next."""
    slot_fields = [int(f) for f in encoder.slot_fields]
    results: dict[str, list[dict]] = {name: [] for name in (*VARIANTS, *peers)}
    notes = [] if notes is None else notes
    seeds = list(seeds)
    runs, done = len(seeds) * len(results), 0

    def starting(name, seed):
        nonlocal done
        done += 1
        print(f"compare: [{done}/{runs}] {label(name)}, seed {seed}", file=sys.stderr, flush=True)

    def record(name, model, history):
        metrics, checked = evaluate(model, test), evaluate(model, valid)
        results[name].append({"test_auc": metrics["auc"], "test_logloss": metrics["logloss"],
                              "best_epoch": best_epoch(history), "valid_auc": checked["auc"],
                              "valid_logloss": checked["logloss"]})  # fmt: skip

    for seed in seeds:
        seeded = replace(config, seed=seed)
        starting("lr", seed)
        lr, history = train_fm(train, valid, encoder.num_features, replace(seeded, factors=0),
                               progress=progress)  # fmt: skip
        record("lr", lr, history)
        starting("fm", seed)
        fm, history = train_fm(train, valid, encoder.num_features, seeded, progress=progress)
        record("fm", fm, history)
        fnn_variants = {
            "fnn_random": replace(seeded, fnn_init="random"),
            "fnn": seeded,
            "fnn_glorot": replace(seeded, fnn_layer_init="glorot"),
            "fnn_rbm": replace(seeded, pretrain="rbm"),
            # One optimizer and one rate for the embedding and every layer.
            "fnn_single_lr": replace(seeded, fnn_optimizer="adam",
                                     fnn_embedding_lr=seeded.fnn_lr, fnn_layer_lrs=None),
        }  # fmt: skip
        for name, variant in fnn_variants.items():
            starting(name, seed)
            model, history = train_fnn(train, valid, fm, encoder.num_features, slot_fields,
                                       variant, progress=progress)  # fmt: skip
            record(name, model, history)
        for name in peers:
            starting(name, seed)
            try:
                run = peer_models.train_peer(name, train, valid, test, encoder, seeded, seed)
            except peer_models.PeerDiverged as error:
                notes.append(f"{label(name)}: seed {seed} {error}; left out of its row")
                continue
            results[name].append(run)
    return results


def summarize(results: dict) -> dict:
    summary = {}
    for name, runs in results.items():
        if not runs:
            continue
        entry = {"seeds": len(runs)}
        for key in ("test_auc", "test_logloss", "best_epoch", "valid_auc", "valid_logloss"):
            values = [r[key] for r in runs]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[name] = entry
    return summary


def format_table(summary: dict, seeds: int, notes=()) -> str:
    lines = [
        f"| model | test AUC (mean ± std, {seeds} seeds) | test logloss "
        "| epochs to best valid metric |",
        "|---|---:|---:|---:|",
    ]
    for name, s in summary.items():
        fewer = f" ({s['seeds']} seeds)" if s["seeds"] != seeds else ""
        lines.append(
            f"| {label(name)}{fewer} | {s['test_auc']:.4f} ± {s['test_auc_std']:.4f} | "
            f"{s['test_logloss']:.4f} ± {s['test_logloss_std']:.4f} | "
            f"{s['best_epoch']:.1f} ± {s['best_epoch_std']:.1f} |"
        )
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


def write_compare(
    out, results: dict, summary: dict, table: str, command: str, notes=(), peer_settings=None
) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "summary": summary, "runs": results, "notes": list(notes)}
    if peer_settings:
        record["peer_settings"] = peer_settings
    (out / "compare.json").write_text(
        json.dumps(
            finite_or_none(record),
            indent=2,
            allow_nan=False,
        )
        + "\n"
    )
    (out / "compare.md").write_text(f"`{command}`\n\n{table}\n")
