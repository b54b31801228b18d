"""Acceptance on real data: the documented `fnn-fast train` command on the iPinYou advertiser
2997 files with default settings (logistic regression reaches about 0.595 test AUC here)."""

import json

import pytest

import fnn_fast
from fnn_fast.cli import main


def train(ipinyou_dir, out):
    return main([
        "train",
        "--train", str(ipinyou_dir / "train.fm.txt"),
        "--test", str(ipinyou_dir / "test.fm.txt"),
        "--format", "libfm",
        "--featindex", str(ipinyou_dir / "featindex.fm.txt"),
        "--out", str(out),
        "--no-progress",
    ])  # fmt: skip


@pytest.mark.slow
def test_two_stage_training_on_ipinyou(ipinyou_dir, tmp_path):
    out = tmp_path / "run"
    assert train(ipinyou_dir, out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fnn"]["test_auc"] >= 0.59, metrics
    assert metrics["fm"]["test_auc"] >= 0.58, metrics


@pytest.mark.slow
@pytest.mark.skipif(not fnn_fast.ops.native.available(), reason="fnn_fast._C was not built")
def test_native_and_reference_training_agree(ipinyou_dir, tmp_path):
    """The fused native kernels train to the same AUC as the reference path."""
    metrics = {}
    for backend in ("reference", "native"):
        fnn_fast.set_backend(backend)
        try:
            assert train(ipinyou_dir, tmp_path / backend) == 0
        finally:
            fnn_fast.set_backend("auto")
        metrics[backend] = json.loads((tmp_path / backend / "metrics.json").read_text())
    for stage in ("fm", "fnn"):
        reference, native = metrics["reference"][stage], metrics["native"][stage]
        assert abs(native["test_auc"] - reference["test_auc"]) <= 0.002, (stage, metrics)
