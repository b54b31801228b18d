"""The training report of a run directory: learning curves, ROC and calibration plots (PNG) and
one self-contained HTML page that shows them with the metrics table."""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METRIC_KEYS = ("valid_auc", "valid_logloss", "test_auc", "test_logloss", "epochs")


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="mergesort")
    positives = labels[order] > 0.5
    tpr = np.r_[0.0, np.cumsum(positives) / max(positives.sum(), 1)]
    fpr = np.r_[0.0, np.cumsum(~positives) / max((~positives).sum(), 1)]
    return fpr, tpr


def calibration_points(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10):
    """Mean predicted against observed click rate in quantile bins of the prediction."""
    order = np.argsort(probabilities, kind="mergesort")
    groups = [g for g in np.array_split(order, bins) if len(g)]
    predicted = np.array([probabilities[g].mean() for g in groups])
    observed = np.array([labels[g].mean() for g in groups])
    return predicted, observed


def _curves(history: dict, path: Path) -> None:
    stages = [s for s in history if history[s]]
    fig, axes = plt.subplots(2, len(stages), figsize=(4.5 * len(stages), 6.5), squeeze=False)
    for column, stage in enumerate(stages):
        epochs = [r["epoch"] for r in history[stage]]
        for row, (metric, label) in enumerate((("logloss", "logloss"), ("auc", "AUC"))):
            ax = axes[row][column]
            for split in ("train", "valid"):
                values = [r.get(f"{split}_{metric}") for r in history[stage]]
                if any(v is not None for v in values):
                    ax.plot(epochs, values, marker="o", label=split)
            best = [r["epoch"] for r in history[stage] if r.get("best")]
            if best:
                ax.axvline(best[0], color="grey", linestyle=":", label="best epoch")
            ax.set_title(f"{stage}: {label}")
            ax.set_xlabel("epoch")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _roc(labels, predictions: dict, path: Path) -> list[str]:
    """Plots each model's ROC curve, its AUC in the legend; returns the legend's labels."""
    from fnn_fast.metrics import roc_auc

    fig, ax = plt.subplots(figsize=(5, 5))
    legend = []
    for name, probabilities in predictions.items():
        fpr, tpr = roc_points(labels, probabilities)
        auc = roc_auc(labels, np.asarray(probabilities))
        legend.append(f"{name} (AUC {auc:.4f})" if np.isfinite(auc) else name)
        ax.plot(fpr, tpr, label=legend[-1])
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return legend


def _calibration(labels, predictions: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for name, probabilities in predictions.items():
        predicted, observed = calibration_points(labels, probabilities)
        ax.plot(predicted, observed, marker="o", label=name)
        top = max(top, predicted.max(), observed.max())
    ax.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect")
    ax.set_xlabel("mean predicted click rate")
    ax.set_ylabel("observed click rate")
    ax.set_title("calibration (10 quantile bins)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def version() -> str:
    """The installed fnn-fast's version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("fnn-fast")
    except PackageNotFoundError:
        import fnn_fast

        return f"{fnn_fast.__version__} (not installed)"


def _table(title: str, items: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td class='text'>"
        + html.escape(v if isinstance(v, str) else json.dumps(v))
        + "</td></tr>"
        for k, v in items.items()
    )
    return f"<h2>{html.escape(title)}</h2><table>{rows}</table>"


def write_report(
    out, metrics: dict, history: dict, labels=None, predictions: dict | None = None,
    split_name: str = "test", settings: dict | None = None, data: dict | None = None,
) -> Path:  # fmt: skip
    """curves.png, roc.png, calibration.png (when labels/predictions are given) and report.html
    in ``out``. ``predictions``: model name -> probabilities for ``labels``. The page also
    states when it was written, by which fnn-fast version, from which ``data`` (name -> path or
    description) and with which ``settings`` (the training config)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = {"Learning curves": out / "curves.png"}
    _curves(history, images["Learning curves"])
    if labels is not None and predictions:
        labels = np.asarray(labels, dtype=np.float64)
        images[f"ROC ({split_name})"] = out / "roc.png"
        images[f"Calibration ({split_name})"] = out / "calibration.png"
        _roc(labels, predictions, images[f"ROC ({split_name})"])
        _calibration(labels, predictions, images[f"Calibration ({split_name})"])
    rows = "".join(
        "<tr><th>" + html.escape(name) + "</th>"
        + "".join(
            f"<td>{m[k]:.4f}</td>" if isinstance(m.get(k), float)
            else f"<td>{html.escape(str(m.get(k, '-')))}</td>"
            for k in METRIC_KEYS
        )
        + "</tr>"
        for name, m in metrics.items()
        if isinstance(m, dict) and any(k in m for k in METRIC_KEYS)
    )  # fmt: skip
    figures = "".join(
        f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
        f"src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        for title, path in images.items()
    )
    header = "".join(f"<th>{k.replace('_', ' ')}</th>" for k in METRIC_KEYS)
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    about = _table("Run", {"written": written, "fnn-fast version": version()})
    if data:
        about += _table("Data", data)
    if settings:
        about += _table("Settings", settings)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>fnn_fast training report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td.text{text-align:left;font-family:monospace}</style></head><body>"
        f"<h1>fnn_fast training report</h1><table><tr><th>model</th>{header}</tr>{rows}</table>"
        f"{figures}{about}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
