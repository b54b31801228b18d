"""Other libraries' models as rows of ``fnn-fast compare``: pytorch-fm's FM and FNN, DeepCTR-Torch's
DeepFM and PNN, where installed (``pip install "fnn-fast[peers]"``).

Each peer is trained on the same splits and the same encoded ids as fnn-fast's own rows, with its
own library's documented training settings (optimizer, rate, L2, batch size, network, loss), epoch
by epoch, with early stopping by the rule our own stage of that kind uses on the same rows
(``fm_early_stopping`` or ``fnn_early_stopping``: AUC or, auto on few positives, logloss;
``TrainConfig.patience`` epochs without a better one). Its test metrics are those of its best
validation epoch. Only the embedding size is ours (``TrainConfig.factors``), so that every row
of the table has the same table size; the FM peers train for at most ``fm_epochs`` epochs, the
network peers for at most ``fnn_epochs``.

The peers take one categorical id per field: fnn-fast's slot s becomes the peer's field s, and
its id is the feature's index within the slot's field (``id - encoder.offsets[field]``; 0 is the
field's unseen-key id). A padded slot (value 0) thus becomes its field's unseen-key category.
Rows with other values than 0 and 1 (``--numeric-mode value``) cannot be given to the peers;
they are then skipped with a note.
"""

from __future__ import annotations

import copy
import importlib
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fnn_fast.metrics import log_loss, roc_auc
from fnn_fast.train import stopping_metric


@dataclass
class PeerSetup:
    model: torch.nn.Module  # local ids [B, S] -> click probabilities [B]
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (probabilities, labels)
    batch_size: int
    epochs: int


@dataclass(frozen=True)
class Peer:
    label: str  # the row's name in the table
    package: str  # what pip installs
    modules: tuple[str, ...]  # what must import
    settings: str  # the training settings, as the notes print them
    build: Callable  # (field_dims, config, seed) -> PeerSetup


# --- pytorch-fm (torchfm) ---------------------------------------------------------------------
# Its examples/main.py: BCELoss on the models' probabilities, Adam at 1e-3 with weight decay 1e-6,
# batches of 2048; the FNN with mlp_dims (16, 16) and dropout 0.2 (ReLU, batch norm, a random
# embedding: pytorch-fm has no FM initialization).
TORCHFM_ADAM = dict(lr=1e-3, weight_decay=1e-6)
TORCHFM_BATCH = 2048


def _torchfm_fm(field_dims, config, seed):
    from torchfm.model.fm import FactorizationMachineModel

    torch.manual_seed(seed)
    model = FactorizationMachineModel(field_dims, config.factors)
    return PeerSetup(model, torch.optim.Adam(model.parameters(), **TORCHFM_ADAM),
                     F.binary_cross_entropy, TORCHFM_BATCH, config.fm_epochs)  # fmt: skip


def _torchfm_fnn(field_dims, config, seed):
    from torchfm.model.fnn import FactorizationSupportedNeuralNetworkModel

    torch.manual_seed(seed)
    model = FactorizationSupportedNeuralNetworkModel(
        field_dims, config.factors, mlp_dims=(16, 16), dropout=0.2
    )
    return PeerSetup(model, torch.optim.Adam(model.parameters(), **TORCHFM_ADAM),
                     F.binary_cross_entropy, TORCHFM_BATCH, config.fnn_epochs)  # fmt: skip


# --- DeepCTR-Torch (deepctr_torch) ------------------------------------------------------------
# Its quick start: model.compile("adam", "binary_crossentropy") (torch's Adam, lr 1e-3),
# model.fit(batch_size=256); the models' own defaults otherwise (DeepFM: hidden (256, 128);
# PNN: hidden (128, 128); ReLU, no dropout, embedding L2 1e-5, init std 1e-4). Its fit sums the
# batch's cross-entropy (reduction="sum") and adds the models' L2 terms; so does this loop.
DEEPCTR_BATCH = 256


def _import_deepctr():
    """deepctr_torch, imported without the version check its __init__ starts (a thread that asks
    PyPI for the latest release, and needs the undeclared ``requests``)."""
    if "deepctr_torch" in sys.modules:
        return sys.modules["deepctr_torch"]
    stub = types.ModuleType("deepctr_torch.utils")
    stub.check_version = lambda version: None
    sys.modules["deepctr_torch.utils"] = stub
    try:
        module = importlib.import_module("deepctr_torch")
    finally:
        # A later `import deepctr_torch.utils` loads the real module.
        sys.modules.pop("deepctr_torch.utils", None)
        parent = sys.modules.get("deepctr_torch")
        if parent is not None and getattr(parent, "utils", None) is stub:
            del parent.utils
    return module


def _deepctr_columns(field_dims, config):
    from deepctr_torch.inputs import SparseFeat

    return [
        SparseFeat(f"slot{s}", vocabulary_size=int(d), embedding_dim=config.factors)
        for s, d in enumerate(field_dims)
    ]


class _DeepCTRModel(torch.nn.Module):
    """A DeepCTR model, fed the ids as the float32 matrix it takes (it casts them back to int64;
    float32 holds every id below 2**24 exactly)."""

    def __init__(self, model, field_dims):
        super().__init__()
        if max(field_dims) > 2**24:
            raise ValueError("a field of over 2**24 features: DeepCTR-Torch's float input would "
                             "round its ids")  # fmt: skip
        self.inner = model

    def forward(self, ids):
        return self.inner(ids.to(torch.float32)).squeeze(-1)


def _deepctr_setup(model, field_dims, epochs):
    wrapped = _DeepCTRModel(model, field_dims)

    def loss(probabilities, labels):
        return (
            F.binary_cross_entropy(probabilities, labels, reduction="sum")
            + model.get_regularization_loss()
            + model.aux_loss
        )

    return PeerSetup(wrapped, torch.optim.Adam(model.parameters()), loss, DEEPCTR_BATCH, epochs)


def _deepctr_deepfm(field_dims, config, seed):
    _import_deepctr()
    from deepctr_torch.models import DeepFM

    columns = _deepctr_columns(field_dims, config)
    model = DeepFM(columns, columns, task="binary", seed=seed, device="cpu")
    return _deepctr_setup(model, field_dims, config.fnn_epochs)


def _deepctr_pnn(field_dims, config, seed):
    _import_deepctr()
    from deepctr_torch.models import PNN

    columns = _deepctr_columns(field_dims, config)
    # No product layer: the fields' embeddings concatenated into an MLP, the closest model
    # DeepCTR-Torch has to FNN (with a random embedding).
    model = PNN(columns, use_inner=False, use_outter=False, task="binary", seed=seed, device="cpu")
    return _deepctr_setup(model, field_dims, config.fnn_epochs)


TORCHFM_SETTINGS = f"Adam lr 1e-3, weight decay 1e-6, batch {TORCHFM_BATCH}, BCE (mean)"
DEEPCTR_SETTINGS = f"Adam lr 1e-3, batch {DEEPCTR_BATCH}, BCE (sum) + embedding L2 1e-5"
PEERS = {
    "torchfm-fm": Peer("pytorch-fm FM", "torchfm", ("torchfm.model.fm",), TORCHFM_SETTINGS,
                       _torchfm_fm),
    "torchfm-fnn": Peer("pytorch-fm FNN (random embedding, MLP 16-16, dropout 0.2)", "torchfm",
                        ("torchfm.model.fnn",), TORCHFM_SETTINGS, _torchfm_fnn),
    "deepctr-deepfm": Peer("DeepCTR-Torch DeepFM", "deepctr-torch", ("deepctr_torch.models",),
                           DEEPCTR_SETTINGS, _deepctr_deepfm),
    "deepctr-pnn": Peer("DeepCTR-Torch PNN, no product layer (embeddings into an MLP)",
                        "deepctr-torch", ("deepctr_torch.models",), DEEPCTR_SETTINGS,
                        _deepctr_pnn),
}  # fmt: skip


def missing_reason(name: str) -> str | None:
    """Why peer ``name`` cannot run here (its package does not import), or None."""
    peer = PEERS[name]
    try:
        if peer.package == "deepctr-torch":
            _import_deepctr()
        for module in peer.modules:
            importlib.import_module(module)
    except ImportError as error:
        return f"not installed ({error}): pip install {peer.package}"
    return None


def parse_peers(text: str) -> list[str]:
    """``--peers``: "auto" (all), "none", or a comma-separated list of PEERS names."""
    if text in ("auto", "all"):
        return list(PEERS)
    if text in ("none", ""):
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}: choose from {', '.join(PEERS)}, or none")
    return names


def _categorical_only(split) -> bool:
    values = split.values
    return values is None or bool(((values == 0) | (values == 1)).all())


def resolve(names, splits) -> tuple[list[str], list[str]]:
    """(the peers that run, notes on those that do not)."""
    if not names:
        return [], []
    if not all(_categorical_only(s) for s in splits):
        return [], [
            f"{PEERS[n].label}: skipped, the rows carry feature values other than 0 and 1 "
            "(numeric mode 'value'), and the peers take one categorical id per field"
            for n in names
        ]
    runnable, notes = [], []
    for name in names:
        reason = missing_reason(name)
        if reason is None:
            runnable.append(name)
        else:
            notes.append(f"{PEERS[name].label}: skipped, {reason}")
    return runnable, notes


class LocalIds:
    """fnn-fast's global ids as per-slot ids: what the peers' per-field tables index."""

    def __init__(self, encoder):
        slot_fields = np.asarray(encoder.slot_fields, dtype=np.int64)
        self.offsets = torch.from_numpy(np.asarray(encoder.offsets, dtype=np.int64)[slot_fields])
        self.field_dims = [int(d) for d in np.asarray(encoder.sizes)[slot_fields]]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.offsets
        if local.numel() and (
            int(local.min()) < 0
            or bool((local >= torch.tensor(self.field_dims, dtype=torch.int64)).any())
        ):
            raise ValueError("an id lies outside its slot's field: not this encoder's ids")
        return local.contiguous()


@torch.no_grad()
def _probabilities(model, ids: torch.Tensor, batch_size: int = 8192) -> np.ndarray:
    model.eval()
    out = [model(ids[start : start + batch_size]) for start in range(0, len(ids), batch_size)]
    model.train()
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def _metrics(model, ids, labels) -> dict:
    p = _probabilities(model, ids)
    return {"auc": roc_auc(labels, p), "logloss": log_loss(labels, p)}


class PeerDiverged(FloatingPointError):
    pass


def train_peer(name: str, train, valid, test, encoder, config, seed: int) -> dict:
    """One peer, one seed: trained with early stopping on ``valid``; the test and validation
    metrics of its best validation epoch."""
    local = LocalIds(encoder)
    train_ids, valid_ids, test_ids = local(train.ids), local(valid.ids), local(test.ids)
    train_labels = train.labels
    valid_labels, test_labels = valid.labels.numpy(), test.labels.numpy()
    setup = PEERS[name].build(local.field_dims, config, seed)
    model, optimizer = setup.model, setup.optimizer
    generator = torch.Generator().manual_seed(seed)
    best_score, best_state, best_epoch, best_valid = -math.inf, None, 0, None
    epochs_run, valid_aucs = 0, []
    # the rule our own FM or network stage stops by on these rows (auto: AUC or logloss)
    choice = config.fm_early_stopping if name == "torchfm-fm" else config.fnn_early_stopping
    stop_on, _ = stopping_metric(choice, valid)
    for epoch in range(1, setup.epochs + 1):
        epochs_run = epoch
        model.train()
        order = torch.randperm(len(train_labels), generator=generator)
        for step, start in enumerate(range(0, len(order), setup.batch_size), 1):
            index = order[start : start + setup.batch_size]
            if len(index) < 2:  # batch norm (pytorch-fm's MLP) cannot train on one row
                continue
            optimizer.zero_grad()
            loss = setup.loss(model(train_ids[index]), train_labels[index])
            if not math.isfinite(loss.item()):
                raise PeerDiverged(f"diverged in epoch {epoch}, step {step} (loss {loss.item()})")
            loss.backward()
            optimizer.step()
        metrics = _metrics(model, valid_ids, valid_labels)
        valid_aucs.append(metrics["auc"])
        by_auc = stop_on == "auc" and not math.isnan(metrics["auc"])
        score = metrics["auc"] if by_auc else -metrics["logloss"]
        if math.isnan(score):
            raise PeerDiverged(f"diverged in epoch {epoch}: the validation metric is NaN")
        if score > best_score:
            best_score, best_epoch, best_valid = score, epoch, metrics
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    tested = _metrics(model, test_ids, test_labels)
    return {
        "test_auc": tested["auc"],
        "test_logloss": tested["logloss"],
        "best_epoch": best_epoch,
        "valid_auc": best_valid["auc"],
        "valid_logloss": best_valid["logloss"],
        "epochs": epochs_run,
        "valid_aucs": valid_aucs,  # one per epoch
    }
