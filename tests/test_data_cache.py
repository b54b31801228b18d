import os

import numpy as np
import pytest

import fnn_fast.data.cache as cache
from fnn_fast.data import DataError, Schema, load_rows, open_rows, read_rows, write_rows

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
    write_rows(rows, tmp_path / "entry")
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
    write_rows(rows, tmp_path / "entry")
    mapped = open_rows(tmp_path / "entry")
    for start, stop in ((0, 50), (7, 19), (45, 60), (50, 50)):
        part = read_row_range(tmp_path / "entry", start, stop)
        for name in ("labels", "keys", "values", "lines", "row_ids"):
            np.testing.assert_array_equal(getattr(part, name), getattr(mapped, name)[start:stop])
