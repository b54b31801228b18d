import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DATA

import fnn_fast.data.parquet as parquet_reader
from fnn_fast.data import PAD_KEY, DataError, Schema, read_rows
from fnn_fast.data.rows import ArrayChunks
from fnn_fast.data.tokens import BUCKET_BITS, VALUE_KEY, hash_token, missing_key, value_key


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def read(path, schema, **kwargs):
    return read_rows(path, schema, progress=False, **kwargs)


def criteo_line(label="0", ints=("0",) * 13, cats=("c",) * 26):
    return "\t".join([label, *ints, *cats]) + "\n"


# ---- libFM -------------------------------------------------------------------------------------

FEATINDEX = "a:x\t0\na:y\t1\nb:p\t2\nc:q\t3\n"


def featindex_schema(tmp_path):
    return Schema("libfm", featindex=str(write(tmp_path, "featindex.txt", FEATINDEX)))


def test_libfm_featindex_gives_fields_multivalued_slots_and_pads(tmp_path):
    # Line 2: field a twice, b absent. Line 3 is empty: skipped, not counted as bad.
    path = write(tmp_path, "train.fm", "1 0:1 2:0.5\n-1 1:1 0:2 3:1\n\n+1 2:1\n")
    rows = read(path, featindex_schema(tmp_path))
    assert rows.field_names == ["a", "b", "c"]
    np.testing.assert_array_equal(rows.slot_fields, [0, 0, 1, 2])  # a needs two slots
    np.testing.assert_array_equal(
        rows.keys, [[0, PAD_KEY, 2, PAD_KEY], [1, 0, PAD_KEY, 3], [PAD_KEY, PAD_KEY, 2, PAD_KEY]]
    )
    np.testing.assert_array_equal(rows.values, [[1, 0, 0.5, 0], [1, 2, 0, 1], [0, 0, 1, 0]])
    np.testing.assert_array_equal(rows.labels, [1, 0, 1])
    np.testing.assert_array_equal(rows.lines, [1, 2, 4])
    assert rows.keys.dtype == np.int64 and rows.values.dtype == np.float32
    assert rows.labels.dtype == np.float32 and rows.bad_lines == 0 and rows.row_ids is None


def test_libfm_positional_fields_and_label_spellings(tmp_path):
    path = write(tmp_path, "train.fm", "0 5:1 7:0.25\n1.0 6:1 9:1\n-1.0 5:1 9:3\n")
    rows = read(path, Schema("libfm"))
    assert rows.field_names == ["f0", "f1"]
    np.testing.assert_array_equal(rows.slot_fields, [0, 1])
    np.testing.assert_array_equal(rows.keys, [[5, 7], [6, 9], [5, 9]])
    np.testing.assert_array_equal(rows.values, [[1, 0.25], [1, 1], [1, 3]])
    np.testing.assert_array_equal(rows.labels, [0, 1, 0])


# ---- Criteo and CSV ----------------------------------------------------------------------------


def test_criteo_bucketizes_numbers_and_keeps_missing_as_a_token(tmp_path):
    ints = ["5", "", "-1", "1.5", "1000"] + ["0"] * 8
    cats = ["abc", ""] + ["z"] * 24
    path = write(tmp_path, "day_0", criteo_line("1", ints, cats) + criteo_line())
    rows = read(path, Schema.criteo())
    assert rows.field_names[:2] == ["I1", "I2"] and rows.field_names[13:15] == ["C1", "C2"]
    expected_tokens = [
        str(math.floor(math.log(5) ** 2)),  # 5 -> bucket 2
        "",  # missing
        "-s0",  # |x| <= 2: floor(4 log|x|), "-" for negatives
        "s1",  # 1.5 apart from 1 (s0) and 2 (s2)
        str(math.floor(math.log(1000) ** 2)),  # 47
    ]
    rule_2 = read(path, Schema.from_dict(Schema.criteo().to_dict() | {"numeric_rule": 2}))
    np.testing.assert_array_equal(rule_2.keys[0, :5], [hash_token(t) for t in expected_tokens])
    # rule 3 (the default): each number's own key, its rule-2 bucket's key in the high bits
    np.testing.assert_array_equal(
        rows.keys[0, :5], [value_key(float(x)) if x else missing_key(3) for x in ints[:5]]
    )
    np.testing.assert_array_equal(
        rows.keys[0, :5] & BUCKET_BITS, [hash_token(t) & BUCKET_BITS for t in expected_tokens]
    )
    old_rule = read(path, Schema.from_dict(Schema.criteo().to_dict() | {"numeric_rule": 1}))
    old_tokens = ["2", "", "-1", "1", "47"]  # rule 1: int(x) up to 2
    np.testing.assert_array_equal(old_rule.keys[0, :5], [hash_token(t) for t in old_tokens])
    np.testing.assert_array_equal(rows.keys[0, 13:15], [hash_token("abc"), hash_token("")])
    assert (rows.values == 1).all()
    np.testing.assert_array_equal(rows.labels, [1, 0])
    np.testing.assert_array_equal(rows.lines, [1, 2])


def test_criteo_value_mode_gives_one_valued_feature_per_numeric_field(tmp_path):
    ints = ["5", "", "-1"] + ["2.5"] * 10
    path = write(tmp_path, "day_0", criteo_line("0", ints))
    schema = Schema.criteo()
    schema.numeric_mode = "value"
    rows = read(path, schema)
    missing = hash_token("")
    np.testing.assert_array_equal(rows.keys[0, :4], [VALUE_KEY, missing, VALUE_KEY, VALUE_KEY])
    np.testing.assert_array_equal(rows.values[0, :4], [5, 1, -1, 2.5])


def test_csv_selects_columns_by_name_in_declared_field_order(tmp_path):
    text = "id;C;label;extra;N\nr1;x;1;?;2\nr2;;-1;?;\nr3;y;0.0;?;0\n"
    path = write(tmp_path, "t.csv", text)
    schema = Schema("csv", categorical=["C"], numeric=["N"], id_column="id", delimiter=";")
    rows = read(path, schema)
    assert rows.field_names == ["N", "C"]  # numeric first, then categorical
    np.testing.assert_array_equal(rows.labels, [1, 0, 0])
    np.testing.assert_array_equal(rows.row_ids, ["r1", "r2", "r3"])
    np.testing.assert_array_equal(
        rows.keys,
        [
            [value_key(2.0), hash_token("x")],
            [missing_key(3), hash_token("")],
            [value_key(0.0), hash_token("y")],
        ],
    )
    np.testing.assert_array_equal(rows.lines, [2, 3, 4])


def test_csv_reads_quoted_cells_and_crlf_line_ends(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'label,C\r\n1,"a,b"\r\n0,c\r\n')
    rows = read(path, Schema("csv", categorical=["C"]))
    np.testing.assert_array_equal(rows.keys[:, 0], [hash_token("a,b"), hash_token("c")])


def test_csv_missing_declared_column_names_it(tmp_path):
    path = write(tmp_path, "t.csv", "label,A\n1,x\n")
    with pytest.raises(DataError, match="declared columns not in the header: B") as error:
        read(path, Schema("csv", categorical=["A", "B"]))
    assert error.value.line == 1 and error.value.path == str(path)


# ---- Malformed lines ---------------------------------------------------------------------------

BAD_CRITEO_LABEL = criteo_line("x")
SHORT_CRITEO = "\t".join(["0"] * 39) + "\n"
BAD_CRITEO_NUMBER = criteo_line("0", ["1", "2", "abc"] + ["0"] * 10)

MALFORMED = {
    # name: (schema, text whose line `line` is bad and other lines good, line, reason).
    # Schema "featindex": the libFM schema with the FEATINDEX file.
    "criteo column count": (
        Schema.criteo(),
        criteo_line() + SHORT_CRITEO + criteo_line(),
        2,
        "expected 40 tab-separated columns, found 39",
    ),
    "criteo label": (
        Schema.criteo(),
        criteo_line() + BAD_CRITEO_LABEL + criteo_line(),
        2,
        "label 'x' is not 0/1 or -1/+1",
    ),
    "criteo number": (
        Schema.criteo(),
        criteo_line() + BAD_CRITEO_NUMBER + criteo_line(),
        2,
        "numeric column I3: 'abc' is not a number",
    ),
    "csv column count": (
        Schema("csv", categorical=["A"], numeric=["N"]),
        "label,A,N\n1,a,1\n0,b\n1,c,2\n",
        3,
        "expected 3 comma-separated columns, found 2",
    ),
    "csv label": (
        Schema("csv", categorical=["A"]),
        "label,A\n1,a\n2,b\n0,c\n",
        3,
        "label '2' is not 0/1 or -1/+1",
    ),
    "csv number": (
        Schema("csv", numeric=["N"]),
        "label,N\n1,4\n0,4x\n0,5\n",
        3,
        "numeric column N: '4x' is not a number",
    ),
    "csv infinite number": (
        Schema("csv", numeric=["N"]),
        "label,N\n1,4\n0,inf\n0,5\n",
        3,
        "numeric column N: 'inf' is not a number",
    ),
    "libfm label": (
        Schema("libfm"),
        "1 1:1\nyes 1:1\n0 2:1\n",
        2,
        "label 'yes' is not 0/1 or -1/+1",
    ),
    "libfm label 2": (
        Schema("libfm"),
        "1 1:1\n2 1:1\n0 2:1\n",
        2,
        "label '2' is not 0/1 or -1/+1",
    ),
    "libfm index": (
        Schema("libfm"),
        "1 1:1\n0 abc:1\n0 2:1\n",
        2,
        "cannot parse feature 'abc:1' (want idx:value)",
    ),
    "libfm no colon": (
        Schema("libfm"),
        "1 1:1\n0 12\n0 2:1\n",
        2,
        "cannot parse feature '12' (want idx:value)",
    ),
    "libfm negative index": (
        Schema("libfm"),
        "1 1:1\n0 -3:1\n0 2:1\n",
        2,
        "feature index -3 is out of range",
    ),
    "libfm value": (
        Schema("libfm"),
        "1 1:1\n0 12:zz\n0 2:1\n",
        2,
        "value 'zz' of feature 12 is not a number",
    ),
    "libfm feature count": (
        Schema("libfm"),
        "1 1:1 2:1\n0 1:1 2:1 3:1\n0 2:1 4:1\n",
        2,
        "expected 2 features, found 3",
    ),
    "libfm declared feature count": (
        Schema("libfm", num_fields=2),
        "1 1:1 2:1\n0 1:1\n0 2:1 4:1\n",
        2,
        "expected 2 features, found 1",
    ),
    "libfm unknown index": (
        "featindex",
        "1 0:1\n0 0:1 99:1\n0 2:1\n",
        2,
        "feature index 99 is not in",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_line_raises_naming_file_line_and_problem(tmp_path, case):
    schema, text, line, reason = MALFORMED[case]
    schema = featindex_schema(tmp_path) if schema == "featindex" else schema
    path = write(tmp_path, "input.txt", text)
    with pytest.raises(DataError) as error:
        read(path, schema)
    assert (error.value.path, error.value.line) == (str(path), line)
    assert reason in error.value.reason
    assert str(error.value) == f"{path}:{line}: {error.value.reason}"

    rows = read(path, schema, skip_bad_lines=True)
    assert rows.bad_lines == 1 and len(rows) == 2
    assert line not in rows.lines
    assert rows.bad_examples == [str(error.value)]


def test_skip_bad_lines_counts_every_bad_line_and_keeps_five_examples(tmp_path):
    text = "1 1:1\n" + "x 1:1\n" * 7 + "0 1:1\n"
    rows = read(write(tmp_path, "t.fm", text), Schema("libfm"), skip_bad_lines=True)
    assert rows.bad_lines == 7 and len(rows) == 2 and len(rows.bad_examples) == 5
    np.testing.assert_array_equal(rows.lines, [1, 9])


# ---- Parquet -----------------------------------------------------------------------------------


def test_parquet_gives_the_same_keys_as_the_same_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_reader, "_BATCH_ROWS", 2)  # several batches: row numbers go on
    table = pa.table(
        {
            "label": [1, -1, 0, 1, 0],
            "N": [5.0, None, 1.5, float("nan"), 1000.0],
            "C": ["a", None, "b", "a", ""],
            "id": [10, 11, 12, 13, 14],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    csv_path = write(
        tmp_path, "t.csv", "label,N,C,id\n1,5,a,10\n-1,,,11\n0,1.5,b,12\n1,,a,13\n0,1000,,14\n"
    )
    schema = dict(categorical=["C"], numeric=["N"], id_column="id")
    from_parquet = read(tmp_path / "t.parquet", Schema("parquet", **schema))
    from_csv = read(csv_path, Schema("csv", **schema))
    np.testing.assert_array_equal(from_parquet.keys, from_csv.keys)
    np.testing.assert_array_equal(from_parquet.values, from_csv.values)
    np.testing.assert_array_equal(from_parquet.labels, [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(from_parquet.row_ids, [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(from_parquet.lines, [1, 2, 3, 4, 5])
    assert from_parquet.field_names == ["N", "C"]


def test_parquet_bool_labels_and_value_mode(tmp_path):
    pq.write_table(pa.table({"y": [True, False], "N": [2.5, None]}), tmp_path / "t.parquet")
    rows = read(
        tmp_path / "t.parquet", Schema("parquet", label="y", numeric=["N"], numeric_mode="value")
    )
    np.testing.assert_array_equal(rows.labels, [1, 0])
    np.testing.assert_array_equal(rows.keys[:, 0], [VALUE_KEY, hash_token("")])
    np.testing.assert_array_equal(rows.values[:, 0], [2.5, 1])


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        ({"label": [1, 2, 0], "N": ["1", "1", "1"]}, "label '2' is not 0/1 or -1/+1"),
        ({"label": [1, None, 0], "N": ["1", "1", "1"]}, "label is missing"),
        ({"label": [1, 1, 0], "N": ["1", "abc", "1"]}, "numeric column N: 'abc' is not a number"),
    ],
)
def test_parquet_bad_row_raises_with_row_number(tmp_path, column, reason):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(column), path)
    schema = Schema("parquet", numeric=["N"])
    with pytest.raises(DataError) as error:
        read(path, schema)
    assert (error.value.line, error.value.reason) == (2, reason)
    rows = read(path, schema, skip_bad_lines=True)
    assert rows.bad_lines == 1
    np.testing.assert_array_equal(rows.lines, [1, 3])
    np.testing.assert_array_equal(rows.labels, [1, 0])


def test_parquet_missing_column_and_empty_file(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"label": pa.array([], pa.int64()), "C": pa.array([], pa.string())}), path
    )
    with pytest.raises(DataError, match="declared columns not in the file: D"):
        read(path, Schema("parquet", categorical=["C", "D"]))
    rows = read(path, Schema("parquet", categorical=["C"]))
    assert rows.keys.shape == (0, 1) and rows.labels.shape == (0,)


# ---- Real data ---------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared data not present in {DATA} (set FNN_FAST_DATA)"
)


@needs_data
def test_ipinyou_train_file_with_its_featindex():
    folder = DATA / "ipinyou-2997"
    schema = Schema("libfm", featindex=str(folder / "featindex.fm.txt"))
    rows = read(folder / "train.fm.txt", schema)
    assert len(rows) == 26_773 and rows.bad_lines == 0
    assert rows.field_names[:3] == ["weekday", "hour", "useragent"] and len(rows.field_names) == 16
    np.testing.assert_array_equal(rows.slot_fields, np.arange(16))  # one feature per field
    assert int(rows.labels.sum()) == 255
    assert (rows.keys != PAD_KEY).all() and (rows.values == 1).all()


@needs_data
def test_criteo_sample_csv():
    rows = read(DATA / "samples" / "criteo_sample.txt", Schema.criteo("csv"))
    assert len(rows) == 200 and rows.keys.shape == (200, 39) and rows.bad_lines == 0
    assert rows.field_names == Schema.criteo().field_names
    # Row 1 of the sample: I1 missing, I2 = 3 (bucket 1), I3 = 260.0 (bucket 30).
    np.testing.assert_array_equal(rows.keys[0, :3], [missing_key(3), value_key(3), value_key(260)])
    np.testing.assert_array_equal(
        rows.keys[0, 1:3] & BUCKET_BITS,
        [hash_token("1") & BUCKET_BITS, hash_token("30") & BUCKET_BITS],
    )


def test_flushing_parsed_rows_in_chunks_changes_nothing(tmp_path, monkeypatch):
    libfm = write(tmp_path, "t.fm", "1 0:1 2:0.5\n-1 1:1 0:2 3:1\nx\n+1 2:1\n0 3:1\n1 1:1\n")
    csv_rows = "".join(f"r{i},{i % 2},c{i}\n" for i in range(7))
    csv = write(tmp_path, "t.csv", "id,label,C\n" + csv_rows)
    csv_schema = Schema("csv", categorical=["C"], id_column="id")
    cases = [(libfm, featindex_schema(tmp_path)), (csv, csv_schema)]
    whole = [read(path, schema, skip_bad_lines=True) for path, schema in cases]
    monkeypatch.setattr(ArrayChunks, "FLUSH_ROWS", 2)
    for (path, schema), expected in zip(cases, whole, strict=True):
        chunked = read(path, schema, skip_bad_lines=True)
        for name in ("labels", "keys", "values", "lines", "slot_fields"):
            np.testing.assert_array_equal(getattr(chunked, name), getattr(expected, name))
        assert chunked.bad_lines == expected.bad_lines
    np.testing.assert_array_equal(chunked.row_ids, [f"r{i}" for i in range(7)])


FAST_TRAINING = ["--fm-epochs", "1", "--fnn-epochs", "1", "--hidden", "8", "--factors", "2",
                 "--batch-size", "64", "--no-progress"]  # fmt: skip


@needs_data
def test_the_cli_reads_the_criteo_sample_with_its_header_and_commas(tmp_path, capsys):
    from fnn_fast.cli import _schema_from_args, build_parser, main
    from fnn_fast.saved import load_model

    sample = str(DATA / "samples" / "criteo_sample.txt")
    train = ["train", "--train", sample, "--format", "criteo", *FAST_TRAINING]
    assert main([*train, "--out", str(tmp_path / "tabs")]) == 2
    error = capsys.readouterr().err
    assert "criteo_sample.txt:1: expected 40 tab-separated columns, found 1" in error
    assert "use --delimiter ," in error
    out = tmp_path / "commas"
    assert main([*train, "--delimiter", ",", "--out", str(out)]) == 0
    schema = load_model(out).schema
    assert schema == Schema.from_dict(Schema.criteo("csv").to_dict() | {"delimiter": ","})
    args = build_parser().parse_args([*train, "--numeric-mode", "value", "--out", str(out)])
    assert _schema_from_args(args).numeric_mode == "value"  # no longer dropped for Criteo


def test_the_cli_refuses_columns_chosen_for_criteo(tmp_path, capsys):
    from fnn_fast.cli import main

    path = write(tmp_path, "day.txt", criteo_line())
    code = main(["train", "--train", str(path), "--format", "criteo", "--numeric", "I1",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "--numeric: Criteo's columns are fixed" in capsys.readouterr().err
