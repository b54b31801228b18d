"""Where fnn-fast may write, and what ``--overwrite`` may remove: one rule for the model
directories of ``train`` and the outputs of ``score``.

fnn-fast writes into a directory only if it is new (or empty) or carries fnn-fast's marker, a
``manifest.json`` whose ``written_by`` is ``fnn-fast`` and whose ``files`` lists what fnn-fast
wrote there. Replacing such an output removes the files listed, nothing else, so a user's own
files in (or a mistyped path to) a directory are never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFEST = "manifest.json"
WRITTEN_BY = "fnn-fast"


def read_manifest(directory) -> dict | None:
    """fnn-fast's marker in ``directory``, or None where there is none (or it is not ours)."""
    try:
        data = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == WRITTEN_BY else None


def write_manifest(directory, manifest: dict) -> None:
    """Write the marker atomically (a temporary file renamed over it)."""
    path = Path(directory) / MANIFEST
    temporary = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    with open(temporary, "w") as file:
        file.write(json.dumps({**manifest, "written_by": WRITTEN_BY}, indent=1))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def check_creatable(path, what: str) -> None:
    """Raise unless ``path`` (absent) can be created: its nearest existing ancestor must be a
    writable directory. Checked before any work, so a bad path does not cost a training run."""
    path = Path(path).absolute()
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"cannot write the {what} to {path}: {parent} is a file, not a directory"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(
                    f"cannot write the {what} to {path}: {parent} is not writable"
                )
            return


def check_directory(path, overwrite: bool, what: str) -> dict | None:
    """Check that fnn-fast may write the ``what`` into the directory ``path``; returns the
    marker of an earlier output there, of the same kind (which ``overwrite`` allows to
    replace), or None."""
    path = Path(path)
    if not path.exists():
        check_creatable(path, what)
        return None
    if not path.is_dir():
        raise FileExistsError(
            f"{path} is a file, not a directory: choose another path for the {what}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the {what} to {path}: the directory is not writable")
    manifest = read_manifest(path)
    if manifest is None:
        if any(path.iterdir()):
            raise FileExistsError(
                f"{path} holds files fnn-fast did not write (it has no fnn-fast {MANIFEST}): "
                f"choose a new or empty directory for the {what}"
            )
        return None
    if manifest.get("kind") != what:  # say, a model directory given as a score output
        raise FileExistsError(
            f"{path} holds a {manifest.get('kind')} written by fnn-fast, not a {what}: choose "
            f"another path for the {what}"
        )
    if not overwrite:
        raise FileExistsError(
            f"{path} holds an earlier {what} written by fnn-fast: pass --overwrite to replace "
            "it (only the files fnn-fast wrote there are removed)"
        )
    return manifest


def remove_listed(directory, manifest: dict) -> None:
    """Remove the files the marker lists (a name ending in '/' is a folder of fnn-fast's),
    temporary files a killed write left beside them, the directories that were emptied, and the
    marker itself. Names outside ``directory`` are ignored."""
    directory = Path(directory)
    root = directory.resolve()
    folders = set()
    for name in [*manifest.get("files", []), MANIFEST]:
        target = directory / name
        if target.resolve() != root and root not in target.resolve().parents:
            continue
        if name.endswith("/"):
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
        for leftover in target.parent.glob(f".{target.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
        folders.update(p for p in target.parents if p != directory and directory in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        remove_if_empty(folder)


def remove_if_empty(folder) -> None:
    try:
        Path(folder).rmdir()
    except OSError:  # not empty (files fnn-fast did not write stay), or gone already
        pass


def _files(directory: Path) -> set[str]:
    return {
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST
    }


@contextmanager
def writing_directory(path, overwrite: bool, what: str) -> Iterator[Path]:
    """Write the ``what`` into the directory ``path`` under the rule above: replace an earlier
    output of fnn-fast's only with ``overwrite``, and on the way out (also after an error) mark
    every file written inside the block as fnn-fast's."""
    path = Path(path)
    earlier = check_directory(path, overwrite, what)
    if earlier is not None:
        remove_listed(path, earlier)
    path.mkdir(parents=True, exist_ok=True)
    before = _files(path)
    try:
        yield path
    finally:
        write_manifest(path, {"kind": what, "files": sorted(_files(path) - before)})


# A training run that writes checkpoints marks its directory as in progress from its start: the
# manifest lists the checkpoint folders, so --overwrite can remove a killed run's; --resume
# continues only such a directory.
IN_PROGRESS = "in_progress"
CHECKPOINT_FOLDERS = ("checkpoint/", "checkpoint.prev/", ".checkpoint.tmp/")


def start_run(path, overwrite: bool, what: str) -> Path:
    """Claim ``path`` for a checkpointed run (under the rule of :func:`check_directory`)."""
    path = Path(path)
    earlier = check_directory(path, overwrite, what)
    if earlier is not None:
        remove_listed(path, earlier)
    path.mkdir(parents=True, exist_ok=True)
    write_manifest(path, {"kind": what, "files": list(CHECKPOINT_FOLDERS), IN_PROGRESS: True})
    return path


def check_resumable(path, what: str) -> None:
    """Raise unless ``path`` holds a checkpointed run of fnn-fast's that has not finished."""
    manifest = read_manifest(path)
    if manifest is None or manifest.get("kind") != what:
        raise FileNotFoundError(
            f"--resume: {path} holds no unfinished {what} run of fnn-fast's (start it with "
            "--checkpoint-every, then resume it with the same command plus --resume)"
        )
    if not manifest.get(IN_PROGRESS):
        raise FileExistsError(
            f"--resume: the run in {path} has finished (its {what} is written): nothing to resume"
        )


def finish_run(path, what: str, remove) -> None:
    """Mark the files of a finished checkpointed run as written (every file in ``path`` is
    fnn-fast's: the run claimed it new or empty), then call ``remove`` (the checkpoints)."""
    path = Path(path)
    files = {f for f in _files(path) if not any(f.startswith(c) for c in CHECKPOINT_FOLDERS)}
    write_manifest(path, {"kind": what, "files": sorted(files) + list(CHECKPOINT_FOLDERS)})
    remove()
