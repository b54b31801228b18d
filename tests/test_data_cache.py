import json
import os
import re

import numpy as np
import pytest

import fnn_fast.data.cache as cache
from fnn_fast.data import DataError, Schema, load_rows, open_rows, read_rows, write_rows
from fnn_fast.data.parts import plan_parts

SCHEMA = Schema("csv", categorical=["C"], numeric=["N"], id_column="id")


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("id,label,N,C\nr1,1,5,a\nr2,0,,b\nbad\nr3,0,1,\n")
    return path


def assert_same_rows(a, b):
    for name in ("labels", "keys", "values", "lines", "slot_fields", "row_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == getattr(b, name).dtype
    assert (a.field_names, a.bad_lines, a.bad_examples, a.source) == (
        b.field_names,
        b.bad_lines,
        b.bad_examples,
        b.source,
    )


def test_write_and_open_round_trip(tmp_path, csv_file):
    rows = read_rows(csv_file, SCHEMA, skip_bad_lines=True, progress=False)
    write_rows(rows, tmp_path / "entry", SCHEMA)
    assert_same_rows(open_rows(tmp_path / "entry"), rows)
    assert_same_rows(open_rows(tmp_path / "entry", mmap=False), rows)


def test_cache_is_written_once_then_reused_without_parsing(tmp_path, csv_file, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = load_rows(csv_file, SCHEMA, cache_dir=cache_dir, skip_bad_lines=True, progress=False)
    entries = list(cache_dir.iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("train.csv-")  # no temp dirs left
    assert {p.name for p in entries[0].iterdir()} == {
        "labels.npy",
        "keys.npy",
        "values.npy",
        "lines.npy",
        "row_ids.npy",
        "meta.json",
    }

    def no_parsing(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cache, "read_rows", no_parsing)
    second = load_rows(csv_file, SCHEMA, cache_dir=cache_dir, skip_bad_lines=True, progress=False)
    assert isinstance(second.keys, np.memmap) and isinstance(second.labels, np.memmap)
    assert_same_rows(second, first)
    assert_same_rows(second, read_rows(csv_file, SCHEMA, skip_bad_lines=True, progress=False))
    assert second.bad_lines == 1


def test_cache_entry_changes_with_the_file_the_schema_and_skip_bad_lines(tmp_path, csv_file):
    cache_dir = tmp_path / "cache"

    def load(schema=SCHEMA, skip=True):
        return load_rows(csv_file, schema, cache_dir=cache_dir, skip_bad_lines=skip, progress=False)

    assert len(load()) == 3
    with open(csv_file, "a") as file:
        file.write("r4,1,2,d\n")
    stat = os.stat(csv_file)
    os.utime(csv_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert len(load()) == 4
    assert load(Schema("csv", categorical=["C"])).keys.shape == (4, 1)
    with pytest.raises(DataError, match="expected 4 comma-separated columns, found 1"):
        load(skip=False)
    assert len(list(cache_dir.iterdir())) == 3  # the failed parse left nothing behind


def test_without_cache_dir_it_just_reads(csv_file):
    rows = load_rows(csv_file, SCHEMA, skip_bad_lines=True, progress=False)
    assert not isinstance(rows.keys, np.memmap) and len(rows) == 3


def test_read_row_range_reads_what_the_mapped_arrays_hold(tmp_path):
    from fnn_fast.data import ParsedRows
    from fnn_fast.data.cache import read_row_range

    rng = np.random.default_rng(0)
    rows = ParsedRows(
        labels=rng.integers(0, 2, 50).astype(np.float32),
        keys=rng.integers(0, 1000, (50, 3)),
        values=rng.random((50, 3)).astype(np.float32),
        slot_fields=np.arange(3),
        field_names=["a", "b", "c"],
        row_ids=np.array([f"id{i}" for i in range(50)]),
    )
    write_rows(rows, tmp_path / "entry", SCHEMA)
    mapped = open_rows(tmp_path / "entry")
    for start, stop in ((0, 50), (7, 19), (45, 60), (50, 50)):
        part = read_row_range(tmp_path / "entry", start, stop)
        for name in ("labels", "keys", "values", "lines", "row_ids"):
            np.testing.assert_array_equal(getattr(part, name), getattr(mapped, name)[start:stop])


def _entry(tmp_path, csv_file, schema=SCHEMA):
    entry = tmp_path / "entry"
    write_rows(read_rows(csv_file, schema, skip_bad_lines=True, progress=False), entry, schema)
    return entry


@pytest.mark.parametrize(
    "change, message",
    [
        ({"numeric_mode": "value"}, "numeric_mode 'bucketize' (wanted: 'value')"),
        ({"numeric_rule": 1}, "numeric_rule 2 (wanted: 1)"),
        ({"numeric": [], "categorical": ["C", "N"]}, "numeric ['N'] (wanted: [])"),
        ({"format": "parquet"}, "format 'csv' (wanted: 'parquet')"),
        ({"id_column": "C2"}, "id_column 'id' (wanted: 'C2')"),
    ],
)
def test_an_entry_is_refused_for_a_schema_that_reads_other_keys(tmp_path, csv_file, change,
                                                                 message):  # fmt: skip
    entry = _entry(tmp_path, csv_file)
    other = Schema.from_dict(SCHEMA.to_dict() | change)
    with pytest.raises(DataError, match=re.escape(message)) as refused:
        plan_parts([str(entry)], other)
    assert str(refused.value).startswith(f"{entry}: this cache entry was built with other")
    assert "another --cache-dir" in str(refused.value)
    with pytest.raises(DataError, match=re.escape(message)):
        open_rows(entry, schema=other)
    # what does not change the keys: the label (not read when scoring), no id column asked for
    same_keys = Schema.from_dict(SCHEMA.to_dict() | {"label": "y", "id_column": None})
    assert sum(p.stop - p.start for p in plan_parts([str(entry)], same_keys)) == 3


def test_the_numeric_rule_matters_only_where_numbers_are_bucketized(tmp_path, csv_file):
    value_mode = Schema.from_dict(SCHEMA.to_dict() | {"numeric_mode": "value"})
    entry = _entry(tmp_path, csv_file, value_mode)  # built with the current rule, 2
    saved_before_rules = Schema.from_dict(value_mode.to_dict() | {"numeric_rule": 1})
    assert len(plan_parts([str(entry)], saved_before_rules)) == 1


def test_an_entry_is_refused_for_a_featindex_of_other_content(tmp_path):
    fm_file = tmp_path / "train.fm"
    fm_file.write_text("1 0:1 2:1\n0 1:1 3:1\n")
    built = tmp_path / "built.txt"
    built.write_text("a:x\t0\na:y\t1\nb:p\t2\nb:q\t3\n")
    copy = tmp_path / "model-copy.txt"  # a saved model's copy: same content, other path
    copy.write_bytes(built.read_bytes())
    other = tmp_path / "other.txt"
    other.write_text("a:x\t0\nb:y\t1\nb:p\t2\na:q\t3\n")
    schema = Schema("libfm", featindex=str(built))
    entry = _entry(tmp_path, fm_file, schema)
    assert len(plan_parts([str(entry)], Schema("libfm", featindex=str(copy)))) == 1
    with pytest.raises(DataError, match="featindex with content sha256 [0-9a-f]{12} \\(wanted"):
        plan_parts([str(entry)], Schema("libfm", featindex=str(other)))


def test_an_entry_of_the_previous_cache_format_is_refused_with_what_to_do(tmp_path, csv_file):
    entry = _entry(tmp_path, csv_file)
    meta = json.loads((entry / "meta.json").read_text())
    del meta["schema"]
    meta["format_version"] = 1
    (entry / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="cache format 1, this version reads 2: rebuild the entry"):
        plan_parts([str(entry)], SCHEMA)


def test_scoring_an_entry_built_in_value_mode_with_a_bucketizing_model_is_refused(
    tmp_path, csv_file
):
    from fnn_fast import FM
    from fnn_fast.data import FeatureEncoder
    from fnn_fast.saved import save_model
    from fnn_fast.score import score_files

    rows = read_rows(csv_file, SCHEMA, skip_bad_lines=True, progress=False)
    encoder = FeatureEncoder.fit_rows(rows)
    model = save_model(tmp_path / "model", FM(encoder.num_features, 2), None, encoder, SCHEMA)
    entry = _entry(
        tmp_path, csv_file, Schema.from_dict(SCHEMA.to_dict() | {"numeric_mode": "value"})
    )
    with pytest.raises(DataError, match="numeric_mode 'value' \\(wanted: 'bucketize'\\)"):
        score_files(model, entry, tmp_path / "scores.npy", which="fm", progress=False)
    assert not (tmp_path / "scores.npy").exists()


def test_training_reads_an_entry_only_for_the_schema_it_was_built_with(tmp_path, csv_file):
    cache_dir = tmp_path / "cache"
    load_rows(csv_file, SCHEMA, cache_dir=cache_dir, skip_bad_lines=True, progress=False)
    (entry,) = cache_dir.iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    meta["schema"]["numeric_mode"] = "value"  # an entry of other settings under this name
    (entry / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="numeric_mode 'value' \\(wanted: 'bucketize'\\)"):
        load_rows(csv_file, SCHEMA, cache_dir=cache_dir, skip_bad_lines=True, progress=False)
