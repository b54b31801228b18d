"""The peers a user would pick instead of fnn_fast, each with the same model and its authors'
settings:

- ``fbgemm``: FBGEMM's CPU training TBE (``SplitTableBatchedEmbeddingBagsCodegen``), exact
  row-wise Adagrad fused into backward (the same update as fnn_fast's default), the FM or the
  FNN's layers in PyTorch;
- ``fbgemm-infer-fp32``, ``fbgemm-infer-fp16``: FBGEMM's inference TBE
  (``IntNBitTableBatchedEmbeddingBagsCodegen``) with float32 or float16 weights, for scoring;
- ``torchfm``: pytorch-fm's FactorizationMachineModel and FactorizationSupportedNeuralNetwork
  Model (with fnn_fast's layer sizes, no dropout), dense embedding gradients, Adam with its
  examples' rate and weight decay;
- ``torch-adagrad``: plain PyTorch as most users write it, ``nn.Embedding(sparse=True)`` with
  ``torch.optim.Adagrad`` (element-wise Adagrad: D state floats a row against row-wise
  Adagrad's one), the like-for-like peer of fnn_fast's default update;
- ``torch-sparseadam``: the same with ``torch.optim.SparseAdam`` (two state floats an element);
- ``deepctr-deepfm``, ``deepctr-pnn``: DeepCTR-Torch's DeepFM and PNN (no product layer: its
  FNN-like model), model level, with the settings ``fnn-fast compare`` uses (fnn_fast.peers).

Where a peer takes a table and an MLP, it starts from fnn_fast's initial ones and computes the
same function: w0 folded into the first layer's bias, no extra concatenation.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from fnn_fast.bench.contenders.base import (
    INIT_STD,
    MLP_LR,
    PEER_ADAM_LR,
    TABLE_LR,
    Contender,
    ModelSpec,
    Scored,
    SkipCase,
    Trainable,
    bce,
    fm_logits,
    import_module,
    initial_model,
    reason_if_missing,
    small_gradient,
    zero_step,
)

_FBGEMM = "fbgemm_gpu.split_table_batched_embeddings_ops_training"
_FBGEMM_INFERENCE = "fbgemm_gpu.split_table_batched_embeddings_ops_inference"
_FBGEMM_COMMON = "fbgemm_gpu.split_table_batched_embeddings_ops_common"
_FBGEMM_CONFIGS = "fbgemm_gpu.split_embedding_configs"
_FBGEMM_INSTALL = "fbgemm-gpu-cpu==1.8.0 (or fnn-fast[bench])"
FBGEMM_LR = TABLE_LR["rowwise_adagrad"]


def _fbgemm_table(rows: int, fields: int, dim: int, initial: torch.Tensor | None = None):
    """One table shared by the F fields, one id per bag, exact row-wise Adagrad fused into
    backward. FBGEMM needs a row width that is a multiple of 4: the FM reads the first D."""
    tbe = import_module(_FBGEMM, _FBGEMM_INSTALL)
    common = import_module(_FBGEMM_COMMON, _FBGEMM_INSTALL)
    configs = import_module(_FBGEMM_CONFIGS, _FBGEMM_INSTALL)
    width = 4 * ((dim + 3) // 4)
    table = tbe.SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(rows, width, common.EmbeddingLocation.HOST, common.ComputeDevice.CPU)],
        feature_table_map=[0] * fields,
        optimizer=configs.EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=FBGEMM_LR,
        pooling_mode=common.PoolingMode.SUM,
    )
    # FBGEMM starts from zeros, where an FM's factors get no gradient: start as fnn_fast does.
    with torch.no_grad():
        weights = table.split_embedding_weights()[0]
        if initial is None:
            weights[:, 1:dim].normal_(0.0, INIT_STD)
        else:
            weights[:, :dim] = initial
    return table, width


def _offsets(cache: dict, n: int) -> torch.Tensor:
    if n not in cache:
        cache[n] = torch.arange(n + 1)
    return cache[n]


class _FbgemmModel(Scored):
    def __init__(self, model: str, spec: ModelSpec):
        initial, self.layers = initial_model(model, spec)
        self.table, self.width = _fbgemm_table(spec.num_features, spec.fields, spec.dim, initial)
        self.factors, self.fields, self.dim = spec.factors, spec.fields, spec.dim
        self.w0 = nn.Parameter(torch.zeros(()))
        self.module = nn.ModuleDict({"table": self.table, "mlp": self.layers or nn.Identity()})
        # The table's update is fused into its backward; the bias and the MLP need optimizers.
        self.optimizers = [torch.optim.Adagrad([self.w0], lr=FBGEMM_LR)]
        if self.layers is not None:
            self.optimizers.append(torch.optim.Adam(self.layers.parameters(), lr=MLP_LR))
        self.offsets: dict[int, torch.Tensor] = {}

    def score(self, batch):
        # FBGEMM's CPU training lookup has no kernel outside autograd: no_grad, not inference.
        self.module.eval()
        with torch.no_grad():
            return torch.sigmoid(self.logits(batch))

    def logits(self, batch):
        ids = batch.field_major  # FBGEMM takes the ids field by field
        # its output is batch-major: [B, F * width]
        rows = self.table(ids, _offsets(self.offsets, ids.numel())).view(
            -1, self.fields, self.width
        )
        if self.layers is None:
            return fm_logits(rows, self.w0, self.factors)
        return self.layers(rows[..., : self.dim], self.w0)


class Fbgemm(Contender):
    """FBGEMM's CPU training TBE. The ids are laid out field by field (FBGEMM's table-batched
    input) once per batch, untimed, at op and model level alike."""

    name = "fbgemm"
    kind = "peer"
    layouts = ("field_major",)
    ops = frozenset({"fm_forward", "fm_train_step", "fnn_fields_forward", "fnn_fields_train"})
    models = frozenset({"fm", "fnn"})

    def unavailable(self, device):
        if device != "cpu":
            return "fbgemm-gpu-cpu runs on CPU only"
        return reason_if_missing(_FBGEMM, _FBGEMM_COMMON, _FBGEMM_CONFIGS, install=_FBGEMM_INSTALL)

    def optimizer(self, case):
        return f"exact rowwise_adagrad lr {FBGEMM_LR:g} (fused)"

    def memory_bytes(self, case):
        s = case.shape
        return s.rows * (4 * ((s.dim + 3) // 4) + 1) * 4

    def build(self, model, spec):
        return _FbgemmModel(model, spec)

    def _op(self, case, data, train: bool, fm: bool):
        s = case.shape
        table, width = _fbgemm_table(s.rows, s.fields, s.dim)
        w0 = nn.Parameter(torch.zeros(()))
        w0_optimizer = torch.optim.Adagrad([w0], lr=FBGEMM_LR)
        offsets = torch.arange(s.batch * s.fields + 1)
        grad_z = small_gradient((s.batch, s.fields, s.dim), data.device)

        def forward(batch):
            rows = table(batch.field_major, offsets).view(s.batch, s.fields, width)
            return fm_logits(rows, w0, s.factors) if fm else rows[..., : s.dim]

        if not train:

            def step():
                with torch.no_grad():
                    return forward(data.next())

            return step
        if fm:

            def step():
                batch = data.next()
                zero_step([w0_optimizer], lambda: bce(forward(batch), batch.labels))

            return step

        def step():
            forward(data.next()).backward(grad_z)

        return step

    def fm_forward(self, case, data):
        return self._op(case, data, train=False, fm=True)

    def fm_train_step(self, case, data):
        return self._op(case, data, train=True, fm=True)

    def fnn_fields_forward(self, case, data):
        return self._op(case, data, train=False, fm=False)

    def fnn_fields_train(self, case, data):
        return self._op(case, data, train=True, fm=False)


class _FbgemmInferenceTable:
    """FBGEMM's inference TBE over one table shared by the F fields, rows padded to a multiple
    of 8 (its alignment for every weight type), weights of the given precision."""

    def __init__(self, precision: str, rows: int, fields: int, dim: int, initial=None):
        inference = import_module(_FBGEMM_INFERENCE, _FBGEMM_INSTALL)
        common = import_module(_FBGEMM_COMMON, _FBGEMM_INSTALL)
        configs = import_module(_FBGEMM_CONFIGS, _FBGEMM_INSTALL)
        sparse_type = {"fp32": configs.SparseType.FP32, "fp16": configs.SparseType.FP16}
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
        self.width, self.fields, self.dim = 8 * ((dim + 7) // 8), fields, dim
        self.tbe = inference.IntNBitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[
                ("table", rows, self.width, sparse_type[precision], common.EmbeddingLocation.HOST)
            ],
            feature_table_map=[0] * fields,
            pooling_mode=common.PoolingMode.SUM,
            device="cpu",
            output_dtype=configs.SparseType.FP32,
        )
        self.tbe.fill_random_weights()  # allocates the weights
        weights = self.tbe.split_embedding_weights()[0][0].view(dtype).view(rows, self.width)
        with torch.no_grad():
            weights.zero_()
            if initial is None:
                weights[:, :dim].normal_(0.0, INIT_STD)
            else:
                weights[:, :dim] = initial.to(dtype)
        self.offsets: dict[int, torch.Tensor] = {}

    def rows(self, batch) -> torch.Tensor:
        """The batch's rows [B, F, D] (float32)."""
        ids = batch.field_major_int32
        out = self.tbe(ids, _offsets(self.offsets, ids.numel()).int())
        return out.view(-1, self.fields, self.width)[..., : self.dim]


class _FbgemmInferenceModel(Trainable):
    def __init__(self, precision: str, model: str, spec: ModelSpec):
        initial, self.layers = initial_model(model, spec)
        self.table = _FbgemmInferenceTable(
            precision, spec.num_features, spec.fields, spec.dim, initial
        )
        self.factors, self.w0 = spec.factors, torch.zeros(())

    def train_step(self, batch):
        raise SkipCase("an inference table: scoring only")

    def score(self, batch):
        with torch.inference_mode():
            rows = self.table.rows(batch)
            if self.layers is None:
                return torch.sigmoid(fm_logits(rows, self.w0, self.factors))
            return torch.sigmoid(self.layers.eval()(rows, self.w0))


class _CpuVariant(Contender):
    """A peer measured on CPU only, in variants named ``prefix-variant``."""

    kind = "peer"
    prefix = ""
    off_cpu = "measured here on CPU only"

    def __init__(self, variant: str):
        self.variant = variant
        self.name = f"{self.prefix}-{variant}"

    def unavailable(self, device):
        return self.off_cpu if device != "cpu" else self.missing()

    def missing(self) -> str | None:
        """Why the peer cannot run here (a package missing), None when it can."""
        raise NotImplementedError


class FbgemmInference(_CpuVariant):
    """FBGEMM's inference TBE, for the scoring cases: FM forward, the FNN's input, scoring;
    ``variant``: the weights' precision, fp32 or fp16."""

    prefix = "fbgemm-infer"
    layouts = ("field_major_int32",)
    ops = frozenset({"fm_forward", "fnn_fields_forward"})
    models = frozenset({"fm", "fnn"})
    trains = False

    @property
    def precision(self) -> str:
        return self.variant

    def missing(self):
        return reason_if_missing(
            _FBGEMM_INFERENCE, _FBGEMM_COMMON, _FBGEMM_CONFIGS, install=_FBGEMM_INSTALL
        )

    def optimizer(self, case):
        return f"IntNBitTableBatchedEmbeddingBagsCodegen, {self.precision} weights"

    def memory_bytes(self, case):
        s = case.shape
        return s.rows * 8 * ((s.dim + 7) // 8) * (4 if self.precision == "fp32" else 2)

    def build(self, model, spec):
        return _FbgemmInferenceModel(self.precision, model, spec)

    def _op(self, case, data, fm: bool):
        s = case.shape
        table = _FbgemmInferenceTable(self.precision, s.rows, s.fields, s.dim)
        w0 = torch.zeros(())

        def step():
            with torch.inference_mode():
                rows = table.rows(data.next())
                return fm_logits(rows, w0, s.factors) if fm else rows

        return step

    def fm_forward(self, case, data):
        return self._op(case, data, fm=True)

    def fnn_fields_forward(self, case, data):
        return self._op(case, data, fm=False)


class _ModuleOnLocalIds(Scored):
    """A peer's own nn.Module on local ids: scored in eval mode, trained a step with its loss
    (``self.module``, ``self.loss``, ``self.optimizers``, set by the subclass)."""

    def score(self, batch):
        self.module.eval()
        with torch.inference_mode():
            return self.module(batch.local_ids)

    def train_step(self, batch):
        self.module.train()
        zero_step(self.optimizers, lambda: self.loss(self.module(batch.local_ids), batch.labels))


class _TorchFMModel(_ModuleOnLocalIds):
    """pytorch-fm's models output probabilities; its examples train them with BCELoss and
    Adam."""

    def __init__(self, model: str, spec: ModelSpec):
        torch.manual_seed(spec.seed)
        dims = list(spec.field_dims)
        if model == "fm":
            cls = import_module("torchfm.model.fm", "torchfm").FactorizationMachineModel
            self.module = cls(dims, spec.factors)
        else:
            fnn = import_module("torchfm.model.fnn", "torchfm")
            cls = fnn.FactorizationSupportedNeuralNetworkModel
            self.module = cls(dims, spec.factors, mlp_dims=spec.hidden, dropout=0.0)
        self.module.to(spec.device)
        from fnn_fast.peers import TORCHFM_ADAM  # its examples' optimizer settings

        self.optimizers = [torch.optim.Adam(self.module.parameters(), **TORCHFM_ADAM)]

        self.loss = nn.functional.binary_cross_entropy  # of its probabilities


class TorchFM(Contender):
    name = "torchfm"
    kind = "peer"
    layouts = ("local_ids",)
    models = frozenset({"fm", "fnn"})

    def unavailable(self, device):
        return reason_if_missing("torchfm.model.fm", "torchfm.model.fnn", install="torchfm")

    def optimizer(self, case):
        from fnn_fast.peers import TORCHFM_ADAM

        return (
            f"dense Adam lr {TORCHFM_ADAM['lr']:g}, weight decay {TORCHFM_ADAM['weight_decay']:g} "
            "(its examples); the FNN with fnn_fast's layer sizes, no dropout"
        )

    def memory_bytes(self, case):
        return 4 * case.shape.rows * case.shape.dim * 4  # weights, dense gradient, Adam's two

    def build(self, model, spec):
        return _TorchFMModel(model, spec)


class _TorchSparseModel(Scored):
    def __init__(self, rule: str, model: str, spec: ModelSpec):
        self.factors = spec.factors
        initial, self.layers = initial_model(model, spec)
        self.table = nn.Embedding.from_pretrained(initial.clone(), freeze=False, sparse=True)
        self.w0 = nn.Parameter(torch.zeros((), device=spec.device))
        self.module = nn.ModuleDict({"table": self.table, "mlp": self.layers or nn.Identity()})
        self.module.to(spec.device)
        dense = [self.w0] + (list(self.layers.parameters()) if self.layers else [])
        table = list(self.table.parameters())
        if rule == "adagrad":
            self.optimizers = [
                torch.optim.Adagrad(table, lr=TABLE_LR["adagrad"]),
                torch.optim.Adagrad([self.w0], lr=TABLE_LR["adagrad"]),
            ]
            if self.layers is not None:
                layers = list(self.layers.parameters())
                self.optimizers.append(torch.optim.Adam(layers, lr=MLP_LR))
        else:
            self.optimizers = [
                torch.optim.SparseAdam(table, lr=PEER_ADAM_LR),
                torch.optim.Adam(dense, lr=PEER_ADAM_LR if self.layers is None else MLP_LR),
            ]

    def logits(self, batch):
        rows = self.table(batch.ids)  # [B, F, D]
        if self.layers is None:
            return fm_logits(rows, self.w0, self.factors)
        return self.layers(rows, self.w0)


class TorchSparse(Contender):
    """Plain PyTorch: nn.Embedding(sparse=True) and a sparse-capable optimizer."""

    kind = "peer"
    models = frozenset({"fm", "fnn"})

    def __init__(self, rule: str):
        self.rule = rule
        self.name = f"torch-{rule}"

    def optimizer(self, case):
        if self.rule == "adagrad":
            return f"torch.optim.Adagrad (element-wise) lr {TABLE_LR['adagrad']:g}"
        return f"torch.optim.SparseAdam lr {PEER_ADAM_LR:g}"

    def memory_bytes(self, case):
        state = 1 if self.rule == "adagrad" else 2
        return (1 + state) * case.shape.rows * case.shape.dim * 4

    def build(self, model, spec):
        return _TorchSparseModel(self.rule, model, spec)


class _DeepCTRModel(_ModuleOnLocalIds):
    def __init__(self, variant: str, spec: ModelSpec):
        from fnn_fast.peers import PEERS

        config = types.SimpleNamespace(factors=spec.factors, fm_epochs=1, fnn_epochs=1)
        setup = PEERS[f"deepctr-{variant}"].build(list(spec.field_dims), config, spec.seed)
        self.module, self.loss = setup.model.to(spec.device), setup.loss
        self.optimizers = [setup.optimizer]


class DeepCTR(_CpuVariant):
    """DeepCTR-Torch's models at the case's batch size, with the optimizer, loss, network and
    L2 of its quick start (fnn_fast.peers, as ``fnn-fast compare`` runs them)."""

    prefix = "deepctr"
    off_cpu = "fnn_fast.peers builds DeepCTR-Torch's models on CPU"
    layouts = ("local_ids",)
    models = frozenset({"fnn"})

    def missing(self):
        from fnn_fast.peers import missing_reason

        return missing_reason(self.name)

    def optimizer(self, case):
        from fnn_fast.peers import DEEPCTR_SETTINGS, PEERS

        return f"{PEERS[self.name].label}; {DEEPCTR_SETTINGS.split(', batch')[0]}, BCE (sum) + L2"

    def memory_bytes(self, case):
        return 4 * case.shape.rows * case.shape.factors * 4  # weights, gradient, Adam's two

    def build(self, model, spec):
        return _DeepCTRModel(self.variant, spec)
