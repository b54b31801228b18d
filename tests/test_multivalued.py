"""Multi-valued (bag) columns: CSV cells split by a separator, Parquet list and map columns.

A bag is several slots of one field, pooled by the values (sum: 1, mean: 1/n, weights), so
the FM and FNN kernels pool it as they pool a libFM field repeated in a line: checked here
against hand computations and the reference ops, then end to end through train, evaluate,
score, the Arrow/pandas scorer, the cache and --stream."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
import torch
from helpers import train_reference_and_native

import fnn_fast
from fnn_fast import FM, FNN
from fnn_fast.cli import main
from fnn_fast.data import DataError, FeatureEncoder, HashedEncoder, Schema, read_rows
from fnn_fast.data.bags import BagSpec, parse_multi_valued
from fnn_fast.data.cache import ensure_entry, open_rows
from fnn_fast.data.parts import conform_slots
from fnn_fast.data.tokens import PAD_KEY, hash_token
from fnn_fast.ops import cpu, library, reference
from fnn_fast.optim import RowUpdate
from fnn_fast.saved import load_model
from fnn_fast.score import Scorer, predict
from fnn_fast.train import Split

FAST = [
    "--fm-epochs", "4", "--fnn-epochs", "3", "--hidden", "16,8", "--factors", "4",
    "--fm-optimizer", "adagrad", "--fm-lr", "0.05", "--fm-initial-accumulator", "0",
    "--fnn-lr", "1e-3", "--batch-size", "64", "--no-progress", "--seed", "1",
]  # fmt: skip
TAGS = [f"tag{i}" for i in range(24)]
EFFECT = {t: (1.8 if i < 6 else -1.8 if i < 12 else 0.0) for i, t in enumerate(TAGS)}
SITES = ["news.example", "games.example", "shop.example", "video.example"]


def ad_log(n: int, seed: int):
    """Rows of (id, click, site, tags, weights): the click depends on the tags only."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tags = list(rng.choice(TAGS, size=int(rng.integers(0, 5))))  # repeats allowed
        weights = [float(w) for w in rng.choice([0.5, 1.0, 2.0], size=len(tags))]
        logit = -0.3 + (np.mean([EFFECT[t] for t in tags]) if tags else 0.0)
        click = int(rng.random() < 1 / (1 + np.exp(-2 * logit)))
        rows.append((f"r{seed}-{i}", click, str(rng.choice(SITES)), tags, weights))
    return rows


def write_csv(path, rows, weighted: bool = False, delimiter: str = ","):
    with open(path, "w", newline="") as file:
        out = csv.writer(file, delimiter=delimiter)
        out.writerow(["id", "click", "site", "tags"])
        for row_id, click, site, tags, weights in rows:
            cells = [f"{t}:{w:g}" for t, w in zip(tags, weights, strict=True)] if weighted else tags
            out.writerow([row_id, click, site, "|".join(cells)])
    return path


def write_parquet(path, rows, weighted: bool = False, row_group_size: int = 1000):
    if weighted:
        tags = pa.array(
            [list(zip(t, w, strict=True)) for _, _, _, t, w in rows],
            type=pa.map_(pa.string(), pa.float64()),
        )
    else:
        tags = pa.array([t for _, _, _, t, _ in rows], type=pa.list_(pa.string()))
    table = pa.table({
        "id": [r[0] for r in rows], "click": [r[1] for r in rows], "site": [r[2] for r in rows],
        "tags": tags,
    })  # fmt: skip
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def schema(format="csv", id_column="id", **bag):
    spec = {"separator": "|" if format == "csv" else None, **bag}
    return Schema(
        format, label="click", categorical=["site", "tags"], id_column=id_column,
        multi_valued={"tags": spec},
    )  # fmt: skip


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_csv_and_parquet_read_the_same_bags(tmp_path, pooling, weighted):
    rows = ad_log(300, seed=3)
    text = read_rows(write_csv(tmp_path / "a.csv", rows, weighted),
                     schema(pooling=pooling, weighted=weighted), progress=False)  # fmt: skip
    # Parquet: several batches of different widths, laid out in the widest
    table = read_rows(write_parquet(tmp_path / "a.parquet", rows, weighted, row_group_size=50),
                      schema("parquet", pooling=pooling), progress=False)  # fmt: skip
    width = max(1, max(len(r[3]) for r in rows))
    assert text.slot_fields.tolist() == [0] + [1] * width
    for got in (text, table):
        np.testing.assert_array_equal(got.slot_fields, text.slot_fields)
        np.testing.assert_array_equal(got.keys, text.keys)
        np.testing.assert_array_equal(got.values, text.values)
    for i, (_, _, site, tags, weights) in enumerate(rows):
        keys, values = text.keys[i], text.values[i]
        assert keys[0] == hash_token(site) and values[0] == 1
        n = len(tags)
        expected_keys = [hash_token(t) for t in tags] or [hash_token("")]  # empty: missing
        x = np.array(weights if weighted else [1.0] * n, dtype=np.float64)
        if pooling == "mean":
            x = x / (x.sum() if weighted else n)
        expected_values = list(x) or [1.0]
        assert keys[1 : 1 + len(expected_keys)].tolist() == expected_keys
        np.testing.assert_allclose(values[1 : 1 + len(expected_keys)], expected_values, rtol=1e-7)
        assert (keys[1 + len(expected_keys) :] == PAD_KEY).all()
        assert (values[1 + len(expected_keys) :] == 0).all()


def test_a_bag_is_split_dropping_empty_items_and_keeping_repeats(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text("click\tsite\ttags\n1\ts\ta||a|b\n0\ts\t|\n1\ts\tc\n")
    s = Schema("csv", label="click", categorical=["site", "tags"], delimiter="\t",
               multi_valued=parse_multi_valued("tags:pipe:mean"))  # fmt: skip
    rows = read_rows(path, s, progress=False)
    a, b, c, missing = (hash_token(t) for t in ("a", "b", "c", ""))
    assert rows.keys[:, 1:].tolist() == [
        [a, a, b],
        [missing, PAD_KEY, PAD_KEY],
        [c, PAD_KEY, PAD_KEY],
    ]
    np.testing.assert_allclose(rows.values[:, 1:], [[1 / 3] * 3, [1, 0, 0], [1, 0, 0]])


def test_multi_valued_option_syntax():
    assert parse_multi_valued(["tags:pipe:mean:8,cats:;", "kw:comma:weighted"]) == {
        "tags": {"separator": "|", "pooling": "mean", "max_values": 8},
        "cats": {"separator": ";"},
        "kw": {"separator": ",", "weighted": True},
    }
    assert parse_multi_valued("tags") == {"tags": {"separator": None}}  # a Parquet list column
    with pytest.raises(ValueError, match="unknown option 'median'"):
        parse_multi_valued("tags:|:median")
    with pytest.raises(ValueError, match="declared twice"):
        parse_multi_valued("tags:|,tags:;")


def test_schema_round_trip_keeps_the_bags():
    declared = Schema("csv", categorical=["site", "tags"], bag_pooling="mean",
                      multi_valued=parse_multi_valued("tags:;:5:weighted"))  # fmt: skip
    assert declared.bag("tags").pooling == "mean"  # the schema's default filled in
    assert declared.bag("tags") == BagSpec(";", "mean", 5, weighted=True)
    assert declared.bag("site") is None
    assert Schema.from_dict(json.loads(json.dumps(declared.to_dict()))) == declared
    old = {k: v for k, v in declared.to_dict().items() if k not in ("multi_valued", "bag_pooling")}
    assert Schema.from_dict(old).multi_valued == {}  # a model saved before bags
    with pytest.raises(ValueError, match="unknown settings"):
        Schema("csv", categorical=["tags"], multi_valued={"tags": {"separator": "|", "n": 3}})


def test_cli_names_a_bad_declaration(tmp_path, ad_files, capsys):
    args = ["train", "--train", str(ad_files["train.csv"]), "--out", str(tmp_path / "m"),
            "--format", "csv", "--label", "click", "--categorical", "site", *FAST]  # fmt: skip
    assert main([*args, "--multi-valued", "tags:pipe"]) == 2
    assert "'tags' must be a categorical column" in capsys.readouterr().err
    assert main([*args, "--multi-valued", "site:pipe:max"]) == 2
    assert "unknown option 'max'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(categorical=["site"], multi_valued={"tags": {"separator": "|"}}), "categorical"),
        (dict(multi_valued={"tags": {}}), "needs a separator"),
        (dict(multi_valued={"tags": {"separator": ","}}), "separates the file's columns"),
        (dict(multi_valued={"tags": {"separator": "|", "pooling": "max"}}), "pooling"),
        (dict(multi_valued={"tags": {"separator": "|", "max_values": 0}}), "at least 1"),
        (dict(format="libfm", categorical=[], multi_valued={"tags": {}}), "no named columns"),
    ],
)
def test_bad_declarations_are_refused(kwargs, message):
    settings = {"format": "csv", "categorical": ["site", "tags"], **kwargs}
    with pytest.raises(ValueError, match=message):
        Schema(**settings)


def test_bad_bags_name_their_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "click,site,tags\n1,s,a|b\n0,s,a|b|c\n1,s,a:0.5|b\n0,s,a:x\n1,s,a:1|b:-1\n0,s,a:0.5|b:1.5\n"
    )
    with pytest.raises(DataError, match=r"bad\.csv:3: column tags holds 3 values, more than its "
                                        r"declared maximum of 2"):  # fmt: skip
        read_rows(path, schema(id_column=None, max_values=2), progress=False)
    with pytest.raises(DataError, match=r"bad\.csv:2: .*'a' has no weight"):
        read_rows(path, schema(id_column=None, weighted=True), progress=False)
    weighted_mean = schema(id_column=None, weighted=True, pooling="mean")
    rows = read_rows(path, weighted_mean, skip_bad_lines=True, progress=False)
    assert rows.lines.tolist() == [7]
    np.testing.assert_allclose(rows.values[0, 1:], [0.25, 0.75])
    reasons = "\n".join(rows.bad_examples)
    assert "bad.csv:5: column tags: the weight of 'a:x' is not a finite number" in reasons
    assert "bad.csv:6: column tags: the weights of a bag sum to 0" in reasons


def test_bad_parquet_bags_name_their_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"click": [1, 0, 1], "site": ["s"] * 3,
                             "tags": [["a"], ["a", "b", "c"], None]}), path)  # fmt: skip
    with pytest.raises(DataError, match=r"bad\.parquet:2: column tags holds 3 values"):
        read_rows(path, schema("parquet", None, max_values=2), progress=False)
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"click": [1], "site": ["s"], "tags": ["a|b"]}), strings)
    with pytest.raises(DataError, match="declared multi-valued without a separator"):
        read_rows(strings, schema("parquet", None), progress=False)
    with pytest.raises(DataError, match="declared weighted, but holds list<"):
        read_rows(path, schema("parquet", None, weighted=True), progress=False)
    rows = read_rows(strings, schema("parquet", None, separator="|"), progress=False)
    assert rows.keys[0, 1:].tolist() == [hash_token("a"), hash_token("b")]
    weights = tmp_path / "weights.parquet"
    zero = pa.array([[("a", 1.0), ("b", -1.0)], [("a", None)]], pa.map_(pa.string(), pa.float64()))
    pq.write_table(pa.table({"click": [1, 0], "site": ["s"] * 2, "tags": zero}), weights)
    rows = read_rows(weights, schema("parquet", None, pooling="mean"), skip_bad_lines=True,
                     progress=False)  # fmt: skip
    assert len(rows) == 0 and rows.bad_lines == 2
    assert "weights.parquet:1: column tags: the weights of a bag sum to 0" in rows.bad_examples[0]
    assert "weights.parquet:2: column tags: a weight is missing" in rows.bad_examples[1]


def test_undeclared_parquet_lists_are_bags(tmp_path):
    path = write_parquet(tmp_path / "l.parquet", ad_log(50, seed=5))
    plain = Schema("parquet", label="click", categorical=["site", "tags"], bag_pooling="mean")
    rows = read_rows(path, plain, progress=False)
    declared = read_rows(path, schema("parquet", pooling="mean"), progress=False)
    np.testing.assert_array_equal(rows.keys, declared.keys)
    np.testing.assert_array_equal(rows.values, declared.values)


def test_cache_entries_built_by_parts_hold_the_bags(tmp_path):
    path = write_csv(tmp_path / "c.csv", ad_log(400, seed=6))
    s = schema(pooling="mean")
    whole = read_rows(path, s, progress=False)
    entry = ensure_entry(path, s, tmp_path / "cache", progress=False, part_bytes=700)
    cached = open_rows(entry, schema=s)
    np.testing.assert_array_equal(cached.slot_fields, whole.slot_fields)
    np.testing.assert_array_equal(cached.keys, whole.keys)
    np.testing.assert_array_equal(cached.values, whole.values)
    # another pooling reads other values: the entry is not reused for it
    assert ensure_entry(path, schema(pooling="sum"), tmp_path / "cache", progress=False) != entry


# --- pooling in the model --------------------------------------------------------------------


@pytest.mark.parametrize("encoder_kind", ["vocabulary", "hashed"])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_pooled_fields_and_fm_equal_a_hand_computation(tmp_path, encoder_kind, pooling):
    rows_in = ad_log(60, seed=8)
    rows = read_rows(write_csv(tmp_path / "h.csv", rows_in, weighted=True),
                     schema(pooling=pooling, weighted=True), progress=False)  # fmt: skip
    encoder = (
        FeatureEncoder.fit_rows(rows) if encoder_kind == "vocabulary"
        else HashedEncoder.fit(rows, buckets=64)
    )  # fmt: skip
    split = Split.encode(rows, encoder)
    torch.manual_seed(0)
    fm = FM(encoder.num_features, 3, init_std=0.5)
    fnn = FNN.from_fm(fm, slot_fields=encoder.slot_fields.tolist(), hidden=(4,))
    table = fm.table.detach().double().numpy()
    z = fnn_fast.ops.fnn_input(fm.table.detach(), fm.w0.detach(), split.ids, split.values,
                               fnn.slot_fields, fnn.num_fields)  # fmt: skip
    logits = fm(split.ids, split.values).detach().double().numpy()
    for i, (_, _, _, tags, weights) in enumerate(rows_in):
        ids = split.ids[i].tolist()
        x = np.array(weights, dtype=np.float64)
        if pooling == "mean":
            x = x / x.sum()
        features = [(ids[0], 1.0)] + (
            list(zip(ids[1:], x, strict=False)) if tags else [(ids[1], 1.0)]
        )
        bag = sum(xi * table[f] for f, xi in features[1:])
        np.testing.assert_allclose(z[i, 1:].numpy(), np.concatenate([table[ids[0]], bag]),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        # FM by its definition: every pair of features (repeats of a tag included)
        fm_logit = float(fm.w0.detach()) + sum(xi * table[f, 0] for f, xi in features)
        for a in range(len(features)):
            for b in range(a + 1, len(features)):
                (fa, xa), (fb, xb) = features[a], features[b]
                fm_logit += xa * xb * table[fa, 1:] @ table[fb, 1:]
        assert logits[i] == pytest.approx(fm_logit, rel=1e-5, abs=1e-5)


def bag_batch(batch: int, widths, rows: int, seed: int, pooling: str):
    """ids [B, S] and values of bags laid out as the readers do: field f's bag in its slots,
    then padded slots (value 0) on a pad row; hot ids and repeats inside bags."""
    g = torch.Generator().manual_seed(seed)
    slot_fields = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
    ids = torch.randint(1, rows, (batch, len(slot_fields)), generator=g)
    values = torch.ones(batch, len(slot_fields))
    ids[:, 0] = 3  # a hot row in every sample
    start = 0
    for w in widths:
        n = torch.randint(1, w + 1, (batch,), generator=g)  # the bag's length
        slots = torch.arange(w).expand(batch, w)
        filled = slots < n[:, None]
        if w > 1:
            ids[:, start + 1] = torch.where(n > 1, ids[:, start], ids[:, start + 1])  # a repeat
        x = 1.0 / n[:, None].float() if pooling == "mean" else torch.ones(batch, 1)
        values[:, start : start + w] = torch.where(filled, x.expand(batch, w), 0.0)
        ids[:, start : start + w] = torch.where(filled, ids[:, start : start + w], 0)  # pad: 0
        start += w
    return ids, values, slot_fields


WIDTHS = [(1, 3, 1, 5), (4,), (1, 1, 2)]


@pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")
@pytest.mark.parametrize("widths", WIDTHS)
@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("factors", [3, 10])
def test_native_kernels_pool_bags_as_the_reference(widths, pooling, factors):
    table = torch.randn(40, 1 + factors)
    ids, values, slot_fields = bag_batch(33, widths, 40, seed=len(widths), pooling=pooling)
    w0 = torch.tensor(0.3)
    fm_ref = reference.fm_forward(table.double(), w0.double(), ids, values.double())
    torch.testing.assert_close(library.fm_forward(table, ids, values).double() + 0.3, fm_ref,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    z = library.fnn_fields(table, ids, values, slot_fields, len(widths))
    z_ref = reference.fnn_fields(table, ids, values, slot_fields, len(widths), sparse=False)
    torch.testing.assert_close(z, z_ref)
    # padded slots add exactly nothing: the same rows without them give the same bits
    padded = (values == 0).any(dim=1).nonzero().flatten()
    if len(padded) == 0:  # no bag shorter than its field (all fields of one slot)
        return
    rows = padded[:1]
    keep = values[rows[0]] != 0
    short = library.fnn_fields(table, ids[rows][:, keep], values[rows][:, keep],
                              slot_fields[keep], len(widths))  # fmt: skip
    assert torch.equal(short, z[rows])
    assert torch.equal(library.fm_forward(table, ids[rows][:, keep], values[rows][:, keep]),
                       library.fm_forward(table, ids[rows], values[rows]))  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_cuda_models_pool_bags_as_the_reference(pooling):
    widths = (1, 3, 1, 5)
    ids, values, slot_fields = bag_batch(65, widths, 40, seed=2, pooling=pooling)
    torch.manual_seed(0)
    fm = FM(40, 8, init_std=0.3)
    fnn = FNN.from_fm(fm, slot_fields=slot_fields.tolist(), hidden=(8,))
    for model in (fm, fnn):
        fnn_fast.set_backend("reference")
        try:
            with torch.no_grad():
                expected = model(ids, values)
        finally:
            fnn_fast.set_backend("auto")
        with torch.no_grad():
            got = model.to("cuda")(ids.to("cuda"), values.to("cuda")).cpu()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not cpu.available(), reason="fnn_fast._C was not built")
@pytest.mark.parametrize("kind", ["sgd", "adagrad"])
@pytest.mark.parametrize("model_kind", ["fm", "fnn"])
def test_fused_training_on_bags_matches_the_reference(kind, model_kind):
    widths = (1, 4, 2)
    batches = []
    for seed in range(4):
        ids, values, slot_fields = bag_batch(24, widths, 50, seed=seed, pooling="mean")
        labels = torch.randint(0, 2, (24,), generator=torch.Generator().manual_seed(seed))
        batches.append((ids, values, labels.float()))
    rule = RowUpdate(kind, lr=0.1)

    def make():
        if model_kind == "fm":
            return FM(50, 4, init_std=0.3)
        return FNN(50, len(widths), 4, hidden=(8,), slot_fields=slot_fields, init_std=0.3)

    models = train_reference_and_native(make, rule, batches)
    (ref, _), (nat, _) = models["reference"], models["native"]
    torch.testing.assert_close(nat.table, ref.table, atol=2e-5, rtol=1e-4)
    for (name, a), (_, b) in zip(ref.named_parameters(), nat.named_parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=name)
    if model_kind == "fm" and kind == "sgd":
        # the pad row (id 0), hit only with value 0, is never moved (no weight decay here)
        torch.manual_seed(0)
        assert torch.equal(nat.table[0], make().table[0])


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ads")
    files = {}
    for name, n, seed in (("train", 3000, 0), ("test", 800, 1)):
        rows = ad_log(n, seed)
        files[f"{name}.csv"] = write_csv(folder / f"{name}.csv", rows)
        files[f"{name}.parquet"] = write_parquet(folder / f"{name}.parquet", rows)
    return files


CSV_INPUT = ["--format", "csv", "--label", "click", "--categorical", "site,tags",
             "--multi-valued", "tags:pipe:mean", "--id-column", "id"]  # fmt: skip
PARQUET_INPUT = ["--format", "parquet", "--label", "click", "--categorical", "site,tags",
                 "--bag-pooling", "mean", "--id-column", "id"]  # fmt: skip


@pytest.mark.parametrize(
    ("suffix", "inputs"),
    [("csv", CSV_INPUT), ("parquet", PARQUET_INPUT), ("csv", [*CSV_INPUT, "--hash-buckets", "64"])],
    ids=["csv", "parquet", "csv-hashed"],
)
def test_train_evaluate_and_score(tmp_path, ad_files, suffix, inputs, capsys):
    out = tmp_path / "model"
    train, test = ad_files[f"train.{suffix}"], ad_files[f"test.{suffix}"]
    assert main(["train", "--train", str(train), "--test", str(test), "--out", str(out),
                 *inputs, *FAST]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fm"]["test_auc"] > 0.7 and metrics["fnn"]["test_auc"] > 0.7  # chance: 0.5

    saved = load_model(out)  # the schema saved with the model reads the bags as training did
    if suffix == "csv":
        assert saved.schema.bag("tags").separator == "|"
        assert saved.schema.bag("tags").pooling == "mean"
    else:  # Parquet lists need no declaration: the default pooling applies
        assert saved.schema.multi_valued == {} and saved.schema.bag_pooling == "mean"
    assert saved.encoder.slot_fields.tolist() == [0, 1, 1, 1, 1]  # bags of up to 4 tags

    rows = read_rows(test, saved.schema, progress=False)
    expected = predict(saved, rows)
    scores = tmp_path / "scores.csv"
    capsys.readouterr()
    assert main(["score", "--model", str(out), "--input", str(test), "--output", str(scores),
                 "--no-progress", "--workers", "0"]) == 0  # fmt: skip
    written = pa.csv.read_csv(scores)
    assert written["id"].to_pylist() == [r[0] for r in ad_log(800, 1)]
    np.testing.assert_allclose(written["prediction"].to_numpy(), expected, rtol=1e-6)
    assert main(["evaluate", "--model", str(out), "--data", str(test), "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["fnn"]["auc"] == pytest.approx(metrics["fnn"]["test_auc"], abs=1e-6)

    # in memory: Arrow batches (list columns), pandas frames, as Spark or Ray would give them
    scorer = Scorer(out)
    log = ad_log(800, 1)
    table = pa.table({"site": [r[2] for r in log], "tags": [r[3] for r in log]})
    if suffix == "csv":
        table = table.set_column(1, "tags", pa.array(["|".join(r[3]) for r in log]))
    np.testing.assert_allclose(scorer.predict_arrow(table), expected, rtol=1e-6)
    np.testing.assert_allclose(scorer.predict_pandas(table.to_pandas()), expected, rtol=1e-6)


@pytest.fixture(scope="module")
def weighted_model(tmp_path_factory, ad_files):
    """A model trained briefly on weighted CSV bags (sum pooling)."""
    folder = tmp_path_factory.mktemp("weighted")
    train = write_csv(folder / "train.csv", ad_log(1500, seed=0), weighted=True)
    inputs = [c if c != "tags:pipe:mean" else "tags:pipe:weighted" for c in CSV_INPUT]
    out = folder / "model"
    assert main(["train", "--train", str(train), "--out", str(out), *inputs, *FAST,
                 "--fm-epochs", "1", "--fnn-epochs", "1"]) == 0  # fmt: skip
    return out


def test_export_takes_the_bags_values(weighted_model, tmp_path):
    from fnn_fast.export import encode_file, serving_module, uses_values

    test = write_csv(tmp_path / "t.csv", ad_log(200, seed=4), weighted=True)
    saved = load_model(weighted_model)
    assert uses_values(saved)
    ids, values = encode_file(weighted_model, test)  # as `fnn-fast score` encodes the file
    assert (values == 0).any() and not np.isin(values, (0, 1)).all()  # padding, weights
    for which in ("fnn", "fm"):
        expected = Scorer(saved, which=which).predict_ids(ids, values)
        with torch.no_grad():
            got = serving_module(saved, which)(torch.from_numpy(ids), torch.from_numpy(values))
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_scoring_refuses_a_bag_longer_than_the_model_takes(tmp_path, weighted_model):
    out = weighted_model
    long = tmp_path / "long.csv"
    long.write_text("id,click,site,tags\nx,1,a,tag1:1\ny,0,b,t:1|t:1|t:1|t:1|t:1\n")
    with pytest.raises(DataError, match=r"long\.csv:3: field tags has 5 values; the model takes "
                                        r"at most 4"):  # fmt: skip
        Split.encode(
            read_rows(long, load_model(out).schema, progress=False), load_model(out).encoder
        )
    scores = tmp_path / "s.csv"
    assert main(["score", "--model", str(out), "--input", str(long), "--output", str(scores),
                 "--skip-bad-lines", "--no-progress", "--workers", "0"]) == 0  # fmt: skip
    assert np.isnan(pa.csv.read_csv(scores)["prediction"].to_numpy()).tolist() == [False, True]
    assert "field tags has 5 values" in (tmp_path / "s.csv.rejects.tsv").read_text()


def test_shorter_bags_are_padded_to_the_model(tmp_path, ad_files):
    saved_rows = read_rows(ad_files["train.csv"], schema(pooling="mean"), progress=False)
    encoder = FeatureEncoder.fit_rows(saved_rows)
    short = tmp_path / "short.csv"
    short.write_text("id,click,site,tags\nx,1,a,tag1|tag2\n")
    rows = read_rows(short, schema(pooling="mean"), progress=False)
    keys, values, overflow = conform_slots(rows, encoder)
    assert keys.shape == (1, 5) and not overflow.any()
    assert (keys[0, 3:] == PAD_KEY).all() and (values[0, 3:] == 0).all()


def test_stream_needs_one_slot_layout(tmp_path, ad_files, capsys):
    common = ["train", "--train", str(ad_files["train.csv"]), "--valid", str(ad_files["test.csv"]),
              "--stream", "--cache-dir", str(tmp_path / "cache"), *FAST,
              "--fm-epochs", "1", "--fnn-epochs", "1"]  # fmt: skip
    inputs = [c if c != "tags:pipe:mean" else "tags:pipe:mean:6" for c in CSV_INPUT]
    assert main([*common, *inputs, "--out", str(tmp_path / "declared")]) == 0
    assert load_model(tmp_path / "declared").encoder.slot_fields.tolist() == [0] + [1] * 6
    # measured widths: the validation file's busiest bag may differ (here 5 tags, not 4)
    valid = tmp_path / "valid.csv"
    write_csv(valid, [*ad_log(50, 2), ("z", 1, "a.example", ["tag1"] * 5, [1.0] * 5)])
    common[4] = str(valid)
    capsys.readouterr()
    assert main([*common, *CSV_INPUT, "--out", str(tmp_path / "measured")]) == 2
    assert "another slot layout than the model's" in capsys.readouterr().err
