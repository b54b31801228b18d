"""Row-wise sharded tables (fnn_fast.distributed) against one process on the whole batch.

Two gloo ranks on 127.0.0.1 (one spawn for every case, ~10 s on 2 cores) each step on their
half of a global batch; the tables, optimizer state, dense parameters and predictions they end
with must equal (``assert_close`` defaults, as TorchRec's sharded-vs-unsharded test) those of
one process stepping on the whole batches. The batches have a hot id on both ranks, duplicates
within a row, ids owned by one rank but used only on the other, odd batch sizes, a step in
which one rank asks nothing of the other, and a rank with an empty batch.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fnn_fast import FM, FNN, SparseRowOptimizer, ops
from fnn_fast.optim import RowUpdate

NUM_FEATURES, FACTORS, SLOTS = 50, 4, 6
SLOT_FIELDS = [0, 1, 2, 3, 4, 4]  # the FNN's last field has two slots
HOT, ONLY_ON_0, ONLY_ON_1 = 3, 40, 10  # 40 is owned by rank 1, 10 by rank 0 (block sharding)
WORLD = 2

RULES = {
    "sgd": RowUpdate("sgd", lr=0.1, weight_decay=1e-3),
    "adagrad": RowUpdate("adagrad", lr=0.05, initial_accumulator_value=0.01),
    "rowwise_adagrad": RowUpdate("rowwise_adagrad", lr=0.05, weight_decay=1e-3),
    "adam": RowUpdate("adam", lr=0.01),
}
# (model, rule, sharding scheme, backend)
CASES = [(m, r, "block", "auto") for m in ("fm", "fnn") for r in RULES] + [
    ("fm", "adam", "cyclic", "auto"),
    ("fnn", "rowwise_adagrad", "cyclic", "auto"),
    ("fm", "adagrad", "block", "reference"),
    ("fnn", "adam", "block", "reference"),
]


def case_name(case) -> str:
    return "-".join(case)


def batches():
    """[(ids [B, S], values [B, S], labels [B])]: the global batches, in order."""
    g = torch.Generator().manual_seed(7)
    common = torch.tensor([i for i in range(NUM_FEATURES) if i not in (HOT, ONLY_ON_0, ONLY_ON_1)])

    def draw(rows, pool=common):
        ids = pool[torch.randint(len(pool), (rows, SLOTS), generator=g)]
        ids[:, 0] = HOT  # on both ranks, in every row
        ids[::2, 5] = ids[::2, 4]  # duplicates within a row (and within the last field)
        return ids

    out = []
    for size, kind in [(13, "split"), (9, "local"), (13, "plain"), (1, "one"), (11, "split")]:
        ids = draw(size)
        if kind == "split":  # 40 only in rank 0's half, 10 only in rank 1's
            first = -(-size // WORLD)
            ids[:first, 2], ids[first:, 2] = ONLY_ON_0, ONLY_ON_1
        if kind == "local":  # rank 0's half asks rank 1 for nothing
            first = -(-size // WORLD)
            ids[:first] = draw(first, common[common < NUM_FEATURES // 2])
        values = torch.rand(size, SLOTS, generator=g) + 0.5
        labels = (torch.rand(size, generator=g) < 0.4).float()
        out.append((ids, values, labels))
    return out


def eval_batch():
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(NUM_FEATURES, (11, SLOTS), generator=g)
    return ids, torch.rand(11, SLOTS, generator=g) + 0.5


def full_model(model: str):
    torch.manual_seed(3)
    fm = FM(NUM_FEATURES, FACTORS, init_std=0.1)
    with torch.no_grad():
        fm.w0.fill_(-0.3)
    if model == "fm":
        return fm
    return FNN.from_fm(fm, slot_fields=SLOT_FIELDS, hidden=(8, 6))


def sparse_optimizer(params, rule: RowUpdate) -> SparseRowOptimizer:
    return SparseRowOptimizer(
        params, rule.kind, lr=rule.lr, weight_decay=rule.weight_decay,
        initial_accumulator_value=rule.initial_accumulator_value,
    )  # fmt: skip


def optimizers(model, rule: RowUpdate, dense_params):
    """The sparse rule for w0 (as the trainer does), Adam for the FNN's layers."""
    w0 = [p for p in dense_params if p is model.w0]
    opts = [sparse_optimizer(w0, rule)]
    layers = [p for p in dense_params if p is not model.w0]
    if layers:
        opts.append(torch.optim.Adam(layers, lr=1e-3))
    return opts


def single_process(case) -> dict:
    model_kind, rule_name, _, backend = case
    ops.set_backend(backend)
    try:
        model = full_model(model_kind)
        rule = RULES[rule_name]
        model.fuse_update(rule)
        dense = [p for n, p in model.named_parameters() if n != "table"]
        opts = optimizers(model, rule, dense)
        if backend == "reference":  # the table gets a sparse gradient: the optimizer's rule
            opts.append(sparse_optimizer([model.table], rule))
        for ids, values, labels in batches():
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(ids, values), labels).backward()
            for opt in opts:
                opt.step()
        with torch.no_grad():
            predictions = model(*eval_batch())
        state = {k: v.clone() for k, v in model.state_dict().items()}
        optim_state = None
        if backend != "reference":
            optim_state = {"state1": model.update_state1, "state2": model.update_state2,
                           "step": model.update_step}  # fmt: skip
        return {"state_dict": state, "predictions": predictions, "optim": optim_state}
    finally:
        ops.set_backend("auto")


# --- the ranks ---------------------------------------------------------------------------------


def run_case(case, rank: int) -> dict | None:
    from fnn_fast import distributed as fd

    model_kind, rule_name, scheme, backend = case
    ops.set_backend(backend)
    try:
        full = full_model(model_kind)
        if model_kind == "fm":
            model = fd.ShardedFM.from_fm(full, scheme=scheme)
        else:
            model = fd.ShardedFNN.from_fnn(full, scheme=scheme)
        rule = RULES[rule_name]
        model.fuse_update(rule)
        opts = optimizers(model, rule, model.dense_parameters())
        for ids, values, labels in batches():
            part = fd.batch_slice(len(labels), rank, WORLD)
            ids, values, labels = ids[part], values[part], labels[part]
            total = fd.global_batch_size(len(labels))
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            logits = model(ids, values)
            loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / total
            loss.backward()
            model.allreduce_dense_grads()
            for opt in opts:
                opt.step()
        ids, values = eval_batch()
        part = fd.batch_slice(len(ids), rank, WORLD)
        with torch.no_grad():
            mine = model(ids[part], values[part])
        predictions = [None] * WORLD
        dist.all_gather_object(predictions, mine)
        gathered = model.to_fm() if model_kind == "fm" else model.to_fnn()
        optim = model.embedding.gather_state()
        if rank != 0:
            return None
        return {
            "state_dict": gathered.state_dict(),
            "predictions": torch.cat(predictions),
            "optim": optim,
            "bytes_sent": model.stats.bytes_sent,
        }
    finally:
        ops.set_backend("auto")


def run_round_trip(rank: int) -> dict | None:
    """Gather table and optimizer state, load them into a fresh sharded model (cyclic, freshly
    initialized), take the same steps with both: the checkpoint path of the training loop."""
    from fnn_fast import distributed as fd

    rule = RowUpdate("adam", lr=0.01)
    first = fd.ShardedFM.from_fm(full_model("fm")).fuse_update(rule)
    second = fd.ShardedFM(NUM_FEATURES, FACTORS, scheme="cyclic", seed=rank).fuse_update(rule)
    steps = batches()

    def step(model, ids, values, labels):
        part = fd.batch_slice(len(labels), rank, WORLD)
        total = fd.global_batch_size(len(labels))
        loss = F.binary_cross_entropy_with_logits(model(ids[part], values[part]), labels[part],
                                                  reduction="sum") / total  # fmt: skip
        loss.backward()

    for batch in steps[:2]:
        step(first, *batch)
    table, state = first.embedding.gather_table(None), first.embedding.gather_state(None)
    second.embedding.load_table(table)
    second.embedding.load_state(state)
    with torch.no_grad():  # the dense part: a replica (a checkpoint's copy on rank 0)
        second.w0.copy_(first.w0)
    for batch in steps[2:]:
        step(first, *batch)
        step(second, *batch)
    fnn = fd.ShardedFNN.from_sharded_fm(first, slot_fields=SLOT_FIELDS, hidden=(8, 6))
    result = {
        "first": first.embedding.gather_table(),
        "second": second.embedding.gather_table(),
        "first_state": first.embedding.gather_state(),
        "second_state": second.embedding.gather_state(),
    }
    fm, fnn = first.to_fm(), fnn.to_fnn()
    if rank != 0:
        return None
    return {**result, "fm": fm.state_dict(), "fnn": fnn.state_dict(), "fnn_config": fnn.config()}


def run_checkpoint(rank: int, out: str) -> dict | None:
    """Two steps of a sharded FM (Adam rule: two row states), then a checkpoint of its shards
    (block and cyclic row maps) through ShardedCheckpointer; the full table and state on rank 0
    to compare what other world sizes read back."""
    from fnn_fast import distributed as fd
    from fnn_fast.checkpoint import ShardedCheckpointer
    from fnn_fast.train import Ranks

    result = {}
    for scheme in ("block", "cyclic"):
        rule = RowUpdate("adam", lr=0.01)
        model = fd.ShardedFM.from_fm(full_model("fm"), scheme=scheme).fuse_update(rule)
        for ids, values, labels in batches()[:2]:
            part = fd.batch_slice(len(labels), rank, WORLD)
            total = fd.global_batch_size(len(labels))
            F.binary_cross_entropy_with_logits(model(ids[part], values[part]), labels[part],
                                               reduction="sum").div(total).backward()  # fmt: skip
        ranks = Ranks.current()
        ranks.rows_trained = 5 + rank
        checkpoint = ShardedCheckpointer(Path(out) / scheme, {"data": {}}, ranks=ranks,
                                         num_features=NUM_FEATURES, scheme=scheme)  # fmt: skip
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"fused.{k}": v for k, v in model.fused_state().items()})
        checkpoint.save({"stage": "fm"}, tensors)
        result[scheme] = {
            "table": model.embedding.gather_table(),
            "state": model.embedding.gather_state(),
            "w0": model.w0.detach(),
        }
    return result if rank == 0 else None


def worker(rank: int, out: str, attempt: int) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on 127.0.0.1
    torch.set_num_threads(1)
    # The rendezvous through a file, not a TCP port picked in advance: no port to lose to
    # another process between picking and binding it.
    store = Path(out) / f"store-{attempt}"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip
    try:
        results = {}
        for case in CASES:
            try:
                results[case_name(case)] = run_case(case, rank)
            except Exception:  # noqa: BLE001  (reported by the test of that case)
                results[case_name(case)] = {"error": traceback.format_exc()}
                raise
        results["round_trip"] = run_round_trip(rank)
        results["checkpoint"] = run_checkpoint(rank, out)
        if rank == 0:
            torch.save(results, Path(out) / "results.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("dist")
    try:
        torch.multiprocessing.spawn(worker, args=(str(out), 0), nprocs=WORLD, join=True)
    except torch.multiprocessing.ProcessException as error:
        # Once more, for a failure of the machine (a connection refused under load); a failing
        # case fails again, and the fixture's error shows the rank's traceback.
        warnings.warn(f"2-rank run failed, retried once: {error}", stacklevel=1)
        torch.multiprocessing.spawn(worker, args=(str(out), 1), nprocs=WORLD, join=True)
    return {**torch.load(out / "results.pt"), "out": out}


@pytest.mark.parametrize("case", CASES, ids=case_name)
def test_two_ranks_equal_one_process(case, sharded_results):
    got = sharded_results[case_name(case)]
    assert "error" not in got, got.get("error")
    want = single_process(case)
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for name, value in want["state_dict"].items():
        torch.testing.assert_close(
            got["state_dict"][name], value, msg=lambda m, n=name: f"{n}: {m}"
        )
    torch.testing.assert_close(got["predictions"], want["predictions"])
    if want["optim"] is not None:
        for name in ("state1", "state2", "step"):
            torch.testing.assert_close(got["optim"][name], want["optim"][name])
    assert got["bytes_sent"] > 0


def test_gathered_state_loads_into_other_shards(sharded_results):
    got = sharded_results["round_trip"]
    torch.testing.assert_close(got["second"], got["first"])
    for name in ("state1", "state2", "step"):
        torch.testing.assert_close(got["second_state"][name], got["first_state"][name])
    fm, fnn = got["fm"], got["fnn"]
    torch.testing.assert_close(fm["table"], got["first"])
    torch.testing.assert_close(fnn["table"], fm["table"])
    torch.testing.assert_close(fnn["w0"], fm["w0"])
    assert got["fnn_config"]["num_fields"] == 5 and got["fnn_config"]["hidden"] == [8, 6]


@pytest.mark.parametrize("scheme", ["block", "cyclic"])
def test_a_checkpoint_of_two_ranks_reads_back_on_other_world_sizes(scheme, sharded_results):
    """What each rank of 1 to 4 (and 60: ranks without rows) reads of a 2-rank checkpoint: its
    rows of the table and of the row state under the new block row map; the pieces make the
    saved table and state whole."""
    from fnn_fast.checkpoint import ROW_KEYS, CheckpointError, ShardedCheckpointer
    from fnn_fast.distributed import RowSharding
    from fnn_fast.train import Ranks

    saved = sharded_results["checkpoint"][scheme]
    directory = sharded_results["out"] / scheme
    for world in (1, 2, 3, 4, 60):
        sharding = RowSharding(NUM_FEATURES, world)
        table = torch.full_like(saved["table"], float("nan"))
        state1, state2 = torch.full_like(table, float("nan")), torch.full_like(table, float("nan"))
        for rank in range(world):
            ranks = Ranks(rank, world)
            checkpoint = ShardedCheckpointer(directory, {"data": {}}, ranks=ranks,
                                             num_features=NUM_FEATURES)  # fmt: skip
            meta, tensors = checkpoint._read(checkpoint.directory)
            assert meta["ranks"]["world_size"] == 2 and meta["stage"] == "fm"
            assert set(ROW_KEYS) - set(tensors) == {"best.embedding.table", "fm.embedding.table"}
            mine = sharding.global_rows(rank)
            assert tensors["model.embedding.table"].shape == (len(mine), 1 + FACTORS)
            table[mine] = tensors["model.embedding.table"]
            state1[mine], state2[mine] = tensors["fused.state1"], tensors["fused.state2"]
            torch.testing.assert_close(tensors["model.w0"], saved["w0"])
            torch.testing.assert_close(tensors["fused.step"], saved["state"]["step"])
        torch.testing.assert_close(table, saved["table"], rtol=0, atol=0)
        torch.testing.assert_close(state1, saved["state"]["state1"], rtol=0, atol=0)
        torch.testing.assert_close(state2, saved["state"]["state2"], rtol=0, atol=0)
    # another table size is refused, naming both

    checkpoint = ShardedCheckpointer(directory, {}, ranks=Ranks(0, 3), num_features=51)
    with pytest.raises(CheckpointError, match="tables of 50 rows, this run's have 51"):
        checkpoint._read(checkpoint.directory)
    # a shard whose bytes changed is refused by the rank that reads it
    copy = sharded_results["out"] / f"corrupt-{scheme}"
    shutil.copytree(directory, copy)
    shard = copy / "checkpoint" / "shard-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    checkpoint = ShardedCheckpointer(copy, {}, ranks=Ranks(1, 2), num_features=NUM_FEATURES)
    with pytest.raises(CheckpointError, match="shard-00001-of-00002.safetensors does not match"):
        checkpoint._read(checkpoint.directory)


@pytest.mark.parametrize("chunk", [16, 48, 1 << 16])
def test_drawn_rows_are_the_whole_draw(chunk, monkeypatch):
    """A shard's rows drawn a chunk at a time equal those rows of FM(...) / FNN(...) drawn
    whole, and the generator ends where the whole draw leaves it (what makes N ranks start
    where one process starts, without a whole table on any rank)."""
    from fnn_fast import distributed as fd

    def fnn_table(rows, factors):  # what FNN draws first, before its layers
        table = FNN(rows, 2, factors, (3,), init_std=0.1).table.detach()
        torch.manual_seed(5)
        drawn = torch.randn((rows, 1 + factors), out=torch.zeros(rows, 1 + factors)).mul_(0.1)
        torch.testing.assert_close(table, drawn, rtol=0, atol=0)
        return drawn

    monkeypatch.setattr(fd, "DRAW_ROWS", chunk)
    for rows, factors in [(50, 4), (101, 10), (33, 16), (49, 16), (7, 3), (200, 0), (1, 4)]:
        for kind in ("fm", "fnn"):
            torch.manual_seed(5)
            if kind == "fm":
                whole, draw = FM(rows, factors, init_std=0.1).table, fd.fm_draw(factors, 0.1)
            else:
                whole, draw = fnn_table(rows, factors), fd.fnn_draw(factors, 0.1)
            whole, after = whole.detach(), torch.rand(4)
            for scheme, world in [("block", 3), ("cyclic", 4), ("block", 1)]:
                sharding = fd.RowSharding(rows, world, scheme)
                for rank in range(world):
                    mine = sharding.global_rows(rank)
                    torch.manual_seed(5)
                    got = fd.drawn_rows(rows, 1 + factors, mine, draw)
                    torch.testing.assert_close(got, whole[mine], rtol=0, atol=0)
                    torch.testing.assert_close(torch.rand(4), after, rtol=0, atol=0)


def test_row_sharding_maps_every_row_once():
    from fnn_fast.distributed import RowSharding

    for scheme in ("block", "cyclic"):
        for rows, world in [(50, 2), (7, 3), (2, 4), (0, 2), (10, 1)]:
            sharding = RowSharding(rows, world, scheme)
            owned = torch.cat([sharding.global_rows(r) for r in range(world)])
            assert sorted(owned.tolist()) == list(range(rows))
            ids = torch.arange(rows)
            owner = sharding.owner(ids)
            local = sharding.local(ids, owner)
            for r in range(world):
                mine = sharding.global_rows(r)
                assert torch.equal(ids[owner == r][local[owner == r]] if len(mine) else mine, mine)
                assert len(mine) == sharding.shard_rows(r)


def test_batch_slice_matches_tensor_split():
    from fnn_fast.distributed import batch_slice

    for total in range(0, 9):
        for world in (1, 2, 3):
            parts = torch.arange(total).tensor_split(world)
            for rank in range(world):
                assert (
                    torch.arange(total)[batch_slice(total, rank, world)].tolist()
                    == parts[rank].tolist()
                )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("with_values", [False, True])
def test_rows_math_matches_reference(with_values):
    """The rank-side forwards on fetched rows (native kernels, index_add_ backward) against
    the reference autograd: logits, the rows' and the values' gradients."""
    from fnn_fast.distributed import rows_fields, rows_fm
    from fnn_fast.ops import reference

    g = torch.Generator().manual_seed(5)
    rows = torch.randn(9, 1 + FACTORS, generator=g)
    inverse = torch.randint(9, (7, SLOTS), generator=g)
    inverse[:, 1] = inverse[:, 0]
    values = torch.rand(7, SLOTS, generator=g) + 0.5 if with_values else None
    slot_fields = torch.tensor(SLOT_FIELDS)
    w0 = torch.tensor(0.2)

    def grads(fn):
        r = rows.clone().requires_grad_()
        v = None if values is None else values.clone().requires_grad_()
        out = fn(r, v)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * weights).sum().backward()
        return out.detach(), r.grad, None if v is None else v.grad

    width = 5 * (1 + FACTORS)
    pairs = [
        (lambda r, v: rows_fm(r, w0, inverse, v),
         lambda r, v: reference.fm_forward(r, w0, inverse, v, sparse=False)),
        (lambda r, v: rows_fields(r, inverse, v, slot_fields, 5, 64)[:, :width],
         lambda r, v: reference.fnn_fields(r, inverse, v, slot_fields, 5, sparse=False)),
    ]  # fmt: skip
    for fast, slow in pairs:
        for got, want in zip(grads(fast), grads(slow), strict=True):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got, want)
