"""Inputs that are not plain data files: empty files, directories, unreadable paths, files that
are not Parquet. Each stops the run with a message naming the path, or (an empty file to score)
gives no rows and says so."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fnn_fast import FM
from fnn_fast.cli import main
from fnn_fast.data import DataError, FeatureEncoder, Schema, load_rows, read_rows
from fnn_fast.data.cache import write_rows
from fnn_fast.data.parts import expand_inputs, plan_parts
from fnn_fast.saved import save_model
from fnn_fast.score import score_files

SCHEMA = Schema("csv", numeric=["n"], categorical=["c"])


def write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name, text, schema, why",
    [
        ("empty.fm", "", Schema("libfm"), "it holds no data lines"),
        ("empty.txt", "", Schema.criteo(), "it holds no data lines"),
        ("blank.txt", "\n\n", Schema.criteo(), "it holds no data lines"),
        ("header.csv", "label,n,c\n", SCHEMA, "it holds no data lines"),
        ("bad.fm", "2 1:1\nx 2:1\n", Schema("libfm"), "all 2 lines with data are bad"),
    ],
)
def test_training_on_a_file_without_rows_names_it(tmp_path, name, text, schema, why):
    path = write(tmp_path / name, text)
    for cache_dir in (None, tmp_path / "cache"):
        with pytest.raises(DataError, match=f"{name}: no rows to train or evaluate on: {why}"):
            load_rows(path, schema, cache_dir=cache_dir, skip_bad_lines=True, progress=False)


def test_the_cli_says_an_empty_training_file_has_no_rows(tmp_path, capsys):
    path = write(tmp_path / "train.fm", "")
    code = main(["train", "--train", str(path), "--format", "libfm", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "train.fm: no rows to train or evaluate on" in capsys.readouterr().err


@pytest.fixture
def model(tmp_path):
    data = write(tmp_path / "fit.csv", "label,n,c\n" + "".join(f"1,{i},c{i}\n" for i in range(9)))
    encoder = FeatureEncoder.fit_rows(read_rows(data, SCHEMA, progress=False))
    fm = FM(encoder.num_features, 2, init_std=0.3)
    return save_model(tmp_path / "model", fm, None, encoder, SCHEMA)


def test_an_empty_file_to_score_among_others_gives_no_rows_and_says_so(tmp_path, model):
    day = write(tmp_path / "day.csv", "label,n,c\n1,3,c3\n0,4,c9\n")
    empty = write(tmp_path / "empty.csv", "")
    out = tmp_path / "scores.npy"
    with pytest.warns(UserWarning, match="empty.csv: the file is empty: it adds no rows"):
        summary = score_files(model, [empty, day, empty], out, which="fm", progress=False)
    assert summary.rows == 2 and np.isfinite(np.load(out)).all()


def test_a_subdirectory_in_an_input_directory_is_named(tmp_path):
    folder = tmp_path / "logs"
    (folder / "older").mkdir(parents=True)
    write(folder / "day.csv", "label,n,c\n1,3,c3\n")
    with pytest.raises(DataError, match=r"older: a directory in the input directory .*logs, not"):
        expand_inputs(folder)
    with pytest.raises(DataError, match=r"older: a directory matched by .*logs/\*, not a file"):
        expand_inputs(str(folder / "*"))
    assert expand_inputs(str(folder / "*.csv")) == [str(folder / "day.csv")]


def test_a_cache_entry_in_an_input_directory_is_an_input(tmp_path):
    folder = tmp_path / "cache"
    day = write(tmp_path / "day.csv", "label,n,c\n1,3,c3\n")
    write_rows(read_rows(day, SCHEMA, progress=False), folder / "day-entry", SCHEMA)
    assert expand_inputs(folder) == [str(folder / "day-entry")]


def test_an_unreadable_file_in_a_glob_or_directory_is_named(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    write(folder / "day.csv", "label,n,c\n1,3,c3\n")
    os.symlink(tmp_path / "gone.csv", folder / "moved.csv")  # a link to a removed file
    with pytest.raises(DataError, match=r"moved.csv: cannot be read \(matched by .*\): No such"):
        expand_inputs(str(folder / "*.csv"))
    with pytest.raises(DataError, match=r"moved.csv: cannot be read \(in the input directory"):
        expand_inputs(folder)
    if os.geteuid() != 0:  # root reads any file
        locked = write(tmp_path / "locked.csv", "label,n,c\n")
        locked.chmod(0)
        with pytest.raises(DataError, match="locked.csv: cannot be read .*: Permission denied"):
            expand_inputs(locked)


def test_a_directory_or_missing_file_to_train_on_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: a directory, not a file"):
        read_rows(tmp_path, SCHEMA, progress=False)
    with pytest.raises(DataError, match="gone.csv: no such file"):
        read_rows(tmp_path / "gone.csv", SCHEMA, progress=False)


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    path = write(tmp_path / "day.parquet", "label,n,c\n1,3,c3\n")
    schema = Schema.from_dict(SCHEMA.to_dict() | {"format": "parquet"})
    with pytest.raises(DataError, match="day.parquet: not a readable Parquet file"):
        read_rows(path, schema, progress=False)
    with pytest.raises(DataError, match="day.parquet: not a readable Parquet file"):
        plan_parts([str(path)], schema)


def test_corrupt_parquet_data_is_named(tmp_path):
    path = tmp_path / "day.parquet"
    rows = 5000
    table = pa.table({"label": np.zeros(rows, np.int64), "c": [f"v{i}" for i in range(rows)]})
    pq.write_table(table, path, compression="snappy")
    data = bytearray(path.read_bytes())
    data[2000:2200] = b"\xff" * 200  # inside the column chunks; the footer stays readable
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="day.parquet: corrupt Parquet data: "):
        read_rows(path, Schema("parquet", categorical=["c"]), progress=False)
