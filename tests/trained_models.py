"""Small generated data sets and models trained on them through the CLI (one epoch per stage, a
few seconds each), for the export and Spark/Ray tests: each of them compares its scores with
``fnn-fast score`` on the same rows."""

from __future__ import annotations

import csv
import os

import numpy as np

from fnn_fast.cli import main

CSV_COLUMNS = ["id", "label", "n1", "n2", "c1", "c2", "c3"]
CATEGORICAL = "c1,c2,c3"
NUMERIC = "n1,n2"
TRAIN_FLAGS = ["--fm-epochs", "1", "--fnn-epochs", "1", "--hidden", "16,8", "--no-progress"]


def write_csv(path, rows: int, seed: int):
    """id, label, two numeric and three categorical columns; the label depends on them."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for i in range(rows):
            n1, n2 = int(rng.integers(0, 60)), float(np.round(rng.lognormal(0, 1.5), 3))
            c1, c2, c3 = int(rng.zipf(1.6) % 50), int(rng.integers(0, 30)), int(rng.integers(0, 6))
            logit = -1.0 + 0.04 * n1 - 0.3 * np.log1p(n2) + (c1 % 3 == 0) - 0.5 * (c3 == 2)
            label = int(rng.random() < 1 / (1 + np.exp(-logit)))
            missing = rng.random() < 0.05  # an empty cell: missing is a category of its own
            writer.writerow([f"r{seed}-{i}", label, n1, n2, f"a{c1}", "" if missing else f"b{c2}",
                             f"c{c3}"])  # fmt: skip
    return path


def write_libfm(folder, rows: int, seed: int):
    """A libFM file and its feature dictionary: valued features, a field some rows lack (a
    padded slot, value 0) and a field with two features in some rows (two slots, one field)."""
    rng = np.random.default_rng(seed)
    sizes = [20, 15, 30, 10, 8]
    featindex = folder / "featindex.txt"
    if not featindex.exists():
        with open(featindex, "w") as file:
            index = 0
            for f, size in enumerate(sizes):
                for v in range(size):
                    file.write(f"{f}:{v}\t{index}\n")
                    index += 1
    offsets = np.cumsum([0, *sizes])
    path = folder / f"rows-{seed}.txt"
    with open(path, "w") as file:
        for _ in range(rows):
            features = []
            for f, size in enumerate(sizes):
                if f == 3 and rng.random() < 0.3:
                    continue  # field 3 absent
                count = 2 if f == 1 and rng.random() < 0.4 else 1
                for v in rng.choice(size, count, replace=False):
                    value = 1.0 if f != 4 else float(np.round(rng.uniform(0.2, 3.0), 3))
                    features.append((int(offsets[f] + v), value))
            logit = -1 + 0.3 * sum(v for _, v in features) - 0.2 * len(features)
            label = int(rng.random() < 1 / (1 + np.exp(-logit)))
            file.write(f"{label} " + " ".join(f"{i}:{v:g}" for i, v in features) + "\n")
    return path, featindex


def train(out, *args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert main(["train", *args, "--out", str(out), *TRAIN_FLAGS]) == 0


def train_csv(folder, numeric_mode: str = "bucketize", *extra):
    """(model directory, a CSV of rows to score) of a model trained on named columns; ``extra``:
    more train flags (``--hash-buckets 64``)."""
    data = write_csv(folder / "train.csv", 3000, seed=1)
    model = folder / f"model-{numeric_mode}"
    columns = ["--categorical", CATEGORICAL, "--numeric", NUMERIC, "--numeric-mode", numeric_mode]
    train(model, "--train", str(data), "--format", "csv", "--label", "label", *columns, *extra)
    return model, write_csv(folder / "score.csv", 1500, seed=2)


def train_libfm(folder, *extra):
    """(model directory, a libFM file of rows to score); ``extra``: more train flags."""
    data, featindex = write_libfm(folder, 3000, seed=1)
    model = folder / "model-libfm"
    train(model, "--train", str(data), "--format", "libfm", "--featindex", str(featindex), *extra)
    return model, write_libfm(folder, 1500, seed=2)[0]


def cli_scores(model, rows, out, *extra) -> np.ndarray:
    """``fnn-fast score`` of a file: the probabilities, float32 (as the .npy output keeps them)."""
    assert main(["score", "--model", str(model), "--input", str(rows), "--output", str(out),
                 "--no-progress", *extra]) == 0  # fmt: skip
    return np.load(out)
