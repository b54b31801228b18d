"""What several test files share, in one place:

- the real data sets (iPinYou 2997, UCI Adult, the Criteo sample): the folder ``FNN_FAST_DATA``
  names, else ``../shared/data`` beside the repository; tests that need a set skip, saying so,
  when it is not there;
- optional packages (ONNX Runtime, pyspark, Ray): a skip naming the extra to install, or a
  failure where ``FNN_FAST_REQUIRE_ECOSYSTEM`` is set (CI);
- small generated data sets, and models trained on them through the CLI (one epoch per stage,
  a few seconds each), for the tests that compare scores with ``fnn-fast score``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fnn_fast
from fnn_fast.cli import main
from fnn_fast.data.synthetic import plant_model
from fnn_fast.data.synthetic import write_libfm as write_planted_libfm

DATA = Path(
    os.environ.get("FNN_FAST_DATA")
    or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
)


def shared_file(*parts: str) -> Path:
    """The path of a shared data file; the test skips, naming the folder, when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{'/'.join(parts)} not present in {DATA} (set FNN_FAST_DATA)")
    return path


def require_module(module: str, extra: str):
    """The module, or a skip saying which extra brings it; a failure where
    FNN_FAST_REQUIRE_ECOSYSTEM is set (CI installs every extra)."""
    try:
        return __import__(module)
    except ImportError as error:
        if os.environ.get("FNN_FAST_REQUIRE_ECOSYSTEM"):
            raise
        pytest.skip(f"{module} is not installed ({error}): pip install 'fnn-fast[{extra}]'")


def planted_libfm_files(
    folder: Path, cardinality: int, splits=(("train", 3000), ("test", 800))
) -> dict:
    """libFM files (``splits``: name and rows of each, the i-th drawn with seed i) over five
    fields of ``cardinality`` features each, labelled by a planted FM with a non-linear term."""
    truth = plant_model((cardinality,) * 5, num_factors=3, nonlinear=1.0, seed=0)
    paths = {}
    for seed, (name, rows) in enumerate(splits):
        sample = truth.sample(rows, seed=seed).rows
        paths[name] = folder / f"{name}.libfm"
        write_planted_libfm(paths[name], sample.labels, sample.keys)
    return paths


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


def train_reference_and_native(make_model, rule, batches) -> dict:
    """The same model trained on ``batches`` by the reference ops (a sparse table gradient,
    then ``rule``'s optimizer) and by the native kernels' fused backward and update (the
    table's .grad stays None); the layers by SGD. backend -> (model, table optimizer)."""
    models = {}
    for backend in ("reference", "native"):
        torch.manual_seed(0)
        model = make_model()
        with fnn_fast.use_backend(backend):
            if backend == "native":
                model.fuse_update(rule)
            table_optimizer = rule.optimizer([model.table])
            dense = [p for n, p in model.named_parameters() if n != "table"]
            dense_optimizer = torch.optim.SGD(dense, lr=0.05)
            for ids, values, labels in batches:
                table_optimizer.zero_grad()
                dense_optimizer.zero_grad()
                F.binary_cross_entropy_with_logits(model(ids, values), labels).backward()
                if backend == "native":
                    assert model.table.grad is None  # the update happened inside backward
                table_optimizer.step()
                dense_optimizer.step()
        models[backend] = (model, table_optimizer)
    return models
