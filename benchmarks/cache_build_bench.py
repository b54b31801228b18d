"""Peak memory and speed of building a binary cache entry from a Criteo-shaped text file: the
part-by-part build (fnn_fast.data.cache.ensure_entry) against the former whole-file parse
(read_rows then write_rows). Each build runs in its own process; its peak RSS is that process's
ru_maxrss.

    python benchmarks/cache_build_bench.py --gb 1.2 --work /tmp/cachebuild

generates WORK/day.txt (tab-separated, 40 columns, about --gb GB; kept for later runs) and prints
one line per build: seconds, rows/s, MB/s of text and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def generate(path: Path, gb: float, seed: int = 0) -> None:
    """Lines of Criteo's day files: a label, 13 counts (some missing), 26 hashed categories.
    Up to 100 MB of distinct lines, repeated to the size asked for (generating is slower than
    parsing)."""
    rng = np.random.default_rng(seed)
    target = int(gb * 1e9)
    block = path.with_suffix(".block")
    with open(block, "w") as file:
        written = 0
        while written < min(target, 100_000_000):
            n = 20000
            labels = rng.integers(0, 2, n)
            ints = rng.zipf(1.5, (n, 13)).astype(str)
            ints[rng.random((n, 13)) < 0.2] = ""
            cats = np.char.mod("%08x", rng.zipf(1.2, (n, 26)) % (1 << 32))
            cats[rng.random((n, 26)) < 0.1] = ""
            cells = np.concatenate([labels[:, None].astype(str), ints, cats], axis=1)
            text = "\n".join("\t".join(row) for row in cells.tolist()) + "\n"
            file.write(text)
            written += len(text)
    with open(path.with_suffix(".tmp"), "wb") as file:
        while file.tell() < target:
            with open(block, "rb") as source:
                shutil.copyfileobj(source, file, 1 << 24)
    block.unlink()
    os.replace(path.with_suffix(".tmp"), path)


def build(how: str, path: str, out: str) -> dict:
    from fnn_fast.data import Schema, read_rows, write_rows
    from fnn_fast.data.cache import ensure_entry

    schema = Schema.criteo()
    start = time.perf_counter()
    if how == "whole":
        rows = read_rows(path, schema, progress=False)
        write_rows(rows, out, schema)
        n_rows = len(rows)
    else:
        entry = ensure_entry(path, schema, out, progress=False)
        n_rows = json.loads((entry / "meta.json").read_text())["n_rows"]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    return {"how": how, "rows": n_rows, "seconds": seconds, "peak_rss": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.2)
    parser.add_argument("--work", default="/tmp/cachebuild")
    parser.add_argument("--builds", nargs="+", default=["parts", "whole"])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # how, path, out
    args = parser.parse_args()
    from fnn_fast.bench.machine import require_native

    info = require_native()  # the native encoder, not the pure-Python path
    if args.child:
        print(json.dumps({**build(*args.child), "fnn_fast": info}))
        return
    print(f"fnn_fast: {info['path']}, backends {info['backends']['available']}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "day.txt"
    if not data.exists():
        generate(data, args.gb)
    size = data.stat().st_size
    print(f"{data}: {size / 1e9:.2f} GB; load average {os.getloadavg()[0]:.1f}")
    for how in args.builds:
        out = work / f"out-{how}"
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run(
            [sys.executable, "-P", __file__, "--child", how, str(data), str(out)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{how:>5}: {result['rows']:,} rows in {result['seconds']:.1f} s "
            f"({result['rows'] / result['seconds']:,.0f} rows/s, "
            f"{size / 1e6 / result['seconds']:.1f} MB/s), peak RSS "
            f"{result['peak_rss'] / 2**20:,.0f} MiB; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
