"""Numeric cells to bucket tokens: the rule (fnn_fast.data.tokens.bucket_token), its readers,
and models saved before the rule had a number, which keep scoring as they were trained."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fnn_fast import FM, FNN
from fnn_fast.data import FeatureEncoder, Schema, read_rows
from fnn_fast.data import parts as parts_module
from fnn_fast.data.tokens import (
    NUMERIC_RULE,
    VALUE_BITS,
    bucket_token,
    hash_token,
    missing_key,
    value_key,
)
from fnn_fast.saved import load_model, save_model
from fnn_fast.score import Scorer, predict, score_files


def test_small_fractional_and_negative_values_get_buckets_of_their_own():
    small = [0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.9, 1.0, 1.5, 2.0]
    tokens = [bucket_token(x, 2) for x in small]
    assert len(set(tokens)) == len(small)  # rule 1 sends the first seven to one bucket, "0"
    assert len({bucket_token(x, 1) for x in small[:7]}) == 1
    assert len({bucket_token(-x, 2) for x in small}) == len(small)
    assert not {bucket_token(-x, 2) for x in small} & set(tokens)  # the sign is kept
    assert bucket_token(0.0, 2) == bucket_token(-0.0, 2) == "0"
    assert len({bucket_token(x, 2) for x in (0, 1, 2, 3)}) == 4  # rule 1: 1 and 3 collide
    assert bucket_token(5e-324, 2) != bucket_token(1e-300, 2) != bucket_token(0.0, 2)
    # quarter steps of log|x|: a bucket spans a factor e^(1/4), edges included on its left
    assert bucket_token(math.exp(-1.0), 2) == "s-4" and bucket_token(0.3678, 2) == "s-5"


def test_values_above_two_keep_rule_1_buckets():
    large = [2.0000001, 3, 7.5, 10, 1000, 123456789012, 1.7976931348623157e308]
    for x in large:
        assert bucket_token(x, 2) == bucket_token(x, 1) == str(math.floor(math.log(x) ** 2))
        assert bucket_token(-x, 2) == "-" + bucket_token(x, 2)


CELLS = ["0.1", "0.25", "0.5", "0.9", "1.5", "-0.5", "-3", "0", "2", "40.5"]


def test_csv_and_parquet_floats_give_distinct_buckets_and_the_same_keys(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("label,x,c\n" + "".join(f"1,{v},a\n" for v in CELLS))
    parquet_path = tmp_path / "t.parquet"
    values = pa.array([float(v) for v in CELLS], pa.float64())
    labels = pa.array([1] * len(CELLS))
    table = pa.table({"label": labels, "x": values, "c": ["a"] * len(CELLS)})
    pq.write_table(table, parquet_path)
    schema = Schema("csv", numeric=["x"], categorical=["c"])
    from_csv = read_rows(csv_path, schema, progress=False)
    parquet_schema = Schema.from_dict(schema.to_dict() | {"format": "parquet"})
    from_parquet = read_rows(parquet_path, parquet_schema, progress=False)
    assert len(set(from_csv.keys[:, 0].tolist())) == len(CELLS)
    np.testing.assert_array_equal(from_parquet.keys, from_csv.keys)
    np.testing.assert_array_equal(from_csv.keys[:, 0], [value_key(float(v)) for v in CELLS])
    rule_2 = Schema.from_dict(schema.to_dict() | {"numeric_rule": 2})
    expected = [hash_token(bucket_token(float(v), 2)) for v in CELLS]
    np.testing.assert_array_equal(read_rows(csv_path, rule_2, progress=False).keys[:, 0], expected)


def test_new_schemas_use_the_current_rule_and_saved_ones_without_it_rule_1():
    schema = Schema("csv", numeric=["x"])
    assert schema.numeric_rule == NUMERIC_RULE == 3
    assert Schema.from_dict(schema.to_dict()).numeric_rule == 3
    saved_before = {k: v for k, v in schema.to_dict().items() if k != "numeric_rule"}
    assert Schema.from_dict(saved_before).numeric_rule == 1
    with pytest.raises(ValueError, match="numeric_rule must be one of"):
        Schema("csv", numeric=["x"], numeric_rule=4)


def _scored_alike_on_every_path(model, data, expected, tmp_path, monkeypatch) -> None:
    """The C++ reader, the Python readers and the pandas path score ``data`` as ``expected``."""
    score_files(model, data, tmp_path / "native.npy", part_bytes=4096, progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "native.npy"), expected, rtol=1e-6)
    monkeypatch.setattr(parts_module, "_native_text_part", lambda *args: None)
    score_files(model, data, tmp_path / "python.npy", part_bytes=4096, progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "python.npy"), expected, rtol=1e-6)
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    np.testing.assert_allclose(Scorer(model).predict_pandas(frame), expected, rtol=1e-6)


def test_a_model_saved_before_the_rule_scores_as_it_was_trained(tmp_path, monkeypatch):
    schema_1 = Schema("csv", numeric=["x", "y"], categorical=["c"], numeric_rule=1)
    rng = np.random.default_rng(0)
    lines = [
        f"{i % 2},{rng.choice(CELLS)},{rng.uniform(-1, 1):.3f},c{rng.integers(0, 5)}\n"
        for i in range(600)
    ]
    data = tmp_path / "day.csv"
    data.write_text("label,x,y,c\n" + "".join(lines))
    rows = read_rows(data, schema_1, progress=False)
    encoder = FeatureEncoder.fit_rows(rows)
    fm = FM(encoder.num_features, 4, init_std=0.3)
    fnn = FNN.from_fm(fm, num_fields=3, hidden=(8,), init_std=0.3)
    model = save_model(tmp_path / "model", fm, fnn, encoder, schema_1)
    config_path = model / "config.json"
    config = json.loads(config_path.read_text())
    del config["schema"]["numeric_rule"]  # as written before rules had numbers
    config_path.write_text(json.dumps(config))

    saved = load_model(model)
    assert saved.schema.numeric_rule == 1
    _scored_alike_on_every_path(model, data, predict(saved, rows), tmp_path, monkeypatch)
    # the same model read with rule 2 would encode most numbers as unseen
    schema_2 = Schema.from_dict(schema_1.to_dict() | {"numeric_rule": 2})
    current = read_rows(data, schema_2, progress=False)
    assert np.isin(encoder.transform_rows(current)[0][:, :2], encoder.offsets).mean() > 0.5


def _rule_3_file(tmp_path):
    """x: 7.0 in 12 rows (a feature of its own at value_min_count 10), 8 and 9 in 3 each (both
    in rule 2's bucket 4: log(8)^2 = 4.3, log(9)^2 = 4.8), 100 once, and 3 empty cells."""
    cells = ["7.0"] * 12 + ["8"] * 3 + ["9"] * 3 + ["100"] + [""] * 3
    rng = np.random.default_rng(0)
    lines = [f"{i % 2},{x},c{rng.integers(0, 3)}\n" for i, x in enumerate(cells)]
    path = tmp_path / "train.csv"
    path.write_text("label,x,c\n" + "".join(lines))
    return path


def test_rule_3_keeps_frequent_values_and_backs_rare_ones_off_to_their_bucket(tmp_path):
    schema = Schema("csv", numeric=["x"], categorical=["c"])
    rows = read_rows(_rule_3_file(tmp_path), schema, progress=False)
    assert rows.value_fields == [0]
    keys = rows.keys[:, 0]
    assert (keys[:19] & VALUE_BITS != 0).all()
    assert (keys[-3:] == missing_key(3)).all() and missing_key(3) & VALUE_BITS == 0
    encoder = FeatureEncoder.fit_rows(rows)
    assert encoder.value_fields == [0] and encoder.value_min_count == 10
    # kept: the value 7, bucket 4 (8 and 9: 6 rows), the bucket of 100 (1 row), missing
    assert len(encoder.vocabs[0]) == 4
    probe = Schema("csv", numeric=["x"], categorical=["c"])
    test = tmp_path / "test.csv"
    cells = ["7", "8", "9", "8.5", "100", "101", "1e9", ""]
    test.write_text("label,x,c\n" + "".join(f"0,{x},c0\n" for x in cells))
    test_rows = read_rows(test, probe, progress=False)
    ids = encoder.transform_rows(test_rows)[0][:, 0]
    # the C++ table (encode_keys) backs off as the numpy path does
    assert encoder.native_vocabulary() is not None
    np.testing.assert_array_equal(ids, encoder._ids(0, test_rows.keys[:, 0]))
    oov = encoder.offsets[0]
    seven, eight, nine, eight_half, hundred, hundred_one, huge, missing = ids.tolist()
    assert seven != oov and len({seven, eight, hundred, missing}) == 4
    assert eight == nine == eight_half  # rare or unseen values of bucket 4 share its id
    assert hundred == hundred_one != oov  # 101: unseen, in the bucket of 100 (21)
    assert huge == oov  # an unseen value in an unseen bucket
    # with every value rare, only buckets; with value_min_count 1, every seen value is kept
    buckets = FeatureEncoder.fit(rows, value_min_count=100)
    assert len(buckets.vocabs[0]) == 4  # buckets 3 (7), 4, 21 (100), missing
    exact = FeatureEncoder.fit(rows, value_min_count=1)
    assert len(exact.vocabs[0]) == 5
    # saved and loaded, the encoder backs off as before
    encoder.save(tmp_path / "encoder")
    loaded = FeatureEncoder.load(tmp_path / "encoder")
    assert loaded.value_fields == [0] and loaded.value_min_count == 10
    again = loaded.transform_rows(read_rows(test, probe, progress=False))[0][:, 0]
    np.testing.assert_array_equal(again, ids)


def test_rule_3_scores_alike_through_the_cpp_reader_python_and_pandas(tmp_path, monkeypatch):
    schema = Schema("csv", numeric=["x", "y"], categorical=["c"])
    rng = np.random.default_rng(1)
    common = ["0", "1", "2", "7.5", "-3", "40"]
    lines = [
        f"{i % 2},{rng.choice(common) if rng.random() < 0.8 else f'{rng.uniform(-50, 50):.6g}'},"
        f"{rng.choice(common)},c{rng.integers(0, 5)}\n"
        for i in range(800)
    ] + ["1,,3,c1\n", "0,1e6,0,c2\n"]
    data = tmp_path / "day.csv"
    data.write_text("label,x,y,c\n" + "".join(lines))
    rows = read_rows(data, schema, progress=False)
    encoder = FeatureEncoder.fit_rows(rows)
    assert encoder.value_fields == [0, 1]
    fm = FM(encoder.num_features, 4, init_std=0.3)
    fnn = FNN.from_fm(fm, num_fields=3, hidden=(8,), init_std=0.3)
    model = save_model(tmp_path / "model", fm, fnn, encoder, schema)
    saved = load_model(model)
    assert saved.schema.numeric_rule == 3 and saved.encoder.value_fields == [0, 1]
    _scored_alike_on_every_path(model, data, predict(saved, rows), tmp_path, monkeypatch)
    # the rare values (about a fifth of x) read as their buckets, not as unseen
    ids = encoder.transform_rows(rows)[0][:, 0]
    assert (ids == encoder.offsets[0]).mean() < 0.05


def test_hashing_reads_rule_3_numbers_by_their_bucket(tmp_path):
    from fnn_fast.data import HashedEncoder

    schema = Schema("csv", numeric=["x"], categorical=["c"])
    rows = read_rows(_rule_3_file(tmp_path), schema, progress=False)
    encoder = HashedEncoder.fit(rows, buckets=1000)
    ids = encoder.transform_rows(rows)[0][:, 0]
    assert ids[12] == ids[15] != ids[0]  # 8 and 9: bucket 4; 7: bucket 3
    encoder.save(tmp_path / "hashed")
    loaded = FeatureEncoder.load(tmp_path / "hashed")
    np.testing.assert_array_equal(loaded.transform_rows(rows)[0], encoder.transform_rows(rows)[0])


def test_train_takes_value_min_count_and_the_model_keeps_it(tmp_path):
    from helpers import CATEGORICAL, NUMERIC, train, write_csv

    data = write_csv(tmp_path / "train.csv", 1500, seed=3)  # n1: 60 integers, n2: near-unique
    sizes = {}
    for count in (10, 1000):
        model = tmp_path / f"m{count}"
        train(model, "--train", str(data), "--format", "csv", "--label", "label",
              "--categorical", CATEGORICAL, "--numeric", NUMERIC,
              "--value-min-count", str(count))  # fmt: skip
        encoder = json.loads((model / "encoder" / "encoder.json").read_text())
        assert encoder["value_min_count"] == count and encoder["value_fields"] == [0, 1]
        assert json.loads((model / "config.json").read_text())["schema"]["numeric_rule"] == 3
        sizes[count] = encoder["sizes"][:2]
    # from 10 rows each of n1's 60 values (about 20 rows each) is its own feature; from 1000
    # rows none is, and n1 has only its buckets
    assert sizes[10][0] > 50 > sizes[1000][0]
    assert sizes[10][1] < 60  # n2's values are near-unique: buckets in both
