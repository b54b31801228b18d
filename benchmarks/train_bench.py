"""Training throughput and peak memory, in memory and streamed, on a generated Criteo-shaped set.

    python benchmarks/train_bench.py --work /tmp/fnn-train-bench --rows 5000000 50000000

1. Generates, once per size (kept in ``--work``), a training set of ``rows`` rows and a fixed
   validation set (``--valid-rows``), written straight into the binary cache format
   (``fnn_fast.data.cache``: labels, keys, values, lines as .npy, meta.json), in chunks with
   numpy: 39 fields (13 numeric, bucketized as Criteo's are, and 26 categorical), field sizes
   log-uniform up to ``--largest`` (the same vocabulary, hence the same tables, at every size),
   Zipf-like popularity, labels from a planted logistic model of a few fields.
2. Trains, each in a fresh process (its peak RSS is its own), stage 1 (FM) and stage 2 (FNN) for
   one epoch each with the default settings except ``--hidden``: ``memory`` (the CLI's path:
   the entry memory-mapped, then encoded into one in-memory Split) and ``stream``
   (fnn_fast.stream.CacheStream: read by chunks, encoded one window ahead in a thread).
   ``--stream-only-above N``: sizes above N rows are measured streamed only (the in-memory
   split of 50M rows takes about 24 GB).
3. Prints rows/s of each stage's training loop (the trainer's own count, evaluation excluded),
   the peak RSS, and the table's size; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FIELDS, NUMERIC = 39, 13
CHUNK = 1 << 20


def cardinalities(largest: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    sizes = np.round(np.exp(rng.uniform(np.log(4), np.log(largest), size=FIELDS))).astype(int)
    sizes[:NUMERIC] = np.minimum(sizes[:NUMERIC], 64)  # bucketized numbers: few buckets
    return sizes


def generate(entry: Path, rows: int, largest: int, seed: int) -> None:
    """``rows`` rows written as a cache entry (skipped when it exists)."""
    from fnn_fast.data import Schema
    from fnn_fast.data.cache import CACHE_FORMAT_VERSION, schema_identity

    if (entry / "meta.json").exists():
        return
    staging = entry.with_name(entry.name + ".writing")
    staging.mkdir(parents=True, exist_ok=True)
    sizes = cardinalities(largest)
    truth = np.random.default_rng(1)
    weights = [truth.normal(0, 0.8, size=s) for s in sizes[:6]]  # the label's fields
    arrays = {
        "labels": np.lib.format.open_memmap(staging / "labels.npy", "w+", np.float32, (rows,)),
        "keys": np.lib.format.open_memmap(staging / "keys.npy", "w+", np.int64, (rows, FIELDS)),
        "values": np.lib.format.open_memmap(
            staging / "values.npy", "w+", np.float32, (rows, FIELDS)
        ),
        "lines": np.lib.format.open_memmap(staging / "lines.npy", "w+", np.int64, (rows,)),
    }
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        u = rng.random((n, FIELDS), dtype=np.float32)
        keys = (u**3 * sizes).astype(np.int64)  # popular small keys, a long tail
        keys += np.arange(FIELDS, dtype=np.int64) << 32  # distinct per field, as hashed keys are
        logit = -1.5 + sum(w[keys[:, f] & 0xFFFFFFFF] for f, w in enumerate(weights))
        labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        arrays["keys"][start : start + n] = keys
        arrays["values"][start : start + n] = 1.0
        arrays["labels"][start : start + n] = labels
        arrays["lines"][start : start + n] = np.arange(start + 1, start + n + 1)
    for array in arrays.values():
        array.flush()
    del arrays
    schema = Schema.criteo()
    meta = {
        "format_version": CACHE_FORMAT_VERSION,
        "field_names": list(schema.field_names) if hasattr(schema, "field_names") else
        [f"f{i}" for i in range(FIELDS)],
        "slot_fields": list(range(FIELDS)),
        "bad_lines": 0,
        "bad_examples": [],
        "source": f"train_bench generated {rows} rows (seed {seed})",
        "n_rows": rows,
        "schema": schema_identity(schema),
    }  # fmt: skip
    (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    staging.rename(entry)


def peak_rss_bytes() -> int:
    """This process's own peak resident set: VmHWM, the high-water mark of its address space.
    Not ru_maxrss: Linux keeps the peak of the address space that execve replaced, and
    subprocess starts a child with vfork, whose replaced address space is the parent's; the
    parent's peak (it maps and writes the generated entries: 3 GB for 5M rows) was reported
    as the child's (the 3,140 MB once recorded for streaming 5M rows)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # other systems


def child(args) -> None:
    """One measurement: prints a JSON line."""
    import torch

    from fnn_fast.bench.machine import installed
    from fnn_fast.data import FeatureEncoder
    from fnn_fast.data.cache import open_rows
    from fnn_fast.stream import EVAL_ROWS, CacheStream, entry_columns
    from fnn_fast.train import Split, TrainConfig, train_two_stage

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    keys, slot_fields, names = entry_columns(args.train)
    encoder = FeatureEncoder.fit(keys, slot_fields, names)
    if args.mode == "memory":
        train = Split.encode(open_rows(args.train), encoder)
        valid = Split.encode(open_rows(args.valid), encoder)
    else:
        train = CacheStream(args.train, encoder, eval_rows=EVAL_ROWS)
        valid = CacheStream(args.valid, encoder, shuffle=False)
    loaded = time.perf_counter() - started
    config = TrainConfig(
        fm_epochs=1, fnn_epochs=args.fnn_epochs, hidden=[int(h) for h in args.hidden.split(",")]
    )
    result = train_two_stage(train, valid, None, encoder, config, progress=False)
    rss = peak_rss_bytes()
    table = encoder.num_features * (1 + config.factors) * 4
    print(json.dumps({
        "mode": args.mode,
        "fnn_fast": installed()["path"],
        "rows": len(train),
        "load_seconds": loaded,
        "fm_rows_per_s": result.history["fm"][0]["samples_per_s"],
        "fnn_rows_per_s": result.history["fnn"][0]["samples_per_s"] if args.fnn_epochs else None,
        "peak_rss_mb": rss / 2**20,
        "features": encoder.num_features,
        "table_mb": table / 2**20,
        "valid_auc_fm": result.metrics["fm"].get("valid_auc"),
        "seconds": time.perf_counter() - started,
    }))  # fmt: skip


def machine(threads: int) -> dict:
    """What the figures were measured on."""
    import torch

    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), "")  # fmt: skip
    except OSError:
        pass
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu": model or platform.processor(), "cores": os.cpu_count(), "threads": threads,
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="folder for the generated sets")
    parser.add_argument("--rows", type=int, nargs="+", default=[5_000_000, 50_000_000])
    parser.add_argument("--valid-rows", type=int, default=500_000)
    parser.add_argument("--largest", type=int, default=300_000, help="largest field's size")
    parser.add_argument("--hidden", default="200,300,100")
    parser.add_argument("--fnn-epochs", type=int, default=1, help="0: stage 1 only")
    parser.add_argument("--modes", default="memory,stream")
    parser.add_argument("--stream-only-above", type=int, default=10_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", choices=("memory", "stream"), help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--valid", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from fnn_fast.bench.machine import require_native

    info = require_native()  # refuse to time the pure-PyTorch path
    if args.child:
        args.mode = args.child
        child(args)
        return
    work = Path(args.work)
    valid = work / f"valid-{args.valid_rows}"
    started = time.perf_counter()
    generate(valid, args.valid_rows, args.largest, seed=999)
    results = []
    for rows in args.rows:
        entry = work / f"train-{rows}"
        t = time.perf_counter()
        generate(entry, rows, args.largest, seed=rows)
        print(f"{rows:,} rows ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        for mode in args.modes.split(","):
            if mode == "memory" and rows > args.stream_only_above:
                continue
            command = [
                sys.executable, "-P", __file__, "--work", args.work, "--child", mode, "--train",
                str(entry), "--valid", str(valid), "--hidden", args.hidden, "--fnn-epochs",
                str(args.fnn_epochs), "--threads", str(args.threads),
            ]  # fmt: skip
            load_before = os.getloadavg()[0]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{mode} at {rows} rows failed")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            # The host's 1-minute load average around the child (its own threads included):
            # on a shared machine the figures are only as clean as this.
            result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    print(
        f"{'rows':>12} {'mode':>7} {'FM rows/s':>11} {'FNN rows/s':>11} {'peak RSS MB':>12} "
        f"{'load':>9}"
    )
    for r in results:
        fnn = f"{r['fnn_rows_per_s']:,.0f}" if r["fnn_rows_per_s"] else "-"
        print(
            f"{r['rows']:>12,} {r['mode']:>7} {r['fm_rows_per_s']:>11,.0f} {fnn:>11} "
            f"{r['peak_rss_mb']:>12,.0f} {r['load_before']:>4.1f}-{r['load_after']:<4.1f}"
        )
    if results:
        print(f"table: {results[0]['features']:,} features, {results[0]['table_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(args.threads),
            "fnn_fast": info,
            # the work folder named as WORK: the file does not record this machine's paths
            "command": " ".join("WORK" if a == args.work else a for a in sys.argv),
            "seconds": time.perf_counter() - started,
            "results": results,
        }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
