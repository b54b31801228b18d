"""End-to-end scoring throughput on a synthetic Criteo-like set, measured in one run.

    python benchmarks/scoring_bench.py --rows 10000000 --work /tmp/fnn-scoring

1. Writes ``rows`` and ``rows / 10`` Criteo text rows from a 39-field planted model (Zipf ids),
   a model (encoder fitted on the small file, FM + FNN 200-300-100 with FM-initialized input;
   scoring speed does not depend on training) and the binary cache of both files.
2. Measures, each in a fresh process (peak RSS is its own plus its workers'):
   - the bare MLP forward (the FNN's layers on a ready z) at the scoring batch size,
   - ``fnn-fast score`` from the binary cache, for both sizes (RSS must stay flat),
   - ``fnn-fast score`` from Criteo text,
   - a straightforward loop: pandas.read_csv in chunks, the model's own key mapping per cell,
     the encoder, the reference (pure PyTorch) module, on the small file.
3. Prints a table and the targets (cache >= 80 % of the bare MLP; text >= 5x the pandas loop),
   and writes JSON with ``--json``.

It measures the installed fnn_fast: the children start with ``python -P`` (the current folder,
perhaps the source tree, is not put on sys.path) and each refuses to run without the native
backend; the output names the package's path and backends.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

BATCH = 8192


def prepare(work: Path, rows: int) -> dict:
    from fnn_fast import FM, FNN
    from fnn_fast.data import FeatureEncoder, Schema, read_rows
    from fnn_fast.data.cache import load_rows
    from fnn_fast.data.synthetic import criteo_like_cardinalities, plant_model, write_criteo
    from fnn_fast.saved import save_model

    work.mkdir(parents=True, exist_ok=True)
    truth = plant_model(criteo_like_cardinalities(39, 1_000_000), num_factors=4, seed=0)
    files = {"small": work / f"criteo-{rows // 10}.txt", "large": work / f"criteo-{rows}.txt"}
    for name, n in (("small", rows // 10), ("large", rows)):
        if not files[name].exists():
            started = time.perf_counter()
            write_criteo(files[name], truth, n, seed=1)
            print(f"wrote {n:,} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    schema = Schema.criteo()
    model = work / "model"
    if not (model / "config.json").exists():
        encoder = FeatureEncoder.fit_rows(read_rows(files["small"], schema))
        fm = FM(encoder.num_features, 10)
        save_model(model, fm, FNN.from_fm(fm, num_fields=39), encoder, schema)
    caches = {}
    for name, path in files.items():
        started = time.perf_counter()
        load_rows(path, schema, cache_dir=work / "cache")
        caches[name] = _entry(work / "cache", path)
        print(f"cache of {path.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return {"files": {k: str(v) for k, v in files.items()}, "caches": caches, "model": str(model)}


def _entry(cache_dir: Path, path: Path) -> str:
    matches = sorted(cache_dir.glob(f"{path.name}-*"), key=lambda p: p.stat().st_mtime)
    return str(matches[-1])


def _in_child(code: str) -> dict:
    """Run ``code`` (which sets ``result``) in a fresh interpreter that imports the installed
    fnn_fast (``-P``: not a source tree in the current folder) and has its native backend;
    adds its peak RSS and which fnn_fast it ran."""
    program = f"""
import json, resource, time
from fnn_fast.bench.machine import require_native
fnn_fast_info = require_native()
{code}
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec); workers'
# peaks add up as an upper bound of the whole run's memory
own = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
result["peak_rss_mb"] = round(own / 1024)
result["workers_peak_rss_mb"] = round(workers / 1024)
result["fnn_fast"] = fnn_fast_info
print("RESULT" + json.dumps(result))
"""
    out = subprocess.run([sys.executable, "-P", "-c", program], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def bare_mlp(model: str, rows: int) -> dict:
    return _in_child(f"""
import torch
from fnn_fast.saved import load_model
fnn = load_model({model!r}).fnn
layers = torch.nn.Sequential(*fnn.hidden_layers, fnn.output)
z = torch.randn({BATCH}, 1 + 39 * 11)
with torch.inference_mode():
    for _ in range(5):
        layers(z)
    batches = max(20, {rows} // {BATCH} // 20)
    started = time.perf_counter()
    for _ in range(batches):
        torch.sigmoid(layers(z))
    seconds = time.perf_counter() - started
result = {{"rows_per_s": batches * {BATCH} / seconds}}
""")


def score(model: str, source: str, out: Path) -> dict:
    return _in_child(f"""
from fnn_fast.score import score_files
summary = score_files({model!r}, {source!r}, {str(out)!r}, batch_size={BATCH}, overwrite=True,
                      progress=False)
result = {{"rows": summary.rows, "seconds": summary.seconds, "rows_per_s": summary.rows_per_s}}
""")


def pandas_loop(model: str, source: str) -> dict:
    """What a user without fnn_fast's scorer would write: pandas chunks, per-cell key mapping
    with the model's own tokenizers, the encoder, the reference module."""
    return _in_child(f"""
import numpy as np, pandas as pd, torch
import fnn_fast
from fnn_fast.data.schema import CRITEO_COLUMNS, CRITEO_NUMERIC, CRITEO_CATEGORICAL
from fnn_fast.data.tokens import NumericKeys, TokenKeys
from fnn_fast.saved import load_model
fnn_fast.set_backend("reference")
saved = load_model({model!r})
numeric = {{c: NumericKeys(c, "bucketize", saved.schema.numeric_rule) for c in CRITEO_NUMERIC}}
tokens = {{c: TokenKeys() for c in CRITEO_CATEGORICAL}}
rows, started = 0, time.perf_counter()
for chunk in pd.read_csv({source!r}, sep="\\t", header=None, names=CRITEO_COLUMNS, dtype=str,
                         keep_default_na=False, chunksize=65536):
    keys = np.stack([chunk[c].map(lambda x, k=numeric[c]: k[x][0]).to_numpy(np.int64)
                     for c in CRITEO_NUMERIC] +
                    [chunk[c].map(tokens[c].__getitem__).to_numpy(np.int64)
                     for c in CRITEO_CATEGORICAL], axis=1)
    ids, values = saved.encoder.transform(keys, np.ones(keys.shape, np.float32))
    ids = torch.from_numpy(ids)
    with torch.inference_mode():
        for s in range(0, len(ids), {BATCH}):
            torch.sigmoid(saved.fnn(ids[s:s + {BATCH}])).numpy()
    rows += len(chunk)
seconds = time.perf_counter() - started
result = {{"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}}
""")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--work", required=True, help="folder for the data, caches and outputs")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    from fnn_fast.bench.machine import require_native

    fnn_fast_info = require_native()
    print(f"fnn_fast: {fnn_fast_info['path']}, backends {fnn_fast_info['backends']['available']}"
          f" (active: {fnn_fast_info['backends']['active']})", file=sys.stderr)  # fmt: skip
    work = Path(args.work)
    setup = prepare(work, args.rows)
    model, files, caches = setup["model"], setup["files"], setup["caches"]
    small, large = f"{args.rows // 10:,} rows", f"{args.rows:,} rows"
    results = {
        "bare MLP forward": bare_mlp(model, args.rows),
        f"score, binary cache, {small}": score(model, caches["small"], work / "s.npy"),
        f"score, binary cache, {large}": score(model, caches["large"], work / "l.npy"),
        f"score, Criteo text, {large}": score(model, files["large"], work / "t.npy"),
        f"pandas + reference loop, {small}": pandas_loop(model, files["small"]),
    }
    mlp = results["bare MLP forward"]["rows_per_s"]
    baseline = results[f"pandas + reference loop, {small}"]["rows_per_s"]
    print("\n| case | rows/s | vs bare MLP | vs pandas loop | peak RSS MB (worker) |")
    print("|---|---:|---:|---:|---:|")
    for case, r in results.items():
        rate, memory = r["rows_per_s"], f"{r['peak_rss_mb']:,} ({r['workers_peak_rss_mb']:,})"
        print(f"| {case} | {rate:,.0f} | {rate / mlp:.0%} | {rate / baseline:.1f}x | {memory} |")
    if args.json:
        machine = {"cpu": platform.processor() or platform.machine(), "python": sys.version,
                   "fnn_fast": fnn_fast_info}  # fmt: skip
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
