"""A trained model on disk: a directory holding

- ``model.safetensors``: the FM's and the FNN's tensors (prefixes ``fm.`` and ``fnn.``),
- ``config.json``: module configs, the input schema and the training config,
- ``encoder/``: the fitted feature encoder (vocabularies, or the hashing spec of a model trained
  with hashed features), so scoring encodes exactly as training did,
- ``metrics.json``: written by the trainer (an undefined metric, as the AUC of one class, is
  null),
- ``manifest.json``: fnn-fast's list of the files it wrote (see fnn_fast.outputs).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fnn_fast.data import FeatureEncoder, Schema
from fnn_fast.metrics import finite_or_none
from fnn_fast.modules import FM, FNN

FORMAT_VERSION = 1


@dataclass
class SavedModel:
    fm: FM
    fnn: FNN | None
    encoder: FeatureEncoder
    schema: Schema | None
    config: dict

    def model(self, which: str = "fnn") -> torch.nn.Module:
        if which == "fnn" and self.fnn is not None:
            return self.fnn
        if which == "fm":
            return self.fm
        raise ValueError(f"this model directory holds no {which!r} model")


def model_config(fm: FM, fnn: FNN | None, encoder, schema: Schema | None, train_config) -> dict:
    """config.json's content: the modules' configs, the input schema, the encoder's spec and
    the training config (a dict)."""
    return {
        "format_version": FORMAT_VERSION,
        "fm": fm.config(),
        "fnn": None if fnn is None else fnn.config(),
        "schema": None if schema is None else schema.to_dict(),
        "encoder": encoder.spec(),  # informative: encoder/ is what scoring reads
        "train": train_config,
    }


def save_model(
    directory,
    fm: FM,
    fnn: FNN | None,
    encoder: FeatureEncoder,
    schema: Schema | None,
    train_config: dict | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"fm.{k}": v.detach().contiguous() for k, v in fm.state_dict().items()}
    if fnn is not None:
        tensors.update({f"fnn.{k}": v.detach().contiguous() for k, v in fnn.state_dict().items()})
    save_file(tensors, directory / "model.safetensors")
    config = model_config(fm, fnn, encoder, schema, train_config)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    encoder.save(directory / "encoder")
    return directory


def save_run(
    out, result, encoder: FeatureEncoder, schema: Schema | None, config, extra: dict | None = None,
    report_split=None, split_name: str = "test", data: dict | None = None,
) -> Path:  # fmt: skip
    """A trained run's directory: the model, metrics.json, history.json and the report (with ROC
    and calibration on ``report_split`` when given; ``data``: the inputs, name -> path, which
    the report lists with the training config). ``result``: a train.TwoStageResult. The
    caller decides whether ``out`` may be written (fnn_fast.outputs.writing_directory)."""
    from fnn_fast.report import write_report
    from fnn_fast.train import predict_probabilities

    out = Path(out)
    if schema is not None and schema.featindex:
        # The feature dictionary travels with the model, so scoring parses as training did.
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(schema.featindex, out / "featindex.txt")
        schema = Schema.from_dict({**schema.to_dict(), "featindex": "featindex.txt"})
    save_model(out, result.fm, result.fnn, encoder, schema, config.to_dict())
    metrics = {**result.metrics, **(extra or {})}
    for name, content in (("metrics.json", metrics), ("history.json", result.history)):
        text = json.dumps(finite_or_none(content), indent=2, allow_nan=False)
        (out / name).write_text(text + "\n")
    predictions = None
    if report_split is not None:
        predictions = {
            name: predict_probabilities(model, report_split)
            for name, model in (("fm", result.fm), ("fnn", result.fnn))
        }
    write_report(
        out, metrics, result.history,
        None if report_split is None else report_split.labels.numpy(), predictions, split_name,
        settings=config.to_dict(), data=data,
    )  # fmt: skip
    return out


def load_model(directory) -> SavedModel:
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} is not an fnn_fast model directory (no config.json)")
    config = json.loads(config_path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: unsupported format_version {config.get('format_version')}"
        )
    tensors = load_file(directory / "model.safetensors")
    encoder = FeatureEncoder.load(directory / "encoder")
    slot_names = [encoder.field_names[int(f)] for f in encoder.slot_fields]

    def state(prefix: str) -> dict:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    fm = FM(**config["fm"], slot_names=slot_names)
    fm.load_state_dict(state("fm."))
    fnn = None
    if config.get("fnn") is not None:
        fnn = FNN(**config["fnn"], slot_names=slot_names)
        fnn.load_state_dict(state("fnn."))
    fm.eval()
    if fnn is not None:
        fnn.eval()
    schema = Schema.from_dict(config["schema"]) if config.get("schema") else None
    return SavedModel(fm, fnn, encoder, schema, config)
