"""Who is measured, one file per kind: :mod:`.ours` (fnn_fast's backends and its reference under
``torch.compile``), :mod:`.peers` (the libraries a user would pick instead), :mod:`.bounds` (what
the machine allows: the gather bound, ``index_select``, the bare MLP), on the interface of
:mod:`.base`.

Every contender has the same small interface. For an op-level case, ``setup(case, data)``
builds what the op needs (untimed) and returns ``step``, a call that does the op once on the
next batch of ``data`` (the contender's own cursor over the case's batches: every contender sees
the same batches in the same order). For model and quality cases, ``build(model, spec)`` returns
a :class:`Trainable` with ``train_step(batch)`` and ``score(batch)``. A contender says why it
cannot run (not installed, wrong device, a case it cannot express) instead of failing. Its
``settings`` (the records' ``optimizer`` field) name the update rule, the rates and anything else
a reader needs to judge the comparison.
"""

from fnn_fast.bench.contenders.base import (
    Contender,
    ModelSpec,
    ModelStep,
    SkipCase,
    Trainable,
    initial_model,
    spec_of,
)
from fnn_fast.bench.contenders.bounds import GatherBound, IndexSelect, MlpOnly
from fnn_fast.bench.contenders.ours import CompiledReference, FnnFastBackend
from fnn_fast.bench.contenders.peers import (
    DeepCTR,
    Fbgemm,
    FbgemmInference,
    TorchFM,
    TorchSparse,
)


def all_contenders() -> list[Contender]:
    """In the order the table lists them."""
    backends = [FnnFastBackend(n) for n in ("reference", "native", "triton", "cuda")]
    return [
        backends[0],
        CompiledReference("compiled", dynamic=True),
        CompiledReference("compiled-static", dynamic=False),
        CompiledReference("compiled-autotune", dynamic=False, mode="max-autotune-no-cudagraphs"),
        *backends[1:],
        Fbgemm(),
        FbgemmInference("fp32"),
        FbgemmInference("fp16"),
        TorchFM(),
        TorchSparse("adagrad"),
        TorchSparse("sparseadam"),
        DeepCTR("deepfm"),
        DeepCTR("pnn"),
        GatherBound(),
        IndexSelect(),
        MlpOnly(),
    ]


CONTENDER_NAMES = tuple(c.name for c in all_contenders())

__all__ = [
    "CONTENDER_NAMES", "Contender", "ModelSpec", "ModelStep", "SkipCase", "Trainable",
    "all_contenders", "initial_model", "spec_of",
]  # fmt: skip
