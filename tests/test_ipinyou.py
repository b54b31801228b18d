"""Acceptance on real data: the documented `fnn-fast train` command on the iPinYou advertiser
2997 files with default settings (logistic regression reaches about 0.595 test AUC here)."""

import json

import pytest

from fnn_fast.cli import main


@pytest.mark.slow
def test_two_stage_training_on_ipinyou(ipinyou_dir, tmp_path):
    out = tmp_path / "run"
    code = main([
        "train",
        "--train", str(ipinyou_dir / "train.fm.txt"),
        "--test", str(ipinyou_dir / "test.fm.txt"),
        "--format", "libfm",
        "--featindex", str(ipinyou_dir / "featindex.fm.txt"),
        "--out", str(out),
        "--no-progress",
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fnn"]["test_auc"] >= 0.59, metrics
    assert metrics["fm"]["test_auc"] >= 0.58, metrics
