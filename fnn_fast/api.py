"""Training from Python: :func:`fit` does what ``fnn-fast train`` does (the command is a thin layer
over it), from input files, pandas DataFrames or Arrow tables, and returns a
:class:`TrainedModel`; :func:`load` opens a model directory as the same kind of object.

    model = fnn_fast.fit("train.csv", test="test.csv", categorical=["site", "ad"], fm_epochs=5)
    p = model.predict(frame)             # click probabilities, float64 [N]
    model.evaluate("test.csv")           # {"auc": ..., "logloss": ...}
    model.save("runs/m")                 # the directory `fnn-fast train --out` writes
    model = fnn_fast.load("runs/m")

Settings and defaults are the command's: the schema options (``format``, ``label``,
``categorical``, ``numeric`` ...), the encoder (``min_count``, ``value_min_count``,
``hash_buckets``), every :class:`~fnn_fast.train.TrainConfig` field as a keyword, ``out``,
``device``, checkpoints, ``resume`` and ``stream``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from fnn_fast.data import (
    DataError,
    FeatureEncoder,
    HashedEncoder,
    ParsedRows,
    Schema,
    load_rows,
    read_rows,
)
from fnn_fast.data.cache import _some_rows
from fnn_fast.data.encoder import VALUE_MIN_COUNT
from fnn_fast.data.errors import BadLines
from fnn_fast.data.parquet import read_arrow_table
from fnn_fast.saved import SavedModel, load_model, model_config, save_run
from fnn_fast.stream import CHUNK_ROWS, WINDOW_CHUNKS
from fnn_fast.train import (
    Split,
    TrainConfig,
    TwoStageResult,
    epochs_trained,
    resolve_device,
    train_two_stage,
)

# TrainConfig settings that take one of a few words (the command's choices are these).
CHOICES = {
    "fm_early_stopping": ("auto", "auc", "logloss"),
    "fnn_early_stopping": ("auto", "auc", "logloss"),
    "fm_optimizer": ("sgd", "adagrad", "rowwise_adagrad", "adam"),
    "fnn_optimizer": ("sgd", "adagrad", "rowwise_adagrad", "adam"),
    "fnn_init": ("fm", "random"),
    "fnn_layer_init": ("fm", "glorot"),
    "activation": ("tanh", "relu", "sigmoid", "gelu"),
    "fnn_layer_optimizer": ("adam", "sgd"),
    "pretrain": ("none", "rbm"),
}


# --- the model ------------------------------------------------------------------------------


@dataclass
class _Report:
    """What a fitted model's report shows: ROC and calibration on ``split``, the inputs."""

    split: object  # a train.Split or a streamed split
    split_name: str
    data: dict


@dataclass
class TrainedModel(SavedModel):
    """A trained FM and FNN with the encoder and input schema they were trained with: what
    :func:`fit` returns and :func:`load` opens. ``fm`` and ``fnn`` are the
    :class:`~fnn_fast.FM` and :class:`~fnn_fast.FNN` modules, ``encoder`` maps keys to their
    ids, ``metrics`` and ``history`` are ``metrics.json`` and ``history.json``, ``config``
    is ``config.json``. Also a :class:`~fnn_fast.saved.SavedModel`, so ``Scorer(model)`` and
    ``score_files`` take it as it is."""

    metrics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    report: _Report | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        fnn = "no FNN" if self.fnn is None else f"FNN hidden {self.fnn.hidden}"
        read = "no input schema" if self.schema is None else f"reads {self.schema.format}"
        return (
            f"TrainedModel(FM {self.fm.num_features:,} features x {self.fm.num_factors} "
            f"factors, {fnn}, {read})"
        )

    @property
    def train_config(self) -> TrainConfig | None:
        """The :class:`~fnn_fast.train.TrainConfig` it was trained with (None if unknown)."""
        saved = self.config.get("train")
        if saved is None:
            return None
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})

    def predict(self, data, which: str = "fnn", batch_size: int = 8192) -> np.ndarray:
        """Click probabilities (float64 [N], in row order) of the rows of ``data``: a file in
        the model's input format (labels not needed), a pandas DataFrame or an Arrow table or
        record batch with the model's columns. A bad row raises DataError naming it (to keep
        bad rows' places as NaN instead, use :meth:`scorer`'s ``skip_bad_rows``)."""
        scorer = self.scorer(which, batch_size)
        if _is_path(data):
            schema = self._schema()
            if schema.format == "libfm" and schema.featindex is None and schema.num_fields is None:
                schema = replace(schema, num_fields=len(self.encoder.slot_fields))
            rows = read_rows(_existing(data, "data"), schema, progress=False, labelled=False)
            return scorer.predict_rows(rows)
        return scorer.predict_arrow(_input(data, "data").table)

    def evaluate(self, data, which: str = "fnn") -> dict:
        """``{"auc": ..., "logloss": ...}`` of the model (``which``: fnn or fm) on labelled rows
        (a file, DataFrame or Arrow table, as for :meth:`predict`); the AUC of rows of one
        class is NaN, as in ``fnn-fast evaluate``."""
        from fnn_fast.train import evaluate

        rows = read_input(data, "data", self._schema(), InputOptions(progress=False))
        return evaluate(self.model(which), Split.encode(rows, self.encoder))

    def scorer(self, which: str = "fnn", batch_size: int = 8192, device: str = "cpu", **options):
        """A :class:`~fnn_fast.score.Scorer` of this model (arrow batches, pandas, Spark/Ray
        batches, ``score_files`` for inputs larger than memory)."""
        from fnn_fast.score import Scorer

        return Scorer(self, which, batch_size, device, **options)

    def save(self, directory, overwrite: bool = False) -> Path:
        """Write the model directory ``fnn-fast train --out`` writes (model, encoder,
        metrics.json, history.json, report.html; the report's ROC and calibration plots when
        the model was fitted in this process). ``overwrite`` replaces an earlier model of
        fnn-fast's there, as ``--overwrite`` does."""
        from fnn_fast.outputs import writing_directory

        with writing_directory(directory, overwrite, "model") as out:
            self._write(out)
        return Path(directory)

    def _write(self, out) -> None:
        config = self.train_config or TrainConfig()
        result = TwoStageResult(self.fm, self.fnn, self.metrics, self.history)
        report = self.report
        save_run(
            out, result, self.encoder, self.schema, config,
            report_split=None if report is None else report.split,
            split_name="test" if report is None else report.split_name,
            data=None if report is None else report.data,
        )  # fmt: skip

    def _schema(self) -> Schema:
        if self.schema is None:
            raise ValueError("the model has no input schema: it cannot read rows")
        return self.schema


def load(directory) -> TrainedModel:
    """The model directory ``fnn-fast train`` (or :meth:`TrainedModel.save`) wrote."""
    import json

    saved = load_model(directory)
    schema = saved.schema
    if schema is not None and schema.featindex and not Path(schema.featindex).is_absolute():
        schema = replace(schema, featindex=str(Path(directory, schema.featindex).resolve()))
    stored = {}
    for name in ("metrics", "history"):
        path = Path(directory, f"{name}.json")
        stored[name] = json.loads(path.read_text()) if path.exists() else {}
    return TrainedModel(
        saved.fm, saved.fnn, saved.encoder, schema, saved.config, stored["metrics"],
        stored["history"],
    )  # fmt: skip


# --- fit ------------------------------------------------------------------------------------


def fit(
    train, valid=None, test=None, *,
    format: str | None = None, label: str | None = None, categorical=None, numeric=None,
    numeric_mode: str = "bucketize", id_column: str | None = None, delimiter: str | None = None,
    featindex=None, multi_valued=None, bag_pooling: str = "sum", schema: Schema | None = None,
    valid_fraction: float = 0.2, min_count: int = 1, value_min_count: int = VALUE_MIN_COUNT,
    hash_buckets: int | None = None, hash_space: str = "field",
    config: TrainConfig | dict | None = None,
    out=None, overwrite: bool = False, device: str = "cpu", progress: bool = True,
    checkpoint_every: str | int | None = None, resume: bool = False, stream: bool = False,
    stream_chunk_rows: int = CHUNK_ROWS, shuffle_buffer: int = CHUNK_ROWS * WINDOW_CHUNKS,
    cache_dir=None, skip_bad_lines: bool = False, **settings,
) -> TrainedModel:  # fmt: skip
    """Train FM then FNN (``fnn-fast train``) and return the :class:`TrainedModel`.

    ``train``, ``valid``, ``test``: input files (any format the command reads; with
    ``stream``, or binary cache entries), pandas DataFrames or Arrow tables. Without
    ``valid``, a random ``valid_fraction`` of ``train`` is held out for early stopping; the
    test rows are only evaluated. The input schema: ``schema``, or ``format`` (for files:
    libfm, criteo, csv or parquet, by default from a .csv / .parquet suffix; DataFrames and
    tables are read as parquet columns) with ``label``, ``categorical`` and ``numeric``
    columns (lists or comma-separated), ``numeric_mode``, ``id_column``, ``delimiter``,
    ``featindex``, ``multi_valued`` and ``bag_pooling`` (bag columns: see
    :func:`make_schema`). The encoder: ``min_count`` (rarer features share their field's
    out-of-vocabulary row), ``value_min_count`` (a number seen in fewer training rows reads
    as its bucket), or ``hash_buckets`` / ``hash_space`` (no vocabulary). Training settings:
    ``config`` (a TrainConfig, or a dict such as ``best.json``'s of ``fnn-fast tune``), then
    any TrainConfig field as a keyword (``fm_epochs=5``, ``hidden=[64, 32]``). ``out``: also
    write the model directory there, as the command does (``overwrite`` an earlier one);
    ``checkpoint_every`` (steps, or "10m") writes checkpoints into it and ``resume=True``
    continues a killed run.
    ``progress``: tqdm bars on stderr; the data summary and each epoch's line are printed
    there as the command prints them.
    """
    config = make_config(config, **settings)
    device = resolve_device(device)  # before any data is read: no GPU is a quick error
    if schema is None:
        schema = make_schema(
            format or _format_of(train), label=label, categorical=categorical, numeric=numeric,
            numeric_mode=numeric_mode, id_column=id_column, delimiter=delimiter,
            featindex=featindex, multi_valued=multi_valued, bag_pooling=bag_pooling,
        )  # fmt: skip
    elif any(x is not None for x in (format, label, categorical, numeric, id_column, delimiter,
                                     featindex, multi_valued)):  # fmt: skip
        raise ValueError("give either schema= or the schema options (format, label, ...), not both")
    inputs = {name: _input(data, name) for name, data in (("train", train), ("valid", valid),
                                                          ("test", test))}  # fmt: skip
    train, valid, test = inputs.values()
    if featindex is not None:
        _existing(featindex, "featindex")
    for name, data in inputs.items():
        if data is not None:
            _check_input(data, name, schema)
    if hash_space not in ("field", "shared"):
        raise ValueError(f"hash_space must be 'field' or 'shared', not {hash_space!r}")
    if config.refit and (stream or checkpoint_every or resume):
        raise ValueError("--refit needs the rows in memory and no checkpoints: it cannot be used "
                         "with --stream, --checkpoint-every or --resume")  # fmt: skip
    if (checkpoint_every or resume) and out is None:
        raise ValueError("checkpoints are written into the model directory: give out= as well")
    reading = InputOptions(
        cache_dir=cache_dir, skip_bad_lines=skip_bad_lines, progress=progress,
        min_count=min_count, value_min_count=value_min_count, hash_buckets=hash_buckets,
        hash_space=hash_space,
    )  # fmt: skip
    if cache_dir is not None:
        _check_cache_dir(cache_dir)
    run = _Run(out, overwrite, checkpoint_every, resume)
    run.start(lambda: fingerprint(
        inputs, config, schema, reading, None if valid is not None else valid_fraction,
        (stream_chunk_rows, shuffle_buffer) if stream else None,
    ))  # fmt: skip
    if stream:
        splits = stream_splits(train, valid, test, schema, reading, stream_chunk_rows,
                               shuffle_buffer)  # fmt: skip
    else:
        splits = load_splits(train, valid, test, schema, reading, valid_fraction, config.seed)
    train_split, valid_split, test_split, encoder = splits
    checkpoint = run.checkpointer()
    result = train_two_stage(
        train_split, valid_split, test_split, encoder, config, progress=progress,
        checkpoint=checkpoint, device=device,
    )  # fmt: skip
    metrics = {
        **result.metrics,
        **encoder_metrics(encoder),
        "device": str(device),
        "world_size": 1,
        "rows_per_rank": [len(train_split) * _epochs_run(result)],
    }
    model = TrainedModel(
        result.fm, result.fnn, encoder, schema,
        model_config(result.fm, result.fnn, encoder, schema, config.to_dict()), metrics,
        result.history,
        _Report(
            test_split if test_split is not None else valid_split,
            "test" if test_split is not None
            else "validation (rows the refit trained on)" if config.refit else "validation",
            data_description(inputs, schema),
        ),
    )  # fmt: skip
    run.finish(model)
    return model


def make_config(config: TrainConfig | dict | None = None, **settings) -> TrainConfig:
    """``config`` (default TrainConfig()) with ``settings`` (TrainConfig fields) replaced;
    checked as the command's options are."""
    if config is None:
        config = TrainConfig()
    elif isinstance(config, dict):
        config = make_config(None, **config.get("config", config))
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or a dict, not {type(config).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(
            f"unknown settings: {', '.join(unknown)} (TrainConfig's fields and fit's options)"
        )
    config = replace(config, **settings)
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, not {getattr(config, name)!r}")
    for name, least in (("factors", 1), ("batch_size", 1), ("fm_epochs", 0), ("fnn_epochs", 0),
                        ("patience", 0)):  # fmt: skip
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, not {value!r}")
    config.hidden = [int(h) for h in config.hidden]
    if config.fnn_layer_lrs is not None:
        config.fnn_layer_lrs = [float(r) for r in config.fnn_layer_lrs]
    return config


def make_schema(
    format: str, *, label=None, categorical=None, numeric=None, numeric_mode="bucketize",
    id_column=None, delimiter=None, featindex=None, multi_valued=None, bag_pooling="sum",
) -> Schema:  # fmt: skip
    """The input schema of the schema options (``fnn-fast train``'s --format, --label ...).
    ``multi_valued``: the bag columns, as the schema's mapping (column -> BagSpec fields, e.g.
    ``{"tags": {"separator": "|", "pooling": "mean"}}``) or as --multi-valued's text
    (``"tags:pipe:mean"``, or a list of them)."""
    multi_valued = _bags(multi_valued)
    if format == "criteo":
        chosen = [n for n, v in (("label", label), ("categorical", categorical),
                                 ("numeric", numeric)) if v]  # fmt: skip
        if chosen:
            raise ValueError(
                f"{', '.join(chosen)}: Criteo's columns are fixed (label, I1..I13, C1..C26); "
                "use format csv or parquet to choose columns"
            )
        # a delimiter: Criteo's columns in delimited text with a header line naming them
        criteo = Schema.criteo("csv" if delimiter else "criteo")
        settings = {"numeric_mode": numeric_mode, "id_column": id_column, "delimiter": delimiter,
                    "multi_valued": multi_valued, "bag_pooling": bag_pooling}  # fmt: skip
        return Schema.from_dict(criteo.to_dict() | settings)
    return Schema(
        format=format, label=label, categorical=_names(categorical), numeric=_names(numeric),
        numeric_mode=numeric_mode, id_column=id_column, delimiter=delimiter,
        featindex=str(Path(featindex).resolve()) if featindex else None,
        multi_valued=multi_valued, bag_pooling=bag_pooling,
    )  # fmt: skip


def _bags(multi_valued) -> dict:
    if multi_valued is None:
        return {}
    if isinstance(multi_valued, dict):
        return multi_valued
    from fnn_fast.data.bags import parse_multi_valued

    return parse_multi_valued(multi_valued)


def _names(columns) -> list[str]:
    if columns is None:
        return []
    if isinstance(columns, str):
        return [c for c in columns.split(",") if c]
    return [str(c) for c in columns]


def _format_of(data) -> str:
    if not _is_path(data):
        return "parquet"  # DataFrames and Arrow tables: typed columns, read as Parquet's are
    suffix = Path(data).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise ValueError(
        f"{data}: give format= (libfm, criteo, csv or parquet): it cannot be told from the name"
    )


# --- reading --------------------------------------------------------------------------------


@dataclass
class InputOptions:
    """How inputs are read and encoded (the command's input and encoder options)."""

    cache_dir: object = None
    skip_bad_lines: bool = False
    progress: bool = True
    min_count: int = 1
    value_min_count: int = VALUE_MIN_COUNT  # numeric rule 3: rows a value needs for its own id
    hash_buckets: int | None = None
    hash_space: str = "field"


def _is_path(data) -> bool:
    return isinstance(data, (str, os.PathLike))


@dataclass
class _Tabled:
    """An in-memory input as Arrow: ``source`` names it in errors (``<train DataFrame>``)."""

    table: pa.Table
    source: str


def _input(data, name: str):
    """A path as it is; a pandas DataFrame or an Arrow table or record batch as a _Tabled
    (dictionary columns, such as pandas' categoricals, decoded to their values)."""
    if data is None or _is_path(data) or isinstance(data, _Tabled):
        return data
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        kind = "Arrow table"
    elif type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "columns"):
        from fnn_fast.score.scorer import _arrow_table

        kind, data = "DataFrame", _arrow_table(data)
    else:
        raise TypeError(
            f"{name}: a file path, pandas DataFrame or Arrow table is needed, not "
            f"{type(data).__name__}"
        )
    for i, column in enumerate(data.columns):
        if pa.types.is_dictionary(column.type):
            data = data.set_column(i, data.field(i).name, column.cast(column.type.value_type))
    return _Tabled(data, f"<{name} {kind}>")


def _existing(path, name: str):
    if not Path(path).exists():
        raise FileNotFoundError(f"{name} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{name} {path}: not readable")
    return path


def _check_input(data, name: str, schema: Schema) -> None:
    """Before anything is parsed or trained: a file exists and is readable; a table has the
    schema's columns."""
    if _is_path(data):
        _existing(data, name)
        return
    if schema.format == "libfm":
        raise ValueError(f"{name}: libfm input comes from files; a table needs named columns")
    wanted = [schema.label_column, *schema.numeric, *schema.categorical]
    if schema.id_column is not None:
        wanted.append(schema.id_column)
    missing = [c for c in wanted if c not in data.table.column_names]
    if missing:
        raise DataError(
            data.source, None,
            f"declared columns not in it: {', '.join(missing)} (it has: "
            f"{', '.join(data.table.column_names)})",
        )  # fmt: skip


def _check_cache_dir(cache_dir) -> None:
    from fnn_fast.outputs import check_creatable

    if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise FileExistsError(f"--cache-dir {cache_dir} is a file, not a directory")
    if not Path(cache_dir).exists():
        check_creatable(cache_dir, "cache")


def read_input(data, name: str, schema: Schema, reading: InputOptions) -> ParsedRows:
    """Labelled rows of a file (through the cache with ``cache_dir``) or of a table; a bad row
    raises DataError naming it (rows of a table count from 1, as lines of a file), or is
    skipped and counted with ``skip_bad_lines``."""
    if _is_path(data):
        rows = load_rows(
            data, schema, cache_dir=reading.cache_dir, skip_bad_lines=reading.skip_bad_lines,
            progress=reading.progress,
        )  # fmt: skip
    else:
        data = _input(data, name)
        _check_input(data, name, schema)
        bad = BadLines(data.source, reading.skip_bad_lines)
        rows = read_arrow_table(data.table, schema, bad, 1, True, data.source)
        rows.value_fields = schema.value_fields(rows.field_names)
        rows = _some_rows(rows, schema)
    if rows.bad_lines:
        print(f"{rows.source}: skipped {rows.bad_lines} bad line(s)", file=sys.stderr)
        for example in getattr(rows, "bad_examples", [])[:5]:
            print(f"  {example}", file=sys.stderr)
    return rows


def fit_encoder(keys, slot_fields, field_names, reading: InputOptions, value_fields=()):
    """The vocabularies of the training keys, or with ``hash_buckets`` the hashed encoder (no
    vocabulary; the pass over the keys only measures the collisions). ``value_fields``: the
    schema's (Schema.value_fields)."""
    if reading.hash_buckets is None:
        return FeatureEncoder.fit(
            keys, slot_fields, field_names, min_count=reading.min_count,
            value_fields=value_fields, value_min_count=reading.value_min_count,
            progress=reading.progress,
        )  # fmt: skip
    if reading.min_count != 1:
        raise ValueError("--min-count needs vocabularies: it cannot be used with --hash-buckets")
    return HashedEncoder.fit(
        keys, slot_fields, field_names, buckets=reading.hash_buckets,
        shared=reading.hash_space == "shared", value_fields=value_fields,
        progress=reading.progress,
    )  # fmt: skip


def _announce(rows: int, encoder, fields_: int, streamed: bool) -> None:
    """The data summary training prints before stage 1 (stderr)."""
    print(
        f"{rows:,} training rows{' (streamed)' if streamed else ''}, "
        f"{encoder.num_features:,} features in {fields_} fields",
        file=sys.stderr,
    )
    if isinstance(encoder, HashedEncoder):
        print(encoder.describe_collisions(), file=sys.stderr)


def load_splits(train, valid, test, schema: Schema, reading: InputOptions, valid_fraction: float,
                seed: int):  # fmt: skip
    """(train, valid, test or None, encoder) in memory; the encoder is fit on the training rows
    only (not on a validation part split off them)."""
    train_rows = read_input(train, "train", schema, reading)
    train_index = valid_index = None  # None: all the rows
    if valid is not None:
        valid_rows = read_input(valid, "valid", schema, reading)
    else:
        if not 0 < valid_fraction < 1:
            raise ValueError(f"valid_fraction must be between 0 and 1, not {valid_fraction}")
        valid_rows = train_rows
        order = np.random.default_rng(seed).permutation(len(train_rows.labels))
        cut = int(round(len(order) * (1 - valid_fraction)))
        train_index, valid_index = np.sort(order[:cut]), np.sort(order[cut:])
    keys = train_rows.keys if train_index is None else train_rows.keys[train_index]
    encoder = fit_encoder(keys, train_rows.slot_fields, train_rows.field_names, reading,
                          train_rows.value_fields)  # fmt: skip
    _announce(len(keys), encoder, len(train_rows.field_names), streamed=False)
    train_split = Split.encode(train_rows, encoder, train_index)
    valid_split = Split.encode(valid_rows, encoder, valid_index)
    test_split = None
    if test is not None:
        test_split = Split.encode(read_input(test, "test", schema, reading), encoder)
    return train_split, valid_split, test_split, encoder


def stream_splits(train, valid, test, schema: Schema, reading: InputOptions, chunk_rows: int,
                  shuffle_buffer: int):  # fmt: skip
    """As :func:`load_splits`, streamed: every split streams from its binary cache entry; the
    encoder is fitted on the training entry read by row ranges."""
    from fnn_fast.stream import EVAL_ROWS, CacheStream, entry_columns

    if not all(_is_path(x) for x in (train, valid, test) if x is not None):
        raise ValueError("--stream reads files (binary cache entries): not DataFrames or tables")
    if valid is None:
        raise ValueError("--stream needs a validation file (--valid FILE)")
    if chunk_rows < 1 or shuffle_buffer < 1:
        raise ValueError("--stream-chunk-rows and --shuffle-buffer must be positive")
    train_entry = _cache_entry(train, schema, reading)
    keys, slot_fields, field_names = entry_columns(train_entry)
    encoder = fit_encoder(keys, slot_fields, field_names, reading,
                          schema.value_fields(field_names))  # fmt: skip
    _announce(len(keys), encoder, len(field_names), streamed=True)
    window = max(1, shuffle_buffer // chunk_rows)
    train_split = CacheStream(
        train_entry, encoder, chunk_rows=chunk_rows, window_chunks=window, eval_rows=EVAL_ROWS,
    )  # fmt: skip

    def held_out(path):
        entry = _cache_entry(path, schema, reading)
        return CacheStream(entry, encoder, chunk_rows=chunk_rows, shuffle=False)

    test_split = held_out(test) if test is not None else None
    return train_split, held_out(valid), test_split, encoder


def _cache_entry(path, schema: Schema, reading: InputOptions):
    """Streaming: the binary cache entry to stream ``path`` from (``path`` itself when it is
    one; else its entry in the cache directory, parsed into it on the first run)."""
    from fnn_fast.data.cache import check_entry, ensure_entry, read_meta

    if Path(path, "meta.json").is_file():
        check_entry(path, schema)
        entry = Path(path)
    elif reading.cache_dir is None:
        raise ValueError(
            f"--stream reads binary cache entries: give --cache-dir (the first run parses {path} "
            "into it once) or a cache entry directory"
        )
    else:
        entry = ensure_entry(
            path, schema, reading.cache_dir, skip_bad_lines=reading.skip_bad_lines,
            progress=reading.progress,
        )  # fmt: skip
    if int(read_meta(entry)["n_rows"]) == 0:
        raise DataError(path, None, "no rows to train or evaluate on")
    return entry


# --- the run: checkpoints, resume, the output directory --------------------------------------


def _identity(data) -> list | None:
    """What a resume checks of an input: path, size and modification time (of every file of a
    cache entry directory); a table's content hash."""
    if data is None:
        return None
    if not _is_path(data):
        table = data.table
        digest = hashlib.sha256(str(table.schema).encode())
        step = 1 << 16  # rows hashed as one Arrow IPC message, copied out by take(): the
        for start in range(0, table.num_rows, step):  # same bytes whatever the chunking
            part = table.slice(start, step)
            part = part.take(np.arange(part.num_rows)).combine_chunks()
            for batch in part.to_batches():
                digest.update(memoryview(batch.serialize()))
        return [data.source, table.num_rows, digest.hexdigest()]
    path = Path(data).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [str(path)] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def fingerprint(inputs: dict, config: TrainConfig, schema: Schema, reading: InputOptions,
                valid_fraction: float | None, stream: tuple | None) -> dict:  # fmt: skip
    """What a resumed run must share with the checkpoint: its data and every setting that
    changes the model (not the checkpoint interval, progress, the cache directory).
    ``valid_fraction``: None with a validation input; ``stream``: (chunk rows, shuffle
    buffer) when streamed."""
    from fnn_fast.data.cache import schema_identity

    settings = {
        **config.to_dict(),
        "schema": schema_identity(schema),
        "min_count": reading.min_count,
        "value_min_count": reading.value_min_count,
        "valid_fraction": valid_fraction,
        "skip_bad_lines": reading.skip_bad_lines,
        "stream": stream is not None,
        "stream_chunk_rows": None if stream is None else stream[0],
        "shuffle_buffer": None if stream is None else stream[1],
    }
    if reading.hash_buckets is not None:
        settings["hashing"] = [reading.hash_buckets, reading.hash_space]
    return {"data": {name: _identity(data) for name, data in inputs.items()}, "settings": settings}


class _Run:
    """The output directory of a fit: claimed before any data is read (``out`` new, empty or
    an earlier model with ``overwrite``; with ``resume``, an unfinished checkpointed run),
    checkpointed while training, written at the end."""

    def __init__(self, out, overwrite: bool, checkpoint_every, resume: bool):
        from fnn_fast.checkpoint import parse_every

        self.out, self.overwrite, self.resume = out, overwrite, resume
        every = checkpoint_every
        self.every = (None, None) if not every else parse_every(str(every))
        self.checkpointing = bool(every)
        self.checkpoint = None
        self._fingerprint = None

    def start(self, fingerprint) -> None:
        from fnn_fast.checkpoint import Checkpointer
        from fnn_fast.outputs import check_directory, check_resumable

        if self.out is None:
            return
        if self.resume:
            check_resumable(self.out, "model")
            self._fingerprint = fingerprint()
            self.checkpoint = Checkpointer(self.out, self._fingerprint, *self.every)
            if self.checkpoint.load() is None:
                print("fnn-fast: no checkpoint was written yet: training from the start",
                      file=sys.stderr)  # fmt: skip
        else:
            check_directory(self.out, self.overwrite, "model")
            if self.checkpointing:
                self._fingerprint = fingerprint()

    def checkpointer(self):
        """The Checkpointer to train with (None without checkpoints): a new run claims its
        directory now, once the data has been read."""
        from fnn_fast.checkpoint import Checkpointer
        from fnn_fast.outputs import start_run

        if self.checkpointing and not self.resume:
            start_run(self.out, self.overwrite, "model")
            self.checkpoint = Checkpointer(self.out, self._fingerprint, *self.every)
        return self.checkpoint

    def finish(self, model: TrainedModel) -> None:
        from fnn_fast.outputs import finish_run

        if self.out is None:
            return
        if self.checkpoint is None:
            model.save(self.out, self.overwrite)
        else:
            model._write(self.out)
            finish_run(self.out, "model", self.checkpoint.remove)


# --- what the run records -------------------------------------------------------------------


def data_description(inputs: dict, schema: Schema | None = None) -> dict:
    """The report's record of the inputs: absolute paths, or what a table was."""
    data = {}
    for name, value in inputs.items():
        if value is None:
            continue
        if _is_path(value):
            data[name] = str(Path(value).resolve())
        else:
            data[name] = f"{value.source[1:-1]} of {value.table.num_rows:,} rows"
    if schema is not None and schema.featindex:
        data["featindex"] = str(Path(schema.featindex).resolve())
    return data


def _epochs_run(result) -> int:
    """The epochs both stages ran (each trains on every training row once per epoch)."""
    return epochs_trained(result.history["fm"]) + epochs_trained(result.history["fnn"])


def encoder_metrics(encoder) -> dict:
    """metrics.json's record of a hashed encoder's collisions (none for vocabularies)."""
    return {"hashing": encoder.collisions} if isinstance(encoder, HashedEncoder) else {}


def print_metrics(metrics: dict) -> None:
    """The metrics table ``fnn-fast train`` prints (stdout): a row per model."""
    heads = ("valid AUC", "valid logloss", "test AUC", "test logloss")
    print(f"{'model':<14}" + "".join(f"{h:>15}" for h in heads))
    for name, m in metrics.items():
        if not isinstance(m, dict) or not any(k.startswith(("valid_", "test_")) for k in m):
            continue  # device, hashing, ...: not a model's row
        cells = [m.get(k) for k in ("valid_auc", "valid_logloss", "test_auc", "test_logloss")]
        text = [f"{c:.4f}" if c is not None else "-" for c in cells]
        print(f"{name:<14}" + "".join(f"{t:>15}" for t in text))


__all__ = ["TrainedModel", "fit", "load", "make_config", "make_schema"]
