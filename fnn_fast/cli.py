"""The ``fnn-fast`` command: train | compare | evaluate | score | demo | bench | export."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

from fnn_fast import api
from fnn_fast import export as export_command
from fnn_fast.bench import command as bench_command
from fnn_fast.data import DataError, HashedEncoder, ParsedRows, Schema
from fnn_fast.data.bags import parse_multi_valued
from fnn_fast.data.encoder import VALUE_MIN_COUNT
from fnn_fast.metrics import finite_or_none
from fnn_fast.native_check import missing_native_reason, native_warning_shown
from fnn_fast.outputs import (
    check_creatable,
    check_directory,
    writing_directory,
)
from fnn_fast.saved import save_run
from fnn_fast.train import Split, TrainConfig, resolve_device, train_two_stage

FORMATS = ("libfm", "criteo", "csv", "parquet")
OVERWRITE_HELP = "replace an earlier output of fnn-fast's there (removes only the files it wrote)"


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one (not for flags, nor options without one)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _columns(text: str | None) -> list[str]:
    return [c for c in (text or "").split(",") if c]


def _schema_from_args(args) -> Schema:
    if args.format == "criteo":
        chosen = [f"--{o}" for o in ("label", "categorical", "numeric") if getattr(args, o, None)]
        if chosen:
            raise ValueError(
                f"{', '.join(chosen)}: Criteo's columns are fixed (label, I1..I13, C1..C26); "
                "use --format csv or parquet to choose columns"
            )
    return api.make_schema(
        args.format, label=args.label, categorical=_columns(args.categorical),
        numeric=_columns(args.numeric), numeric_mode=args.numeric_mode, id_column=args.id_column,
        delimiter=args.delimiter, featindex=args.featindex, **_bag_settings(args),
    )  # fmt: skip


def _reading(args) -> api.InputOptions:
    """How the input options read and encode the inputs."""
    return api.InputOptions(
        cache_dir=getattr(args, "cache_dir", None), skip_bad_lines=args.skip_bad_lines,
        progress=not args.no_progress, min_count=getattr(args, "min_count", 1),
        value_min_count=getattr(args, "value_min_count", VALUE_MIN_COUNT),
        hash_buckets=getattr(args, "hash_buckets", None),
        hash_space=getattr(args, "hash_space", "field"),
    )  # fmt: skip


def _bag_settings(args) -> dict:
    """The schema's multi-valued columns (--multi-valued) and their default pooling."""
    return {
        "multi_valued": parse_multi_valued(getattr(args, "multi_valued", None)),
        "bag_pooling": getattr(args, "bag_pooling", None) or "sum",
    }


def _read(path, schema: Schema, args) -> ParsedRows:
    return api.read_input(path, "data", schema, _reading(args))


def _config_from_args(args) -> TrainConfig:
    return TrainConfig(
        factors=args.factors,
        batch_size=args.batch_size,
        seed=args.seed,
        patience=args.patience,
        fm_early_stopping=args.fm_early_stopping,
        fnn_early_stopping=args.fnn_early_stopping,
        fm_epochs=args.fm_epochs,
        fm_optimizer=args.fm_optimizer,
        fm_lr=args.fm_lr,
        fm_weight_decay=args.fm_weight_decay,
        fnn_epochs=args.fnn_epochs,
        fnn_init=args.fnn_init,
        fnn_layer_init=args.fnn_layer_init,
        hidden=[int(h) for h in args.hidden.split(",") if h],
        activation=args.activation,
        dropout=args.dropout,
        fnn_optimizer=args.fnn_optimizer,
        fnn_lr=args.fnn_lr,
        fnn_layer_optimizer=args.fnn_layer_optimizer,
        fnn_layer_lrs=[float(r) for r in args.fnn_layer_lrs.split(",")]
        if args.fnn_layer_lrs
        else None,
        pretrain=args.pretrain,
        rbm_epochs=args.rbm_epochs,
        rbm_lr=args.rbm_lr,
        rbm_k=args.rbm_k,
        fnn_layer_weight_decay=args.fnn_layer_weight_decay,
        fnn_embedding_lr=args.fnn_embedding_lr,
        fnn_weight_decay=args.fnn_weight_decay,
        fm_initial_accumulator=args.fm_initial_accumulator,
        fnn_initial_accumulator=args.fnn_initial_accumulator,
        refit=getattr(args, "refit", False),
    )


def _config_file_defaults(path: str) -> dict:
    """A training config file (``best.json`` from ``tune``, or a TrainConfig as JSON) as
    parser defaults: flags given on the command line still win."""
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--config {path}: cannot read a JSON training config ({error})") from None
    config = loaded.get("config", loaded) if isinstance(loaded, dict) else None
    fields = set(TrainConfig.__dataclass_fields__)
    if not isinstance(config, dict) or not set(config) <= fields:
        unknown = sorted(set(config) - fields) if isinstance(config, dict) else []
        raise ValueError(
            f"--config {path}: not a training config"
            + (f" (unknown settings: {', '.join(unknown)})" if unknown else "")
        )
    defaults = dict(config)
    if "hidden" in defaults:
        defaults["hidden"] = ",".join(str(h) for h in defaults["hidden"])
    if defaults.get("fnn_layer_lrs") is not None:
        defaults["fnn_layer_lrs"] = ",".join(str(r) for r in defaults["fnn_layer_lrs"])
    return defaults


def _config_option(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


_print_metrics = api.print_metrics


def _load_splits(args):
    """(train, valid, test or None, encoder, schema) in memory, from the input options (see
    fnn_fast.api.load_splits)."""
    schema = _schema_from_args(args)
    splits = api.load_splits(
        args.train, args.valid, args.test, schema, _reading(args), args.valid_fraction, args.seed
    )
    return (*splits, schema)


def _hash_buckets(text: str) -> int:
    buckets = int(text)
    if buckets < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of buckets, not {text}")
    return buckets


def _check_inputs(args, *options: str) -> None:
    """Every input file named by ``options`` exists and is readable, and --cache-dir can be
    written: checked before any file is parsed or any model trained."""
    for option in options:
        path = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if path is None:
            continue
        if not Path(path).exists():
            raise FileNotFoundError(f"{option} {path}: no such file")
        if not os.access(path, os.R_OK):
            raise PermissionError(f"{option} {path}: not readable")
    cache_dir = getattr(args, "cache_dir", None)
    if cache_dir is not None:
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise FileExistsError(f"--cache-dir {cache_dir} is a file, not a directory")
        if not Path(cache_dir).exists():
            check_creatable(cache_dir, "cache")


def _torchrun_world() -> int:
    """The world size torchrun (or another launcher) set in the environment; 1 without one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def cmd_train(args) -> int:
    if _torchrun_world() > 1:
        return _cmd_train_ranks(args)
    return _cmd_train(args)


def _cmd_train_ranks(args) -> int:
    """``torchrun ... -m fnn_fast train``: this rank's part of the job (see _train_on_ranks)."""
    import datetime

    import torch
    import torch.distributed as dist

    from fnn_fast.checkpoint import parse_every
    from fnn_fast.train import Ranks

    if args.stream:
        raise ValueError("--stream is not supported under torchrun yet: train without it")
    if getattr(args, "refit", False):
        raise ValueError("--refit trains in one process: it cannot be used under torchrun")
    every = parse_every(args.checkpoint_every) if args.checkpoint_every else (None, None)
    device = resolve_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=args.dist_timeout)
    backend = "nccl" if device.type == "cuda" else "gloo"
    _init_ranks(backend, timeout)
    ranks = Ranks.current()
    try:
        return _train_on_ranks(args, ranks, device, every)
    except RuntimeError as error:  # torch.distributed's errors (DistError among them)
        print(
            f"fnn-fast: error: rank {ranks.rank} of {ranks.world_size}: a collective failed or "
            f"waited more than --dist-timeout {args.dist_timeout:g} s: another rank most likely "
            f"died or failed (see its error above); stopping. ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})",
            file=sys.stderr,
        )
        os._exit(3)  # no clean-up: it would wait on the dead rank again
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _init_ranks(backend: str, timeout) -> None:
    """init_process_group from torchrun's environment. Workers that torchrun restarted
    (--max-restarts) meet under a prefix of their own in its store: torchrun (2.5 on) shares its
    rendezvous store with the workers and keeps it over restarts, and the failed attempt's keys
    (its peers' addresses) would be read again, a gloo connect to a dead port."""
    import torch.distributed as dist

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt in ("", "0") or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend, timeout=timeout)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timeout)  # fmt: skip
    dist.init_process_group(
        backend, store=dist.PrefixStore(f"fnn_fast/attempt_{attempt}", store),
        rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout,
    )  # fmt: skip


def _ranks_resume(args, ranks) -> bool:
    """Whether this job resumes: with --resume, or as workers that torchrun restarted
    (--max-restarts) in a run of --checkpoint-every that has not finished. Rank 0's view of the
    output directory decides for all."""
    from fnn_fast.outputs import IN_PROGRESS, read_manifest

    restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0")
    resume = bool(args.resume)
    if not resume and restarted and args.checkpoint_every:
        manifest = read_manifest(args.out) if Path(args.out).is_dir() else None
        resume = bool(manifest and manifest.get("kind") == "model" and manifest.get(IN_PROGRESS))
    return ranks.all_gather(resume)[0]


SHARE_FORMATS = ("libfm", "criteo", "csv")  # text read by byte ranges: each rank its share


def _rank_splits(args, ranks):
    """As _load_splits for a torchrun job: (train, valid, test, encoder, schema). A text
    --train (libFM, Criteo, CSV; not through --cache-dir) is read in shares: rank r parses the
    lines that start in the r-th of N equal byte ranges of the file, so the ranks' shares in
    rank order are the file. The split off for validation is drawn over the whole file as one
    process draws it. The vocabulary is fitted on every rank's training keys: each rank counts
    its own, rank 0 merges the counts and sends the encoder to all (one process's encoder).
    train is a RankSplit (each rank its rows, in global order); the validation split is whole
    on every rank (read by each, or gathered from their shares); the test split is read by rank
    0 only (it is evaluated there, on the gathered model). Other inputs, and --pretrain rbm
    (which pre-trains on every training row): every rank reads all."""
    import torch

    from fnn_fast.distributed import RankSplit

    schema = _schema_from_args(args)
    # RBM pre-training reads the whole training split (every rank, as one process)
    whole = args.pretrain == "rbm" or args.cache_dir is not None
    if schema.format not in SHARE_FORMATS or whole:
        train, valid, test, encoder, schema = _load_splits(args)
        return train, valid, test if ranks.main else None, encoder, schema
    rows = _read_share(args.train, schema, args, ranks)
    layouts = ranks.all_gather((len(rows), rows.field_names, rows.slot_fields.tolist()))
    layouts = [layout[1:] for layout in layouts if layout[0]]  # an empty share has none
    if layouts and not len(rows):
        slots = len(layouts[0][1])
        rows = ParsedRows(labels=np.zeros(0, np.float32), keys=np.zeros((0, slots), np.int64),
                          values=np.zeros((0, slots), np.float32),
                          slot_fields=np.asarray(layouts[0][1], np.int64),
                          field_names=list(layouts[0][0]))  # fmt: skip
    if any(layout != layouts[0] for layout in layouts):  # say, a multi-valued libFM field
        if ranks.main:
            print("fnn-fast: the ranks' shares of --train have different slot layouts: every "
                  "rank reads the whole file", file=sys.stderr)  # fmt: skip
        train, valid, test, encoder, schema = _load_splits(args)
        return train, valid, test if ranks.main else None, encoder, schema
    counts = ranks.all_gather(len(rows))
    total, low = sum(counts), sum(counts[: ranks.rank])
    if total == 0:
        raise DataError(args.train, None, "no rows to train on")
    train_index, valid_index = np.arange(len(rows)), None
    if not args.valid:  # the one process's split of the whole file, each rank its rows of it
        if not 0 < args.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be between 0 and 1, not {args.valid_fraction}")
        order = np.random.default_rng(args.seed).permutation(total)
        cut = int(round(total * (1 - args.valid_fraction)))
        mine = [np.sort(order[:cut]), np.sort(order[cut:])]
        del order
        train_index, valid_index = (
            rows_[(rows_ >= low) & (rows_ < low + len(rows))] - low for rows_ in mine
        )
    keys = rows.keys if valid_index is None else rows.keys[train_index]
    value_fields = _schema_from_args(args).value_fields(rows.field_names)
    encoder = _fit_encoder_ranks(
        keys, rows.slot_fields, rows.field_names, args, ranks, value_fields
    )
    del keys
    if ranks.main:
        print(f"{sum(ranks.all_gather(len(train_index))):,} training rows (rank 0 of "
              f"{ranks.world_size} holds {len(train_index):,}), {encoder.num_features:,} "
              f"features in {len(rows.field_names)} fields", file=sys.stderr)  # fmt: skip
    else:
        ranks.all_gather(len(train_index))
    if isinstance(encoder, HashedEncoder) and ranks.main:
        print(encoder.describe_collisions(), file=sys.stderr)
    local = Split.encode(rows, encoder, train_index if valid_index is not None else None)
    labels = ranks.all_gather(local.labels)
    train = RankSplit(local, [len(t) for t in labels], torch.cat(labels), ranks.group)
    if args.valid:
        valid = Split.encode(_read(args.valid, schema, args), encoder)
    else:  # the ranks' validation rows, gathered in rank (= file) order
        part = Split.encode(rows, encoder, valid_index)
        values = part.values if part.values is not None else torch.ones(part.ids.shape)
        pieces = ranks.all_gather((part.ids, values, part.labels))
        values = torch.cat([v for _, v, _ in pieces])
        valid = Split(ids=torch.cat([i for i, _, _ in pieces]),
                      values=None if bool((values == 1).all()) else values,
                      labels=torch.cat([y for _, _, y in pieces]))  # fmt: skip
    del rows
    test = None
    if args.test and ranks.main:
        test = Split.encode(_read(args.test, schema, args), encoder)
    return train, valid, test, encoder, schema


def _read_share(path, schema: Schema, args, ranks) -> ParsedRows:
    """This rank's share of a text file: the lines that start in its byte range."""
    from fnn_fast.data.errors import BadLines
    from fnn_fast.data.parts import Part, criteo_columns, csv_header, read_text_part, text_part
    from fnn_fast.data.readers import read_rows

    size = os.path.getsize(path)
    start = size * ranks.rank // ranks.world_size
    stop = size * (ranks.rank + 1) // ranks.world_size
    part = Part(0, ranks.rank, str(path), "text", start, stop, size=stop - start)
    data, _ = read_text_part(part)
    header = None
    if schema.format == "criteo":
        header = criteo_columns(path)
    elif schema.format == "csv" and start > 0:
        header = csv_header(path, schema)
    try:
        rows = read_rows(path, schema, bad=BadLines(path, args.skip_bad_lines), progress=False,
                         part=text_part(data, start == 0, header))  # fmt: skip
    except DataError as error:  # its line counted from the share's first: the file's line
        if error.line is None or start == 0:
            raise
        raise DataError(error.path, error.line + _lines_before(path, start), error.reason) from None
    if rows.bad_lines:
        print(f"{path} (rank {ranks.rank}'s share): skipped {rows.bad_lines} bad line(s)",
              file=sys.stderr)  # fmt: skip
    return rows


def _lines_before(path, offset: int) -> int:
    """The lines of ``path`` before the first one that starts at or after ``offset``."""
    with open(path, "rb") as file:
        head = file.read(offset)
        if head.endswith(b"\n"):
            return head.count(b"\n")
        return head.count(b"\n") + (1 if file.readline() else 0)


def _fit_encoder_ranks(keys, slot_fields, field_names, args, ranks, value_fields=()):
    """The encoder one process fits on the training keys of every rank: each rank counts its
    keys, rank 0 merges the counts (vocabularies; with --hash-buckets the distinct keys, for
    the collision report) and sends the encoder to all."""
    import torch.distributed as dist

    from fnn_fast.data import FeatureEncoder
    from fnn_fast.data.encoder import _merge, count_keys, vocabularies

    hashed = getattr(args, "hash_buckets", None) is not None
    if hashed and args.min_count != 1:
        raise ValueError("--min-count needs vocabularies: it cannot be used with --hash-buckets")
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    counted = count_keys(keys, slot_fields, len(field_names), progress=False)
    mine = [_merge(parts) if parts else empty for parts in counted]
    everyone = [None] * ranks.world_size if ranks.main else None
    root = dist.get_global_rank(ranks.group, 0) if ranks.group is not None else 0
    dist.gather_object(mine, everyone, dst=root, group=ranks.group)
    encoder = None
    if ranks.main:
        per_field = [[counts[f] for counts in everyone] for f in range(len(field_names))]
        if hashed:
            encoder = HashedEncoder(
                field_names, slot_fields, args.hash_buckets, args.hash_space == "shared",
                value_fields=value_fields,
            )  # fmt: skip
            encoder.collisions = encoder.collision_report([
                np.unique(encoder.as_hashed(np.concatenate([k for k, _ in parts]), f))
                for f, parts in enumerate(per_field)
            ])  # fmt: skip
        else:
            vocabs = vocabularies(per_field, args.min_count, value_fields, args.value_min_count)
            encoder = FeatureEncoder(field_names, slot_fields, vocabs, args.min_count,
                                     value_fields, args.value_min_count)  # fmt: skip
        del everyone, per_field
    box = [encoder]
    dist.broadcast_object_list(box, src=root, group=ranks.group)
    return box[0]


def _ranks_fingerprint(args, config, schema) -> dict:
    """What a resumed torchrun job must share with its checkpoint (as fnn_fast.api.fit's)."""
    inputs = {"train": args.train, "valid": args.valid, "test": args.test}
    valid_fraction = None if args.valid else args.valid_fraction
    return api.fingerprint(inputs, config, schema, _reading(args), valid_fraction, None)


def _train_on_ranks(args, ranks, device, every=(None, None)) -> int:
    """Every rank reads and encodes the whole input (the same encoder everywhere, checked),
    then trains on its slice of every global batch with the tables sharded over the ranks;
    with --checkpoint-every each rank checkpoints its rows (--resume: on any number of ranks).
    Rank 0 writes the ordinary model directory, the other ranks write nothing."""
    import torch.distributed as dist

    from fnn_fast.checkpoint import ShardedCheckpointer
    from fnn_fast.outputs import check_resumable, finish_run, start_run

    config = _config_from_args(args)
    _check_inputs(args, "--train", "--valid", "--test", "--featindex")
    resume = _ranks_resume(args, ranks)
    if resume:
        check_resumable(args.out, "model")
    else:
        check_directory(args.out, args.overwrite, "model")
    args.input_format = args.format
    train, valid, test, encoder, schema = _rank_splits(args, ranks)
    mine = (
        encoder.num_features, len(train), None if valid is None else len(valid),
        None if valid is None else int(valid.ids.sum()), train.click_rate(),
    )  # fmt: skip
    if len(set(ranks.all_gather(mine))) != 1:
        raise ValueError(
            "the ranks read different data or encoded it differently (features, training "
            f"rows, validation rows and id sum, click rate per rank: {ranks.all_gather(mine)}): "
            "give every rank the same files"
        )
    checkpoint = None
    if resume or args.checkpoint_every:
        checkpoint = ShardedCheckpointer(
            args.out, _ranks_fingerprint(args, config, schema), *every, ranks=ranks,
            num_features=encoder.num_features,
        )  # fmt: skip
    if resume:
        loaded = checkpoint.load()
        if ranks.main and loaded is None:
            print("fnn-fast: no checkpoint was written yet: training from the start",
                  file=sys.stderr)  # fmt: skip
        elif ranks.main:
            print(f"fnn-fast: resuming from the checkpoint of {loaded[0]['ranks']['world_size']} "
                  f"ranks on {ranks.world_size} ranks", file=sys.stderr)  # fmt: skip
    elif checkpoint is not None:
        if ranks.main:
            start_run(args.out, args.overwrite, "model")
        ranks.all_gather(None)  # claimed before any rank writes into it
    result = train_two_stage(
        train, valid, test, encoder, config, progress=not args.no_progress,
        checkpoint=checkpoint, device=device, ranks=ranks,
    )  # fmt: skip
    rows_per_rank = ranks.all_gather(ranks.rows_trained)
    if not ranks.main:
        dist.barrier()  # the ranks leave together, after rank 0 has written the model
        return 0
    report = dict(
        extra={
            **_encoder_metrics(encoder),
            "device": str(device),
            "world_size": ranks.world_size,
            "rows_per_rank": rows_per_rank,
        },  # fmt: skip
        report_split=test if test is not None else valid,
        split_name="test" if test is not None else "validation",
        data=api.data_description(
            {n: getattr(args, n) for n in ("train", "valid", "test")}, schema
        ),
    )
    if checkpoint is None:
        with writing_directory(args.out, args.overwrite, "model") as out:
            save_run(out, result, encoder, schema, config, **report)
    else:
        save_run(args.out, result, encoder, schema, config, **report)
        finish_run(args.out, "model", checkpoint.remove)
    dist.barrier()
    _print_metrics(result.metrics)
    print(f"model written to {args.out} by rank 0 of {ranks.world_size} "
          f"(report: {Path(args.out) / 'report.html'})")  # fmt: skip
    return 0


def _cmd_train(args) -> int:
    """One process: the options, then fnn_fast.api.fit (which writes --out)."""
    config = _config_from_args(args)
    resolve_device(args.device)  # before any file is read: no GPU is a quick error
    _check_inputs(args, "--train", "--valid", "--test", "--featindex")
    args.input_format = args.format
    reading = _reading(args)
    model = api.fit(
        args.train, args.valid, args.test, schema=_schema_from_args(args), config=config,
        valid_fraction=args.valid_fraction, min_count=reading.min_count,
        value_min_count=reading.value_min_count, hash_buckets=reading.hash_buckets,
        hash_space=reading.hash_space, out=args.out,
        overwrite=args.overwrite, device=args.device, progress=reading.progress,
        checkpoint_every=args.checkpoint_every, resume=args.resume, stream=args.stream,
        stream_chunk_rows=args.stream_chunk_rows, shuffle_buffer=args.shuffle_buffer,
        cache_dir=reading.cache_dir, skip_bad_lines=reading.skip_bad_lines,
    )  # fmt: skip
    _print_metrics(model.metrics)
    print(f"model written to {args.out} (report: {Path(args.out) / 'report.html'})")
    return 0


_encoder_metrics = api.encoder_metrics


def _refuse_refit(config: TrainConfig, command: str) -> None:
    """A config file may carry refit: compare and tune judge early-stopped models."""
    if config.refit:
        raise ValueError(f"refit (from --config) is for `fnn-fast train`: {command} judges the "
                         "early-stopped models; set \"refit\": false in the file")  # fmt: skip


def cmd_tune(args) -> int:
    from fnn_fast.tune import run_tune

    config = _config_from_args(args)
    _refuse_refit(config, "tune")
    _check_inputs(args, "--train", "--valid", "--featindex")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory")
    args.test, args.input_format = None, args.format
    train, valid, _, encoder, schema = _load_splits(args)
    settings = {
        "train": str(Path(args.train).resolve()),
        "valid": str(Path(args.valid).resolve()) if args.valid else None,
        "valid_fraction": args.valid_fraction,
        "schema": schema.to_dict(),
        "min_count": args.min_count,
        "value_min_count": args.value_min_count,
        **({"hashing": encoder.spec()} if isinstance(encoder, HashedEncoder) else {}),
    }
    best = run_tune(
        train, valid, encoder, config, out, trials=args.trials, minutes=args.minutes,
        seed=args.seed, resume=args.resume, settings=settings, progress=not args.no_progress,
    )  # fmt: skip
    tuned = {k: best[k] for k in best if best[k] != getattr(config, k)}
    print(f"best settings ({out / 'best.json'}): {json.dumps(tuned)}")
    print(f"train with them: fnn-fast train --config {out / 'best.json'} ...")
    return 0


def cmd_compare(args) -> int:
    from fnn_fast import peers
    from fnn_fast.compare import format_table, run_compare, summarize, write_compare

    config = _config_from_args(args)
    _refuse_refit(config, "compare")
    wanted = peers.parse_peers(args.peers)
    if not args.synthetic:
        if not (args.train and args.test and args.format):
            raise ValueError("compare needs --train, --test and --format (or --synthetic)")
        _check_inputs(args, "--train", "--valid", "--test", "--featindex")
    check_directory(args.out, args.overwrite, "comparison")
    if args.synthetic:
        train, valid, test, encoder = _synthetic_splits(args.synthetic_rows, args.seed)
    else:
        args.input_format = args.format
        train, valid, test, encoder, _ = _load_splits(args)
    seeds = range(args.seed, args.seed + args.seeds)
    runnable, notes = peers.resolve(wanted, (train, valid, test))
    for note in notes:
        print(note, file=sys.stderr)
    results = run_compare(train, valid, test, encoder, config, seeds, not args.no_progress,
                          peers=runnable, notes=notes)  # fmt: skip
    summary = summarize(results)
    table = format_table(summary, args.seeds, notes)
    settings = {peers.PEERS[name].label: peers.PEERS[name].settings for name in runnable}
    with writing_directory(args.out, args.overwrite, "comparison") as out:
        write_compare(out, results, summary, table, "fnn-fast " + " ".join(sys.argv[1:]),
                      notes, settings)  # fmt: skip
    print(table)
    return 0


def _synthetic_splits(rows: int, seed: int):
    """A learnable non-linear truth (8 fields of 50 values, FM plus a tanh network)."""
    from fnn_fast.data.synthetic import plant_model
    from fnn_fast.demo import planted_splits

    truth = plant_model((50,) * 8, num_factors=4, nonlinear=2.0, seed=seed)
    encoder, splits, parts = planted_splits(truth, (rows, rows // 4, rows // 4), seed + 1)
    print(f"synthetic: Bayes-optimal test AUC {parts[2].bayes_auc:.4f}", file=sys.stderr)
    return (*splits, encoder)


def _load(args):
    """The model directory --model names, and its input schema (a featindex path in it
    resolved against the directory)."""
    model = api.load(args.model)
    if model.schema is None:
        raise SystemExit(f"{args.model}: the model has no input schema; it cannot read files")
    return model, model.schema


def cmd_evaluate(args) -> int:
    from fnn_fast.train import evaluate

    _check_inputs(args, "--data")
    saved, schema = _load(args)
    args.input_format, args.needs_labels = schema.format, True
    rows = _read(args.data, schema, args)
    split = Split.encode(rows, saved.encoder)
    result = {
        which: evaluate(saved.model(which), split)
        for which in ("fm", "fnn")
        if which == "fm" or saved.fnn is not None
    }
    result["rows"] = len(split)
    if any(np.isnan(m["auc"]) for m in result.values() if isinstance(m, dict)):
        print(
            f"fnn-fast: note: {args.data} holds one class only: AUC is undefined (null)",
            file=sys.stderr,
        )
    print(json.dumps(finite_or_none(result), indent=2, allow_nan=False))
    return 0


def cmd_score(args) -> int:
    from fnn_fast.score import Scorer, score_files

    saved, schema = _load(args)
    args.input_format = schema.format
    if args.id_column is not None:
        if schema.format == "libfm":
            raise SystemExit("fnn-fast: error: libFM lines have no id column to pass through")
        schema = Schema.from_dict({**schema.to_dict(), "id_column": args.id_column})
    scorer = Scorer(saved, args.which, args.batch_size, args.device, args.bf16)
    summary = score_files(
        scorer,
        args.input,
        args.output,
        schema=schema,
        workers=args.workers,
        skip_bad_lines=args.skip_bad_lines,
        resume=args.resume,
        overwrite=args.overwrite,
        part_bytes=int(args.part_mb * (1 << 20)),
        progress=not args.no_progress,
    )
    print(f"scored: {summary.describe()}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from fnn_fast.demo import run_demo

    with writing_directory(args.out, args.overwrite, "demo output") as out:
        run_demo(out, rows=args.rows, seed=args.seed, progress=not args.no_progress)
    return 0


def _add_input_options(
    p: argparse.ArgumentParser, with_schema: bool = True, format_required: bool = True
) -> None:
    if with_schema:
        p.add_argument(
            "--format", choices=FORMATS, required=format_required, help="input file format"
        )
        p.add_argument("--featindex", help="libfm: feature dictionary 'field:value<TAB>idx'")
        p.add_argument("--label", help="csv/parquet: label column (default 'label')")
        p.add_argument("--categorical", help="csv/parquet: comma-separated categorical columns")
        p.add_argument("--numeric", help="csv/parquet: comma-separated numeric columns")
        p.add_argument(
            "--numeric-mode",
            choices=("bucketize", "value"),
            default="bucketize",
            help="numeric columns: log-scaled buckets (README), or one value-weighted feature",
        )
        p.add_argument("--id-column", help="csv/parquet: pass-through id column for scores")
        p.add_argument("--delimiter", help="csv: column delimiter (default ',')")
        p.add_argument(
            "--multi-valued",
            action="append",
            metavar="COL:SEP[:OPTION...]",
            help="csv/parquet: categorical columns holding several values (a bag) split by SEP "
            "(a character, or comma, pipe, semicolon, space, tab, colon; none for Parquet "
            "lists); OPTIONs: sum or mean, the most values a bag may hold (default: the "
            "training file's busiest row), weighted (items TOKEN:WEIGHT). Comma-separated or "
            "repeated, e.g. tags:pipe:mean,cats:;:4",
        )
        p.add_argument(
            "--bag-pooling",
            choices=("sum", "mean"),
            default="sum",
            help="how a bag's values pool where its column does not say (Parquet list columns "
            "are bags without being declared)",
        )
        p.add_argument("--cache-dir", help="keep parsed rows here (memory-mapped) for later runs")
    p.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip malformed lines (and report how many) instead of stopping; score: keep "
        "their place with an empty prediction and list them in a rejects file",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _setting(p, setting: str, defaults: TrainConfig, help: str) -> None:
    """--setting-name for a TrainConfig setting: its default, and its words (api.CHOICES) or
    its default's type."""
    default = getattr(defaults, setting)
    kind = {"choices": api.CHOICES[setting]} if setting in api.CHOICES else {"type": type(default)}
    p.add_argument("--" + setting.replace("_", "-"), default=default, help=help, **kind)


def _add_row_update_options(p, stage: str, rows: str, defaults: TrainConfig) -> None:
    """--{stage}-optimizer, -weight-decay and -initial-accumulator: the sparse rule that updates
    a stage's table rows (``rows``: whose)."""
    _setting(p, f"{stage}_optimizer", defaults, f"sparse update rule of {rows} rows")
    _setting(p, f"{stage}_weight_decay", defaults, f"L2 on {rows} rows present in a batch")
    _setting(
        p, f"{stage}_initial_accumulator", defaults,
        "Adagrad rules: the starting sum of squared gradients (damps rare rows' first steps)",
    )  # fmt: skip


# The training options, in --help's order: a TrainConfig setting each (an optimizer's entry
# brings its stage's sparse row rule, whose help names the rows).
_EARLY_STOPPING_HELP = (
    "the validation metric that picks the {}'s best epoch (auto: AUC where the validation split "
    "has 200 rows of each class, else logloss)"
)
_TRAINING_SETTINGS = (
    ("seed", "initialization, batch order, split"),
    ("factors", "K"),
    ("batch_size", "rows per step"),
    ("patience", "early stopping: epochs without a better validation metric"),
    ("fm_early_stopping", _EARLY_STOPPING_HELP.format("FM")),
    ("fnn_early_stopping", _EARLY_STOPPING_HELP.format("FNN")),
    ("fm_epochs", "stage 1, at most"),
    ("fm_lr", "FM learning rate"),
    ("fm_optimizer", "the FM's"),
    ("fnn_epochs", "stage 2, at most"),
    ("fnn_init", "the FNN's embedding: from the FM, or random (the baseline)"),
    ("fnn_layer_init", "the tanh layers' start on an FM embedding: fm (the network computes "
                       "the FM's function before its first step) or glorot (random)"),
    ("hidden", "hidden layer sizes, comma-separated"),
    ("activation", "hidden layers"),
    ("dropout", "hidden layers"),
    ("fnn_lr", "hidden/output layers"),
    ("fnn_embedding_lr", "the embedding's rate (its rule: --fnn-optimizer)"),
    ("fnn_optimizer", "the FNN's embedding"),
    ("fnn_layer_optimizer", "hidden/output layers"),
    ("fnn_layer_weight_decay", "L2 on hidden/output layers"),
    ("fnn_layer_lrs", "layer-wise rates: one per hidden layer then the output layer, "
                      "comma-separated (default: --fnn-lr for all)"),
    ("pretrain", "pre-train the tanh layers as RBMs (CD-k) on z"),
    ("rbm_epochs", "per layer"),
    ("rbm_lr", "RBM learning rate"),
    ("rbm_k", "Gibbs steps of CD-k"),
)  # fmt: skip


def _add_training_options(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    p.add_argument(
        "--min-count",
        type=int,
        default=1,
        help="features seen fewer times in training share their field's OOV row",
    )
    p.add_argument(
        "--value-min-count",
        type=int,
        default=VALUE_MIN_COUNT,
        help="a number seen at least this many times in training gets a feature of its own, "
        "a rarer one its bucket's (numeric rule 3, README)",
    )
    p.add_argument(
        "--hash-buckets",
        type=_hash_buckets,
        metavar="N",
        help="hash each key into N buckets instead of fitting vocabularies: no vocabulary pass "
        "or file, any number of keys; prints the share of training keys that collide",
    )
    p.add_argument(
        "--hash-space",
        choices=("field", "shared"),
        default="field",
        help="--hash-buckets: N buckets per field, or one space of N for all fields (the field "
        "mixed into the hash)",
    )
    for setting, help in _TRAINING_SETTINGS:
        if setting == "hidden":
            p.add_argument("--hidden", default=",".join(map(str, defaults.hidden)), help=help)
        elif setting == "fnn_layer_lrs":
            p.add_argument("--fnn-layer-lrs", help=help)
        elif setting.endswith("_optimizer") and setting != "fnn_layer_optimizer":
            _add_row_update_options(p, setting.removesuffix("_optimizer"), help, defaults)
        else:
            _setting(p, setting, defaults, help)
    p.add_argument(
        "--config",
        help="training settings from a JSON file (best.json of `fnn-fast tune`); flags given "
        "here override it",
    )


def _add_stream_options(p: argparse.ArgumentParser) -> None:
    from fnn_fast.stream import CHUNK_ROWS, WINDOW_CHUNKS

    p.add_argument(
        "--stream",
        action="store_true",
        help="out of core: stream every split from its binary cache entry (--cache-dir, or "
        "cache entry directories as inputs; needs --valid), memory flat in the number of rows",
    )
    p.add_argument(
        "--shuffle-buffer",
        type=int,
        default=CHUNK_ROWS * WINDOW_CHUNKS,
        help="--stream: rows shuffled together (chunks in a new random order each epoch, "
        "their rows permuted in windows of this many rows)",
    )
    p.add_argument(
        "--stream-chunk-rows",
        type=int,
        default=CHUNK_ROWS,
        help="--stream: consecutive rows read (and reordered) as one chunk",
    )
    p.add_argument(
        "--checkpoint-every",
        help="write a checkpoint (OUT/checkpoint/) every N steps ('500') or minutes ('10m')",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from its checkpoint (the same command plus --resume)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fnn-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(sub.add_parser, formatter_class=_DefaultsHelpFormatter)
    defaults = TrainConfig()

    p = command("train", help="train FM then FNN on a file and save the model")
    p.add_argument("--train", required=True, help="training file")
    p.add_argument("--valid", help="validation file (default: a random part of --train)")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.2,
        help="share of --train held out for early stopping when --valid is absent",
    )
    p.add_argument("--test", help="test file: evaluated at the end, never used for choices")
    p.add_argument("--out", required=True, help="output directory for the model and metrics")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument(
        "--device",
        default="cpu",
        help="train both stages on cpu, cuda, cuda:N or auto (cuda when there is a GPU); on a "
        "GPU the Triton or CUDA kernels run and batches are copied from pinned memory ahead",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="under torchrun: seconds a rank waits for the others in one exchange before the "
        "run stops with an error (a rank that died or failed)",
    )
    _add_stream_options(p)
    _add_input_options(p)
    _add_training_options(p, defaults)
    p.add_argument(
        "--refit",
        action="store_true",
        default=defaults.refit,
        help="after early stopping, train both stages again on the training and validation "
        "rows together for the epochs it chose (rows in memory, one process; about twice the "
        "time; README)",
    )
    p.set_defaults(func=cmd_train)

    p = command(
        "compare",
        help="ablation over seeds: LR, FM, FNN from random / FM / FM+RBM / one rate, and the "
        "installed peers (pytorch-fm, DeepCTR-Torch)",
    )
    p.add_argument("--train", help="training file")
    p.add_argument("--valid", help="validation file (default: a random part of --train)")
    p.add_argument(
        "--valid-fraction", type=float, default=0.2, help="as for train, without --valid"
    )
    p.add_argument("--test", help="test file: the compared metrics are measured on it")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="instead of files: a synthetic set with a non-linear truth",
    )
    p.add_argument(
        "--synthetic-rows", type=int, default=100_000, help="training rows of --synthetic"
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds --seed .. --seed + N - 1")
    p.add_argument(
        "--peers",
        default="auto",
        help="other libraries' models as extra rows, each trained with its own settings and "
        "early stopping on the same validation rows: auto (every one installed; pip install "
        "'fnn-fast[peers]'), none, or a list of torchfm-fm, torchfm-fnn, deepctr-deepfm, "
        "deepctr-pnn",
    )
    p.add_argument("--out", default="fnn-fast-compare", help="writes compare.json, compare.md")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_input_options(p, format_required=False)
    _add_training_options(p, defaults)
    p.set_defaults(func=cmd_compare)

    p = command(
        "tune",
        help="random search over each stage's rates, L2 and dropout, judged on validation",
    )
    p.add_argument("--train", required=True, help="training file")
    p.add_argument("--valid", help="validation file (default: a random part of --train)")
    p.add_argument(
        "--valid-fraction", type=float, default=0.2, help="as for train, without --valid"
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--trials", type=int, help="trials in all, half per stage")
    budget.add_argument("--minutes", type=float, help="wall-clock budget, half per stage")
    p.add_argument("--out", required=True, help="writes tune.json (every trial) and best.json")
    p.add_argument("--resume", action="store_true", help="continue a killed search in --out")
    _add_input_options(p)
    _add_training_options(p, defaults)
    p.set_defaults(func=cmd_tune)
    parser.training_commands = [sub.choices[name] for name in ("train", "compare", "tune")]

    p = command("evaluate", help="AUC and logloss of a saved model on a labelled file")
    p.add_argument("--model", required=True, help="model directory written by train")
    p.add_argument("--data", required=True, help="labelled file, in the model's input format")
    _add_input_options(p, with_schema=False)
    p.set_defaults(func=cmd_evaluate)

    p = command(
        "score",
        help="write a click probability for every row of large files (streaming, resumable)",
    )
    p.add_argument("--model", required=True, help="model directory written by train")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="files, globs or directories in the model's input format, or binary cache entries",
    )
    p.add_argument(
        "--output",
        required=True,
        help="a .parquet, .csv or .npy file; any other name is a directory of Parquet parts",
    )
    p.add_argument("--which", choices=("fnn", "fm"), default="fnn", help="the model to score")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per model call")
    p.add_argument(
        "--workers",
        type=int,
        help="processes parsing ahead (default: none where C++ code reads the input, a cache "
        "entry or plain Criteo/CSV text, in threads of this process; else cores - 1)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--part-mb", type=float, default=32, help="text input read in parts of this")
    p.add_argument("--id-column", help="pass this column through beside each prediction")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="cuda: layers in bfloat16")
    _add_input_options(p, with_schema=False)
    p.set_defaults(func=cmd_score)

    p = command("demo", help="synthetic Criteo-shaped data: FM vs FNN vs Bayes-optimal")
    p.add_argument("--out", default="fnn-fast-demo", help="output directory")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--rows", type=int, default=400_000, help="rows to generate (train+valid+test)")
    p.add_argument("--seed", type=int, default=0, help="data and training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = command("bench", help="time the ops and models: backends, peers, AUC; table, JSON")
    bench_command.add_arguments(p)
    p.set_defaults(func=bench_command.run)

    p = command("export", help="the FNN (or FM) as an ONNX file or torch.export program")
    export_command.add_arguments(p)
    p.set_defaults(func=export_command.run)
    return parser


def _data_error_hint(error: DataError, args) -> str | None:
    """What to do about bad input. --skip-bad-lines is offered only where skipping helps: a
    malformed line among good ones, not a file that as a whole is not what the command reads
    (columns missing, the first row already unreadable: another format, or no labels)."""
    if getattr(args, "skip_bad_lines", True) or error.line is None:
        return None
    fmt = getattr(args, "input_format", None)
    first_row = 2 if fmt == "csv" else 1
    if error.line < first_row:  # the CSV header: the error says which columns it lacks
        return None
    if error.line == first_row:
        labelled = " with labels (evaluate needs them)" if getattr(args, "needs_labels", 0) else ""
        expected = f"--format {fmt}" if getattr(args, "format", None) else f"{fmt} input"
        return f"(its first row cannot be read: check that {error.path} is {expected}{labelled})"
    return "(use --skip-bad-lines to skip malformed lines and go on)"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    config_path = _config_option(argv)
    if config_path is not None:
        try:
            defaults = _config_file_defaults(config_path)
        except ValueError as error:
            print(f"fnn-fast: error: {error}", file=sys.stderr)
            return 2
        for command in parser.training_commands:
            command.set_defaults(**defaults)
    args = parser.parse_args(argv)
    reason = missing_native_reason()
    if reason is not None and not native_warning_shown():
        print(f"fnn-fast: warning: {reason}", file=sys.stderr)
    try:
        return args.func(args)
    except DataError as error:
        print(f"fnn-fast: error: {error}", file=sys.stderr)
        hint = _data_error_hint(error, args)
        if hint is not None:
            print(f"  {hint}", file=sys.stderr)
        return 2
    except (OSError, ValueError, IndexError, FloatingPointError) as error:
        # user errors (paths, settings, inputs) end in one line, not a traceback
        message = (
            error
            if not isinstance(error, OSError) or error.filename is None
            else (f"{error.filename}: {error.strerror}")
        )
        print(f"fnn-fast: error: {message}", file=sys.stderr)
        return 2
