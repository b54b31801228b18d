"""Streaming, resumable scoring: parts, row accounting, bad rows, outputs, the Arrow/pandas API."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fnn_fast import FM, FNN
from fnn_fast.cli import main
from fnn_fast.data import DataError, FeatureEncoder, Schema, read_rows
from fnn_fast.data.cache import write_rows
from fnn_fast.data.parts import (
    encode_part,
    expand_inputs,
    plan_parts,
    read_text_part,
    text_part,
)
from fnn_fast.saved import load_model, save_model
from fnn_fast.score import Scorer, predict, score_files
from fnn_fast.score.output import Output

SCHEMA = Schema("csv", numeric=["n1"], categorical=["c1", "c2", "c3"], id_column="id")
HEADER = ["id", "label", "n1", "c1", "c2", "c3"]


def write_csv(path, rows: int, seed: int, bad: dict[int, list[str]] | None = None):
    """A CSV of ``rows`` data lines; ``bad`` maps data line index -> replacement cells."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        for i in range(rows):
            cells = [
                f"r{seed}-{i}",
                str(int(rng.random() < 0.3)),
                str(int(rng.integers(0, 50))),
                f"a{rng.zipf(1.5) % 40}",
                f"b{rng.integers(0, 30)}",
                f"c{rng.integers(0, 7)}",
            ]
            writer.writerow((bad or {}).get(i, cells))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small saved model with non-trivial weights (no training needed to test scoring)."""
    folder = tmp_path_factory.mktemp("score")
    rows = read_rows(write_csv(folder / "fit.csv", 2000, seed=0), SCHEMA, progress=False)
    encoder = FeatureEncoder.fit_rows(rows)
    fm = FM(encoder.num_features, 4, init_std=0.3)
    fnn = FNN.from_fm(fm, num_fields=4, hidden=(8,), init_std=0.3)
    return save_model(folder / "model", fm, fnn, encoder, SCHEMA)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return [write_csv(folder / f"day{i}.csv", 700 + 300 * i, seed=10 + i) for i in range(3)]


def reference_scores(model_dir, paths):
    saved = load_model(model_dir)
    return np.concatenate([predict(saved, read_rows(p, SCHEMA, progress=False)) for p in paths])


def test_text_parts_cover_every_line_once(data):
    path = data[0]
    whole = read_rows(path, SCHEMA, progress=False)
    parts = plan_parts([str(path)], SCHEMA, part_bytes=997)
    assert len(parts) > 5
    header = HEADER
    keys, lines, before = [], [], 0
    for part in parts:
        data, newlines = read_text_part(part)
        text = text_part(data, part.index == 0, header if part.index else None)
        rows = read_rows(path, SCHEMA, part=text, progress=False, labelled=False)
        keys.append(rows.keys)
        lines.append(rows.lines + before)
        before += newlines
    np.testing.assert_array_equal(np.concatenate(keys), whole.keys)
    np.testing.assert_array_equal(np.concatenate(lines), whole.lines)


@pytest.mark.parametrize(
    "suffix, workers", [(".csv", 0), (".parquet", 0), (".npy", 0), (".parquet", 1)]
)
def test_streamed_scores_match_in_memory_scores(model_dir, data, tmp_path, suffix, workers):
    out = tmp_path / f"scores{suffix}"
    summary = score_files(
        model_dir, [str(p) for p in data], out, part_bytes=4096, workers=workers, progress=False
    )
    expected = reference_scores(model_dir, data)
    assert summary.rows == summary.scored == len(expected) and summary.bad_rows == 0
    if suffix == ".npy":
        np.testing.assert_allclose(np.load(out), expected, rtol=1e-6)
        return
    table = pq.read_table(out) if suffix == ".parquet" else pa.csv.read_csv(out)
    np.testing.assert_allclose(table["prediction"].to_numpy(), expected, rtol=1e-6)
    ids = [f"r{10 + f}-{i}" for f in range(3) for i in range(700 + 300 * f)]
    assert table["id"].to_pylist() == ids
    assert not out.with_name(out.name + ".parts").exists()


def test_glob_directory_and_cache_inputs(model_dir, data, tmp_path):
    folder = data[0].parent
    expected = reference_scores(model_dir, data)
    by_glob = score_files(model_dir, str(folder / "day*.csv"), tmp_path / "g.npy", workers=0)
    by_dir = score_files(model_dir, folder, tmp_path / "d.npy", workers=0, progress=False)
    assert by_glob.rows == by_dir.rows == len(expected)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), np.load(tmp_path / "d.npy"))
    assert expand_inputs(folder) == [str(p) for p in data]
    cache = tmp_path / "cache-entry"
    write_rows(read_rows(data[1], SCHEMA, progress=False), cache, SCHEMA)
    score_files(model_dir, cache, tmp_path / "c.npy", part_rows=128, workers=0, progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "c.npy"), reference_scores(model_dir, data[1:2]))


def test_parquet_input_in_row_group_parts(model_dir, data, tmp_path):
    table = pa.csv.read_csv(data[2], convert_options=pa.csv.ConvertOptions(
        column_types={c: pa.string() for c in HEADER}))  # fmt: skip
    path = tmp_path / "day2.parquet"
    pq.write_table(table.drop(["label"]), path, row_group_size=100)  # no label: not needed
    parquet_schema = Schema.from_dict({**SCHEMA.to_dict(), "format": "parquet"})
    scorer = Scorer(model_dir)
    out = tmp_path / "p.parquet"
    summary = score_files(
        scorer, path, out, schema=parquet_schema, part_rows=250, workers=0, progress=False
    )
    assert summary.rows == 1300 and len(plan_parts([str(path)], parquet_schema, part_rows=250)) == 5
    scored = pq.read_table(out)
    np.testing.assert_allclose(
        scored["prediction"].to_numpy(), reference_scores(model_dir, data[2:]), rtol=1e-6
    )
    assert scored["id"].to_pylist() == table["id"].to_pylist()


def test_directory_output_keeps_parts_and_manifest(model_dir, data, tmp_path):
    out = tmp_path / "scored"
    summary = score_files(model_dir, data[0], out, part_bytes=8192, workers=0, progress=False)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) > 1
    assert sum(pq.read_metadata(p).num_rows for p in parts) == summary.rows == 700
    assert '"complete": true' in (out / "manifest.json").read_text()


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """A CSV with bad lines spread over several parts: a wrong column count, a non-number, and
    a blank line (not a row)."""
    folder = tmp_path_factory.mktemp("dirty")
    bad = {5: ["x", "1", "3"], 400: ["y", "0", "lots", "a1", "b1", "c1"]}
    path = write_csv(folder / "dirty.csv", 600, seed=3, bad=bad)
    text = path.read_text().splitlines(keepends=True)
    text.insert(300, "\n")
    path.write_text("".join(text))
    return path


def test_bad_row_stops_with_file_and_line(model_dir, dirty, tmp_path):
    with pytest.raises(DataError) as error:
        score_files(model_dir, dirty, tmp_path / "s.csv", part_bytes=2048, workers=0)
    assert error.value.line == 7 and error.value.path == str(dirty)  # header + 6th data line
    late = write_csv(tmp_path / "late.csv", 600, seed=3, bad={400: ["y", "0", "x", "a", "b", "c"]})
    with pytest.raises(DataError) as error:  # in a later part: numbered within the file
        score_files(model_dir, late, tmp_path / "u.csv", part_bytes=2048, workers=1)
    assert error.value.line == 402 and "n1" in error.value.reason
    assert main(["score", "--model", str(model_dir), "--input", str(dirty), "--output",
                 str(tmp_path / "t.csv"), "--workers", "0", "--no-progress"]) == 2  # fmt: skip


def test_skipped_bad_rows_keep_their_place(model_dir, dirty, tmp_path):
    out = tmp_path / "s.parquet"
    summary = score_files(
        model_dir, dirty, out, part_bytes=2048, workers=0, skip_bad_lines=True, progress=False
    )
    assert (summary.rows, summary.scored, summary.bad_rows) == (600, 598, 2)
    table = pq.read_table(out)
    predictions = table["prediction"].to_numpy(zero_copy_only=False)
    assert np.flatnonzero(np.isnan(predictions)).tolist() == [5, 400]
    assert table["id"][5].as_py() is None and table["id"][6].as_py() == "r3-6"
    good = read_rows(dirty, SCHEMA, skip_bad_lines=True, progress=False)
    expected = predict(load_model(model_dir), good)
    np.testing.assert_allclose(predictions[~np.isnan(predictions)], expected, rtol=1e-6)
    rejects = out.with_name(out.name + ".rejects.tsv").read_text().splitlines()
    assert rejects[0] == "file\tline\treason" and len(rejects) == 3
    # line 7: header + 6th data line; line 403: header + blank line + 401st data line
    assert [r.split("\t")[1] for r in rejects[1:]] == ["7", "403"]
    assert "expected 6 comma-separated columns" in rejects[1] and "n1" in rejects[2]


def test_resume_after_a_crash_at_several_points_gives_the_same_bytes(
    model_dir, data, tmp_path, monkeypatch
):
    inputs = [str(p) for p in data]
    options = dict(part_bytes=3000, workers=0, progress=False, skip_bad_lines=True)
    whole = tmp_path / "whole.csv"
    score_files(model_dir, inputs, whole, **options)
    parts = len(plan_parts(inputs, SCHEMA, part_bytes=3000))
    write_part = Output.write_part
    for crash_after in (0, 1, parts // 2, parts):
        out = tmp_path / f"resumed-{crash_after}.csv"
        written = []

        def crashing(self, *args, _limit=crash_after, _written=written):
            if len(_written) == _limit:
                raise KeyboardInterrupt("killed")
            _written.append(1)
            write_part(self, *args)

        monkeypatch.setattr(Output, "write_part", crashing)
        if crash_after == parts:  # every part written, killed while concatenating them
            monkeypatch.setattr("fnn_fast.score.output._concatenate", _raise_interrupt)
        with pytest.raises(KeyboardInterrupt):
            score_files(model_dir, inputs, out, **options)
        monkeypatch.undo()
        with pytest.raises(FileExistsError):  # an interrupted output is never silently redone
            score_files(model_dir, inputs, out, **options)
        summary = score_files(model_dir, inputs, out, resume=True, **options)
        assert summary.resumed_parts == crash_after
        assert out.read_bytes() == whole.read_bytes()


def _raise_interrupt(*args):
    raise KeyboardInterrupt("killed")


def test_resume_refuses_changed_settings(model_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "s.parquet"
    monkeypatch.setattr("fnn_fast.score.output._concatenate", _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        score_files(model_dir, data[0], out, part_bytes=4096, workers=0, progress=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="part_bytes changed"):
        score_files(model_dir, data[0], out, part_bytes=8192, workers=0, resume=True)


def test_kill_9_then_resume_gives_the_same_bytes(model_dir, tmp_path):
    big = write_csv(tmp_path / "big.csv", 8000, seed=7)
    command = [sys.executable, "-m", "fnn_fast", "score", "--model", str(model_dir), "--input",
               str(big), "--part-mb", "0.01", "--workers", "1", "--no-progress"]  # fmt: skip
    whole, killed = tmp_path / "whole.parquet", tmp_path / "killed.parquet"
    subprocess.run([*command, "--output", str(whole)], check=True)
    process = subprocess.Popen([*command, "--output", str(killed)])
    manifest = tmp_path / "killed.parquet.parts" / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.exists() and manifest.read_text().count('"rows"') >= 3:
            break
        time.sleep(0.02)
    if process.poll() is not None:
        pytest.fail("the run ended before it could be killed; make the input larger")
    workers = _children(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    subprocess.run([*command, "--output", str(killed), "--resume"], check=True)
    assert killed.read_bytes() == whole.read_bytes()
    deadline = time.monotonic() + 10  # the killed run's workers do not linger
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in workers):
        time.sleep(0.1)
    assert workers and not any(os.path.exists(f"/proc/{p}") for p in workers)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_arrow_and_pandas_api(model_dir, data):
    pandas = pytest.importorskip("pandas")
    scorer = Scorer(model_dir)
    frame = pandas.read_csv(data[0], dtype=str, keep_default_na=False)
    expected = reference_scores(model_dir, data[:1])
    np.testing.assert_allclose(scorer.predict_pandas(frame), expected, rtol=1e-6)
    batch = pa.RecordBatch.from_pandas(frame.drop(columns=["label"]), preserve_index=False)
    np.testing.assert_allclose(scorer.predict_arrow(batch), expected, rtol=1e-6)
    out = list(scorer.map_arrow(iter([batch.slice(0, 100), batch.slice(100)]), "id"))
    assert [b.num_rows for b in out] == [100, 600]
    assert out[1].column("id")[0].as_py() == "r10-100"
    frame.loc[3, "n1"] = "lots"
    with pytest.raises(DataError, match="row 4|:4:"):
        scorer.predict_pandas(frame)
    scored = scorer.predict_pandas(frame, skip_bad_rows=True)
    assert np.isnan(scored[3]) and np.isfinite(np.delete(scored, 3)).all()


def test_predict_pandas_without_pandas_names_the_extra(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ImportError, match=r'pip install "fnn-fast\[pandas\]"'):
        Scorer(model_dir).predict_pandas(object())


@pytest.mark.parametrize("reader", ["native", "arrow"])
@pytest.mark.parametrize("fmt", ["csv", "criteo"])
def test_arrow_fast_path_reads_what_the_line_reader_reads(tmp_path, monkeypatch, fmt, reader):
    """Parts go through the C++ reader, else pyarrow's CSV parser when rows map to lines
    exactly; the keys must be those of the line-by-line reader, numeric cells and missing ones
    included."""
    from fnn_fast.data import parts as parts_module
    from fnn_fast.data.synthetic import criteo_like_cardinalities, plant_model, write_criteo

    if reader == "arrow":
        monkeypatch.setattr(parts_module, "_native_text_part", lambda *args: None)

    if fmt == "criteo":
        path, schema = tmp_path / "c.txt", Schema.criteo()
        write_criteo(path, plant_model(criteo_like_cardinalities(39, 300), seed=1), 2000, seed=2)
    else:
        path, schema = write_csv(tmp_path / "c.csv", 2000, seed=5), SCHEMA
    whole = read_rows(path, schema, progress=False)
    encoder = FeatureEncoder.fit_rows(whole)
    want = encoder.transform(whole.keys, whole.values)[0]
    header = HEADER if fmt == "csv" else None
    parts = plan_parts([str(path)], schema, part_bytes=20_000)
    encoded = [encode_part(p, schema, encoder, False, header) for p in parts]
    np.testing.assert_array_equal(np.concatenate([e.ids for e in encoded]), want)
    first = [0]
    for e in encoded[:-1]:
        first.append(first[-1] + e.newlines)
    lines = np.concatenate([e.lines + f for e, f in zip(encoded, first, strict=True)])
    np.testing.assert_array_equal(lines, whole.lines)


def test_part_lines_are_local_until_numbered(data):
    part = plan_parts([str(data[0])], SCHEMA, part_bytes=2048)[1]
    encoded = encode_part(part, SCHEMA, load_model_encoder(data), False, HEADER)
    assert encoded.lines[0] == 1 and len(encoded) == encoded.newlines


def load_model_encoder(data):
    return FeatureEncoder.fit_rows(read_rows(data[0], SCHEMA, progress=False))


def test_every_reading_mode_gives_the_same_bytes(tmp_path, monkeypatch):
    """Criteo text read by the C++ reader, encoded between batches (few cores) or by the reader
    threads (many cores), or in a worker process: the same output bytes."""
    import fnn_fast.score.readers as readers
    from fnn_fast.data.synthetic import criteo_like_cardinalities, plant_model, write_criteo

    path, schema = tmp_path / "day.txt", Schema.criteo()
    write_criteo(path, plant_model(criteo_like_cardinalities(39, 300), seed=1), 3000, seed=2)
    encoder = FeatureEncoder.fit_rows(read_rows(path, schema, progress=False))
    fm = FM(encoder.num_features, 4)
    save_model(tmp_path / "model", fm, FNN.from_fm(fm, num_fields=39), encoder, schema)
    outputs = {}
    for mode, overlap_cores, workers in (("between", 64, None), ("beside", 1, None),
                                         ("worker", 64, 1)):  # fmt: skip
        monkeypatch.setattr(readers, "OVERLAP_CORES", overlap_cores)
        out = tmp_path / f"{mode}.csv"
        score_files(tmp_path / "model", path, out, part_bytes=50_000, workers=workers,
                    progress=False)  # fmt: skip
        outputs[mode] = out.read_bytes()
    assert outputs["between"] == outputs["beside"] == outputs["worker"]
    assert outputs["between"].count(b"\n") == 3001


def test_overwrite_never_deletes_what_fnn_fast_did_not_write(model_dir, data, tmp_path):
    options = dict(part_bytes=8192, workers=0, progress=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    for overwrite in (False, True):  # a directory fnn-fast did not write: never written into
        with pytest.raises(FileExistsError, match="did not write"):
            score_files(model_dir, data[0], mine, overwrite=overwrite, **options)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    out = tmp_path / "scored"  # a new directory: fnn-fast's, marked by its manifest
    score_files(model_dir, data[1], out, **options)
    with pytest.raises(FileExistsError, match="--overwrite"):
        score_files(model_dir, data[0], out, **options)
    (out / "notes.txt").write_text("the user's")
    summary = score_files(model_dir, data[0], out, overwrite=True, **options)
    assert (out / "notes.txt").read_text() == "the user's"
    parts = sorted(out.glob("part-*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in parts) == summary.rows == 700


def test_resume_refuses_a_changed_batch_size(model_dir, data, tmp_path, monkeypatch):
    """The run's own settings are recorded (not the function's defaults): a batch size that
    differs may change the bytes, so a resume with it is refused."""
    out = tmp_path / "s.parquet"
    monkeypatch.setattr("fnn_fast.score.output._concatenate", _raise_interrupt)
    command = ["score", "--model", str(model_dir), "--input", str(data[0]), "--output", str(out),
               "--part-mb", "0.004", "--workers", "0", "--no-progress"]  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        main([*command, "--batch-size", "64", "--which", "fm"])
    monkeypatch.undo()
    settings = json.loads((tmp_path / "s.parquet.parts" / "manifest.json").read_text())["settings"]
    assert (settings["batch_size"], settings["which"], settings["device"]) == (64, "fm", "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        score_files(Scorer(model_dir, "fm", batch_size=128), data[0], out, resume=True,
                    part_bytes=int(0.004 * (1 << 20)), workers=0, progress=False)  # fmt: skip
    assert main([*command, "--batch-size", "64", "--which", "fm", "--resume"]) == 0
    expected = Scorer(model_dir, "fm").predict_rows(read_rows(data[0], SCHEMA, progress=False))
    np.testing.assert_allclose(pq.read_table(out)["prediction"].to_numpy(), expected, rtol=1e-6)


def test_a_failed_run_can_be_retried_or_resumed(model_dir, tmp_path, capsys):
    """A run stopped by a bad line leaves its finished parts; the retry the error suggests
    (--skip-bad-lines) needs no --overwrite, and --resume continues from those parts."""
    late = write_csv(tmp_path / "late.csv", 600, seed=3, bad={400: ["y", "0", "x", "a", "b", "c"]})
    whole = tmp_path / "whole.csv"
    options = ["--part-mb", "0.002", "--workers", "0", "--no-progress"]

    def score(out, *extra):
        return main(["score", "--model", str(model_dir), "--input", str(late), "--output",
                     str(out), *options, *extra])  # fmt: skip

    assert score(whole, "--skip-bad-lines") == 0
    for retry in (["--skip-bad-lines"], ["--skip-bad-lines", "--resume"]):
        out = tmp_path / f"retried-{len(retry)}.csv"
        assert score(out) == 2
        err = capsys.readouterr().err
        assert "late.csv:402" in err and "--skip-bad-lines" in err
        assert (tmp_path / f"{out.name}.parts" / "manifest.json").exists()
        assert score(out, *retry) == 0
        assert ("parts kept" in capsys.readouterr().err) == ("--resume" in retry)
        assert out.read_bytes() == whole.read_bytes()
        assert not (tmp_path / f"{out.name}.parts").exists()


def test_pandas_column_mixing_numbers_and_strings(model_dir, data):
    pandas = pytest.importorskip("pandas")
    scorer = Scorer(model_dir)
    frame = pandas.read_csv(data[0], keep_default_na=False)
    expected = scorer.predict_pandas(frame)
    frame["n1"] = frame["n1"].astype(object)
    frame.loc[3, "n1"] = "lots"  # numbers and a string in one column: Arrow cannot type it
    with pytest.raises(DataError, match="row 4|:4:"):
        scorer.predict_pandas(frame)
    scored = scorer.predict_pandas(frame, skip_bad_rows=True)
    assert np.flatnonzero(np.isnan(scored)).tolist() == [3]
    np.testing.assert_allclose(np.delete(scored, 3), np.delete(expected, 3), rtol=1e-6)


def test_missing_columns_leave_nothing_and_suggest_no_skipping(model_dir, tmp_path, capsys):
    source = write_csv(tmp_path / "no-c3.csv", 50, seed=1)
    source.write_text(source.read_text().replace(",c3\n", ",c4\n", 1))
    out = tmp_path / "s.csv"
    args = ["score", "--model", str(model_dir), "--input", str(source), "--output", str(out)]
    assert main([*args, "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "c3" in err and "--skip-bad-lines" not in err  # skipping lines cannot add a column
    assert list(tmp_path.iterdir()) == [source]  # no parts folder left for the retry to trip on
    unlabelled = write_csv(tmp_path / "unlabelled.csv", 50, seed=1)  # then without its labels
    lines = [line.split(",") for line in unlabelled.read_text().splitlines()]
    unlabelled.write_text("".join(",".join(cells[:1] + cells[2:]) + "\n" for cells in lines))
    assert main(["evaluate", "--model", str(model_dir), "--data", str(unlabelled)]) == 2
    err = capsys.readouterr().err
    assert "label" in err and "--skip-bad-lines" not in err
