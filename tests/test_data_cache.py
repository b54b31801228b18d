import json
import os
import re

import numpy as np
import pytest
from helpers import DATA as SHARED_DATA
from helpers import shared_file

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
        ({"numeric_rule": 1}, "numeric_rule 3 (wanted: 1)"),
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


# --- entries built part by part (fnn_fast.data.cache_build) --------------------------------------

DATA = str(SHARED_DATA)
IPINYOU = os.path.join(DATA, "ipinyou-2997")
ADULT_SCHEMA = Schema(
    "csv", numeric=["age", "fnlwgt", "hours_per_week"],
    categorical=["workclass", "education", "occupation", "native_country"],
)  # fmt: skip


def _files_of(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_built_like_in_memory(tmp_path, path, schema, skip=True, part_bytes=4096, **options):
    """The entry built part by part holds the very files that the in-memory parse writes, and a
    bad line stops both with the same message (the file's line number)."""
    from fnn_fast.data.cache_build import build_entry

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    parts.mkdir(parents=True)
    if not skip:
        with pytest.raises(DataError) as expected:
            read_rows(path, schema, progress=False)
        with pytest.raises(DataError) as got:
            build_entry(path, schema, parts, progress=False, part_bytes=part_bytes, **options)
        assert str(got.value) == str(expected.value)
        return str(got.value)
    rows = read_rows(path, schema, skip_bad_lines=True, progress=False)
    write_rows(rows, whole, schema)
    build_entry(
        path, schema, parts, skip_bad_lines=True, progress=False, part_bytes=part_bytes, **options
    )
    expected, got = _files_of(whole), _files_of(parts)
    assert list(got) == list(expected)
    for name in expected:
        assert got[name] == expected[name], name
    return rows


@pytest.mark.parametrize(
    "name, schema, part_bytes",
    [
        (
            "ipinyou-2997/train.fm.txt",
            Schema("libfm", featindex=os.path.join(IPINYOU, "featindex.fm.txt")),
            256 << 10,
        ),
        ("adult/train.csv", ADULT_SCHEMA, 256 << 10),
        ("samples/criteo_sample.txt", Schema.criteo("csv"), 8 << 10),
    ],
)
def test_an_entry_built_by_parts_is_the_in_memory_one(tmp_path, name, schema, part_bytes):
    path = str(shared_file(name))
    assert os.path.getsize(path) > 4 * part_bytes  # several parts
    rows = assert_built_like_in_memory(tmp_path, path, schema, part_bytes=part_bytes)
    assert len(rows) > 100


def _criteo_line(rng, i, label=None):
    label = rng.integers(0, 2) if label is None else label
    ints = [str(rng.integers(-2, 500)) if rng.random() > 0.2 else "" for _ in range(13)]
    cats = [f"{rng.integers(0, 1 << 32):08x}" if rng.random() > 0.1 else "" for _ in range(26)]
    return "\t".join([str(label), *ints, *cats])


def test_a_multi_part_criteo_file_with_bad_lines_numbered_over_the_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = [_criteo_line(rng, i) for i in range(3000)]
    lines[5] = ""  # blank: skipped, not counted
    lines[1700] = "x" + lines[1700]  # a bad label in a late part
    lines[2500] = "\t".join(lines[2500].split("\t")[1:])  # 39 columns
    lines[2900] = lines[2900] + "\r"  # a CRLF line
    path = tmp_path / "day_0"
    path.write_text("\n".join(lines) + "\n")
    rows = assert_built_like_in_memory(tmp_path, path, Schema.criteo(), part_bytes=16 << 10)
    assert rows.bad_lines == 2 and rows.bad_examples[0].startswith(f"{path}:1701: ")
    assert rows.bad_examples[1].startswith(f"{path}:2501: expected 40 tab-separated columns")
    assert_built_like_in_memory(tmp_path / "x", path, Schema.criteo(), skip=False)


def test_libfm_whose_busiest_line_is_in_a_late_part(tmp_path):
    """A field's slots are as many as its busiest line in the whole file: the earlier parts'
    rows get PAD slots for it (keys and values rewritten into the wider layout)."""
    featindex = tmp_path / "featindex.txt"
    featindex.write_text("".join(f"f{i % 3}:v{i}\t{i}\n" for i in range(30)))
    rng = np.random.default_rng(1)
    lines = []
    for i in range(2000):
        # fields f0 and f1 once each, f2 absent or once; a line near the end has f2 four times
        # and a bad index
        features = [3 * rng.integers(0, 10), 3 * rng.integers(0, 10) + 1]
        if rng.random() > 0.5:
            features.append(3 * rng.integers(0, 10) + 2)
        if i == 1900:
            features += [2, 5, 8, 11]
        lines.append(" ".join([str(i % 2), *(f"{k}:{rng.random():.3f}" for k in features)]))
    lines[1500] += " 99:1"  # not in the featindex
    path = tmp_path / "train.fm"
    path.write_text("\n".join(lines) + "\n")
    schema = Schema("libfm", featindex=str(featindex))
    rows = assert_built_like_in_memory(tmp_path, path, schema, part_bytes=2048)
    assert list(rows.slot_fields) == [0, 1, 2, 2, 2, 2, 2] and rows.bad_lines == 1
    assert rows.bad_examples == [f"{path}:1501: feature index 99 is not in {featindex}"]
    assert_built_like_in_memory(tmp_path / "x", path, schema, skip=False, part_bytes=2048)


def test_positional_libfm_takes_its_width_from_the_first_row_in_whatever_part(tmp_path):
    lines = ["1 x:1"] * 300 + ["1 1:1 2:1 3:1"] * 300 + ["0 1:1 2:1"] + ["0 4:1 5:1 6:0.5"] * 300
    path = tmp_path / "train.fm"
    path.write_text("\n".join(lines) + "\n")
    rows = assert_built_like_in_memory(tmp_path, path, Schema("libfm"), part_bytes=1024)
    assert rows.keys.shape == (600, 3) and rows.bad_lines == 301
    narrow = tmp_path / "narrow.fm"
    narrow.write_text("\n".join(lines[300:]) + "\n")
    error = assert_built_like_in_memory(
        tmp_path / "n", narrow, Schema("libfm"), skip=False, part_bytes=1024
    )
    assert error == f"{narrow}:301: expected 3 features, found 2"
    everything_bad = tmp_path / "bad.fm"
    everything_bad.write_text("1 x:1\n" * 500)
    rows = assert_built_like_in_memory(tmp_path / "b", everything_bad, Schema("libfm"),
                                       part_bytes=512)  # fmt: skip
    assert rows.keys.shape == (0, 0)


def test_csv_parts_with_a_header_quoted_line_breaks_and_ids_of_any_width(tmp_path):
    """The header is read once; a part never ends inside a quoted field; the id column's string
    dtype is the widest id's, as in the whole-file parse."""
    rng = np.random.default_rng(2)
    lines = ["\ufeffid,label,N,C"]
    for i in range(1500):
        city = '"two\nlines"' if i % 97 == 0 else f"c{rng.integers(0, 50)}"
        row_id = "long-id-" * 5 if i == 1400 else f"r{i}"
        lines.append(f"{row_id},{i % 2},{rng.integers(0, 100)},{city}")
    lines[700] = "bad"
    lines[800] = 'r800,1,"5",x"y'
    path = tmp_path / "train.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    schema = Schema("csv", categorical=["C"], numeric=["N"], id_column="id")
    inside = path.read_bytes().index(b'"two\n', 2000) + 2  # a cut there is inside the quotes
    for part_bytes in (inside, 1000, 4096):
        rows = assert_built_like_in_memory(tmp_path / str(part_bytes), path, schema,
                                           part_bytes=part_bytes)  # fmt: skip
    assert rows.row_ids.dtype == np.dtype("<U40") and rows.bad_lines == 1
    assert rows.bad_examples == [f"{path}:{701 + 8}: expected 4 comma-separated columns, found 1"]
    assert_built_like_in_memory(tmp_path / "x", path, schema, skip=False, part_bytes=1000)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_built_like_in_memory(tmp_path / "e", empty, schema, skip=False)


def test_a_parquet_entry_built_by_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 1000
    rng = np.random.default_rng(3)
    label = pa.array([None if i == 777 else int(i % 2) for i in range(n)])
    ids = pa.array([f"id{i}" if i % 3 else None for i in range(n)])
    table = pa.table({
        "label": label, "id": ids, "N": pa.array(rng.random(n)),
        "C": pa.array([f"c{rng.integers(0, 20)}" for _ in range(n)]),
    })  # fmt: skip
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=64)
    schema = Schema("parquet", categorical=["C"], numeric=["N"], id_column="id")
    rows = assert_built_like_in_memory(tmp_path, path, schema, part_rows=100)
    assert rows.bad_examples == [f"{path}:778: label is missing"] and len(rows) == n - 1


def test_ensure_entry_builds_by_parts_and_leaves_nothing_behind_on_a_bad_line(tmp_path):
    from fnn_fast.data.cache import ensure_entry

    path = str(shared_file("adult", "train.csv"))
    cache_dir = tmp_path / "cache"
    entry = ensure_entry(path, ADULT_SCHEMA, cache_dir, progress=False, part_bytes=300 << 10)
    built, parsed = open_rows(entry), read_rows(path, ADULT_SCHEMA, progress=False)
    for name in ("labels", "keys", "values", "lines"):
        np.testing.assert_array_equal(getattr(built, name), getattr(parsed, name))
    bad = tmp_path / "bad.csv"
    bad.write_text(open(path).read() + "1,2\n")
    with pytest.raises(DataError, match=r"bad.csv:32563: expected 15 comma-separated"):
        ensure_entry(bad, ADULT_SCHEMA, cache_dir, progress=False, part_bytes=300 << 10)
    assert [p.name for p in cache_dir.iterdir()] == [entry.name]


def test_two_writers_of_one_entry_both_get_it_whole(tmp_path, monkeypatch):
    """Each builds into its own temporary directory; the second rename finds the entry there
    and uses it."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import fnn_fast.data.cache_build as cache_build
    from fnn_fast.data.cache import ensure_entry

    both_built = threading.Barrier(2, timeout=60)
    build = cache_build.build_entry

    def build_then_wait(*args, **kwargs):
        build(*args, **kwargs)
        both_built.wait()  # neither has renamed its directory yet

    monkeypatch.setattr(cache_build, "build_entry", build_then_wait)

    path = str(shared_file("samples", "criteo_sample.txt"))
    schema = Schema.criteo("csv")
    cache_dir = tmp_path / "cache"
    with ThreadPoolExecutor(2) as pool:
        entries = list(pool.map(
            lambda _: ensure_entry(path, schema, cache_dir, progress=False, part_bytes=4096),
            range(2),
        ))  # fmt: skip
    assert entries[0] == entries[1] and [p.name for p in cache_dir.iterdir()] == [entries[0].name]
    assert len(open_rows(entries[0])) == len(read_rows(path, schema, progress=False))


def test_an_array_whose_header_does_not_fit_the_reserved_bytes_is_rewritten(tmp_path, monkeypatch):
    import fnn_fast.data.cache_build as cache_build

    monkeypatch.setattr(cache_build, "_HEADER_BYTES", 192)
    monkeypatch.setattr(cache_build, "_COPY_ROWS", 7)
    path = str(shared_file("samples", "criteo_sample.txt"))
    assert_built_like_in_memory(tmp_path, path, Schema.criteo("csv"), part_bytes=8 << 10)
