"""The Python training API end to end: fnn_fast.fit from files, DataFrames and Arrow tables (the
same rows give the same model), predict / evaluate / save / load against `fnn-fast train`,
`score` and `evaluate` on the same rows, settings, checkpoints and resume from a DataFrame, and
the errors of bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd  # the test extra brings it
import pyarrow as pa
import pytest
import torch
from helpers import CATEGORICAL, NUMERIC, cli_scores, write_csv, write_libfm

import fnn_fast
from fnn_fast.cli import main
from fnn_fast.data import DataError, Schema
from fnn_fast.train import TrainConfig

COLUMNS = dict(label="label", categorical=CATEGORICAL, numeric=NUMERIC.split(","))
QUICK = dict(fm_epochs=2, fnn_epochs=1, hidden=[16, 8], progress=False)
QUICK_FLAGS = ["--fm-epochs", "2", "--fnn-epochs", "1", "--hidden", "16,8", "--no-progress"]
QUICK_CONFIG = {"fm_epochs": 2, "fnn_epochs": 1, "hidden": [16, 8]}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    files = {
        "train": write_csv(folder / "train.csv", 2500, seed=1),
        "test": write_csv(folder / "test.csv", 900, seed=2),
    }
    frames = {name: pd.read_csv(path) for name, path in files.items()}
    return folder, files, frames


@pytest.fixture(scope="module")
def from_file(data):
    _, files, _ = data
    return fnn_fast.fit(str(files["train"]), test=files["test"], **COLUMNS, **QUICK)


def test_file_dataframe_and_arrow_give_the_same_model(data, from_file):
    _, files, frames = data
    tables = {name: pa.Table.from_pandas(f, preserve_index=False) for name, f in frames.items()}
    from_frame = fnn_fast.fit(frames["train"], test=frames["test"], format="csv", **COLUMNS,
                              **QUICK)  # fmt: skip
    from_table = fnn_fast.fit(tables["train"], test=tables["test"], **COLUMNS, **QUICK)
    expected = from_file.predict(files["test"])
    assert expected.dtype == np.float64 and expected.shape == (900,)
    assert 0 < expected.min() and expected.max() < 1
    for model in (from_frame, from_table):
        for name, tensor in from_file.fnn.state_dict().items():
            assert torch.equal(model.fnn.state_dict()[name], tensor), name
        assert model.metrics["fnn"] == from_file.metrics["fnn"]
        np.testing.assert_array_equal(model.predict(frames["test"]), expected)
        np.testing.assert_array_equal(model.predict(tables["test"]), expected)
    # the schema records the format to read files with: csv as asked, parquet for a table
    assert from_frame.schema.format == "csv" and from_table.schema.format == "parquet"
    # a record batch, and a DataFrame whose categorical columns are pandas categoricals
    batch = tables["test"].combine_chunks().to_batches()[0]
    np.testing.assert_array_equal(from_file.predict(batch), expected)
    categories = frames["test"].astype({c: "category" for c in CATEGORICAL.split(",")})
    np.testing.assert_array_equal(from_file.predict(categories), expected)


def test_fit_writes_what_train_writes_and_load_scores_as_the_cli(data, from_file, tmp_path):
    folder, files, frames = data
    cli_out = tmp_path / "cli"
    columns = ["--label", "label", "--categorical", CATEGORICAL, "--numeric", NUMERIC]
    inputs = ["--train", str(files["train"]), "--test", str(files["test"]), "--format", "csv"]
    assert main(["train", *inputs, *columns, *QUICK_FLAGS, "--out", str(cli_out)]) == 0
    api_out = tmp_path / "api"
    model = fnn_fast.fit(files["train"], test=files["test"], **COLUMNS, **QUICK, out=api_out)
    assert (api_out / "model.safetensors").read_bytes() == (
        cli_out / "model.safetensors"
    ).read_bytes()
    assert sorted(p.name for p in api_out.iterdir()) == sorted(p.name for p in cli_out.iterdir())
    for name in ("metrics.json", "config.json"):
        assert json.loads((api_out / name).read_text()) == json.loads((cli_out / name).read_text())
    assert model.metrics == json.loads((api_out / "metrics.json").read_text())

    # predict / save / load against `fnn-fast score` and `fnn-fast evaluate` on the same rows
    saved = tmp_path / "saved"
    assert from_file.save(saved) == saved
    assert (saved / "roc.png").exists()  # the report plots the test rows of the fit
    loaded = fnn_fast.load(saved)
    assert isinstance(loaded, fnn_fast.TrainedModel)
    assert loaded.train_config == TrainConfig(**{**TrainConfig().to_dict(), **QUICK_CONFIG})
    unlabelled = frames["test"].drop(columns="label")
    for which in ("fnn", "fm"):
        cli = cli_scores(saved, files["test"], tmp_path / f"{which}.npy", "--which", which)
        expected = from_file.predict(files["test"], which=which)
        np.testing.assert_allclose(cli, expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(loaded.predict(files["test"], which=which), expected)
        np.testing.assert_array_equal(loaded.predict(unlabelled, which=which), expected)
    for model in (from_file, loaded):
        for which in ("fnn", "fm"):
            got = model.evaluate(frames["test"], which=which)
            assert got == pytest.approx(model.evaluate(files["test"], which=which))
            assert got["auc"] == pytest.approx(from_file.metrics[which]["test_auc"])
    with pytest.raises(FileExistsError, match="overwrite"):
        loaded.save(saved)
    loaded.save(saved, overwrite=True)  # a loaded model saves again (no ROC: no rows at hand)
    assert fnn_fast.load(saved).metrics == from_file.metrics


def test_cli_evaluate_equals_model_evaluate(data, from_file, tmp_path, capsys):
    _, files, _ = data
    saved = from_file.save(tmp_path / "m")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(saved), "--data", str(files["test"]),
                 "--no-progress"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    for which in ("fm", "fnn"):
        assert from_file.evaluate(files["test"], which) == pytest.approx(printed[which])


def test_libfm_files_and_the_featindex(tmp_path):
    train, featindex = write_libfm(tmp_path, 2000, seed=1)
    rows = write_libfm(tmp_path, 600, seed=2)[0]
    model = fnn_fast.fit(train, format="libfm", featindex=featindex, **QUICK, out=tmp_path / "m")
    assert (tmp_path / "m" / "featindex.txt").exists()
    loaded = fnn_fast.load(tmp_path / "m")
    expected = cli_scores(tmp_path / "m", rows, tmp_path / "s.npy")
    np.testing.assert_allclose(model.predict(rows), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded.predict(rows), expected, rtol=0, atol=1e-6)
    assert set(loaded.evaluate(rows)) == {"auc", "logloss"}


def test_settings_config_and_overrides(data):
    _, files, frames = data
    base = TrainConfig(factors=3, hidden=[8], fm_epochs=5, fnn_epochs=1, seed=3)
    model = fnn_fast.fit(frames["train"], config=base, fm_epochs=1, activation="relu",
                         progress=False, **COLUMNS)  # fmt: skip
    config = model.train_config
    assert (config.factors, config.hidden, config.fm_epochs, config.activation, config.seed) == (
        3, [8], 1, "relu", 3,
    )  # fmt: skip
    assert model.fm.num_factors == 3 and len(model.history["fm"]) == 1
    assert model.config["fnn"]["hidden"] == [8]
    assert repr(model) == "TrainedModel(FM 197 features x 3 factors, FNN hidden [8], reads parquet)"
    # best.json of `fnn-fast tune`: {"config": {...}}; a dict of settings alike
    tuned = fnn_fast.fit(frames["train"], config={"config": {"fm_epochs": 1, "fnn_epochs": 1,
                         "hidden": [4]}}, progress=False, **COLUMNS)  # fmt: skip
    assert tuned.train_config.hidden == [4] and tuned.train_config.factors == 10
    # the held-out part: valid_fraction of the training rows, drawn with the seed
    assert "valid_auc" in model.metrics["fm"] and "test_auc" not in model.metrics["fm"]
    with pytest.raises(TypeError, match="unknown settings: fm_epoch"):
        fnn_fast.fit(frames["train"], fm_epoch=1, **COLUMNS)
    with pytest.raises(ValueError, match="fm_optimizer must be one of"):
        fnn_fast.fit(frames["train"], fm_optimizer="adamw", **COLUMNS)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        fnn_fast.fit(frames["train"], batch_size=0, **COLUMNS)
    hashed = fnn_fast.fit(frames["train"], hash_buckets=64, **COLUMNS, **QUICK)
    assert hashed.encoder.num_features == 5 * 64 + 1 and "hashing" in hashed.metrics


def test_bad_input_is_named(data, tmp_path):
    _, files, frames = data
    train = frames["train"]
    with pytest.raises(DataError, match=r"<train DataFrame>: declared columns not in it: c9"):
        fnn_fast.fit(train, label="label", categorical=["c1", "c9"], progress=False)
    with pytest.raises(DataError, match=r"<test Arrow table>: declared columns not in it: label"):
        fnn_fast.fit(train, test=pa.Table.from_pandas(frames["test"].drop(columns="label")),
                     **COLUMNS)  # fmt: skip
    bad_label = train.copy()
    bad_label.loc[6, "label"] = 3
    with pytest.raises(DataError, match=r"<train DataFrame>:7: label '3' is not 0/1"):
        fnn_fast.fit(bad_label, **COLUMNS)
    infinite = train.copy()
    infinite.loc[9, "n2"] = np.inf
    with pytest.raises(DataError, match=r"<valid DataFrame>:10: numeric column n2: 'inf'"):
        fnn_fast.fit(train, valid=infinite, **COLUMNS)
    words = train.astype({"n1": object})
    words.loc[0, "n1"] = "many"
    with pytest.raises(DataError, match=r"<train DataFrame>:1: numeric column n1: 'many'"):
        fnn_fast.fit(words, **COLUMNS)
    # skip_bad_lines: the bad rows are left out, counted as a file's bad lines are
    skipped = fnn_fast.fit(bad_label, skip_bad_lines=True, **COLUMNS, **QUICK)
    assert len(skipped.history["fm"]) == 2
    with pytest.raises(DataError, match="no rows to train"):
        fnn_fast.fit(train.iloc[:0], **COLUMNS)
    with pytest.raises(FileNotFoundError, match="train .*missing.csv: no such file"):
        fnn_fast.fit(str(tmp_path / "missing.csv"), **COLUMNS)
    with pytest.raises(ValueError, match="give format="):
        fnn_fast.fit(str(files["train"]).replace(".csv", ".txt"), **COLUMNS)
    with pytest.raises(TypeError, match="DataFrame or Arrow table is needed, not list"):
        fnn_fast.fit([[1, 2]], **COLUMNS)
    with pytest.raises(ValueError, match="stream reads files"):
        fnn_fast.fit(train, valid=train, stream=True, **COLUMNS)
    with pytest.raises(ValueError, match="give out= as well"):
        fnn_fast.fit(train, checkpoint_every=10, **COLUMNS)
    with pytest.raises(ValueError, match="either schema= or the schema options"):
        fnn_fast.fit(train, schema=Schema("csv", categorical=["c1"]), format="csv")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        fnn_fast.fit(train, out=blocker, **COLUMNS)
    with pytest.raises(DataError, match="columns missing: c2"):
        fnn_fast.fit(train, **COLUMNS, **QUICK).predict(frames["test"].drop(columns="c2"))


RESUME_FIT = """
import pandas as pd
import fnn_fast

def resumable_fit(path, out, cell, resume):
    frame = pd.read_csv(path)
    frame.loc[0, "c1"] = cell  # the same rows, or one changed cell
    return fnn_fast.fit(
        frame, valid=frame.iloc[:500], label="label", categorical=["c1", "c2", "c3"],
        numeric="n1,n2", fm_epochs=2, fnn_epochs=2, hidden=[8], batch_size=128,
        progress=False, out=out, checkpoint_every=10, resume=resume,
    )
"""


def test_checkpoints_and_resume_from_a_dataframe(data, tmp_path):
    _, files, _ = data
    script = tmp_path / "fit.py"
    script.write_text(
        RESUME_FIT + "\nimport sys\nresumable_fit(*sys.argv[1:4], '--resume' in sys.argv)\n"
    )

    def run(out, *extra, kill=None):
        env = {k: v for k, v in os.environ.items() if k != "FNN_FAST_TEST_KILL"}
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        if kill is not None:
            env["FNN_FAST_TEST_KILL"] = kill
        command = [sys.executable, str(script), str(files["train"]), str(out), "a1", *extra]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    assert run(out, kill="checkpoint:3").returncode == -9
    # other rows: refused (the checkpoint holds a hash of the table), nothing touched
    namespace = {}
    exec(RESUME_FIT, namespace)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="--resume refused.*data train"):
        namespace["resumable_fit"](files["train"], out, "a2", resume=True)
    assert sorted(p.name for p in out.iterdir()) == before
    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stderr
    model = (out / "model.safetensors").read_bytes()
    assert model == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert not (out / "checkpoint").exists()


def test_fit_and_load_are_exported_lazily():
    code = (
        "import sys, fnn_fast; assert 'fnn_fast.api' not in sys.modules; "
        "assert fnn_fast.fit is fnn_fast.api.fit and fnn_fast.load is fnn_fast.api.load; "
        "assert {'fit', 'load', 'TrainedModel'} <= set(fnn_fast.__all__)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without CUDA")
def test_a_missing_gpu_is_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(ValueError, match="CUDA is not available here"):
        fnn_fast.fit(str(tmp_path / "missing.csv"), device="cuda", out=tmp_path / "m", **COLUMNS)
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_a_gpu(data):
    _, _, frames = data
    gpu = fnn_fast.fit(frames["train"], test=frames["test"], device="cuda", **COLUMNS, **QUICK)
    assert gpu.metrics["device"].startswith("cuda")
    assert all(p.device.type == "cpu" for p in gpu.fnn.parameters())  # back, ready to save
    cpu = fnn_fast.fit(frames["train"], test=frames["test"], **COLUMNS, **QUICK)
    p = gpu.predict(frames["test"])
    assert np.isfinite(p).all()
    assert abs(gpu.evaluate(frames["test"])["auc"] - cpu.evaluate(frames["test"])["auc"]) < 0.05


def test_what_a_resume_checks_of_a_table():
    from fnn_fast.api import _identity, _input

    def identity(data):
        return _identity(_input(data, "train"))

    rows = {"a": list(range(10)), "b": [f"s{i}" for i in range(10)], "c": [None, 1.5] * 5}
    table = pa.table(rows)
    half = pa.table({k: v[:5] for k, v in rows.items()})
    assert identity(table.slice(0, 5)) == identity(half)  # the same rows, other buffers
    assert identity(table.slice(0, 5)) != identity(table.slice(5, 5))  # a slice's own rows
    assert identity(pa.concat_tables([half.slice(0, 2), half.slice(2)])) == identity(half)
    frame = table.to_pandas()
    assert identity(frame) == identity(frame.copy()) != identity(frame.iloc[1:])


def test_multi_valued_columns_from_text_and_from_lists(tmp_path):
    rng = np.random.default_rng(5)
    tags = [list(rng.choice(list("abcdefgh"), size=int(rng.integers(0, 4)))) for _ in range(1500)]
    clicks = [int(rng.random() < (0.7 if "a" in t else 0.2)) for t in tags]
    sites = [f"s{i}" for i in rng.integers(0, 9, 1500)]
    frame = pd.DataFrame({"click": clicks, "site": sites, "tags": tags})
    text = frame.assign(tags=["|".join(t) for t in tags])
    text.to_csv(tmp_path / "rows.csv", index=False)
    columns = dict(label="click", categorical=["site", "tags"], **QUICK)
    from_csv = fnn_fast.fit(tmp_path / "rows.csv", multi_valued="tags:pipe:mean", **columns)
    from_text = fnn_fast.fit(text, format="csv", multi_valued="tags:pipe:mean", **columns)
    from_lists = fnn_fast.fit(frame, multi_valued={"tags": {"pooling": "mean"}}, **columns)
    assert from_csv.schema.multi_valued["tags"]["separator"] == "|"
    expected = from_csv.predict(tmp_path / "rows.csv")
    np.testing.assert_array_equal(from_text.predict(text), expected)
    for model in (from_text, from_lists):  # lists score as their text does
        np.testing.assert_array_equal(model.predict(frame), expected)
    frame.to_parquet(tmp_path / "rows.parquet")  # a list<string> column
    saved = from_lists.save(tmp_path / "m")  # reads Parquet, as it was trained from Arrow
    cli = cli_scores(saved, tmp_path / "rows.parquet", tmp_path / "s.npy")
    np.testing.assert_allclose(cli, expected, rtol=0, atol=1e-6)
    with pytest.raises(DataError, match="declare its separator"):
        from_lists.predict(text)  # a model of list columns was given no separator
