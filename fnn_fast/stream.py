"""Training rows streamed from binary cache entries, so memory stays flat whatever their number.

A :class:`CacheStream` yields the same ``(ids, values, labels)`` mini-batches as an in-memory
:class:`fnn_fast.train.Split`, read chunk by chunk from the entries' ``.npy`` files (read, not
memory-mapped: pages of a mapping it walked through would stay in the resident set) and encoded
by a background thread while the model trains on the previous window.

Shuffling out of core. The rows are cut into chunks of ``chunk_rows`` consecutive rows. Epoch e
(of a stage trained with seed s) takes the chunks in a random order drawn from (s, e), reads them
``window_chunks`` at a time into a shuffle buffer, permutes the buffer's rows (again from
(s, e, window)) and cuts the epoch's stream of rows into batches (a batch may span two windows).
The order of an epoch is thus a pure function of (seed, epoch): a resumed run regenerates it and
skips to the saved step without reading the rows before it. Ids are encoded and permuted as int32
where the vocabulary allows (fewer than 2^31 features), then widened to int64 a window at a time
in the background thread, which also drops a window's values when every one is 1: the training
thread only slices batches.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fnn_fast.data.cache import _read_rows_of, read_meta
from fnn_fast.data.errors import DataError

CHUNK_ROWS = 1 << 14
WINDOW_CHUNKS = 16  # shuffle buffer: 2^18 rows
EVAL_ROWS = 1 << 20  # the training rows evaluated after each epoch (the first ones)


class _Column:
    """One array of an entry, sliced by rows straight from its file (FeatureEncoder.fit's input)."""

    def __init__(self, path: Path, rows: int):
        self.path, self.rows = path, rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("rows are read by contiguous slices")
        start, stop, _ = index.indices(self.rows)
        return _read_rows_of(self.path, start, stop)


@dataclass(frozen=True)
class _Chunk:
    entry: int
    start: int
    stop: int


class CacheStream:
    """The rows of one or more cache entries (``fnn_fast.data.cache``), encoded with ``encoder``."""

    def __init__(
        self,
        entries,
        encoder,
        *,
        chunk_rows: int = CHUNK_ROWS,
        window_chunks: int = WINDOW_CHUNKS,
        shuffle: bool = True,
        eval_rows: int | None = None,
        limit: int | None = None,
    ):
        if chunk_rows < 1 or window_chunks < 1:
            raise ValueError("chunk_rows and window_chunks must be positive")
        entries = [entries] if isinstance(entries, (str, Path)) else entries
        self.entries = [Path(e) for e in entries]
        self.encoder = encoder
        self.chunk_rows, self.window_chunks, self.shuffle = chunk_rows, window_chunks, shuffle
        self.eval_rows = eval_rows
        self.metas = [read_meta(e) for e in self.entries]
        for entry, meta in zip(self.entries, self.metas, strict=True):
            if meta["slot_fields"] != [int(f) for f in encoder.slot_fields]:
                raise DataError(
                    entry, None,
                    "its rows have another slot layout than the model's (a multi-valued field "
                    "with more or fewer slots than in the training file): streaming takes files "
                    "of one layout; declare each bag column's maximum (--multi-valued "
                    "COL:SEP:N), or train in memory",
                )  # fmt: skip
        sizes = [int(m["n_rows"]) for m in self.metas]
        self.chunks: list[_Chunk] = []
        left = limit if limit is not None else sum(sizes)
        for i, size in enumerate(sizes):
            for start in range(0, min(size, left), chunk_rows):
                self.chunks.append(_Chunk(i, start, min(start + chunk_rows, size, left)))
            left -= min(size, left)
        self.rows = sum(c.stop - c.start for c in self.chunks)
        self.id_dtype = np.int32 if encoder.num_features < 2**31 else np.int64
        self._labels = None

    def __len__(self) -> int:
        return self.rows

    # -- the row order ------------------------------------------------------------------------

    def _chunk_order(self, seed: int, epoch: int | None) -> np.ndarray:
        if epoch is None or not self.shuffle:
            return np.arange(len(self.chunks))
        return np.random.default_rng([seed, epoch]).permutation(len(self.chunks))

    def _windows(self, seed: int, epoch: int | None) -> list[np.ndarray]:
        order = self._chunk_order(seed, epoch)
        return [order[i : i + self.window_chunks] for i in range(0, len(order), self.window_chunks)]

    def _row_permutation(self, seed: int, epoch: int | None, window: int, rows: int):
        if epoch is None or not self.shuffle:
            return None
        return np.random.default_rng([seed, epoch, window]).permutation(rows)

    def epoch_order(self, seed: int, epoch: int | None) -> np.ndarray:
        """Every row's position (counted across the entries) in the order epoch ``epoch``
        visits them (None: the stored order): what an in-memory run replays to train on the
        same order of rows."""
        starts = np.cumsum([0] + [int(m["n_rows"]) for m in self.metas])
        out = []
        for w, window in enumerate(self._windows(seed, epoch)):
            rows = np.concatenate(
                [
                    starts[self.chunks[c].entry]
                    + np.arange(self.chunks[c].start, self.chunks[c].stop)
                    for c in window
                ]  # fmt: skip
            )
            permutation = self._row_permutation(seed, epoch, w, len(rows))
            out.append(rows if permutation is None else rows[permutation])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    # -- reading ------------------------------------------------------------------------------

    def _read(self, name: str, chunk: _Chunk) -> np.ndarray:
        return _read_rows_of(self.entries[chunk.entry] / f"{name}.npy", chunk.start, chunk.stop)

    def _load_window(self, seed, epoch, w: int, window: np.ndarray):
        """The window's rows, encoded and permuted: (ids, values, labels) as numpy arrays."""
        keys, values, labels = [], [], []
        for c in window:
            chunk = self.chunks[c]
            keys.append(self._read("keys", chunk))
            values.append(self._read("values", chunk))
            labels.append(self._read("labels", chunk))
        keys, values = np.concatenate(keys), np.concatenate(values)
        labels = np.ascontiguousarray(np.concatenate(labels), dtype=np.float32)
        ids, values = self.encoder.transform(keys, values, threads=1)
        del keys
        ids = ids.astype(self.id_dtype, copy=False)
        permutation = self._row_permutation(seed, epoch, w, len(labels))
        if permutation is not None:
            ids, values, labels = ids[permutation], values[permutation], labels[permutation]
        # What each batch would otherwise do on the training thread, once per window here: the
        # kernels' int64 ids, and no values when every one is 1.
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        return ids, (None if bool((values == 1).all()) else values), labels

    def _window_arrays(self, seed, epoch, first: int, prefetch: bool):
        """The encoded windows from ``first`` on; with ``prefetch``, one window ahead in a
        background thread (reading and encoding overlap training)."""
        windows = self._windows(seed, epoch)
        if not prefetch:
            for w in range(first, len(windows)):
                yield self._load_window(seed, epoch, w, windows[w])
            return
        results: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def work():
            try:
                for w in range(first, len(windows)):
                    item = self._load_window(seed, epoch, w, windows[w])
                    while not stop.is_set():
                        try:
                            results.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                results.put(None)
            except BaseException as error:  # handed to the consumer
                results.put(error)

        thread = threading.Thread(target=work, name="fnn-fast-stream", daemon=True)
        thread.start()
        try:
            while True:
                item = results.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    results.get(timeout=0.05)
                except queue.Empty:
                    pass

    def batches(
        self,
        batch_size: int,
        generator=None,
        *,
        epoch: int | None = None,
        seed: int = 0,
        start_step: int = 0,
        prefetch: bool = True,
    ):
        """(ids, values, labels) mini-batches: in epoch ``epoch``'s order (None: the stored
        order), from batch ``start_step`` on. ``generator`` is not used (the order comes from
        (seed, epoch)); it is accepted so that the trainer treats every source alike."""
        windows = self._windows(seed, epoch)
        sizes = [sum(self.chunks[c].stop - self.chunks[c].start for c in w) for w in windows]
        skip = start_step * batch_size  # rows of the epoch already trained on
        first = 0
        while first < len(windows) and skip >= sizes[first]:
            skip -= sizes[first]
            first += 1
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        held = 0
        for ids, values, labels in self._window_arrays(seed, epoch, first, prefetch):
            if skip:
                values = None if values is None else values[skip:]
                ids, labels, skip = ids[skip:], labels[skip:], 0
            pending.append((ids, values, labels))
            held += len(labels)
            while held >= batch_size:
                batch, pending, held = _take(pending, batch_size, held)
                yield _tensors(*batch)
        if held:
            batch, pending, held = _take(pending, held, held)
            yield _tensors(*batch)

    # -- what the trainer asks of a split -----------------------------------------------------

    def for_evaluation(self) -> CacheStream:
        """The rows evaluated after each epoch: the first ``eval_rows`` (all when None), so the
        held predictions stay bounded on a large training set."""
        if self.eval_rows is None or self.eval_rows >= self.rows:
            return self
        return CacheStream(
            self.entries, self.encoder, chunk_rows=self.chunk_rows,
            window_chunks=self.window_chunks, shuffle=False, limit=self.eval_rows,
        )  # fmt: skip

    @property
    def labels(self) -> torch.Tensor:
        """Every label (4 bytes a row: for validation and test rows, whose predictions are held
        for the AUC anyway)."""
        if self._labels is None:
            self._labels = torch.from_numpy(
                np.ascontiguousarray(
                    np.concatenate([self._read("labels", c) for c in self.chunks])
                    if self.chunks
                    else np.zeros(0),
                    dtype=np.float32,
                )
            )
        return self._labels

    def click_rate(self) -> float:
        positives = sum(float(self._read("labels", c).sum(dtype=np.float64)) for c in self.chunks)
        return positives / self.rows if self.rows else 0.5


def _take(pending, count: int, held: int):
    """The first ``count`` rows of the pending arrays, and what is left."""
    parts, left, need = [], [], count
    for ids, values, labels in pending:
        if need >= len(labels):
            parts.append((ids, values, labels))
            need -= len(labels)
        elif need > 0:
            head, tail = (None, None) if values is None else (values[:need], values[need:])
            parts.append((ids[:need], head, labels[:need]))
            left.append((ids[need:], tail, labels[need:]))
            need = 0
        else:
            left.append((ids, values, labels))
    if len(parts) == 1:
        batch = parts[0]
    else:
        ids = np.concatenate([p[0] for p in parts])
        values = None
        if any(p[1] is not None for p in parts):  # a window of all-1 values beside one without
            values = np.concatenate(
                [np.ones(p[0].shape, np.float32) if p[1] is None else p[1] for p in parts]
            )
        batch = (ids, values, np.concatenate([p[2] for p in parts]))
    return batch, left, held - count


def _tensors(ids: np.ndarray, values: np.ndarray | None, labels: np.ndarray):
    values_t = None if values is None else torch.from_numpy(np.ascontiguousarray(values))
    return (
        torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
        (None if values_t is None or bool((values_t == 1).all()) else values_t),
        torch.from_numpy(np.ascontiguousarray(labels)),
    )


def entry_columns(entry) -> tuple[_Column, np.ndarray, list[str]]:
    """(keys read by row slices, slot_fields, field_names) of an entry: what FeatureEncoder.fit
    takes, without loading or mapping the keys."""
    entry = Path(entry)
    meta = read_meta(entry)
    keys = _Column(entry / "keys.npy", int(meta["n_rows"]))
    return keys, np.asarray(meta["slot_fields"], dtype=np.int64), meta["field_names"]
