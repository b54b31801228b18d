"""Writing a scoring run's output: each part's predictions written atomically, a manifest of the
finished parts (fnn-fast's marker, so a killed run resumes), and for a file output the parts
concatenated in order at the end.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fnn_fast.data.parts import (
    EncodedPart,
    Part,
)
from fnn_fast.outputs import (
    check_creatable,
    check_directory,
    remove_if_empty,
    remove_listed,
    write_manifest,
)

OUTPUT_FORMATS = (".parquet", ".csv", ".npy")
MANIFEST_VERSION = 2


class Output:
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
