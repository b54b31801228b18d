"""Reading ahead: the parts of a scoring run read and encoded in order, by worker processes or
by threads of this process, while the model scores the previous part.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import shutil
import threading
import time
from collections import deque
from pathlib import Path

from fnn_fast.data import DataError, Schema
from fnn_fast.data.parts import (
    EncodedPart,
    Part,
    encode_part,
    load_part,
)

OVERLAP_CORES = 8  # from this many cores, reader threads also encode, beside the model

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


class PartReader:
    """Parts read and encoded in order, ahead of the caller: by ``workers`` processes, or with
    workers=0 by threads of this process (file reads and the C++ readers and encoder release
    the GIL), one per four cores.

    With fewer than ``OVERLAP_CORES`` cores, those threads only read (I/O) and the caller
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
        self.encode_in_caller = workers == 0 and cores < OVERLAP_CORES
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
    which the caller re-numbers (see PartLineError)."""
    try:
        return compute()
    except DataError as error:
        if part.kind == "text" and error.line is not None:
            raise PartLineError(part, error) from None
        raise


class PartLineError(Exception):
    def __init__(self, part: Part, error: DataError):
        super().__init__(str(error))
        self.part, self.error = part, error
