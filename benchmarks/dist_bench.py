"""Row-wise sharded training (fnn_fast.distributed): bytes per step and compute vs communication.

Runs N gloo ranks on 127.0.0.1 (``--worlds 1,2``), each stepping on its 1/N of a global
Criteo-shaped batch (39 fields, Zipf-popular ids, K = 10: fnn_fast.bench.shapes), and reports
per rank and step:

- bytes sent to other ranks, measured (what the exchanges hand to ``all_to_all_single``, and
  the ring all-reduce's 2 (N-1)/N of the dense buffer) and from the byte model below;
- step time split into communication (wall time inside the collectives, waiting for the
  slower rank included) and compute (the rest: lookups' math, MLP, owner gather and update,
  dense optimizer);
- the single-process module (FM / FNN with the fused update) on the whole batch, for scale.

Byte model, per rank and step (U: distinct ids in the rank's slice, a fraction (N-1)/N of them
owned elsewhere when ownership is spread evenly; D = 1 + K floats a row; P dense parameters):

    counts 8 (N-1) + ids 8 U (N-1)/N + rows 4 D U (N-1)/N + grads 4 D U (N-1)/N
    + all-reduce 2 (N-1)/N * 4 (P + #dense tensors)

(the rows a rank sends back as owner balance, on average, the rows it receives).
``--model-only`` prints the model's bytes and a throughput estimate for other N, batch sizes
and link bandwidths, measuring U on drawn batches (no ranks started).

    python benchmarks/dist_bench.py --worlds 1,2 --model fm,fnn --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fnn_fast import FM, FNN, SparseRowOptimizer
from fnn_fast import distributed as fd
from fnn_fast.bench.shapes import Shape, draw_batches
from fnn_fast.optim import RowUpdate

HIDDEN = (200, 300, 100)


def byte_model(world: int, unique: float, dim: int, dense_numel: int, dense_tensors: int) -> dict:
    """Expected bytes a rank sends per step (see the module's docstring)."""
    remote = (world - 1) / world
    parts = {
        "counts": 8 * (world - 1),
        "ids": 8 * unique * remote,
        "rows": 4 * dim * unique * remote,
        "grads": 4 * dim * unique * remote,
        "allreduce": 2 * remote * 4 * (dense_numel + dense_tensors),
    }
    parts["total"] = sum(parts.values())
    return parts


def build(kind: str, shape: Shape, rule: RowUpdate, sharded: bool):
    torch.manual_seed(0)
    fm = FM(shape.rows, shape.factors, init_std=0.01)
    model = fm if kind == "fm" else FNN.from_fm(fm, shape.fields, hidden=HIDDEN)
    if sharded:
        model = fd.ShardedFM.from_fm(model) if kind == "fm" else fd.ShardedFNN.from_fnn(model)
        dense = model.dense_parameters()
    else:
        dense = [p for n, p in model.named_parameters() if n != "table"]
    model.fuse_update(rule)
    w0 = [p for p in dense if p is model.w0]
    opts = [SparseRowOptimizer(w0, rule.kind, lr=rule.lr)]
    layers = [p for p in dense if p is not model.w0]
    if layers:
        opts.append(torch.optim.Adam(layers, lr=1e-4))
    return model, dense, opts


def batches_for(shape: Shape, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(0)
    out = []
    for ids in draw_batches(shape, count, rng):
        labels = torch.from_numpy((rng.random(shape.batch) < 0.25).astype(np.float32))
        out.append((torch.from_numpy(ids), labels))
    return out


def loopback_bytes() -> int | None:
    """Bytes sent over the loopback interface so far (all processes on the host)."""
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == "lo":
                    return int(rest.split()[8])
    except OSError:
        return None
    return None


def time_steps(model, opts, batches, total, sharded, warmup):
    steps = []
    for i, (ids, labels) in enumerate(batches):
        stats = model.stats if sharded else None
        if stats is not None:
            stats.reset()
        started = time.perf_counter()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        logits = model(ids)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / total
        loss.backward()
        if sharded:
            model.allreduce_dense_grads()
        for opt in opts:
            opt.step()
        elapsed = time.perf_counter() - started
        if i < warmup:
            continue
        record = {"seconds": elapsed, "unique": int(ids.unique().numel())}
        if stats is not None:
            record.update(
                comm_seconds=stats.seconds,
                bytes_sent=stats.bytes_sent,
                bytes_received=stats.bytes_received,
                by_kind={k: list(v) for k, v in stats.by_kind.items()},
            )
        steps.append(record)
    return steps


def summarize(steps: list[dict]) -> dict:
    out = {"steps": len(steps), "step_ms": 1e3 * float(np.median([s["seconds"] for s in steps]))}
    out["unique"] = float(np.mean([s["unique"] for s in steps]))
    if "comm_seconds" in steps[0]:
        out["comm_ms"] = 1e3 * float(np.median([s["comm_seconds"] for s in steps]))
        out["compute_ms"] = 1e3 * float(
            np.median([s["seconds"] - s["comm_seconds"] for s in steps])
        )
        out["bytes_sent"] = float(np.mean([s["bytes_sent"] for s in steps]))
        kinds = steps[0]["by_kind"].keys()
        out["bytes_by_kind"] = {
            k: float(np.mean([s["by_kind"][k][0] for s in steps])) for k in kinds
        }
        out["comm_ms_by_kind"] = {
            k: 1e3 * float(np.median([s["by_kind"][k][2] for s in steps])) for k in kinds
        }
    return out


def worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        shape = Shape("criteo", args.factors, args.rows, args.batch)
        rule = RowUpdate(args.rule, lr=0.05)
        batches = batches_for(shape, args.warmup + args.steps)
        part = fd.batch_slice(shape.batch, rank, world)
        mine = [(ids[part], labels[part]) for ids, labels in batches]
        results = {}
        for kind in args.model:
            model, dense, opts = build(kind, shape, rule, sharded=True)
            dist.barrier()
            lo_before = loopback_bytes()
            steps = time_steps(model, opts, mine, shape.batch, True, args.warmup)
            dist.barrier()
            lo_after = loopback_bytes()
            summary = summarize(steps)
            summary["dense_numel"] = sum(p.numel() for p in dense)
            summary["dense_tensors"] = len(dense)
            summary["loopback_bytes"] = (
                None if lo_before is None else (lo_after - lo_before) / (args.warmup + args.steps)
            )
            summary["model_bytes"] = byte_model(
                world, summary["unique"], shape.dim, summary["dense_numel"], len(dense)
            )
            if world == 1 and rank == 0:  # the single-process module on the same batches
                model, _, opts = build(kind, shape, rule, sharded=False)
                single = summarize(time_steps(model, opts, mine, shape.batch, False, args.warmup))
                summary["single_process_step_ms"] = single["step_ms"]
            results[kind] = summary
            del model, opts
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        if rank == 0:
            queue.put(gathered)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(world: int, args) -> list[dict]:
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    torch.multiprocessing.start_processes(
        worker, args=(world, free_port(), args, queue), nprocs=world, join=True,
        start_method="spawn",
    )  # fmt: skip
    return queue.get()


# (name, ranks, local batch, GPUs per node, within-node all-to-all B/s, within-node all-reduce
# B/s, between-node B/s per GPU or None, seconds of latency per collective): the assumptions of
# the worked estimate in benchmarks/RESULTS.md.
SCENARIOS = [
    ("8 GPUs, NVLink/NVSwitch", 8, 8192, 8, 200e9, 300e9, None, 25e-6),
    ("4x8 GPUs, IB 400 Gb/s per GPU", 32, 4096, 8, 200e9, 300e9, 40e9, 50e-6),
    ("4x8 GPUs, 100 GbE per node", 32, 4096, 8, 200e9, 300e9, 1.2e9, 100e-6),
]
COLLECTIVES_PER_STEP = 5  # counts, ids, rows, gradients, all-reduce


def dense_size(kind: str, factors: int) -> tuple[int, int]:
    """(parameters, tensors) of the replicated part: w0, and the FNN's layers."""
    if kind == "fm":
        return 1, 1
    sizes = [1 + 39 * (1 + factors), *HIDDEN, 1]  # z = [w0, z_1..z_39]
    return 1 + sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False)), 2 * len(sizes) - 1


def model_only(args) -> None:
    """The byte model for other world sizes and batches (U measured on drawn batches), and
    the communication time per step of SCENARIOS."""
    print(f"byte model, K = {args.factors}, rows {args.rows:.0e}, Zipf ids; U per rank measured")
    dim = 1 + args.factors
    uniques = {}
    for local in (8192, 4096):
        shape = Shape("criteo", args.factors, args.rows, local)
        drawn = draw_batches(shape, 3, np.random.default_rng(1))
        uniques[local] = float(np.mean([len(np.unique(b)) for b in drawn]))
    for kind in args.model:
        dense, tensors = dense_size(kind, args.factors)
        for world, local in ((8, 8192), (8, 4096), (16, 4096), (32, 4096), (64, 4096)):
            unique = uniques[local]
            m = byte_model(world, unique, dim, dense, tensors)
            a2a = m["total"] - m["allreduce"]
            print(
                f"{kind} N={world:3d} local batch {local}: U {unique:,.0f} "
                f"({unique / (local * 39):.2f} of lookups), bytes/step/rank "
                f"{m['total'] / 1e6:.2f} MB (a2a {a2a / 1e6:.2f}, "
                f"all-reduce {m['allreduce'] / 1e6:.2f}; P {dense})"
            )
    print("communication per step (no overlap), and the ceiling N * local batch / that time:")
    for kind in args.model:
        dense, tensors = dense_size(kind, args.factors)
        for name, world, local, per_node, a2a_bw, ar_bw, between, latency in SCENARIOS:
            m = byte_model(world, uniques[local], dim, dense, tensors)
            a2a = m["total"] - m["allreduce"]
            if between is None:
                seconds = a2a / a2a_bw + m["allreduce"] / ar_bw
            else:  # the bytes to other nodes over their link; a ring all-reduce crosses it all
                leaving = (world - per_node) / (world - 1)
                seconds = a2a * leaving / between + a2a * (1 - leaving) / a2a_bw
                seconds += m["allreduce"] / between
            seconds += COLLECTIVES_PER_STEP * latency
            print(
                f"{kind} {name} (N={world}, local {local}): {seconds * 1e3:.2f} ms, "
                f"{world * local / seconds / 1e6:.0f} M samples/s"
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worlds", default="1,2", help="rank counts to run, comma separated")
    p.add_argument("--model", default="fm,fnn", help="fm, fnn or both")
    p.add_argument("--rows", type=float, default=1e6)
    p.add_argument("--batch", type=int, default=4096, help="global batch size")
    p.add_argument("--factors", type=int, default=10)
    p.add_argument("--rule", default="adagrad")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--model-only", action="store_true", help="print the byte model and exit")
    args = p.parse_args(argv)
    args.rows = int(args.rows)
    args.model = [m for m in args.model.split(",") if m]
    if args.model_only:
        model_only(args)
        return 0
    from fnn_fast.bench.machine import require_native

    info = require_native()  # the ranks' CPU kernels, not the pure-PyTorch path
    print(f"fnn_fast: {info['path']}, backends {info['backends']['available']}")
    report = {
        "fnn_fast": info,
        "command": " ".join(["python", "benchmarks/dist_bench.py", *(argv or sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"gloo over loopback, {args.threads} thread(s) per rank",
        "shape": Shape("criteo", args.factors, args.rows, args.batch).slug,
        "rule": args.rule,
        "worlds": {},
    }
    for world in (int(w) for w in args.worlds.split(",")):
        ranks = run_world(world, args)
        report["worlds"][world] = ranks
        for kind in args.model:
            for rank, results in enumerate(ranks):
                r = results[kind]
                m = r["model_bytes"]
                single = r.get("single_process_step_ms")
                print(
                    f"N={world} rank {rank} {kind}: step {r['step_ms']:.1f} ms = compute "
                    f"{r['compute_ms']:.1f} + comm {r['comm_ms']:.1f}; sent "
                    f"{r['bytes_sent'] / 1e6:.3f} MB/step (model {m['total'] / 1e6:.3f}); "
                    f"U {r['unique']:.0f}"
                    + (f"; single-process module {single:.1f} ms" if single else "")
                    + (
                        f"; loopback {r['loopback_bytes'] / 1e6:.2f} MB/step (all ranks)"
                        if r.get("loopback_bytes") is not None
                        else ""
                    )
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
