"""How far one stage-2 step moves the FM-initialized rows and each layer, with the defaults.

    python benchmarks/embedding_steps.py --data ../shared/data/ipinyou-2997 [--fm-epochs 5]

Trains the FM (default settings, ``--fm-epochs``), then runs the first epoch of stage 2 and
reports the mean relative step: ||row after - row before|| / ||row before|| over the rows present
in each batch, and ||W after - W before|| / ||W before|| for each layer's weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fnn_fast.data import FeatureEncoder, Schema, read_rows
from fnn_fast.optim import RowUpdate
from fnn_fast.train import (
    Split,
    TrainConfig,
    base_rate_logit,
    build_fnn,
    fnn_optimizers,
    train_fm,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder with train.fm.txt, featindex.fm.txt")
    parser.add_argument("--fm-epochs", type=int, default=5)
    args = parser.parse_args(argv)
    from fnn_fast.bench.machine import require_native

    info = require_native()  # refuse to time the pure-PyTorch path where the native one is meant
    print(f"fnn_fast: {info['path']}, backends {info['backends']['available']}", file=sys.stderr)
    data = Path(args.data)
    schema = Schema("libfm", featindex=str(data / "featindex.fm.txt"))
    rows = read_rows(data / "train.fm.txt", schema, progress=False)
    encoder = FeatureEncoder.fit_rows(rows)
    train = Split.encode(rows, encoder)
    config = dataclasses.replace(TrainConfig(), fm_epochs=args.fm_epochs)
    fm, _ = train_fm(train, None, encoder.num_features, config, None, False)
    torch.manual_seed(0)
    fnn = build_fnn(fm, encoder.num_features, [int(f) for f in encoder.slot_fields], config, None)
    with torch.no_grad():
        fnn.output.bias.fill_(base_rate_logit(train))
    fnn.fuse_update(
        RowUpdate(config.fnn_optimizer, config.fnn_embedding_lr, config.fnn_weight_decay)
    )
    optimizers = fnn_optimizers(fnn, config)
    layers = [m for m in [*fnn.hidden_layers, fnn.output] if isinstance(m, torch.nn.Linear)]
    rows_moved, layers_moved = [], [[] for _ in layers]
    generator = torch.Generator().manual_seed(1)
    for ids, values, labels in train.batches(config.batch_size, generator):
        present = torch.unique(ids)
        before = fnn.table[present].detach().clone()
        weights = [layer.weight.detach().clone() for layer in layers]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(fnn(ids, values), labels).backward()
        for optimizer in optimizers:
            optimizer.step()
        moved = (fnn.table[present].detach() - before).norm(dim=1)
        rows_moved.append((moved / before.norm(dim=1).clamp_min(1e-12)).mean().item())
        for i, layer in enumerate(layers):
            step = (layer.weight.detach() - weights[i]).norm() / weights[i].norm()
            layers_moved[i].append(step.item())
    print(f"{len(rows_moved)} steps; mean relative step per update:")
    print(f"  embedding rows (present in the batch): {np.mean(rows_moved):.3g}")
    for i, moved in enumerate(layers_moved):
        name = "output layer" if i == len(layers) - 1 else f"hidden layer {i + 1}"
        print(f"  {name}: {np.mean(moved):.3g}")


if __name__ == "__main__":
    main()
