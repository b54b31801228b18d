"""Scoring saved models: one click probability per input row, in input order.

Two entry points:

- :func:`score_files`, behind ``fnn-fast score``: files, globs or directories larger than memory,
  cut into parts (fnn_fast.data.parts) that worker processes read and encode while the model
  scores the previous ones. Each part's predictions are written atomically (temporary file, then
  rename) and recorded in a manifest, so a killed run resumes with ``resume=True`` and ends with
  the same bytes as a run that was never interrupted.
- :class:`Scorer`: a model in memory that scores encoded ids, Arrow record batches or pandas
  DataFrames, for use inside Spark's ``mapInArrow`` or Ray Data's ``map_batches``.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import multiprocessing
import os
import shutil
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from fnn_fast.data import DataError, ParsedRows, Schema
from fnn_fast.data.errors import BadLines
from fnn_fast.data.parquet import ColumnKeys, read_record_batch
from fnn_fast.data.parts import (
    PART_BYTES,
    PART_ROWS,
    EncodedPart,
    Part,
    conform_slots,
    csv_header,
    encode_part,
    expand_inputs,
    load_part,
    native_text_layout,
    overflow_reason,
    plan_parts,
)
from fnn_fast.ops import check_ids
from fnn_fast.outputs import (
    check_creatable,
    check_directory,
    remove_if_empty,
    remove_listed,
    write_manifest,
)
from fnn_fast.saved import SavedModel, load_model
from fnn_fast.train import Split, predict_probabilities

OUTPUT_FORMATS = (".parquet", ".csv", ".npy")
MANIFEST_VERSION = 2


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
        self._graphs = {} if cuda_graphs and self.device.type == "cuda" else None

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
            if self._graphs is not None and len(ids) == self.batch_size:
                try:
                    logits = self._graphed(ids, values)
                except RuntimeError as error:  # an op that cannot be captured: run eagerly
                    warnings.warn(
                        f"CUDA graph capture failed, scoring eagerly: {error}", stacklevel=3
                    )
                    self._graphs = None
            if logits is None:
                logits = self.model(ids, values)
        return logits.float().cpu()

    def _graphed(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        """Full batches replay a captured CUDA graph: one launch instead of one per kernel."""
        key = values is not None
        if key not in self._graphs:
            static_ids, static_values = ids.clone(), None if values is None else values.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up outside the graph, as capture requires
                for _ in range(2):
                    self.model(static_ids, static_values)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_ids, static_values)
            self._graphs[key] = (graph, static_ids, static_values, static_out)
        graph, static_ids, static_values, static_out = self._graphs[key]
        static_ids.copy_(ids)
        if values is not None:
            static_values.copy_(values)
        graph.replay()
        return static_out.clone()

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


# --- files ----------------------------------------------------------------------------------


@dataclass
class ScoreSummary:
    rows: int = 0  # output rows: every input row, scored or rejected
    scored: int = 0
    bad_rows: int = 0
    seconds: float = 0.0
    output: str = ""
    resumed_parts: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        text = (
            f"{self.rows:,} rows read, {self.scored:,} scored, {self.bad_rows:,} bad, in "
            f"{self.seconds:.1f} s ({self.rows_per_s:,.0f} rows/s) -> {self.output}"
        )
        if self.resumed_parts:
            text += f" ({self.resumed_parts} parts kept from the interrupted run)"
        return text


def score_files(
    model,
    inputs,
    output,
    *,
    which: str = "fnn",
    batch_size: int = 8192,
    workers: int | None = None,
    skip_bad_lines: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    schema: Schema | None = None,
    part_bytes: int = PART_BYTES,
    part_rows: int = PART_ROWS,
    device: str = "cpu",
    bf16: bool = False,
    progress: bool = True,
) -> ScoreSummary:
    """Score every row of ``inputs`` (paths, globs, directories, binary cache entries) into
    ``output``: a .parquet, .csv or .npy file, or a directory that keeps the parts.

    Bad rows stop the run with file, line and reason, or with ``skip_bad_lines`` keep their place
    with an empty prediction (NaN in .npy) and are listed in a rejects file (file, line, reason).
    ``workers``: processes that read and encode ahead of the model (default: none where C++
    code reads the input, binary cache entries and plain Criteo/CSV text, in threads of this
    process; else cores - 1; 0 reads in this process). As with any use of
    multiprocessing, a script calling this with workers needs the ``if __name__ == "__main__":``
    guard.
    """
    started = time.perf_counter()
    scorer = model if isinstance(model, Scorer) else Scorer(model, which, batch_size, device, bf16)
    schema = _scoring_schema(schema or scorer.schema, scorer.encoder)
    files = expand_inputs(inputs)
    parts = plan_parts(files, schema, part_bytes, part_rows)
    headers = (
        {i: csv_header(f, schema) for i, f in enumerate(files)} if schema.format == "csv" else {}
    )
    out = _Output(Path(output), schema.id_column is not None)
    # what the run does, as it runs (a Scorer passed in brings its own model settings): a
    # resumed run must write the bytes the interrupted one would have
    settings = {
        "inputs": [_identity(f) for f in files],
        "model": _model_identity(scorer),
        "which": scorer.which,
        "batch_size": scorer.batch_size,
        "device": str(scorer.device),
        "bf16": scorer.bf16,
        "schema": schema.to_dict(),
        "part_bytes": part_bytes,
        "part_rows": part_rows,
        "skip_bad_lines": skip_bad_lines,
        "format": out.suffix,
    }
    done = out.start(settings, parts, resume, overwrite)
    summary = ScoreSummary(output=str(output), resumed_parts=len(done))
    for record in done.values():
        summary.rows += record["rows"]
        summary.bad_rows += record["bad"]
    summary.scored = summary.rows - summary.bad_rows

    todo = [p for p in parts if p.name not in done]
    first_line = _first_lines(parts, done)
    total = sum(p.size for p in parts)
    unit = "rows" if schema.format == "parquet" or parts and parts[0].kind == "cache" else "B"
    bar = tqdm(
        total=total, initial=total - sum(p.size for p in todo), unit=unit, unit_scale=True,
        desc="scoring", disable=None if progress else True,
    )  # fmt: skip
    if workers is None:
        # Cache entries and plain Criteo/CSV text are read and encoded by C++ code that releases
        # the GIL: threads of this process keep up. Other parts are parsed in Python, by
        # worker processes.
        native = all(_reads_natively(p, schema, scorer.encoder, headers) for p in todo)
        workers = 0 if native else max(1, (os.cpu_count() or 2) - 1)
    staging = out.parts_dir / ".encoder"  # in the output: a killed run leaves nothing elsewhere
    with bar, _Reader(schema, scorer.encoder, skip_bad_lines, headers, workers, staging) as reader:
        try:
            for encoded in reader.read(todo):
                part = encoded.part
                line_offset = first_line.get((part.file_index, part.index), 0)
                if part.kind == "text":
                    first_line[(part.file_index, part.index + 1)] = line_offset + encoded.newlines
                probabilities = np.full(len(encoded), np.nan)
                probabilities[encoded.good] = scorer.predict_ids(encoded.ids, encoded.values)
                out.write_part(part, encoded, probabilities, line_offset)
                summary.rows += len(encoded)
                summary.bad_rows += len(encoded.rejects)
                summary.scored += int(encoded.good.sum())
                bar.update(part.size)
                rate = summary.rows / (time.perf_counter() - started)
                bar.set_postfix_str(f"{rate:,.0f} rows/s")
        except _PartLineError as failure:  # number the line within its file, not its part
            error, part = failure.error, failure.part
            offset = first_line[(part.file_index, part.index)]
            error = DataError(error.path, error.line + offset, error.reason)
            out.fail(error)
            raise error from None
        except Exception as error:  # stopped, not killed: a run without --resume may clear it
            out.fail(error)
            raise
    out.finish(parts)
    summary.seconds = time.perf_counter() - started
    return summary


def _reads_natively(part: Part, schema: Schema, encoder, headers: dict) -> bool:
    if part.kind == "cache":
        return True
    header = headers.get(part.file_index)
    return part.kind == "text" and native_text_layout(schema, encoder, header) is not None


def _scoring_schema(schema: Schema | None, encoder) -> Schema:
    if schema is None:
        raise ValueError("the model has no input schema; pass one to score files")
    if schema.format == "libfm" and schema.featindex is None and schema.num_fields is None:
        # a positional libFM model: every line has the model's number of features
        schema = Schema.from_dict({**schema.to_dict(), "num_fields": len(encoder.slot_fields)})
    return schema


def _first_lines(parts: list[Part], done: dict) -> dict:
    """Lines before each text part, from the finished parts' line counts; filled in as parts
    are scored (parts of a file are scored in order)."""
    first: dict[tuple[int, int], int] = {}
    for part in parts:
        if part.kind != "text":
            continue
        key = (part.file_index, part.index)
        if part.index == 0:
            first[key] = 0
        record = done.get(part.name)
        if record is not None and key in first:
            first[(part.file_index, part.index + 1)] = first[key] + record["newlines"]
    return first


def _identity(path: str) -> list:
    stat = os.stat(path)
    if Path(path).is_dir():  # a cache entry: its meta.json says what it holds
        stat = os.stat(Path(path, "meta.json"))
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def _model_identity(scorer: Scorer) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(scorer.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --- reading ahead ------------------------------------------------------------------------

_OVERLAP_CORES = 8  # from this many cores, reader threads also encode, beside the model

_WORKER: dict = {}


def _init_worker(schema_dict, encoder_dir, skip_bad_lines, headers):
    from fnn_fast.data import FeatureEncoder

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()

    _WORKER.update(
        schema=Schema.from_dict(schema_dict),
        encoder=FeatureEncoder.load(encoder_dir),
        skip=skip_bad_lines,
        headers=headers,
    )


def _exit_with_parent(parent: int) -> None:
    """A worker outlives a parent killed with SIGKILL (nothing tells it): leave when the parent
    is gone rather than linger holding memory."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _encode_in_worker(part: Part) -> EncodedPart:
    w = _WORKER
    return encode_part(
        part, w["schema"], w["encoder"], w["skip"], w["headers"].get(part.file_index)
    )


class _Reader:
    """Parts read and encoded in order, ahead of the caller: by ``workers`` processes, or with
    workers=0 by threads of this process (file reads and the C++ readers and encoder release
    the GIL), one per four cores.

    With fewer than ``_OVERLAP_CORES`` cores, those threads only read (I/O) and the caller
    encodes each part just before scoring it: the model's threads take every core, and work
    run beside them stalls each of their steps (measured on 2 cores: the MLP 40 % slower, for
    reading and encoding worth 15 % of its time), so encoding in turn costs less than
    overlapping it."""

    def __init__(self, schema, encoder, skip_bad_lines, headers, workers, staging: Path):
        self.args = (schema, encoder, skip_bad_lines, headers)
        self.workers = workers
        self.staging = staging
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // 4)
        self.encode_in_caller = workers == 0 and cores < _OVERLAP_CORES
        self.pool = None

    def __enter__(self):
        schema, encoder, skip, headers = self.args
        if self.workers > 0:
            encoder.save(self.staging)  # workers load the vocabularies from disk, not a pickle
            self.pool = futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(schema.to_dict(), str(self.staging), skip, headers),
            )
        else:
            self.pool = futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="fnn-fast-reader"
            )
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.workers > 0:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _submit(self, part: Part) -> futures.Future:
        if self.workers > 0:
            return self.pool.submit(_encode_in_worker, part)
        if self.encode_in_caller:
            return self.pool.submit(load_part, part)
        schema, encoder, skip, headers = self.args
        header = headers.get(part.file_index)
        return self.pool.submit(encode_part, part, schema, encoder, skip, header)

    def _result(self, part: Part, future: futures.Future) -> EncodedPart:
        if not self.encode_in_caller:
            return future.result()
        schema, encoder, skip, headers = self.args
        header = headers.get(part.file_index)
        threads = os.cpu_count() or 1  # the model waits meanwhile: encode with every core
        return encode_part(part, schema, encoder, skip, header, future.result(), threads)

    def read(self, parts: list[Part]):
        # a bounded window keeps memory flat: at most two parts per worker in flight
        window = 2 * (self.workers or self.threads)
        ahead = deque()
        pending = iter(parts)
        for part in pending:
            ahead.append((part, self._submit(part)))
            if len(ahead) >= window:
                break
        while ahead:
            part, future = ahead.popleft()
            nxt = next(pending, None)
            if nxt is not None:
                ahead.append((nxt, self._submit(nxt)))
            yield _located(part, lambda part=part, future=future: self._result(part, future))


def _located(part: Part, compute) -> EncodedPart:
    """Run ``compute``; a DataError from a text part names a line counted from the part start,
    which the caller re-numbers (see _PartLineError)."""
    try:
        return compute()
    except DataError as error:
        if part.kind == "text" and error.line is not None:
            raise _PartLineError(part, error) from None
        raise


class _PartLineError(Exception):
    def __init__(self, part: Part, error: DataError):
        super().__init__(str(error))
        self.part, self.error = part, error


# --- writing ------------------------------------------------------------------------------


class _Output:
    """Parts written atomically, a manifest of the finished ones, and at the end (for a file
    output) the parts concatenated in order into the output file.

    The manifest is fnn-fast's marker (fnn_fast.outputs): it lists every file the run may write,
    so ``overwrite`` removes those and nothing else. A run stopped by an error (bad input, say)
    is marked failed: running again clears its parts, without ``overwrite``; ``resume``
    continues from them. A run that was killed is neither: it needs ``resume`` or
    ``overwrite``."""

    def __init__(self, path: Path, with_ids: bool):
        self.path = path
        self.suffix = path.suffix if path.suffix in OUTPUT_FORMATS else ".parquet"
        self.is_directory = path.suffix not in OUTPUT_FORMATS
        self.parts_dir = path if self.is_directory else path.with_name(path.name + ".parts")
        self.with_ids = with_ids
        self.manifest: dict = {}

    def start(self, settings: dict, parts: list[Part], resume: bool, overwrite: bool) -> dict:
        """The finished parts to keep (resume), after checking the settings match."""
        if resume and overwrite:
            raise ValueError("--resume continues an output and --overwrite replaces it: pass one")
        earlier = self._earlier()
        if self.is_directory:
            complete = earlier is not None and bool(earlier.get("complete"))
        else:
            complete = self.path.exists()
        if overwrite:
            self._clear(earlier)
        elif resume:
            if complete and (self.is_directory or earlier is None):
                raise FileExistsError(f"{self.path} is complete already (no parts to resume)")
            if earlier is not None:
                return self._resume(earlier, settings)
        elif complete:
            raise FileExistsError(f"{self.path} exists: pass --overwrite to replace it")
        elif earlier is not None and not earlier.get("failed"):
            raise FileExistsError(
                f"{self.path} exists (from an earlier or interrupted run): pass --resume to "
                "continue it or --overwrite to start again"
            )
        elif earlier is not None:  # a failed run's parts are fnn-fast's own: start again
            self._clear(earlier)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        files = [f"{p.name}{self.suffix}" for p in parts] + [f"{p.name}.rejects.tsv" for p in parts]
        if self.is_directory:
            files.append("rejects.tsv")
        self.manifest = {
            "version": MANIFEST_VERSION, "kind": "score output", "settings": settings, "parts": {},
            "files": [*files, ".encoder/"],
        }  # fmt: skip
        self._save()
        return {}

    def _earlier(self) -> dict | None:
        """fnn-fast's manifest of an earlier run into this output, None where there is none;
        raises where the path holds something fnn-fast may not write into."""
        if not self.is_directory:
            if self.path.is_dir():
                raise FileExistsError(
                    f"{self.path} is a directory; a {self.suffix} output is a file: choose "
                    "another --output"
                )
            check_creatable(self.path, "score output")
        return check_directory(self.parts_dir, True, "score output")

    def _clear(self, earlier: dict | None) -> None:
        if not self.is_directory:
            self.path.unlink(missing_ok=True)
            self.path.with_name(self.path.name + ".rejects.tsv").unlink(missing_ok=True)
        if earlier is not None:
            remove_listed(self.parts_dir, earlier)
            if not self.is_directory:
                remove_if_empty(self.parts_dir)

    def _resume(self, earlier: dict, settings: dict) -> dict:
        before = earlier.get("settings", {})
        changed = [k for k, v in settings.items() if before.get(k) != v]
        if changed == ["skip_bad_lines"] and settings["skip_bad_lines"]:
            # parts finished without skipping hold no skipped row: the same bytes either way
            changed = []
        if changed or earlier.get("version") != MANIFEST_VERSION:
            raise ValueError(
                f"cannot resume into {self.path}: {', '.join(changed) or 'the manifest format'} "
                "changed since the interrupted run (run it with the same settings, or use "
                "--overwrite to start again)"
            )
        self.manifest = {**earlier, "settings": settings}
        self.manifest.pop("failed", None)
        self._save()
        return {
            name: record
            for name, record in self.manifest["parts"].items()
            if (self.parts_dir / record["file"]).exists()
        }

    def fail(self, error: BaseException) -> None:
        """Mark the run as stopped by ``error``: its finished parts are kept for --resume, and
        a run without it may clear them. With none finished, nothing is left behind."""
        if not self.manifest["parts"]:
            remove_listed(self.parts_dir, self.manifest)
            if not self.is_directory:
                remove_if_empty(self.parts_dir)
            return
        self.manifest["failed"] = str(error)
        self._save()

    def _save(self) -> None:
        write_manifest(self.parts_dir, self.manifest)

    def write_part(self, part: Part, encoded: EncodedPart, probabilities, line_offset: int):
        name = part.name + self.suffix
        _write_table(
            self.parts_dir / name, self.suffix, probabilities, encoded.row_ids, self.with_ids
        )
        record = {
            "file": name,
            "rows": len(encoded),
            "bad": len(encoded.rejects),
            "newlines": encoded.newlines,
        }
        if encoded.rejects:
            rejects = "".join(
                f"{part.path}\t{line + line_offset}\t{_one_line(reason)}\n"
                for line, reason in encoded.rejects
            )
            _atomic_write_text(self.parts_dir / f"{part.name}.rejects.tsv", rejects)
            record["rejects"] = f"{part.name}.rejects.tsv"
        self.manifest["parts"][part.name] = record
        self._save()

    def finish(self, parts: list[Part]) -> None:
        records = [self.manifest["parts"][p.name] for p in parts]
        rejects_path = (
            self.parts_dir / "rejects.tsv"
            if self.is_directory
            else self.path.with_name(self.path.name + ".rejects.tsv")
        )
        if self.manifest["settings"]["skip_bad_lines"]:
            with _atomic_open(rejects_path, "w") as out:
                out.write("file\tline\treason\n")
                for record in records:
                    if "rejects" in record:
                        out.write((self.parts_dir / record["rejects"]).read_text())
        if self.is_directory:
            self.manifest["complete"] = True
            self._save()
            return
        files = [self.parts_dir / r["file"] for r in records]
        _concatenate(files, self.path, self.suffix, sum(r["rows"] for r in records))
        remove_listed(self.parts_dir, self.manifest)
        remove_if_empty(self.parts_dir)


def _one_line(reason: str) -> str:
    return reason.replace("\t", " ").replace("\n", " ")


def _prediction_table(probabilities, row_ids, with_ids: bool) -> pa.Table:
    columns = {}
    if with_ids:
        columns["id"] = pa.array(
            [None if r is None else str(r) for r in row_ids] if row_ids is not None else [],
            type=pa.string(),
        )
    columns["prediction"] = pa.array(probabilities, type=pa.float64(), from_pandas=True)
    return pa.table(columns)


def _write_table(path: Path, suffix: str, probabilities, row_ids, with_ids: bool) -> None:
    with _atomic_open(path, "wb") as file:
        if suffix == ".npy":
            np.save(file, probabilities.astype(np.float32))
            return
        table = _prediction_table(probabilities, row_ids, with_ids)
        if suffix == ".parquet":
            pq.write_table(table, file)
        else:
            pacsv.write_csv(table, file)


def _concatenate(files: list[Path], path: Path, suffix: str, rows: int) -> None:
    """The parts, in order, as one file; written aside and renamed into place."""
    with _atomic_open(path, "wb") as out:
        if suffix == ".npy":
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows,)}
            np.lib.format.write_array_header_1_0(out, header)
            for file in files:
                out.write(np.load(file).tobytes())
        elif suffix == ".csv":
            for i, file in enumerate(files):
                with open(file, "rb") as part:
                    header = part.readline()
                    if i == 0:
                        out.write(header)
                    shutil.copyfileobj(part, out)
        else:
            writer = None
            for file in files:
                table = pq.read_table(file)
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema)
                writer.write_table(table)
            if writer is None:  # no parts: an empty table with the columns
                writer = pq.ParquetWriter(out, _prediction_table(np.zeros(0), None, False).schema)
            writer.close()


class _atomic_open:
    """Write to a temporary file beside ``path``, fsync, rename over ``path`` on success."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode = Path(path), mode
        self.temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def __enter__(self):
        self.file = open(self.temporary, self.mode)
        return self.file

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.file.flush()
            os.fsync(self.file.fileno())
        self.file.close()
        if kind is None:
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    with _atomic_open(path, "w") as file:
        file.write(text)


def write_predictions(path, probabilities: np.ndarray, row_ids=None) -> Path:
    """Write in-memory predictions as CSV, Parquet (by extension .parquet) or NumPy (.npy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_table(
        path,
        path.suffix if path.suffix in OUTPUT_FORMATS else ".csv",
        probabilities,
        row_ids,
        row_ids is not None,
    )
    return path
