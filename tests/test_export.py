"""fnn-fast export: the ONNX file (in onnxruntime) and the torch.export program (loaded in a
process where fnn_fast cannot be imported) score as ``fnn-fast score`` does, within 1e-5."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import cli_scores, require_module, train_csv, train_libfm

from fnn_fast.cli import main
from fnn_fast.data import Schema, read_rows
from fnn_fast.export import encode_file, encode_rows, export_model, serving_module, uses_values
from fnn_fast.saved import load_model

TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=["csv", "csv-values", "libfm", "libfm-hashed"])
def trained(request, tmp_path_factory):
    """(model directory, rows file, the model's rows parsed): bucketized columns (ids only),
    numeric columns as values, libFM (values, a padded slot, a two-slot field), libFM with
    hashed features (one shared space, the PAD row last)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "libfm":
        model, rows_file = train_libfm(folder)
    elif request.param == "libfm-hashed":
        model, rows_file = train_libfm(folder, "--hash-buckets", "32", "--hash-space", "shared")
    else:
        model, rows_file = train_csv(
            folder, "value" if request.param == "csv-values" else "bucketize"
        )
    saved = load_model(model)
    schema = saved.schema
    if schema.featindex:
        schema = Schema.from_dict({**schema.to_dict(), "featindex": str(model / schema.featindex)})
    return model, rows_file, read_rows(rows_file, schema, progress=False)


def inputs(saved, rows):
    ids, values = encode_rows(saved, rows)
    return (ids, values) if uses_values(saved) else (ids,)


@pytest.mark.parametrize("which", ["fnn", "fm"])
def test_onnx_round_trip_matches_score(trained, which, tmp_path):
    onnxruntime = require_module("onnxruntime", "export")
    require_module("onnxscript", "export")
    model, rows_file, rows = trained
    expected = cli_scores(model, rows_file, tmp_path / "scores.npy", "--which", which)
    out = tmp_path / "model.onnx"
    assert main(["export", "--model", str(model), "--format", "onnx", "--out", str(out),
                 "--which", which]) == 0  # fmt: skip
    saved = load_model(model)
    arrays = inputs(saved, rows)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == (["ids", "values"] if uses_values(saved) else ["ids"])
    assert [o.name for o in session.get_outputs()] == ["probability"]
    feed = dict(zip(names, arrays, strict=True))
    (probability,) = session.run(None, feed)
    assert probability.shape == (len(expected),) and probability.dtype == np.float32
    np.testing.assert_allclose(probability, expected, rtol=0, atol=TOLERANCE)
    for size in (1, 7):  # the batch dimension is dynamic
        (part,) = session.run(None, {k: v[:size] for k, v in feed.items()})
        np.testing.assert_allclose(part, expected[:size], rtol=0, atol=TOLERANCE)


LOAD_WITHOUT_FNN_FAST = textwrap.dedent(
    """
    import sys
    sys.modules["fnn_fast"] = None  # any import of fnn_fast fails from here on
    import numpy as np, torch
    program = torch.export.load(sys.argv[1])
    arrays = np.load(sys.argv[2])
    tensors = [torch.from_numpy(arrays[name]) for name in ("ids", "values") if name in arrays]
    with torch.inference_mode():
        np.save(sys.argv[3], program.module()(*tensors).numpy())
        program.module()(*(t[:1] for t in tensors))  # one row: the batch is dynamic
    assert sys.modules["fnn_fast"] is None
    """
)


@pytest.mark.parametrize("which", ["fnn", "fm"])
def test_torch_export_round_trip_matches_score_without_fnn_fast(trained, which, tmp_path):
    model, rows_file, rows = trained
    expected = cli_scores(model, rows_file, tmp_path / "scores.npy", "--which", which)
    out = tmp_path / "model.pt2"
    assert main(["export", "--model", str(model), "--format", "torch-export", "--out", str(out),
                 "--which", which]) == 0  # fmt: skip
    saved = load_model(model)
    arrays = dict(zip(("ids", "values"), inputs(saved, rows), strict=False))
    np.savez(tmp_path / "inputs.npz", **arrays)
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_FNN_FAST, str(out), str(tmp_path / "inputs.npz"),
         str(tmp_path / "exported.npy")],
        check=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    probability = np.load(tmp_path / "exported.npy")
    assert probability.shape == (len(expected),)
    np.testing.assert_allclose(probability, expected, rtol=0, atol=TOLERANCE)
    # the program holds plain aten ops only: nothing of fnn_fast's custom ops
    program = torch.export.load(out)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "fnn" in t], targets


def test_serving_module_matches_the_training_modules(trained):
    model, _, rows = trained
    saved = load_model(model)
    ids, values = (torch.from_numpy(a) for a in encode_rows(saved, rows))
    values = values if uses_values(saved) else None
    for which in ("fnn", "fm"):
        with torch.inference_mode():
            expected = torch.sigmoid(saved.model(which)(ids, values))
            got = serving_module(saved, which)(ids, values)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        {"hidden": ()},
        {"hidden": (6,), "activation": "relu", "dropout": 0.3},
        {"hidden": (5, 4, 3), "activation": "gelu", "slot_fields": [0, 1, 1, 2, 2, 2]},
    ],
)
def test_serving_module_of_other_shapes(settings):
    """No hidden layer, other activations, dropout (off when serving), multi-slot fields."""
    from fnn_fast import FM, FNN
    from fnn_fast.saved import SavedModel

    torch.manual_seed(0)
    fm = FM(40, 3, init_std=0.3)
    fnn = FNN.from_fm(fm, num_fields=3, init_std=0.3, **settings).eval()
    with torch.no_grad():
        fnn.w0.fill_(0.4)
        for parameter in fnn.parameters():
            if parameter.dim() == 1:
                parameter.uniform_(-0.5, 0.5)
    slots = len(settings.get("slot_fields", [0, 1, 2]))
    ids = torch.randint(0, 40, (33, slots))
    values = torch.rand(33, slots)
    saved = SavedModel(fm, fnn, None, None, {})
    for which in ("fnn", "fm"):
        with torch.inference_mode():
            expected = torch.sigmoid(saved.model(which)(ids, values))
            got = serving_module(saved, which)(ids, values)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_export_refuses_to_overwrite_and_unknown_formats(trained, tmp_path, capsys):
    model = trained[0]
    out = tmp_path / "model.pt2"
    out.write_text("not ours")
    args = ["export", "--model", str(model), "--format", "torch-export", "--out", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "not ours"
    assert main([*args, "--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]  # no scratch files left
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, tmp_path / "x", "tflite")


def test_the_readme_encoding_recipe_gives_the_ids_of_score(tmp_path):
    """The README's "From a row to ids", followed with the encoder's files and the standard
    library only, gives the ids and values fnn-fast score uses (both numeric modes)."""
    import csv
    import hashlib
    import json
    import struct

    from safetensors.numpy import load_file

    from fnn_fast.data.tokens import bucket_token

    def key(token: str) -> int:
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    for mode in ("bucketize", "value"):
        (tmp_path / mode).mkdir()
        model, rows_file = train_csv(tmp_path / mode, mode)
        config = json.loads((model / "config.json").read_text())["schema"]
        encoder = json.loads((model / "encoder" / "encoder.json").read_text())
        vocabs = load_file(str(model / "encoder" / "encoder.safetensors"))
        numeric = set(config["numeric"])
        ids, values = [], []
        with open(rows_file, newline="") as file:
            for row in csv.DictReader(file):
                row_ids, row_values = [], []
                for field in encoder["slot_fields"]:
                    name = encoder["field_names"][field]
                    cell, value = row[name], 1.0
                    if name in numeric and cell != "" and mode == "value":
                        k, value = 0, float(cell)
                    elif name in numeric and config["numeric_rule"] == 3:  # the default
                        bucket = key(bucket_token(float(cell), 2) if cell else "") & ~0xFFFFFFFF
                        x = struct.pack("<d", float(cell) + 0.0) if cell else None
                        k = (
                            bucket
                            | (
                                int.from_bytes(hashlib.blake2b(x, digest_size=8).digest(), "little")
                                & 0xFFFFFFFF
                            )
                            | 1
                            if x
                            else bucket
                        )
                        if k not in vocabs[f"vocab.{field}"]:
                            k = bucket
                    elif name in numeric and cell != "":
                        k = key(bucket_token(float(cell), config["numeric_rule"]))
                    else:
                        k = key(cell)
                    vocab = vocabs[f"vocab.{field}"]
                    i = int(np.searchsorted(vocab, k))
                    known = i < len(vocab) and vocab[i] == k
                    row_ids.append(encoder["offsets"][field] + (1 + i if known else 0))
                    row_values.append(value)
                ids.append(row_ids)
                values.append(row_values)
        expected_ids, expected_values = encode_file(model, rows_file)
        np.testing.assert_array_equal(np.array(ids), expected_ids)
        np.testing.assert_allclose(np.array(values, np.float32), expected_values, rtol=1e-7)
        oov = np.array(encoder["offsets"])[encoder["slot_fields"]]
        assert (expected_ids != oov).any()  # known keys, and with buckets unseen ones too
        assert mode == "value" or (expected_ids == oov).any()
