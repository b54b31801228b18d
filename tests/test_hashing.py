"""Hashed features (--hash-buckets): the hash, the id layout, the collision report, saving, and
training, evaluating and scoring end to end; and the parallel vocabulary pass."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import planted_libfm_files

from fnn_fast.cli import main
from fnn_fast.data import PAD_KEY, FeatureEncoder, HashedEncoder, Schema, read_rows
from fnn_fast.data.hashing import expected_collision_share, hash_keys
from fnn_fast.saved import load_model
from fnn_fast.score import predict

FAST = [
    "--fm-epochs", "3", "--fnn-epochs", "2", "--hidden", "16,8", "--factors", "4",
    "--fm-lr", "0.05", "--fm-initial-accumulator", "0", "--fnn-lr", "1e-3",
    "--batch-size", "64", "--no-progress",
]  # fmt: skip


def test_hash_is_splitmix64_and_the_same_in_every_process():
    # splitmix64's first output from state 0 is 0xE220A8397B1DCDAF: h(0, field 0) is that value
    assert int(hash_keys(np.array([0]), 0)[0]) == 0xE220A8397B1DCDAF
    keys = np.array([0, 1, PAD_KEY, 2**62, 12345])
    here = [int(x) for x in hash_keys(keys, 3)]
    code = (
        "import numpy as np; from fnn_fast.data.hashing import hash_keys; "
        f"print([int(x) for x in hash_keys(np.array({keys.tolist()}), 3)])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == here
    assert here != [int(x) for x in hash_keys(keys, 4)]  # the field changes the hash


def keys_of(rows=2000, seed=0):
    rng = np.random.default_rng(seed)
    keys = np.stack(
        [
            rng.integers(0, 40, rows),  # small ints, the same values as field 1
            rng.integers(0, 40, rows),
            rng.integers(0, 2**62, rows),  # hashed tokens, nearly all distinct
            rng.integers(0, 40, rows),  # second slot of field 1 (multi-valued)
        ],
        axis=1,
    )
    keys[rng.random(keys.shape) < 0.1] = PAD_KEY
    return keys, [0, 1, 2, 1], ["a", "b", "c"]


def test_per_field_ids_stay_in_their_field_and_pad_gets_the_spare_row():
    keys, slot_fields, names = keys_of()
    encoder = HashedEncoder.fit(keys, slot_fields, names, buckets=16)
    assert encoder.num_features == 3 * 16 + 1 and encoder.pad_id == 48
    values = np.full(keys.shape, 2.0, np.float32)
    ids, out = encoder.transform(keys, values, chunk_rows=300)
    pad = keys == PAD_KEY
    assert (ids[pad] == 48).all() and (out[pad] == 0).all() and (out[~pad] == 2).all()
    for s, f in enumerate(slot_fields):
        live = ids[~pad[:, s], s]
        assert ((live >= f * 16) & (live < (f + 1) * 16)).all()
    # same key, same field: same id, whichever slot; the chunking changes nothing
    np.testing.assert_array_equal(ids, encoder.transform(keys, values)[0])
    both = ~pad[:, 1] & ~pad[:, 3] & (keys[:, 1] == keys[:, 3])
    np.testing.assert_array_equal(ids[both, 1], ids[both, 3])


def test_shared_space_keeps_fields_apart():
    keys, slot_fields, names = keys_of()
    encoder = HashedEncoder.fit(keys, slot_fields, names, buckets=1 << 16, shared=True)
    assert encoder.num_features == (1 << 16) + 1
    ids, _ = encoder.transform(keys, np.ones(keys.shape, np.float32))
    assert ids.max() == encoder.pad_id and ids[keys != PAD_KEY].max() < 1 << 16
    same = (keys[:, 0] == keys[:, 1]) & (keys[:, 0] != PAD_KEY)
    assert same.sum() > 10 and (ids[same, 0] != ids[same, 1]).all()  # 0..39 in a and b


def test_collision_report_counts_keys_sharing_a_bucket():
    keys, slot_fields, names = keys_of(rows=5000)
    encoder = HashedEncoder.fit(keys, slot_fields, names, buckets=64, chunk_rows=700)
    report = encoder.collisions
    total = 0
    for f, name in enumerate(names):
        distinct = np.unique(keys[:, np.array(slot_fields) == f])
        distinct = distinct[distinct != PAD_KEY]
        buckets = [int(b) for b in encoder.bucket_of(distinct, f)]
        colliding = sum(buckets.count(b) > 1 for b in buckets)  # brute force
        field = report["fields"][name]
        assert (field["keys"], field["colliding_keys"]) == (len(distinct), colliding)
        assert field["expected"] == pytest.approx(1 - (1 - 1 / 64) ** (len(distinct) - 1))
        total += len(distinct)
    assert report["keys"] == total and report["space"] == "per-field"
    c = report["fields"]["c"]  # ~4500 random keys in 64 buckets: all collide
    assert c["observed"] == pytest.approx(1.0) and c["expected"] == pytest.approx(1.0)
    assert report["fields"]["a"]["observed"] == pytest.approx(
        report["fields"]["a"]["expected"], abs=0.25
    )
    assert expected_collision_share(1, 10) == 0.0
    assert expected_collision_share(1001, 10**9) == pytest.approx(1e-6, rel=1e-3)


def test_hashed_encoder_saves_its_spec_only_and_loads_through_feature_encoder(tmp_path):
    keys, slot_fields, names = keys_of()
    for shared in (False, True):
        encoder = HashedEncoder.fit(keys, slot_fields, names, buckets=32, shared=shared)
        encoder.save(tmp_path / f"enc{shared}")
        assert {p.name for p in (tmp_path / f"enc{shared}").iterdir()} == {"encoder.json"}
        loaded = FeatureEncoder.load(tmp_path / f"enc{shared}")
        assert isinstance(loaded, HashedEncoder) and loaded.spec() == encoder.spec()
        assert loaded.collisions == json.loads(json.dumps(encoder.collisions))
        values = np.ones(keys.shape, np.float32)
        np.testing.assert_array_equal(
            loaded.transform(keys, values)[0], encoder.transform(keys, values)[0]
        )
    config = json.loads((tmp_path / "encTrue" / "encoder.json").read_text())
    config["hash"] = "another-hash"
    (tmp_path / "encTrue" / "encoder.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="this version reads"):
        FeatureEncoder.load(tmp_path / "encTrue")


def test_parallel_vocabulary_pass_matches_the_serial_one():
    keys, slot_fields, names = keys_of(rows=6000)
    serial = FeatureEncoder.fit(keys, slot_fields, names, min_count=2, threads=1)
    parallel = FeatureEncoder.fit(keys, slot_fields, names, min_count=2, threads=4, chunk_rows=97)
    for v, w in zip(serial.vocabs, parallel.vocabs, strict=True):
        np.testing.assert_array_equal(v, w)


@pytest.fixture(scope="module")
def libfm_files(tmp_path_factory):
    return planted_libfm_files(tmp_path_factory.mktemp("libfm"), 30)


@pytest.mark.parametrize("space", ["field", "shared"])
def test_hashed_training_and_scoring_end_to_end(libfm_files, tmp_path, capsys, space):
    out = tmp_path / "run"
    code = main(["train", "--train", str(libfm_files["train"]), "--test", str(libfm_files["test"]),
                 "--format", "libfm", "--out", str(out), "--hash-buckets", "64",
                 "--hash-space", space, *FAST])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "share a bucket with another" in err
    metrics = json.loads((out / "metrics.json").read_text())
    hashing = metrics["hashing"]
    assert hashing["space"] == ("shared" if space == "shared" else "per-field")
    assert hashing["buckets"] == 64 and 0 < hashing["keys"] <= 5 * 30
    assert 0 <= hashing["observed"] <= 1 and 0 < hashing["expected"] < 1
    assert metrics["fm"]["test_auc"] > 0.6
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"]["kind"] == "hashed" and config["encoder"]["buckets"] == 64
    assert not (out / "encoder" / "encoder.safetensors").exists()  # no vocabulary stored
    saved = load_model(out)
    assert isinstance(saved.encoder, HashedEncoder)
    assert saved.fm.num_features == (65 if space == "shared" else 5 * 64 + 1)

    # evaluate and score hash as training did: the same test metrics, one score per row
    assert main(["evaluate", "--model", str(out), "--data", str(libfm_files["test"]),
                 "--no-progress"]) == 0  # fmt: skip
    evaluated = json.loads(capsys.readouterr().out)
    for which in ("fm", "fnn"):
        assert evaluated[which]["auc"] == pytest.approx(metrics[which]["test_auc"], abs=1e-9)
    scores = tmp_path / "scores.npy"
    assert main(["score", "--model", str(out), "--input", str(libfm_files["test"]),
                 "--output", str(scores), "--no-progress"]) == 0  # fmt: skip
    got = np.load(scores)
    assert got.shape == (800,) and np.isfinite(got).all()
    rows = read_rows(libfm_files["test"], Schema("libfm", num_fields=5), progress=False)
    np.testing.assert_allclose(got, predict(saved, rows), rtol=1e-6)


def test_hashing_refuses_min_count(libfm_files, tmp_path, capsys):
    code = main(["train", "--train", str(libfm_files["train"]), "--format", "libfm",
                 "--out", str(tmp_path / "r"), "--hash-buckets", "64", "--min-count", "2",
                 *FAST])  # fmt: skip
    assert code == 2
    assert "--min-count" in capsys.readouterr().err


def test_hashed_criteo_model_scores_text_through_the_python_readers(tmp_path):
    """Criteo text: a vocabulary model scores it with the C++ reader; a hashed one (no C++
    table) through the other readers, with the ids its encoder gives the parsed keys."""
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(400):
        ints = [str(int(v)) if rng.random() > 0.1 else "" for v in rng.integers(0, 50, 13)]
        cats = [f"{v:08x}" for v in rng.integers(0, 30, 26)]
        lines.append("\t".join([str(int(rng.random() < 0.3)), *ints, *cats]))
    tsv = tmp_path / "day.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "criteo"
    code = main(["train", "--train", str(tsv), "--format", "criteo", "--out", str(out),
                 "--hash-buckets", "1000", "--hash-space", "shared", *FAST])  # fmt: skip
    assert code == 0
    scores = tmp_path / "s.npy"
    assert main(["score", "--model", str(out), "--input", str(tsv), "--output", str(scores),
                 "--no-progress"]) == 0  # fmt: skip
    saved = load_model(out)
    rows = read_rows(tsv, saved.schema, progress=False)
    np.testing.assert_allclose(np.load(scores), predict(saved, rows), rtol=1e-6)
