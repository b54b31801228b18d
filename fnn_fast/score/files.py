"""``score_files``, behind ``fnn-fast score``: files, globs or directories larger than memory, cut
into parts (fnn_fast.data.parts) that are read and encoded ahead (``readers``) while the model
scores the previous ones, each part's predictions written atomically and recorded in a manifest
(``output``), so a killed run resumes with ``resume=True`` and ends with the same bytes as a
run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fnn_fast.data import DataError, Schema
from fnn_fast.data.parts import (
    PART_BYTES,
    PART_ROWS,
    Part,
    csv_header,
    expand_inputs,
    native_text_layout,
    plan_parts,
)
from fnn_fast.score.output import Output
from fnn_fast.score.readers import PartLineError, PartReader
from fnn_fast.score.scorer import Scorer


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
    out = Output(Path(output), schema.id_column is not None)
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
    reader = PartReader(schema, scorer.encoder, skip_bad_lines, headers, workers, staging)
    with bar, reader:
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
        except PartLineError as failure:  # number the line within its file, not its part
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
