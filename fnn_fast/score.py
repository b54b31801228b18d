"""Scoring saved models on files: encode exactly as training did, predict, write one
probability per input row, in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from fnn_fast.data import ParsedRows
from fnn_fast.saved import SavedModel
from fnn_fast.train import Split, predict_probabilities


def predict(saved: SavedModel, rows: ParsedRows, which: str = "fnn", batch_size: int = 8192):
    """Click probabilities [N] for parsed rows."""
    split = Split.encode(rows, saved.encoder)
    with torch.inference_mode():
        return predict_probabilities(saved.model(which), split, batch_size)


def write_predictions(path, probabilities: np.ndarray, row_ids=None) -> Path:
    """Write predictions as CSV, Parquet (by extension .parquet) or NumPy (.npy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, probabilities.astype(np.float32))
        return path
    columns = {}
    if row_ids is not None:
        columns["id"] = pa.array(np.asarray(row_ids).astype(str))
    columns["prediction"] = pa.array(probabilities.astype(np.float64))
    table = pa.table(columns)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path
