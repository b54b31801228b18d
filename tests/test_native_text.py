"""The C++ text reader (fnn_fast._C.DelimitedEncoder, behind fnn_fast.data.parts) against the
Python readers: the same ids and values for the same lines, and a fall back to the Python
readers for every line it does not read exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fnn_fast.data import FeatureEncoder, Schema, read_rows
from fnn_fast.data import parts as parts_module
from fnn_fast.data.parts import csv_header, encode_part, plan_parts
from fnn_fast.data.schema import CRITEO_CATEGORICAL, CRITEO_NUMERIC

pytest.importorskip("fnn_fast._C")

# Numeric cells of every spelling the C++ reader parses itself (and the bucket edges).
NUMBERS = ["", "0", "1", "2", "3", "-1", "-0", "7.5", "+7", "1e3", "2.5E-1", ".5", "5.", "1000000",
           "-3.9", "2.0000001", "123456789012", "0.0001"]  # fmt: skip
# Tokens: short and memoized, longer than the memo holds, across BLAKE2b's 128-byte block edge,
# non-ASCII, bytes that are not UTF-8, and quote characters (plain bytes in Criteo).
TOKENS = ["a", "68fd1e64", "", "x" * 20, "y" * 21, "z" * 127, "w" * 128, "v" * 129, "u" * 300,
          "héllo", "日本", "'q'", 'say "hi"']  # fmt: skip
BAD_BYTES = b"\xff\xfe-raw"


def _criteo_lines(rng, rows: int, labelled=True) -> list[bytes]:
    lines = []
    for r in range(rows):
        numbers = [NUMBERS[i] for i in rng.integers(0, len(NUMBERS), 13)]
        tokens = [TOKENS[i].encode() for i in rng.integers(0, len(TOKENS), 26)]
        if r % 17 == 3:
            tokens[5] = BAD_BYTES
        cells = [n.encode() for n in numbers] + tokens
        if labelled:
            cells = [b"1" if r % 3 else b"0"] + cells
        lines.append(b"\t".join(cells))
    return lines


def _encode_both(path, schema, monkeypatch, part_bytes=4096, encoder=None):
    """(native parts, Python parts, how many parts the native reader took)."""
    if encoder is None:
        encoder = FeatureEncoder.fit_rows(read_rows(path, schema, progress=False, labelled=False))
    header = csv_header(path, schema)
    parts = plan_parts([str(path)], schema, part_bytes=part_bytes)
    taken = []
    native_reader = parts_module._native_text_part

    def counting(*args):
        encoded = native_reader(*args)
        taken.append(encoded is not None)
        return encoded

    monkeypatch.setattr(parts_module, "_native_text_part", counting)
    native = [encode_part(p, schema, encoder, False, header) for p in parts]
    monkeypatch.setattr(parts_module, "_native_text_part", lambda *args: None)
    python = [encode_part(p, schema, encoder, False, header) for p in parts]
    monkeypatch.setattr(parts_module, "_native_text_part", native_reader)
    return native, python, sum(taken)


def _assert_same(native, python):
    for got, want in zip(native, python, strict=True):
        np.testing.assert_array_equal(got.ids, want.ids)
        got_values = np.ones(got.ids.shape, np.float32) if got.values is None else got.values
        want_values = np.ones(want.ids.shape, np.float32) if want.values is None else want.values
        np.testing.assert_array_equal(got_values, want_values)
        np.testing.assert_array_equal(got.lines, want.lines)
        np.testing.assert_array_equal(got.good, want.good)
        assert got.newlines == want.newlines


@pytest.mark.parametrize("labelled", [True, False])
def test_criteo_cells_give_the_python_readers_ids(tmp_path, monkeypatch, labelled):
    rng = np.random.default_rng(0)
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(_criteo_lines(rng, 600, labelled)))  # no final newline
    native, python, taken = _encode_both(path, Schema.criteo(), monkeypatch)
    assert taken == len(native) > 3
    _assert_same(native, python)
    # every token found in the vocabulary: the C++ hash is Python's BLAKE2b
    ids = np.concatenate([e.ids for e in native])
    encoder = FeatureEncoder.fit_rows(
        read_rows(path, Schema.criteo(), progress=False, labelled=False)
    )
    assert not np.isin(ids, encoder.offsets).any()


def test_unseen_cells_get_the_oov_id(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    train, score = tmp_path / "train.txt", tmp_path / "score.txt"
    train.write_bytes(b"\n".join(_criteo_lines(rng, 50)) + b"\n")
    fresh = [line.replace(b"68fd1e64", b"unseen") for line in _criteo_lines(rng, 300)]
    score.write_bytes(b"\n".join(fresh) + b"\n")
    encoder = FeatureEncoder.fit_rows(read_rows(train, Schema.criteo(), progress=False))
    native, python, taken = _encode_both(score, Schema.criteo(), monkeypatch, encoder=encoder)
    assert taken == len(native)
    _assert_same(native, python)
    assert np.isin(np.concatenate([e.ids for e in native]), encoder.offsets).any()


def test_value_mode_keeps_the_numbers(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(_criteo_lines(rng, 300)) + b"\n")
    schema = Schema.from_dict({**Schema.criteo().to_dict(), "numeric_mode": "value"})
    native, python, taken = _encode_both(path, schema, monkeypatch)
    assert taken == len(native)
    _assert_same(native, python)
    assert any(e.values is not None for e in native)


def _edge_numbers() -> list[str]:
    """Cells at and beside every bucket edge of both numeric rules, of both signs, from the
    smallest subnormal to the largest double, in shortest round-trip spelling."""
    edges = [math.exp(k / 4) for k in range(-3000, 12)]  # rule 2 below 2: floor(4 log|x|)
    edges += [math.exp(math.sqrt(b)) for b in range(0, 504_000, 997)]  # floor(log(x)^2)
    edges += [2.0, 1.0, 0.5, 5e-324, 1e-300, 1e-7, 1.7976931348623157e308, 9.0e18, 9.3e18]
    cells = {"0", "-0", "0.0", "-0.0", "2", "1", ".5", "5.", "+7", "1e3", "2.5E-1"}
    for x in edges:
        for y in (math.nextafter(x, 0), x, math.nextafter(x, math.inf)):
            if math.isfinite(y):
                cells.update((repr(y), repr(-y)))
    return sorted(cells)


@pytest.mark.parametrize("rule", [1, 2])
def test_numbers_at_bucket_edges_give_the_python_readers_ids(tmp_path, monkeypatch, rule):
    cells = _edge_numbers()
    cells += cells[: -len(cells) % 13]  # whole lines of 13 numeric cells
    lines = [
        "\t".join(["1", *cells[i : i + 13], *["a"] * 26]).encode() for i in range(0, len(cells), 13)
    ]
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    schema = Schema.from_dict(Schema.criteo().to_dict() | {"numeric_rule": rule})
    native, python, taken = _encode_both(path, schema, monkeypatch, part_bytes=1 << 16)
    # rule 1's int(x) of x <= -9e18 does not fit 64 bits: Python reads those parts
    assert taken == len(native) > 3 if rule == 2 else 0 < taken < len(native)
    _assert_same(native, python)


@pytest.mark.parametrize("spelling", ["nan", "inf", "-inf", "NaN", "1e400", "-1e999"])
def test_non_finite_numbers_stay_bad_lines_for_both_readers(tmp_path, monkeypatch, spelling):
    lines = [b"1\t" + spelling.encode() + b"\t1" * 12 + b"\ta" * 26, *_criteo_lines(
        np.random.default_rng(7), 20)]  # fmt: skip
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    encoder = FeatureEncoder.fit_rows(read_rows(path, Schema.criteo(), progress=False,
                                                skip_bad_lines=True))  # fmt: skip
    part = plan_parts([str(path)], Schema.criteo())[0]
    skipped = encode_part(part, Schema.criteo(), encoder, True)
    assert not skipped.good[0] and skipped.good[1:].all()
    assert "is not a number" in skipped.rejects[0][1]


@pytest.mark.parametrize(
    "odd_line",
    [
        b"1\t 5" + b"\t1" * 12 + b"\ta" * 26,  # a space before a number: Python's float accepts
        b"1\t1_000" + b"\t1" * 12 + b"\ta" * 26,  # underscores: Python's float accepts
        b"1\t1" + b"\t1" * 12 + b"\ta" * 26 + b"\r",  # a carriage return
        b"",  # an empty line, skipped by the Python reader
    ],
)
def test_lines_it_does_not_read_exactly_go_to_python(tmp_path, monkeypatch, odd_line):
    rng = np.random.default_rng(3)
    lines = _criteo_lines(rng, 40)
    lines.insert(20, odd_line)
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    native, python, taken = _encode_both(path, Schema.criteo(), monkeypatch, part_bytes=1 << 20)
    assert taken == 0
    _assert_same(native, python)


def test_a_bad_number_is_reported_by_the_python_reader(tmp_path):
    from fnn_fast.data import DataError

    rng = np.random.default_rng(4)
    lines = _criteo_lines(rng, 30)
    lines[7] = b"1\tnot-a-number" + b"\t1" * 12 + b"\ta" * 26
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    encoder = FeatureEncoder.fit_rows(read_rows(path, Schema.criteo(), progress=False,
                                                skip_bad_lines=True))  # fmt: skip
    part = plan_parts([str(path)], Schema.criteo())[0]
    with pytest.raises(DataError, match="not-a-number"):
        encode_part(part, Schema.criteo(), encoder, False)
    skipped = encode_part(part, Schema.criteo(), encoder, True)
    assert len(skipped) == 30 and not skipped.good[7] and skipped.good.sum() == 29


def _criteo_model(tmp_path, path):
    from fnn_fast import FM, FNN
    from fnn_fast.saved import save_model

    rows = read_rows(path, Schema.criteo(), progress=False, labelled=False, skip_bad_lines=True)
    encoder = FeatureEncoder.fit_rows(rows)
    fm = FM(encoder.num_features, 4, init_std=0.3)
    fnn = FNN.from_fm(fm, num_fields=39, hidden=(8,), init_std=0.3)
    return save_model(tmp_path / "model", fm, fnn, encoder, Schema.criteo())


@pytest.mark.parametrize("labelled", [True, False])
def test_a_criteo_line_of_the_other_width_than_the_first_is_a_bad_line(
    tmp_path, monkeypatch, labelled
):
    """A file is labelled (40 columns) or not (39), as its first line says; a line of the other
    width, in any part of the file, is a bad line with its number, for both readers."""
    from fnn_fast.score import score_files

    lines = _criteo_lines(np.random.default_rng(8), 400, labelled)
    odd = [7, 333]  # 0-based; 333 lies in a later part
    for i in odd:
        lines[i] = lines[i].split(b"\t", 1)[1] if labelled else b"1\t" + lines[i]
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert len(plan_parts([str(path)], Schema.criteo(), part_bytes=8192)) > 3
    model = _criteo_model(tmp_path, path)
    out = {}
    for reader in ("native", "python"):
        if reader == "python":
            monkeypatch.setattr(parts_module, "_native_text_part", lambda *args: None)
        out[reader] = tmp_path / f"{reader}.npy"
        summary = score_files(
            model, path, out[reader], part_bytes=8192, skip_bad_lines=True, progress=False
        )
        assert summary.rows == 400 and summary.bad_rows == 2
        rejects = out[reader].with_name(out[reader].name + ".rejects.tsv").read_text()
        found = [int(line.split("\t")[1]) for line in rejects.splitlines()[1:]]
        assert found == [i + 1 for i in odd]
        width = "39 tab-separated columns, found 40" if not labelled else "found 39"
        assert rejects.count(width) == 2
    scores = np.load(out["native"])
    np.testing.assert_array_equal(scores, np.load(out["python"]))
    assert np.isnan(scores[odd]).all() and np.isfinite(np.delete(scores, odd)).all()


def test_training_on_unlabelled_criteo_lines_says_labels_are_needed(tmp_path):
    from fnn_fast.data import DataError

    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(_criteo_lines(np.random.default_rng(9), 5, False)) + b"\n")
    with pytest.raises(DataError, match=r"day.txt:1: .* found 39: a line without its label; trai"):
        read_rows(path, Schema.criteo(), progress=False)


def test_csv_columns_by_header_in_any_order(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    numeric, categorical = list(CRITEO_NUMERIC[:3]), list(CRITEO_CATEGORICAL[:4])
    header = ["extra", *categorical[::-1], "clicked", *numeric]
    rows = [";".join(header)]
    for r in range(500):
        cells = [str(r)] + [TOKENS[i] for i in rng.integers(0, 9, 4)] + [str(r % 2)]
        cells += [NUMBERS[i] for i in rng.integers(0, len(NUMBERS), 3)]
        rows.append(";".join(cells))
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(rows) + "\n")
    schema = Schema(
        format="csv", label="clicked", numeric=numeric, categorical=categorical, delimiter=";"
    )
    native, python, taken = _encode_both(path, schema, monkeypatch)
    assert taken == len(native) > 3
    _assert_same(native, python)


def test_quoted_csv_goes_to_python(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    path.write_text('y,a,n\n1,"x,y",3\n0,b,4\n')
    schema = Schema(format="csv", label="y", numeric=["n"], categorical=["a"])
    native, python, taken = _encode_both(path, schema, monkeypatch)
    assert taken == 0
    _assert_same(native, python)


@pytest.mark.parametrize("native", [True, False])
def test_value_past_float32_is_a_bad_line_for_both_readers(tmp_path, monkeypatch, native):
    """In value mode a number trains as float32: 1e39 would be inf there, so it is bad input."""
    lines = [b"1\t1e39" + b"\t1" * 12 + b"\ta" * 26, *_criteo_lines(np.random.default_rng(7), 20)]
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    schema = Schema.from_dict({**Schema.criteo().to_dict(), "numeric_mode": "value"})
    rows = read_rows(path, schema, progress=False, skip_bad_lines=True)
    assert rows.bad_lines == 1 and "float32" in rows.bad_examples[0]
    encoder = FeatureEncoder.fit_rows(rows)
    if not native:
        monkeypatch.setattr(parts_module, "_native_text_part", lambda *args: None)
    skipped = encode_part(plan_parts([str(path)], schema)[0], schema, encoder, True)
    assert not skipped.good[0] and skipped.good[1:].all()
    assert "past float32's range" in skipped.rejects[0][1]
