"""Drop-in nn.Modules for the two FNN stages.

Both keep one packed table [num_features, 1 + K] (w_i in column 0, v_i after it) so a lookup
reads one row, and produce sparse gradients for it by default: only the rows of features present
in a batch get a gradient, and :class:`fnn_fast.optim.SparseRowOptimizer` updates only those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fnn_fast import ops
from fnn_fast.memory import table_zeros
from fnn_fast.ops import checks
from fnn_fast.optim import RowUpdate

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def _as_slot_fields(slot_fields, num_fields: int | None):
    """Slots map to fields one to one unless a multi-valued field has several slots. Checked
    here, once: the ops then need no device sync to trust the map on a GPU."""
    if slot_fields is None:
        if num_fields is None:
            raise ValueError("FNN needs num_fields (or slot_fields)")
        checks.check_num_fields(num_fields)
        return None, num_fields
    slot_fields = torch.as_tensor(slot_fields)
    if slot_fields.dim() != 1 or slot_fields.numel() == 0 or slot_fields.is_floating_point():
        raise ValueError(f"slot_fields must be a non-empty list of ints, got {slot_fields!r:.80}")
    slot_fields = slot_fields.to(torch.int64)
    if num_fields is None:
        num_fields = int(slot_fields.max()) + 1
    columns = torch.zeros(0, len(slot_fields), dtype=torch.int64)  # their shape, for the check
    checks.check_fields(columns, slot_fields, num_fields)
    checks.check_slot_fields_range(int(slot_fields.min()), int(slot_fields.max()), num_fields)
    if torch.equal(slot_fields, torch.arange(num_fields)):
        return None, num_fields
    return slot_fields, num_fields


class _FusedUpdate:
    """Lets a module's table be updated inside backward by the native kernels."""

    def _init_fused_update(self) -> None:
        self.row_update: RowUpdate | None = None
        for name in ("update_state1", "update_state2", "update_step", "update_hparams"):
            self.register_buffer(name, None, persistent=False)

    def fuse_update(self, rule: RowUpdate | None):
        """Apply ``rule`` to the rows present in each batch during backward, in the native
        kernels (when they run: CPU tensors, native backend). The table's ``.grad`` then stays
        None, so an optimizer given the table skips it; other parameters train as usual. With
        the reference backend the table gets its sparse gradient as before. ``None`` undoes it.
        """
        self.row_update = rule
        state1 = state2 = step = hparams = None
        if rule is not None:
            state1, state2 = rule.new_state(self.table.detach())
            step = torch.zeros((), dtype=torch.int64)
            hparams = rule.hparams()
        self.update_state1, self.update_state2 = state1, state2
        self.update_step, self.update_hparams = step, hparams
        return self

    def fused_state(self) -> dict[str, torch.Tensor]:
        """The fused rule's row state and step count (not in ``state_dict``: they are training
        state, not weights), for a checkpoint; empty when no rule is fused."""
        if self.row_update is None:
            return {}
        return {
            "state1": self.update_state1,
            "state2": self.update_state2,
            "step": self.update_step,
        }

    @torch.no_grad()
    def load_fused_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`fused_state` gave (the same rule must be fused)."""
        if self.row_update is None:
            if state:
                raise ValueError("no update rule is fused to load a row state into")
            return
        for key, buffer in (
            ("state1", self.update_state1), ("state2", self.update_state2),
            ("step", self.update_step),
        ):  # fmt: skip
            saved = state[key]
            if saved.shape != buffer.shape or saved.dtype != buffer.dtype:
                raise ValueError(
                    f"fused row state {key}: {tuple(saved.shape)} {saved.dtype} saved, "
                    f"{tuple(buffer.shape)} {buffer.dtype} expected"
                )
            buffer.copy_(saved)

    def _apply(self, fn, recurse=True):
        # The step count and the hyperparameters are read by the host to launch the kernels:
        # kept on the CPU when the module moves to a GPU, reading them costs no device sync.
        host = self.update_step, self.update_hparams
        self.update_step = self.update_hparams = None
        try:
            return super()._apply(fn, recurse)
        finally:
            self.update_step, self.update_hparams = host

    def _fused_args(self):
        if self.row_update is None:
            return None
        return ops.FusedArgs(
            self.update_state1,
            self.update_state2,
            self.update_step,
            self.update_hparams,
            self.row_update.kind,
        )


class FM(_FusedUpdate, nn.Module):
    """Factorization machine: ``w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j``.

    ``forward(ids, values=None)``: ids int [B, S] (one feature per slot), values float [B, S]
    (None means all ones); returns logits [B].
    """

    def __init__(
        self,
        num_features: int,
        num_factors: int = 10,
        *,
        init_std: float = 0.01,
        sparse: bool = True,
        slot_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.num_features = num_features
        self.num_factors = num_factors
        self.sparse = sparse
        self.slot_names = list(slot_names) if slot_names is not None else None
        self.w0 = nn.Parameter(torch.zeros(()))
        table = table_zeros(num_features, 1 + num_factors)
        table[:, 1:].normal_(0.0, init_std)
        self.table = nn.Parameter(table)
        self._init_fused_update()

    def config(self) -> dict:
        return {"num_features": self.num_features, "num_factors": self.num_factors}

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        ops.check_ids(ids, self.num_features, self.slot_names)
        return ops.fm_forward(self.table, self.w0, ids, values, self.sparse, self._fused_args())


class FNN(_FusedUpdate, nn.Module):
    """Factorization-machine supported neural network (Zhang, Du, Wang, ECIR 2016).

    Input ``z = [w0, z_1, ..., z_F]`` with ``z_f = x_f [w_f, v_f]`` from the packed table,
    hidden layers (tanh by default) with dropout, and one output logit. Build it from a trained
    FM with :meth:`from_fm` so the embedding starts from the FM's parameters.
    """

    def __init__(
        self,
        num_features: int,
        num_fields: int,
        num_factors: int = 10,
        hidden: Sequence[int] = (200, 300, 100),
        *,
        activation: str = "tanh",
        dropout: float = 0.0,
        slot_fields: Sequence[int] | torch.Tensor | None = None,
        init_std: float = 0.01,
        sparse: bool = True,
        slot_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")
        self.num_features = num_features
        self.num_factors = num_factors
        self.hidden = [int(h) for h in hidden]
        self.activation = activation
        self.dropout = dropout
        self.sparse = sparse
        self.slot_names = list(slot_names) if slot_names is not None else None
        slot_fields, self.num_fields = _as_slot_fields(slot_fields, num_fields)
        self.register_buffer("slot_fields", slot_fields, persistent=False)
        self.w0 = nn.Parameter(torch.zeros(()))
        table = table_zeros(num_features, 1 + num_factors)
        self.table = nn.Parameter(torch.randn(table.shape, out=table).mul_(init_std))
        self._init_fused_update()
        layers: list[nn.Module] = []
        width = 1 + self.num_fields * (1 + num_factors)
        for size in self.hidden:
            # The first layer reads z, so it is the one that folds w0 (InputLinear).
            linear = (nn.Linear if layers else InputLinear)(width, size)
            # Glorot suits tanh; it also keeps the FM-initialized input in the active range.
            nn.init.xavier_uniform_(
                linear.weight,
                gain=nn.init.calculate_gain(
                    "tanh" if activation == "tanh" else "relu" if activation == "relu" else "linear"
                ),
            )
            nn.init.zeros_(linear.bias)
            layers += [linear, ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.hidden_layers = nn.Sequential(*layers)
        self.output = (nn.Linear if layers else InputLinear)(width, 1)
        bound = 1.0 / math.sqrt(width)
        nn.init.uniform_(self.output.weight, -bound, bound)
        nn.init.zeros_(self.output.bias)

    @classmethod
    def from_fm(cls, fm: FM, num_fields: int | None = None, **kwargs) -> FNN:
        """An FNN whose embedding (table and w0) starts as a copy of a trained FM's."""
        slot_fields = kwargs.get("slot_fields")
        if num_fields is None and slot_fields is None:
            raise ValueError("from_fm needs num_fields (or slot_fields)")
        kwargs.setdefault("slot_names", fm.slot_names)
        model = cls(fm.num_features, num_fields, fm.num_factors, **kwargs)
        with torch.no_grad():
            model.table.copy_(fm.table)
            model.w0.copy_(fm.w0)
        return model

    def config(self) -> dict:
        return {
            "num_features": self.num_features,
            "num_fields": self.num_fields,
            "num_factors": self.num_factors,
            "hidden": self.hidden,
            "activation": self.activation,
            "dropout": self.dropout,
            "slot_fields": None if self.slot_fields is None else self.slot_fields.tolist(),
        }

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.table, self.w0]

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        """Parameters of each hidden layer then of the output layer, for layer-wise rates."""
        groups = [list(m.parameters()) for m in self.hidden_layers if isinstance(m, nn.Linear)]
        return groups + [list(self.output.parameters())]

    def input(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        ops.check_ids(ids, self.num_features, self.slot_names)
        return ops.fnn_input(
            self.table, self.w0, ids, values, self.slot_fields, self.num_fields, self.sparse,
            self._fused_args(),
        )  # fmt: skip

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        layers = list(self.hidden_layers)
        first = layers[0] if layers else self.output
        if not isinstance(first, InputLinear):  # a first layer the user swapped in: plain z
            return self.output(self.hidden_layers(self.input(ids, values))).squeeze(-1)
        ops.check_ids(ids, self.num_features, self.slot_names)
        width = self.num_fields * (1 + self.num_factors)
        # Training on the CPU: z and its gradient in rows of a multiple of 16 floats (zero
        # padded) make the first layer's matrix products up to 1.5x faster (MKL, 2026-11-29).
        training_on_cpu = torch.is_grad_enabled() and self.table.device.type == "cpu"
        padded = -(-width // 16) * 16 if training_on_cpu else width
        fields = ops.fnn_fields(
            self.table, ids, values, self.slot_fields, self.num_fields, self.sparse,
            self._fused_args(), padded,
        )  # fmt: skip
        return fnn_head(fields, self.w0, self.hidden_layers, self.output)


class InputLinear(nn.Linear):
    """The FNN's first layer: an ``nn.Linear`` over z = [w0, z_1, ..., z_F].

    ``layer(z)`` is the plain linear map. ``layer(fields, w0=w0)`` takes z without its w0
    column (zero padded on the right, as the training kernels write it) and folds w0's column
    into the bias: the same function of the same parameters, without a pass to build z nor one
    to slice its gradient. Either way it is a module call (hooks see it) of the saved weights.
    """

    def forward(self, input: torch.Tensor, w0: torch.Tensor | None = None) -> torch.Tensor:
        if w0 is None:
            return super().forward(input)
        weight = self.weight[:, 1:]
        if input.shape[-1] > weight.shape[1]:
            weight = nn.functional.pad(weight, (0, input.shape[-1] - weight.shape[1]))
        bias = self.weight[:, 0] * w0
        if self.bias is not None:
            bias = bias + self.bias
        return nn.functional.linear(input, weight, bias)


def fnn_head(fields: torch.Tensor, w0, hidden_layers: nn.Sequential, output) -> torch.Tensor:
    """The FNN's network above z = [w0, fields], the logits [N]: ``fields`` holds z's field
    columns (zero padded on the right where the caller padded them), and the first layer (an
    :class:`InputLinear`) folds w0's column into its bias. Shared by :class:`FNN` and the
    sharded FNN."""
    first = hidden_layers[0] if len(hidden_layers) else output
    out = first(fields, w0=w0)
    if first is not output:
        out = output(hidden_layers[1:](out))
    return out.squeeze(-1)


# The FM's function through tanh layers (layer_init="fm"): a pair of units with opposite inputs
# around a bias a gives tanh(a + u) + tanh(a - u) - 2 tanh(a) = c u^2 + O(u^4), with
# c = -2 t (1 - t^2), t = tanh(a), largest at t = 1 / sqrt(3).
_SQUARE_T = 1.0 / math.sqrt(3.0)
_SQUARE_BIAS = math.atanh(_SQUARE_T)
_SQUARE_GAIN = -2.0 * _SQUARE_T * (1.0 - _SQUARE_T**2)
FM_START_SPREAD = 0.25


def fm_start_units(num_factors: int) -> int:
    """Units of the first hidden layer that carry the FM's function (layer_init="fm")."""
    return 1 + 2 * num_factors


def fm_start_unfit(fnn) -> str | None:
    """Why ``fnn`` cannot start as its FM's function (layer_init="fm"), or None if it can."""
    linears = [m for m in fnn.hidden_layers if isinstance(m, nn.Linear)]
    if fnn.activation != "tanh":
        return f"it needs tanh hidden layers, not {fnn.activation}"
    if not linears:
        return "it needs a hidden layer"
    if linears[0].out_features < fm_start_units(fnn.num_factors):
        return (
            f"its first hidden layer needs at least 1 + 2K = "
            f"{fm_start_units(fnn.num_factors)} units, not {linears[0].out_features}"
        )
    return None


@torch.no_grad()
def start_as_fm(fnn, fm, batches, reduce=None, spread: float | None = None) -> None:
    """Set the FNN's tanh layers so that, before any step, it computes (nearly) ``fm``'s logit
    (it must be built from ``fm``: :meth:`FNN.from_fm`); every other unit keeps its random
    weights and starts silent (its output weight is zero), to be trained in. The FNN then
    fine-tunes from the FM's function instead of from a random function of the FM's
    embedding, which on small click logs started worse than the FM and stayed there.

    The FM's logit for 0/1 feature values is w0 + sum_f w_f + sum_k s_k^2 / 2 with
    s_k = sum_f v_fk (z's k-th factor column summed over the fields), once each row's w has
    absorbed the pairwise sum's diagonal: w -= |v|^2 / 2 (exact for values 0 and 1, an
    approximation for other values). In the first hidden layer, unit 0 reads the linear part
    (w columns, and mu_k s_k for the squares' cross terms), and units 2k+1, 2k+2 read
    +-(s_k - mu_k) around the bias where tanh is most curved, their sum minus a constant being
    (s_k - mu_k)^2 up to a known factor. Unit 0 of the second layer adds them up, unit 0 of
    the layers above passes the sum on, and the output reads it; each quantity is scaled so
    its spread in tanh is ``spread``, where tanh is nearly linear (and monotone throughout).
    ``batches()`` yields (ids, values) of training rows; the means and spreads come from them
    (``reduce``: sums a tensor over the ranks, for sharded models: ``Ranks.sums``)."""
    spread = FM_START_SPREAD if spread is None else spread
    reason = fm_start_unfit(fnn)
    if reason:
        raise ValueError(f"the FNN cannot start as the FM: {reason}")
    linears = [m for m in fnn.hidden_layers if isinstance(m, nn.Linear)]
    K, F = fnn.num_factors, fnn.num_fields
    first = linears[0]
    was_training = fnn.training, fm.training
    fnn.eval(), fm.eval()  # no dropout while measuring
    device = first.weight.device
    w_cols = torch.arange(F, device=device) * (1 + K)  # in z without its w0 column

    def moments(quantity):
        """Mean and std over the rows of ``quantity(ids, values)`` [N, Q] (in float64)."""
        sums = None  # [count, sum of each column, sum of each column's squares]
        for ids, values in batches():
            q = quantity(ids, values).double()
            batch = torch.cat([q.new_full((1,), q.shape[0]), q.sum(0), q.square().sum(0)])
            sums = batch if sums is None else sums + batch
        if sums is None:
            raise ValueError("the FNN cannot start as the FM: no training rows to measure")
        if reduce is not None:
            sums = reduce(sums).to(device)
        count, columns = sums[0].clamp_min(1), (sums.numel() - 1) // 2
        mean = sums[1 : 1 + columns] / count
        std = (sums[1 + columns :] / count - mean.square()).clamp_min(0).sqrt()
        return mean, std

    seen = {}

    def capture(module, args, kwargs, output):  # the first layer's input (z's field columns)
        seen["fields"], seen["pre"] = args[0], output

    hook = first.register_forward_hook(capture, with_kwargs=True)
    try:
        table = fnn.embedding_parameters()[0]  # the rows (this rank's, when sharded)
        table[:, 0] -= 0.5 * table[:, 1:].square().sum(1)

        def parts(ids, values):  # [linear part, s_1 .. s_K]
            fnn(ids, values)
            fields = seen["fields"][:, : F * (1 + K)]
            s = torch.stack([fields[:, w_cols + 1 + k].sum(1) for k in range(K)], 1)
            return torch.cat([fields[:, w_cols].sum(1, keepdim=True), s], 1)

        mean, std = moments(parts)
        mu, linear_mean = mean[1:].float(), float(mean[0])
        delta = (spread / std[1:].clamp_min(1e-6)).float()
        # the spread of the linear part (w columns + mu . s), bounded by the sum of the parts'
        eps = spread / max(float(std[0] + (mu.double().abs() * std[1:]).sum()), 1e-6)
        first.weight[: fm_start_units(K)] = 0.0
        first.bias[: fm_start_units(K)] = 0.0
        # InputLinear's column 0 is z's w0 column; the fields start at column 1.
        first.weight[0, 1 + w_cols] = eps
        for k in range(K):
            columns = 1 + w_cols + 1 + k
            first.weight[0, columns] = eps * mu[k]
            first.weight[1 + 2 * k, columns] = delta[k]
            first.weight[2 + 2 * k, columns] = -delta[k]
            first.bias[1 + 2 * k] = _SQUARE_BIAS - delta[k] * mu[k]
            first.bias[2 + 2 * k] = _SQUARE_BIAS + delta[k] * mu[k]
        first.bias[0] = -eps * (linear_mean + float((mu * mean[1:].float()).sum()))
        # D = h_0 / eps + sum_k beta_k (h_2k+1 + h_2k+2 - 2t) ~ the FM's logit, less a constant
        beta = 0.5 / (_SQUARE_GAIN * delta.square())
        coef = torch.zeros(first.out_features, device=device)
        coef[0] = 1.0 / eps
        coef[1 : fm_start_units(K)] = beta.repeat_interleave(2)
        const = float(-2.0 * _SQUARE_T * beta.sum())
        if len(linears) == 1:  # the output layer sums them itself
            fnn.output.weight[0] = coef
            fnn.output.bias.zero_()
        else:
            second = linears[1]

            def carried(ids, values):
                fnn(ids, values)
                return (torch.tanh(seen["pre"]) @ coef + const)[:, None]

            d_mean, d_std = moments(carried)
            eps2 = spread / max(float(d_std), 1e-6)
            second.weight[0] = eps2 * coef
            second.bias[0] = eps2 * (const - float(d_mean))
            for layer in linears[2:]:
                layer.weight[0] = 0.0
                layer.weight[0, 0] = 1.0
                layer.bias[0] = 0.0
            fnn.output.weight[0] = 0.0  # the other units start silent
            fnn.output.weight[0, 0] = 1.0 / eps2
            fnn.output.bias.zero_()
    finally:
        hook.remove()
    # The constants that tanh's compression leaves: the output bias matches the FM's mean logit.
    gap, _ = moments(lambda ids, values: (fm(ids, values) - fnn(ids, values))[:, None])
    fnn.output.bias.fill_(float(gap))
    fnn.train(was_training[0]), fm.train(was_training[1])
