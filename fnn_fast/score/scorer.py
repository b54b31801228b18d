"""A saved model in memory that scores encoded ids, parsed rows, Arrow record batches or pandas
DataFrames: what ``fnn-fast score`` runs per part, and what Spark's ``mapInArrow`` or Ray Data's
``map_batches`` call.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import torch

from fnn_fast.data import DataError, ParsedRows, Schema
from fnn_fast.data.errors import BadLines
from fnn_fast.data.parquet import ColumnKeys, read_record_batch
from fnn_fast.data.parts import (
    conform_slots,
    overflow_reason,
)
from fnn_fast.ops import check_ids
from fnn_fast.saved import SavedModel, load_model
from fnn_fast.score.cuda_graphs import CapturedModel
from fnn_fast.train import Split, predict_probabilities


def predict(saved: SavedModel, rows: ParsedRows, which: str = "fnn", batch_size: int = 8192):
    """Click probabilities [N] for parsed rows (all in memory)."""
    split = Split.encode(rows, saved.encoder)
    with torch.inference_mode():
        return predict_probabilities(saved.model(which), split, batch_size)


class Scorer:
    """A saved model ready to score batches of rows.

    ``device="cuda"`` keeps the model on the GPU; batches are copied from pinned host buffers,
    and with ``cuda_graphs`` full batches replay one captured graph. ``bf16`` runs the layers
    under bfloat16 autocast (GPU only; the embedding stays float32).
    """

    def __init__(
        self, model, which: str = "fnn", batch_size: int = 8192, device: str = "cpu",
        bf16: bool = False, cuda_graphs: bool = True,
    ):  # fmt: skip
        self.saved = model if isinstance(model, SavedModel) else load_model(model)
        self.which = which
        self.batch_size = batch_size
        self.device = torch.device(device)
        if bf16 and self.device.type != "cuda":
            raise ValueError("bf16 scoring needs a CUDA device")
        self.bf16 = bf16
        self.model = self.saved.model(which).to(self.device).eval()
        self._graphed = (
            CapturedModel(self.model) if cuda_graphs and self.device.type == "cuda" else None
        )

    @property
    def schema(self) -> Schema | None:
        return self.saved.schema

    @property
    def encoder(self):
        return self.saved.encoder

    def predict_ids(self, ids: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (float64 [N]) for encoded ids [N, S] and values (None: all ones)."""
        ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        values = None if values is None else torch.from_numpy(np.ascontiguousarray(values))
        logits = torch.empty(len(ids), dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, len(ids), self.batch_size):
                stop = min(start + self.batch_size, len(ids))
                batch_values = None if values is None else values[start:stop]
                logits[start:stop] = self._logits(ids[start:stop], batch_values)
        return 1.0 / (1.0 + np.exp(-logits.numpy().astype(np.float64)))

    def _logits(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        if self.device.type == "cpu":
            return self.model(ids, values)
        # checked here, on the host: a captured graph cannot check (nor sync) on the device
        check_ids(ids, self.model.num_features, getattr(self.model, "slot_names", None))
        ids = ids.pin_memory().to(self.device, non_blocking=True)
        if values is not None:
            values = values.pin_memory().to(self.device, non_blocking=True)
        with torch.autocast("cuda", torch.bfloat16, enabled=self.bf16):
            logits = None
            if self._graphed is not None and len(ids) == self.batch_size:
                try:
                    logits = self._graphed(ids, values)
                except RuntimeError as error:  # an op that cannot be captured: run eagerly
                    warnings.warn(
                        f"CUDA graph capture failed, scoring eagerly: {error}", stacklevel=3
                    )
                    self._graphed = None
            if logits is None:
                logits = self.model(ids, values)
        return logits.float().cpu()

    def predict_rows(self, rows: ParsedRows, skip_bad_rows: bool = False) -> np.ndarray:
        """Probabilities for parsed rows; a row that does not fit the model's slots is NaN with
        ``skip_bad_rows``, else raises DataError."""
        keys, values, overflow = conform_slots(rows, self.encoder)
        if overflow.any() and not skip_bad_rows:
            row = int(np.flatnonzero(overflow)[0])
            raise DataError(
                rows.source, int(rows.lines[row]), overflow_reason(rows, self.encoder, row)
            )
        out = np.full(len(rows), np.nan)
        ids, values = self.encoder.transform(keys[~overflow], values[~overflow])
        out[~overflow] = self.predict_ids(ids, None if np.all(values == 1) else values)
        return out

    def predict_arrow(self, batch, skip_bad_rows: bool = False) -> np.ndarray:
        """Probabilities for an Arrow RecordBatch or Table whose columns are named as in the
        model's schema (CSV, Parquet or Criteo columns; a multi-valued column as text cells
        with its separator, or as lists). The id column is not needed. A bad row (say a numeric
        cell that is not a number) is NaN with ``skip_bad_rows``, else raises DataError naming
        its row."""
        if self.schema is None or self.schema.format == "libfm":
            raise ValueError("Arrow/pandas scoring needs a model trained on named columns")
        schema = Schema.from_dict({**self.schema.to_dict(), "id_column": None})
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else None
            if batch is None:
                return np.zeros(0)
        if not hasattr(self, "_column_keys"):
            self._column_keys = ColumnKeys(schema)
        missing = [c for c in (*schema.numeric, *schema.categorical) if c not in batch.schema.names]
        if missing:
            raise DataError("<arrow batch>", None, f"columns missing: {', '.join(missing)}")
        bad = BadLines("<arrow batch>", skip_bad_rows, keep_all=True)
        labels, keys, values, lines, _, slot_fields = read_record_batch(
            batch, 1, schema, self._column_keys, bad, labelled=False
        )
        rows = ParsedRows(
            labels, keys, values, slot_fields, schema.field_names, lines=lines,
            source="<arrow batch>",
        )  # fmt: skip
        out = np.full(batch.num_rows, np.nan)
        out[lines - 1] = self.predict_rows(rows, skip_bad_rows)
        return out

    def predict_pandas(self, frame, skip_bad_rows: bool = False) -> np.ndarray:
        """Scores a pandas DataFrame (its rows in order). Needs pandas, which fnn-fast does not
        install itself: ``pip install "fnn-fast[pandas]"``."""
        try:
            import pandas  # noqa: F401  (pyarrow's from_pandas needs it)
        except ImportError as error:
            raise ImportError(
                "Scorer.predict_pandas needs pandas, which is not installed: pip install "
                '"fnn-fast[pandas]" (or pip install pandas); predict_arrow needs no pandas'
            ) from error
        return self.predict_arrow(_arrow_table(frame), skip_bad_rows)

    def map_arrow(self, batches, id_column: str | None = None, skip_bad_rows: bool = False):
        """For Spark's ``mapInArrow``: record batches in, batches of (id, prediction) out."""
        for batch in batches:
            columns = {}
            if id_column is not None:
                columns[id_column] = batch.column(id_column)
            columns["prediction"] = pa.array(self.predict_arrow(batch, skip_bad_rows))
            yield pa.RecordBatch.from_pydict(columns)


def _arrow_table(frame) -> pa.Table:
    """A DataFrame as Arrow. A column mixing numbers and strings (which Arrow cannot type) goes
    as strings, so a bad cell in it is a bad row (DataError, or NaN when skipped), not an
    ArrowInvalid for the whole frame."""
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    columns = {}
    for name in frame.columns:
        try:
            columns[str(name)] = pa.array(frame[name], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            cells = [None if _missing(v) else str(v) for v in frame[name]]
            columns[str(name)] = pa.array(cells, type=pa.string())
    return pa.table(columns)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
