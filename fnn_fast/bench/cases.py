"""What is measured: cases (an op or a model at a shape) and the presets that list them.

Three levels:

- op: one kernel's work, for every fnn_fast backend (plus FBGEMM and the gather bound where
  they do the same work): ``fm_forward`` (lookup + FM, scoring), ``fm_train_step`` (forward,
  backward and the table update), ``fnn_fields_forward`` (the FNN's input z),
  ``fnn_fields_train`` (z forward and backward with the table update), ``sparse_update`` (the
  update alone, given gradient rows, for one rule);
- model: FM and FNN training steps and scoring, fnn_fast against the peers a user would pick,
  on fresh batches labelled by a planted model: a training case also reports each contender's
  test AUC after the same steps on the same batches (``auc``, ``steps``);
- quality: the same models trained for the same epochs on the same planted data, test AUC
  beside training throughput.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fnn_fast.bench.shapes import Shape, format_count
from fnn_fast.optim import OPTIMIZERS

OPS = ("fm_forward", "fm_train_step", "fnn_fields_forward", "fnn_fields_train", "sparse_update")
MODEL_OPS = ("fm_train", "fm_score", "fnn_train", "fnn_score")
QUALITY_OPS = ("fm_quality", "fnn_quality")
DEFAULT_RULE = "rowwise_adagrad"


@dataclass(frozen=True)
class QualitySpec:
    """Planted data (fnn_fast.data.synthetic) for the equal-quality check."""

    train_rows: int
    test_rows: int
    epochs: int
    largest_field: int = 1000  # field sizes spread log-uniformly up to this
    seed: int = 0


@dataclass(frozen=True)
class Case:
    op: str
    shape: Shape
    rule: str = DEFAULT_RULE  # the table update of fnn_fast's backends (and sparse_update's)
    pool: int = 4  # distinct batches: cycled through (warm), or walked once (fresh)
    quality: QualitySpec | None = None
    fresh: bool = False  # batches drawn fresh for each call: no batch is timed twice

    def __post_init__(self):
        if self.op not in OPS + MODEL_OPS + QUALITY_OPS:
            raise ValueError(f"unknown op {self.op!r}")
        if self.rule not in OPTIMIZERS:
            raise ValueError(f"unknown rule {self.rule!r}; choose from {OPTIMIZERS}")
        if (self.op in QUALITY_OPS) != (self.quality is not None):
            raise ValueError(f"{self.op}: quality cases, and only they, take a QualitySpec")

    @property
    def level(self) -> str:
        if self.op in OPS:
            return "op"
        return "model" if self.op in MODEL_OPS else "quality"

    @property
    def model(self) -> str | None:
        """'fm' or 'fnn' for model and quality cases."""
        return None if self.level == "op" else self.op.split("_")[0]

    @property
    def name(self) -> str:
        s = self.shape
        if self.quality is not None:
            q = self.quality
            tail = (
                f"{s.dataset}-K{s.factors}-N{format_count(q.train_rows)}-E{q.epochs}-"
                f"B{format_count(s.batch)}"
            )
        else:
            tail = s.slug
        if self.op == "sparse_update" or self.rule != DEFAULT_RULE:
            tail += f"-{self.rule}"
        if self.fresh and self.level == "op":
            tail += "-fresh"
        return f"{self.op}/{tail}"


@dataclass(frozen=True)
class Timing:
    """Warmup calls, then timed calls until both minimums are met or the budget is spent;
    the median is reported. A call slower than the budget is timed once."""

    min_repeats: int = 5
    min_time: float = 0.5  # seconds of timed calls, at least
    max_time: float = 3.0  # seconds of timed calls per contender and case, at most
    warmup: int = 2  # the first call compiles or allocates; the second settles caches


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build: Callable[[str], list[Case]]  # device -> cases
    timing: Timing
    # Contenders a preset leaves out, with the reason shown (unless --backends names them).
    left_out: dict[str, str] = field(default_factory=dict)
    # When set, only these contenders run (a preset reproducing a fixed comparison).
    only: tuple[str, ...] | None = None

    def cases(self, device: str) -> list[Case]:
        return self.build(device)


_COMPILE_LEFT_OUT = "left out of this preset: compiling takes 10-30 s a shape (--backends adds it)"
COMPILED = ("compiled", "compiled-static", "compiled-autotune")
# Cold tables: well past a server's last-level cache (tens to hundreds of MB; 480 MB on the
# machine of benchmarks/RESULTS.md) and small enough for a 24 GB machine to hold several
# contenders' copies: 5e7 rows of 11 float32 are 2.2 GB.
COLD_ROWS = 50_000_000


def _op_cases(shapes, ops=OPS, fresh: int = 0) -> list[Case]:
    """Warm cases, or with fresh > 0, cases on that many fresh batches."""
    pool = {"pool": fresh, "fresh": True} if fresh else {}
    return [Case(op, s, **pool) for s in shapes for op in ops]


def _model_cases(shapes, pool: int) -> list[Case]:
    """Model cases always draw fresh batches: training cases report the AUC reached."""
    return [Case(op, s, pool=pool, fresh=True) for s in shapes for op in MODEL_OPS]


def _quality_cases(shape: Shape, spec: QualitySpec) -> list[Case]:
    return [Case(op, shape, quality=spec) for op in QUALITY_OPS]


def _tiny(device: str) -> list[Case]:
    base = Shape("ipinyou", factors=3, rows=1000, batch=64)
    cases = _op_cases([base])
    cases += [Case("sparse_update", base, rule=r) for r in OPTIMIZERS if r != DEFAULT_RULE]
    cases += _op_cases([replace(base, batch=128), replace(base, rows=2000)], ("fm_train_step",))
    cases += _op_cases([replace(base, ids="uniform")], ("fm_forward", "fm_train_step"), fresh=8)
    cases += _model_cases([base], pool=8)
    cases += _quality_cases(replace(base, batch=256), QualitySpec(2000, 1000, 1, largest_field=20))
    return cases


def _quick(device: str) -> list[Case]:
    base = Shape("criteo", factors=10, rows=1_000_000, batch=4096)
    cases = _op_cases([base])
    sweep = [replace(base, batch=512), replace(base, batch=16384), replace(base, rows=100_000)]
    cases += _op_cases(sweep, ("fm_train_step",))
    cold = [replace(base, rows=COLD_ROWS // 2, ids=ids) for ids in ("zipf", "uniform")]
    cases += _op_cases(cold, ("fm_forward", "fm_train_step"), fresh=48)
    cases += _model_cases([base], pool=32)
    cases += _quality_cases(replace(base, batch=1024), QualitySpec(20_000, 10_000, 2))
    return cases


def _full(device: str) -> list[Case]:
    base = Shape("criteo", factors=10, rows=1_000_000, batch=4096)
    tables = [100_000, 10_000_000] + ([100_000_000] if device == "cuda" else [])
    batch_sweep = [replace(base, batch=b) for b in (512, 16384, 65536)]
    table_sweep = [replace(base, rows=r) for r in tables]
    variants = [
        replace(base, dataset="avazu"),
        replace(base, dataset="ipinyou"),
        replace(base, factors=16),
        replace(base, rows=10_000_000, ids="uniform"),
    ]
    cases = _op_cases([base, *batch_sweep, *table_sweep, *variants])
    cases += [Case("sparse_update", base, rule=r) for r in OPTIMIZERS if r != DEFAULT_RULE]
    cold = [replace(base, rows=COLD_ROWS, ids=ids) for ids in ("zipf", "uniform")]
    cases += _op_cases([base, *cold], fresh=128)
    cases += _model_cases([base, *batch_sweep, *table_sweep, replace(base, dataset="avazu")], 64)
    cases += _quality_cases(replace(base, batch=1024), QualitySpec(100_000, 50_000, 2))
    return cases


def _cpu_kernels(device: str) -> list[Case]:
    """The CPU kernels' acceptance comparison: Criteo-like, Zipf ids per field, batch 4096."""
    cases = []
    for rows in (1_000_000, 10_000_000):
        shape = Shape("criteo", factors=10, rows=rows, batch=4096, ids="zipf")
        cases += [Case(op, shape) for op in ("fm_forward", "fm_train_step")]
        cases += [Case(op, shape, pool=64, fresh=True) for op in ("fnn_score", "fnn_train")]
    for ids in ("zipf", "uniform"):
        shape = Shape("criteo", factors=10, rows=COLD_ROWS, batch=4096, ids=ids)
        cases += _op_cases([shape], ("fm_forward", "fm_train_step"), fresh=128)
    return cases


PRESETS = {
    p.name: p
    for p in (
        Preset(
            "quick",
            "every op at a Criteo-like shape (R 1e6, B 4096), a small batch and table sweep of "
            "the FM train step, the FM on a cold table (R 2.5e7, fresh batches), the models "
            "against the peers with their AUC, a short equal-quality run: a few minutes on 2 "
            "cores",
            _quick,
            Timing(min_repeats=3, min_time=0.1, max_time=0.5, warmup=1),
            dict.fromkeys(COMPILED, _COMPILE_LEFT_OUT),
        ),
        Preset(
            "full",
            "every op and model over batch 512-65536, tables 1e5-1e7 (1e8 on GPU), Criteo-, "
            "Avazu- and iPinYou-like fields, K 10 and 16, Zipf and uniform ids, every update "
            "rule, every op on fresh batches and on cold 5e7-row tables, the models with their "
            "AUC, and the equal-quality run: about an hour on 2 cores",
            _full,
            Timing(min_repeats=5, min_time=0.5, max_time=3.0, warmup=2),
        ),
        Preset(
            "cpu-kernels",
            "the CPU kernels' acceptance comparison: FM forward and train step native vs "
            "FBGEMM vs reference vs the gather bound, FNN scoring and training vs the bare MLP, "
            "Criteo-like, tables 1e6 and 1e7 (warm), the FM on cold 5e7-row tables with fresh "
            "Zipf and uniform batches, batch 4096, longer timing: about 10 minutes on 2 cores",
            _cpu_kernels,
            Timing(min_repeats=10, min_time=2.0, max_time=10.0, warmup=2),
            only=(
                "reference",
                *COMPILED,
                "native",
                "fbgemm",
                "fbgemm-infer-fp32",
                "fbgemm-infer-fp16",
                "torch-adagrad",
                "gather-bound",
                "index_select",
                "mlp-only",
            ),  # fmt: skip
        ),
        Preset(
            "tiny",
            "every case kind on toy shapes with one timed call each: a self-check of the "
            "runner (seconds), not a measurement",
            _tiny,
            Timing(min_repeats=1, min_time=0.0, max_time=0.05, warmup=1),
            dict.fromkeys(COMPILED, _COMPILE_LEFT_OUT),
        ),
    )
}
