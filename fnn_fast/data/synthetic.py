"""Synthetic multi-field click data with a planted model.

The truth is an FM-structured logit (bias + per-feature weights + pairwise factor interactions)
plus, optionally, a non-linear term: a random tanh network over per-feature embeddings, which no
FM can express. Feature popularity within each field is Zipf-distributed, as in real click logs.
Because the true click probability of every row is known, the Bayes-optimal AUC of the generated
rows (the AUC of the true probabilities against the sampled labels) is reported with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fnn_fast.data.rows import ParsedRows
from fnn_fast.metrics import roc_auc


def criteo_like_cardinalities(num_fields: int = 39, largest: int = 20_000, seed: int = 0):
    """Field sizes spread log-uniformly from 4 to ``largest``, like Criteo's 39 columns."""
    rng = np.random.default_rng(seed)
    return np.round(np.exp(rng.uniform(np.log(4), np.log(largest), size=num_fields))).astype(int)


@dataclass
class PlantedModel:
    """The ground truth. Build it with :func:`plant_model`, draw rows with :meth:`sample`."""

    cardinalities: np.ndarray  # [F]
    popularity_cdf: list[np.ndarray]  # per field, cumulative Zipf probabilities
    bias: float
    weights: list[np.ndarray]  # per field [c_f]
    factors: list[np.ndarray]  # per field [c_f, K]
    nonlinear: float  # scale of the non-linear term (0: pure FM truth)
    hidden_weight: np.ndarray  # [F K, h]
    output_weight: np.ndarray  # [h]
    nonlinear_mean: float
    nonlinear_std: float

    @property
    def num_fields(self) -> int:
        return len(self.cardinalities)

    def draw_ids(self, num_rows: int, rng: np.random.Generator) -> np.ndarray:
        """Per-field local ids [N, F], Zipf-popular."""
        columns = [
            np.minimum(np.searchsorted(cdf, rng.random(num_rows)), len(cdf) - 1)
            for cdf in self.popularity_cdf
        ]
        return np.stack(columns, axis=1).astype(np.int64)

    def _nonlinear_raw(self, ids: np.ndarray) -> np.ndarray:
        # The non-linear term reads the planted factors: what a trained FM recovers is exactly
        # what a network on top of it needs (the premise of FNN).
        inputs = np.concatenate([v[ids[:, f]] for f, v in enumerate(self.factors)], axis=1)
        inputs = inputs / inputs.std()
        return np.tanh(inputs @ self.hidden_weight) @ self.output_weight

    def logits(self, ids: np.ndarray) -> np.ndarray:
        linear = sum(w[ids[:, f]] for f, w in enumerate(self.weights))
        v = np.stack([factor[ids[:, f]] for f, factor in enumerate(self.factors)], axis=1)
        pairwise = 0.5 * (v.sum(axis=1) ** 2 - (v**2).sum(axis=1)).sum(axis=1)
        logit = self.bias + linear + pairwise
        if self.nonlinear:
            raw = self._nonlinear_raw(ids)
            logit = logit + self.nonlinear * (raw - self.nonlinear_mean) / self.nonlinear_std
        return logit

    def sample(self, num_rows: int, seed: int) -> SyntheticRows:
        rng = np.random.default_rng(seed)
        ids = self.draw_ids(num_rows, rng)
        probabilities = 1.0 / (1.0 + np.exp(-self.logits(ids)))
        labels = (rng.random(num_rows) < probabilities).astype(np.float32)
        num_slots = self.num_fields
        rows = ParsedRows(
            labels=labels,
            keys=ids,
            values=np.ones((num_rows, num_slots), dtype=np.float32),
            slot_fields=np.arange(num_slots, dtype=np.int64),
            field_names=[f"f{i}" for i in range(num_slots)],
            row_ids=None,
            lines=np.arange(1, num_rows + 1, dtype=np.int64),
            bad_lines=0,
            source=f"synthetic(seed={seed})",
        )
        return SyntheticRows(rows, probabilities, roc_auc(labels, probabilities))


@dataclass
class SyntheticRows:
    rows: ParsedRows
    probabilities: np.ndarray  # true click probability of each row
    bayes_auc: float  # AUC of the true probabilities on these rows: no model can beat it


def plant_model(
    cardinalities=(50,) * 8,
    num_factors: int = 4,
    *,
    zipf_exponent: float = 1.1,
    bias: float = -2.0,
    linear_scale: float = 0.6,
    pairwise_scale: float = 1.0,
    nonlinear: float = 0.0,
    hidden: int = 16,
    seed: int = 0,
) -> PlantedModel:
    """A random ground truth. The scales set the standard deviation each term adds to the logit
    (roughly: linear_scale for the weights, pairwise_scale for the interactions, nonlinear for the
    non-linear term)."""
    rng = np.random.default_rng(seed)
    cards = np.asarray(cardinalities, dtype=np.int64)
    num_fields = len(cards)
    cdfs = []
    for c in cards:
        p = 1.0 / np.arange(1, c + 1) ** zipf_exponent
        cdfs.append(np.cumsum(p) / p.sum())
    weight_std = linear_scale / np.sqrt(num_fields)
    num_pairs = max(num_fields * (num_fields - 1) // 2, 1)
    factor_std = pairwise_scale**0.5 * (num_pairs * num_factors) ** -0.25
    model = PlantedModel(
        cardinalities=cards,
        popularity_cdf=cdfs,
        bias=bias,
        weights=[rng.normal(0, weight_std, c) for c in cards],
        factors=[rng.normal(0, factor_std, (c, num_factors)) for c in cards],
        nonlinear=nonlinear,
        # Large input weights saturate tanh: an interaction of many fields at once.
        hidden_weight=rng.normal(
            0, 2.0 / np.sqrt(num_fields * num_factors), (num_fields * num_factors, hidden)
        ),
        output_weight=rng.normal(0, 1, hidden),
        nonlinear_mean=0.0,
        nonlinear_std=1.0,
    )
    if nonlinear:
        raw = model._nonlinear_raw(model.draw_ids(20_000, rng))
        model.nonlinear_mean, model.nonlinear_std = float(raw.mean()), float(raw.std() + 1e-12)
    return model


def write_libfm(path: Path, labels: np.ndarray, keys: np.ndarray) -> None:
    """Rows as positional libFM lines: ``label k_0:1 k_1:1 ...`` (field = position)."""
    with open(path, "w") as out:
        for label, row in zip(labels.astype(int), keys, strict=True):
            out.write(f"{label} " + " ".join(f"{k}:1" for k in row) + "\n")


def write_criteo(path: Path, truth: PlantedModel, num_rows: int, seed: int, chunk_rows=1 << 20):
    """Rows in Criteo's text format (label, 13 integer columns, 26 hex-token columns,
    tab-separated), drawn from a 39-field planted model; written by pyarrow, in chunks, so that
    tens of millions of rows take a minute rather than an hour. Local id 0 of a field is its
    missing value (an empty cell)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if truth.num_fields != 39:
        raise ValueError(f"Criteo rows have 39 fields, the model has {truth.num_fields}")
    rng = np.random.default_rng(seed)
    tokens = [  # a field's local id -> its cell text: '' for id 0, else an integer or a hex token
        pa.array(
            ["", *(str(i) if f < 13 else f"{hash((f, i)) & 0xFFFFFFFF:08x}" for i in range(1, c))]
        )  # fmt: skip
        for f, c in enumerate(truth.cardinalities)
    ]
    names = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as out:
        for start in range(0, num_rows, chunk_rows):
            n = min(chunk_rows, num_rows - start)
            ids = truth.draw_ids(n, rng)
            labels = rng.random(n) < 1.0 / (1.0 + np.exp(-truth.logits(ids)))
            columns = [pa.array(labels.astype(np.int8))]
            columns += [tokens[f].take(pa.array(ids[:, f])) for f in range(39)]
            pacsv.write_csv(pa.table(columns, names=names), out, options)
