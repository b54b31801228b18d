"""`fnn-fast compare` with the peers (pytorch-fm, DeepCTR-Torch): rows where installed, trained on
the same splits with early stopping on the same validation rows, a note where not installed."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from fnn_fast import peers
from fnn_fast.cli import main
from fnn_fast.data.synthetic import plant_model
from fnn_fast.demo import planted_splits
from fnn_fast.train import Split, TrainConfig

INSTALLED = [name for name in peers.PEERS if peers.missing_reason(name) is None]
needs_a_peer = pytest.mark.skipif(
    not INSTALLED, reason="no peer installed: pip install 'fnn-fast[peers]'"
)


@pytest.fixture(scope="module")
def planted():
    truth = plant_model((30,) * 6, num_factors=3, bias=-1.0, seed=4)
    encoder, splits, _ = planted_splits(truth, (3000, 1000, 1000), 11)
    return (*splits, encoder)


@needs_a_peer
@pytest.mark.parametrize("name", INSTALLED)
def test_peer_keeps_its_best_validation_epoch(planted, name):
    train, valid, test, encoder = planted
    config = TrainConfig(factors=4, patience=2, fm_epochs=8, fnn_epochs=8)
    run = peers.train_peer(name, train, valid, test, encoder, config, seed=0)
    aucs = run["valid_aucs"]
    assert len(aucs) == run["epochs"] <= 8
    # Early stopping on the validation AUC: the reported epoch is the first best one, the run
    # stopped `patience` epochs after it (or at the last epoch), its metrics are that epoch's.
    assert run["best_epoch"] == int(np.argmax(aucs)) + 1
    assert run["valid_auc"] == pytest.approx(max(aucs))
    assert run["epochs"] == 8 or run["epochs"] - run["best_epoch"] == 2
    assert math.isfinite(run["test_auc"]) and math.isfinite(run["test_logloss"])


@needs_a_peer
def test_compare_adds_the_installed_peers(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--synthetic", "--synthetic-rows", "3000", "--seeds", "2",
                 "--factors", "4", "--hidden", "16", "--fm-epochs", "3", "--fnn-epochs", "3",
                 "--patience", "1", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    record = json.loads((out / "compare.json").read_text())
    table = (out / "compare.md").read_text()
    for name, peer in peers.PEERS.items():
        if name in INSTALLED:
            runs = record["runs"][name]
            assert len(runs) == 2 and all(r["test_auc"] is not None for r in runs), runs
            assert peer.label in table and peer.label in record["peer_settings"]
        else:
            assert any(n.startswith(f"{peer.label}: skipped") for n in record["notes"])
    assert "| FNN from FM |" in capsys.readouterr().out


def test_a_missing_peer_is_skipped_with_a_note(planted, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchfm.model.fm", None)  # importing it fails
    runnable, notes = peers.resolve(["torchfm-fm"], planted[:3])
    assert runnable == []
    assert notes and "pip install torchfm" in notes[0] and "pytorch-fm FM" in notes[0]
    assert peers.parse_peers("none") == [] and peers.parse_peers("auto") == list(peers.PEERS)
    with pytest.raises(ValueError, match="unknown peer"):
        peers.parse_peers("torchfm-fm,xgboost")


def test_valued_rows_are_not_given_to_the_peers(planted):
    train, valid, test, _ = planted
    valued = Split(train.ids, torch.full(train.ids.shape, 0.5), train.labels)
    runnable, notes = peers.resolve(list(peers.PEERS), (valued, valid, test))
    assert runnable == [] and len(notes) == len(peers.PEERS)
    assert all("values other than 0 and 1" in n for n in notes)


def test_local_ids_index_each_slots_field(planted):
    train, _, _, encoder = planted
    local = peers.LocalIds(encoder)
    ids = local(train.ids)
    assert ids.shape == train.ids.shape and int(ids.min()) >= 0
    for s, dim in enumerate(local.field_dims):
        assert int(ids[:, s].max()) < dim
    with pytest.raises(ValueError, match="outside its slot's field"):
        local(train.ids + encoder.num_features)
