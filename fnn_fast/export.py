"""Export a saved model for serving: ONNX, or a ``torch.export`` program.

The exported graph maps encoded feature ids ``ids`` (int64 [N, S], one column per slot of the
saved encoder) and, for models whose rows carry values, ``values`` (float32 [N, S]) to click
probabilities (float32 [N]); N is dynamic. It is built from the saved weights with plain PyTorch
ops (an embedding gather, sums, the linear layers), not from the training modules, whose custom
ops need fnn_fast: the ONNX file runs in onnxruntime, and the ``torch.export`` program loads with
``torch.export.load`` and runs with torch alone.

Rows become ids with the model's encoder (``MODEL/encoder/``), exactly as ``fnn-fast score``
encodes them: :func:`encode_rows` here, or the README's description
("Export for serving") for a serving system that encodes on its own.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fnn_fast.saved import SavedModel, load_model

FORMATS = ("onnx", "torch-export")
ONNX_OPSET = 18


def uses_values(saved: SavedModel) -> bool:
    """Whether the model's encoded rows carry values other than 1, so the exported graph takes
    a ``values`` input: libFM data (feature values, and 0 for an absent field's padded slot) and
    numeric columns kept as values (``--numeric-mode value``), multi-valued columns (their
    pooling, and 0 for a short bag's padded slots). Bucketized columns give 1 always."""
    schema = saved.schema
    if schema is None or schema.format == "libfm" or schema.multi_valued:
        return True
    if len(np.unique(saved.encoder.slot_fields)) < len(saved.encoder.slot_fields):
        return True  # a field of several slots (a Parquet list column): padded slots are 0
    return bool(schema.numeric) and schema.numeric_mode == "value"


class _Lookup(nn.Module):
    """Value-weighted table rows [N, S, 1 + K] (fnn_fast.ops.reference.lookup, dense)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table.detach().clone().float())

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.table)
        if values is not None:
            rows = rows * values.unsqueeze(-1)
        return rows


class ExportedFM(nn.Module):
    """The FM's click probability: sigmoid(w0 + sum x w + 1/2 sum_k [(sum x v)^2 - sum (x v)^2])."""

    def __init__(self, fm):
        super().__init__()
        self.lookup = _Lookup(fm.table)
        self.register_buffer("w0", fm.w0.detach().clone().float().reshape(()))

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.lookup(ids, values)
        linear = rows[..., 0].sum(dim=1)
        factors = rows[..., 1:]
        pairwise = 0.5 * (factors.sum(dim=1).square() - factors.square().sum(dim=1)).sum(dim=1)
        return torch.sigmoid(self.w0 + linear + pairwise)


class ExportedFNN(nn.Module):
    """The FNN's click probability, with w0's column of the first layer folded into its bias (as
    FNN.forward does) and a multi-valued field's slots summed by a constant 0/1 matrix."""

    def __init__(self, fnn):
        super().__init__()
        self.lookup = _Lookup(fnn.table)
        self.num_fields = fnn.num_fields
        if fnn.slot_fields is None:
            self.register_buffer("slot_matrix", None)
        else:
            matrix = torch.zeros(len(fnn.slot_fields), fnn.num_fields)
            matrix[torch.arange(len(fnn.slot_fields)), fnn.slot_fields.cpu()] = 1.0
            self.register_buffer("slot_matrix", matrix)
        layers = [m for m in fnn.hidden_layers if not isinstance(m, nn.Dropout)]
        output = copy.deepcopy(fnn.output)
        first = layers[0] if layers else output
        with torch.no_grad():
            folded = nn.Linear(first.in_features - 1, first.out_features)
            folded.weight.copy_(first.weight[:, 1:])
            bias = first.weight[:, 0] * fnn.w0
            folded.bias.copy_(bias + first.bias if first.bias is not None else bias)
        rest = [copy.deepcopy(m) for m in layers[1:]]
        self.layers = nn.Sequential(folded, *rest, output) if layers else nn.Sequential(folded)
        self.float()

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.lookup(ids, values)
        if self.slot_matrix is not None:
            rows = torch.einsum("nsd,sf->nfd", rows, self.slot_matrix)
        z = rows.reshape(rows.shape[0], -1)
        return torch.sigmoid(self.layers(z).squeeze(-1))


def serving_module(model, which: str = "fnn") -> nn.Module:
    """A plain-PyTorch module (eval mode, no fnn_fast ops) computing the saved model's click
    probabilities from ids [and values]. ``model``: a model directory or a SavedModel."""
    saved = model if isinstance(model, SavedModel) else load_model(model)
    source = saved.model(which)
    module = ExportedFM(source) if which == "fm" else ExportedFNN(source)
    return module.eval().requires_grad_(False)


def _example(saved: SavedModel, rows: int = 4):
    slots = len(saved.encoder.slot_fields)
    ids = torch.as_tensor(saved.encoder.offsets[saved.encoder.slot_fields]).repeat(rows, 1)
    values = torch.ones(rows, slots) if uses_values(saved) else None
    return ids.to(torch.int64), values


def export_model(model, out, format: str = "onnx", which: str = "fnn") -> Path:
    """Write the model (``which``: "fnn" or "fm") to ``out`` as an ONNX file (``format="onnx"``,
    needs the onnx and onnxscript packages) or a ``torch.export`` program (``"torch-export"``,
    a .pt2 file for ``torch.export.load``). Inputs ``ids`` [and ``values``], output
    ``probability``; the batch dimension is dynamic."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    saved = model if isinstance(model, SavedModel) else load_model(model)
    module = serving_module(saved, which)
    ids, values = _example(saved)
    args = (ids,) if values is None else (ids, values)
    batch = torch.export.Dim("batch", min=1)
    dynamic = ({0: batch},) if values is None else ({0: batch}, {0: batch})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "torch-export":
        program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        torch.export.save(program, out)
        return out
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            f"ONNX export needs the onnx and onnxscript packages ({error}); "
            "pip install 'fnn-fast[export]'"
        ) from None
    names = ["ids"] if values is None else ["ids", "values"]
    quiet = logging.getLogger("torch.onnx")  # the exporter's notes on its own internals
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=names, output_names=["probability"],
                dynamic_shapes=dynamic, opset_version=ONNX_OPSET, external_data=False,
                verbose=False,
            )  # fmt: skip
    finally:
        quiet.setLevel(level)
    program.save(str(out), external_data=_too_big_for_one_file(module))
    return out


def _too_big_for_one_file(module: nn.Module) -> bool:
    """A protobuf holds at most 2 GB: larger tables go to a data file beside the .onnx."""
    size = sum(b.numel() * b.element_size() for b in module.state_dict().values())
    return size > 1_800_000_000


def encode_rows(saved: SavedModel, rows):
    """ids int64 [N, S] and values float32 [N, S] of parsed rows (fnn_fast.data.read_rows), as
    ``fnn-fast score`` encodes them. A row with more features in a field than the model has
    slots raises DataError."""
    from fnn_fast.data import DataError
    from fnn_fast.data.parts import conform_slots, overflow_reason

    keys, values, overflow = conform_slots(rows, saved.encoder)
    if overflow.any():
        row = int(np.flatnonzero(overflow)[0])
        raise DataError(
            rows.source, int(rows.lines[row]), overflow_reason(rows, saved.encoder, row)
        )
    return saved.encoder.transform(keys, values)


def encode_file(model_dir, path):
    """ids and values of every row of a file in the model's input format (labels optional), as
    ``fnn-fast score`` encodes them; a libFM model's feature dictionary is read from its
    directory."""
    from fnn_fast.data import Schema, read_rows

    saved = load_model(model_dir)
    schema = saved.schema
    if schema is None:
        raise ValueError(f"{model_dir}: the model has no input schema; it cannot read files")
    if schema.featindex and not Path(schema.featindex).is_absolute():
        featindex = str(Path(model_dir) / schema.featindex)
        schema = Schema.from_dict({**schema.to_dict(), "featindex": featindex})
    return encode_rows(saved, read_rows(path, schema, progress=False, labelled=False))


# --- fnn-fast export ------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory written by train")
    parser.add_argument(
        "--format", choices=FORMATS, default="onnx",
        help="onnx (runs in onnxruntime) or torch-export (a .pt2 program for torch.export.load)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="the file to write (.onnx or .pt2)")
    parser.add_argument("--which", choices=("fnn", "fm"), default="fnn", help="the model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args) -> int:
    import os
    import shutil
    import sys

    from fnn_fast.outputs import check_creatable

    out = Path(args.out)
    if out.is_dir():
        raise FileExistsError(f"{out} is a directory: --out names the file to write")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    check_creatable(out, "exported model")
    saved = load_model(args.model)
    # written in a scratch folder beside --out, then moved: no half-written file at --out, and
    # an ONNX model's data file (tables over 2 GB) keeps the name the model refers to
    scratch = out.parent / f".{out.name}.{os.getpid()}.tmp"
    scratch.mkdir(parents=True)
    try:
        export_model(saved, scratch / out.name, args.format, args.which)
        for written in scratch.iterdir():
            os.replace(written, out.parent / written.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    inputs = "ids int64 [N, S]" + (", values float32 [N, S]" if uses_values(saved) else "")
    slots = len(saved.encoder.slot_fields)
    print(
        f"exported the {args.which.upper()} to {out} ({args.format}): inputs {inputs} with "
        f"S = {slots}, output probability float32 [N]",
        file=sys.stderr,
    )
    return 0
