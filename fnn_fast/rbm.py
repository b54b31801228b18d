"""Layer-by-layer RBM pre-training of the FNN's hidden layers (Zhang, Du, Wang 2016, sec. 3).

Each hidden layer is first trained as a restricted Boltzmann machine with contrastive
divergence (CD-k) on the output of the layer below; the first one reads the FM-initialized,
real-valued input z, so it has Gaussian visible units (on z standardized per column); the
others have Bernoulli visible units. Hidden units are Bernoulli.

The hand-off into a tanh network: a hidden unit's probability is sigmoid(a) with
a = W v + c, and sigmoid(a) = (1 + tanh(a / 2)) / 2, so a tanh layer with weight W A / 2 and
bias (W a0 + c) / 2 outputs 2 p - 1, where v = A u + a0 maps the tanh network's own input u to
the RBM's visible units (standardization for z; (u + 1) / 2 for a tanh layer's output).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm


class RBM(nn.Module):
    def __init__(self, num_visible: int, num_hidden: int, gaussian_visible: bool = False):
        super().__init__()
        self.gaussian_visible = gaussian_visible
        self.weight = nn.Parameter(torch.randn(num_hidden, num_visible) * 0.01)
        self.visible_bias = nn.Parameter(torch.zeros(num_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(num_hidden))

    def hidden_probability(self, visible: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(visible @ self.weight.t() + self.hidden_bias)

    def visible_mean(self, hidden: torch.Tensor) -> torch.Tensor:
        activation = hidden @ self.weight + self.visible_bias
        return activation if self.gaussian_visible else torch.sigmoid(activation)

    @torch.no_grad()
    def contrastive_divergence(self, visible: torch.Tensor, lr: float, k: int = 1) -> float:
        """One CD-k update on a batch; returns its mean squared reconstruction error."""
        positive_hidden = self.hidden_probability(visible)
        hidden = torch.bernoulli(positive_hidden)
        negative_visible = visible
        for _ in range(k):
            negative_visible = self.visible_mean(hidden)
            negative_hidden = self.hidden_probability(negative_visible)
            hidden = torch.bernoulli(negative_hidden)
        batch = visible.shape[0]
        self.weight += (
            lr * (positive_hidden.t() @ visible - negative_hidden.t() @ negative_visible) / batch
        )
        self.visible_bias += lr * (visible - negative_visible).mean(dim=0)
        self.hidden_bias += lr * (positive_hidden - negative_hidden).mean(dim=0)
        return float((visible - negative_visible).square().mean())

    @torch.no_grad()
    def reconstruction_error(self, visible: torch.Tensor) -> float:
        """Mean squared error of the mean-field reconstruction v -> p(h) -> E[v]."""
        return float(
            (visible - self.visible_mean(self.hidden_probability(visible))).square().mean()
        )


def pretrain_tanh_layers(
    batches: Callable[[], Iterable[torch.Tensor]],
    linears: list[nn.Linear],
    *,
    epochs: int = 1,
    lr: float = 0.01,
    k: int = 1,
    progress: bool = True,
) -> list[list[float]]:
    """Pre-train ``linears`` (the tanh network's hidden layers, bottom up) as a stack of RBMs and
    write the result into them. ``batches()`` yields the network's input z, batch by batch, and
    can be called once per epoch. Returns each layer's reconstruction error per epoch."""
    # Standardize z per column: Gaussian visible units assume unit variance.
    count, total, total_sq = 0, 0.0, 0.0
    for z in batches():
        count += z.shape[0]
        total = total + z.sum(dim=0)
        total_sq = total_sq + z.square().sum(dim=0)
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    # v = A u + a0 for the current layer's input u; A is diagonal here, kept as a vector.
    scale, shift = 1.0 / std, -mean / std
    below: list[nn.Linear] = []
    errors: list[list[float]] = []
    for depth, linear in enumerate(linears):
        rbm = RBM(linear.in_features, linear.out_features, gaussian_visible=depth == 0)
        rbm.to(linear.weight.device)

        def visible_batches(scale=scale, shift=shift, below=tuple(below)):
            for z in batches():
                u = z
                for layer in below:
                    u = torch.tanh(layer(u))
                yield u * scale + shift

        layer_errors = []
        for epoch in range(epochs):
            bar = tqdm(
                desc=f"RBM layer {depth + 1} epoch {epoch + 1}/{epochs}",
                unit="batch",
                leave=False,
                disable=None if progress else True,
            )
            for visible in visible_batches():
                rbm.contrastive_divergence(visible, lr, k)
                bar.update(1)
            bar.close()
            batch_errors = [rbm.reconstruction_error(v) for v in visible_batches()]
            error = sum(batch_errors) / max(len(batch_errors), 1)
            layer_errors.append(error)
            tqdm.write(
                f"RBM layer {depth + 1} epoch {epoch + 1}: reconstruction error {error:.4f}",
                file=sys.stderr,
            )
        errors.append(layer_errors)
        with torch.no_grad():
            linear.weight.copy_(rbm.weight * scale / 2)
            linear.bias.copy_((rbm.weight @ shift + rbm.hidden_bias) / 2)
        below.append(linear)
        # The next RBM sees p = (tanh + 1) / 2 of this layer.
        scale = torch.full((linear.out_features,), 0.5, device=linear.weight.device)
        shift = torch.full((linear.out_features,), 0.5, device=linear.weight.device)
    return errors
