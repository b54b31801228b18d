"""The equal-quality check: every contender trains the same model on the same planted data for
the same epochs, in the same batch order, and is scored on the same test rows, so a speed-up
is never bought with a worse model. Training time counts the steps only, not the evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fnn_fast.bench.cases import Case, QualitySpec
from fnn_fast.bench.contenders import Contender, ModelSpec
from fnn_fast.bench.shapes import Batch
from fnn_fast.data import FeatureEncoder
from fnn_fast.data.synthetic import criteo_like_cardinalities, plant_model
from fnn_fast.metrics import log_loss, roc_auc
from fnn_fast.train import Split


@dataclass
class PlantedData:
    encoder: FeatureEncoder
    train: Split
    test: Split
    bayes_auc: float  # the test AUC of the true probabilities: no model can beat it


def planted_data(spec: QualitySpec, fields: int) -> PlantedData:
    """Criteo-shaped planted data (as in ``fnn-fast demo``): an FM-structured truth plus a
    non-linear term, Zipf-popular features; the encoder is fit on the training rows."""
    from fnn_fast.demo import planted_splits

    truth = plant_model(
        criteo_like_cardinalities(fields, largest=spec.largest_field, seed=spec.seed),
        num_factors=4,
        nonlinear=2.0,
        seed=spec.seed,
    )
    sizes = (spec.train_rows, spec.test_rows)
    encoder, (train, test), parts = planted_splits(truth, sizes, spec.seed + 1)
    return PlantedData(encoder, train, test, parts[1].bayes_auc)


def train_and_test(
    contender: Contender, case: Case, data: PlantedData, device: str, sync: Callable[[], None]
) -> dict:
    """Train for the case's epochs, then score the test rows: the record's measured fields."""
    spec, encoder = case.quality, data.encoder
    model = contender.build(
        case.model,
        ModelSpec(
            encoder.num_features,
            tuple(int(s) for s in encoder.sizes),
            case.shape.factors,
            case.rule,
            device,
            seed=spec.seed,
        ),
    )
    offsets = torch.as_tensor(encoder.offsets, dtype=torch.int64, device=device)
    generator = torch.Generator().manual_seed(spec.seed)  # the same batch order for everyone
    seconds, samples = 0.0, 0
    for _ in range(spec.epochs):
        for ids, _values, labels in data.train.batches(case.shape.batch, generator):
            batch = Batch(ids.to(device), labels.to(device), offsets)
            for layout in contender.layouts:  # what the contender reads, prepared untimed
                getattr(batch, layout)
            started = time.perf_counter()
            model.train_step(batch)
            sync()
            seconds += time.perf_counter() - started
            samples += labels.shape[0]
    scores = []
    for ids, _values, labels in data.test.batches(8192):
        scores.append(model.score(Batch(ids.to(device), labels.to(device), offsets)).cpu())
    probabilities = torch.cat(scores).double().numpy()
    labels = data.test.labels.numpy()
    if not np.isfinite(probabilities).all():
        raise FloatingPointError("the model's test scores are not finite: training diverged")
    return {
        "samples_per_s": samples / max(seconds, 1e-12),
        "seconds": seconds,
        "auc": roc_auc(labels, probabilities),
        "logloss": log_loss(labels, probabilities),
        "bayes_auc": data.bayes_auc,
        "rows": encoder.num_features,
    }
