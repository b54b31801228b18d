"""FM and FNN steps at a Criteo-like shape: the eager reference, the reference under
torch.compile, the native kernels, FBGEMM's CPU table-batched embedding (fused exact row-wise
Adagrad) with the FM interaction in PyTorch, and the gather bound.

Run:  pytest benchmarks/ --benchmark-columns=median,ops --benchmark-group-by=param:table_rows
samples/s = 4096 x ops (also in extra_info).
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import BATCH, FACTORS, FIELDS

import fnn_fast
from fnn_fast import FM, FNN, SparseRowOptimizer
from fnn_fast.optim import RowUpdate

needs_native = pytest.mark.skipif(
    "native" not in fnn_fast.backends()["available"], reason="fnn_fast._C not built"
)


@pytest.fixture
def reference_backend():
    fnn_fast.set_backend("reference")
    yield
    fnn_fast.set_backend("auto")


def fm_model(rows, fused):
    fm = FM(rows, FACTORS, init_std=0.01)
    if fused:
        fm.fuse_update(RowUpdate("rowwise_adagrad", lr=0.05))
    return fm, SparseRowOptimizer(fm.parameters(), "rowwise_adagrad", lr=0.05)


def fm_step(fm, optimizer, ids, labels, loss_of=None):
    loss_of = loss_of or (lambda i, y: F.binary_cross_entropy_with_logits(fm(i), y))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(ids, labels).backward()
        optimizer.step()

    return step


# --- FM train step: forward, backward, row-wise Adagrad on the present rows ---------------------


def test_fm_train_step_reference(measure, criteo_batch, reference_backend):
    rows, ids, labels = criteo_batch
    fm, optimizer = fm_model(rows, fused=False)
    measure(fm_step(fm, optimizer, ids, labels))


def test_fm_train_step_compiled(measure, criteo_batch, reference_backend):
    rows, ids, labels = criteo_batch
    fm, optimizer = fm_model(rows, fused=False)
    loss = torch.compile(lambda i, y: F.binary_cross_entropy_with_logits(fm(i), y))
    step = fm_step(fm, optimizer, ids, labels, loss)
    try:
        step()
    except Exception as error:  # noqa: BLE001 - report why, do not fail the suite
        pytest.skip(f"torch.compile cannot run the reference train step: {error}")
    measure(step)


@needs_native
def test_fm_train_step_native(measure, criteo_batch):
    rows, ids, labels = criteo_batch
    fm, optimizer = fm_model(rows, fused=True)
    measure(fm_step(fm, optimizer, ids, labels))


def test_fm_train_step_fbgemm(measure, criteo_batch):
    tbe = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_training")
    common = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_common")
    configs = pytest.importorskip("fbgemm_gpu.split_embedding_configs")
    rows, ids, labels = criteo_batch
    # One table shared by the 39 fields, one id per bag: its output is the per-field rows.
    # FBGEMM needs a row width that is a multiple of 4: 12 columns, the FM reads the first 11.
    width = 4 * ((1 + FACTORS + 3) // 4)
    embedding = tbe.SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(rows, width, common.EmbeddingLocation.HOST, common.ComputeDevice.CPU)],
        feature_table_map=[0] * FIELDS,
        optimizer=configs.EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.05,
        pooling_mode=common.PoolingMode.SUM,
    )
    w0 = torch.nn.Parameter(torch.zeros(()))
    indices = ids.t().contiguous().flatten()
    offsets = torch.arange(indices.numel() + 1, dtype=torch.int64)

    def step():
        rows_ = embedding(indices, offsets).view(BATCH, FIELDS, width)
        v = rows_[..., 1 : 1 + FACTORS]
        logits = w0 + rows_[..., 0].sum(1) + 0.5 * (v.sum(1).square() - v.square().sum(1)).sum(1)
        F.binary_cross_entropy_with_logits(logits, labels).backward()

    measure(step)


def test_gather_bound(measure, criteo_batch):
    """Rows gathered per second by index_select, divided by F: the memory bound."""
    rows, ids, _ = criteo_batch
    table = torch.randn(rows, 1 + FACTORS)
    measure(torch.index_select, table, 0, ids.flatten())


# --- FNN: scoring and train step ----------------------------------------------------------------


def fnn_model(rows, fused):
    torch.manual_seed(0)
    fnn = FNN(rows, FIELDS, FACTORS)
    if fused:
        fnn.fuse_update(RowUpdate("rowwise_adagrad", lr=0.05))
    return fnn


def test_fnn_scoring_reference(measure, criteo_batch, reference_backend):
    rows, ids, _ = criteo_batch
    fnn = fnn_model(rows, False).eval()
    with torch.inference_mode():
        measure(fnn, ids)


@needs_native
def test_fnn_scoring_native(measure, criteo_batch):
    rows, ids, _ = criteo_batch
    fnn = fnn_model(rows, False).eval()
    with torch.inference_mode():
        measure(fnn, ids)


def _fnn_train_step(fnn, ids, labels):
    table_optimizer = SparseRowOptimizer([fnn.table, fnn.w0], "rowwise_adagrad", lr=0.05)
    layers = torch.optim.Adam([p for g in fnn.layer_parameters() for p in g], lr=1e-3)

    def step():
        table_optimizer.zero_grad(set_to_none=True)
        layers.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(fnn(ids), labels).backward()
        table_optimizer.step()
        layers.step()

    return step


def test_fnn_train_step_reference(measure, criteo_batch, reference_backend):
    rows, ids, labels = criteo_batch
    measure(_fnn_train_step(fnn_model(rows, False), ids, labels))


@needs_native
def test_fnn_train_step_native(measure, criteo_batch):
    rows, ids, labels = criteo_batch
    measure(_fnn_train_step(fnn_model(rows, True), ids, labels))


def test_mlp_train_step_bare(measure, criteo_batch):
    """The FNN's MLP alone on a ready input z: what a perfect embedding path would cost."""
    rows, ids, labels = criteo_batch
    fnn = fnn_model(1000, False)
    z = torch.randn(BATCH, 1 + FIELDS * (1 + FACTORS))
    layers = torch.optim.Adam([p for g in fnn.layer_parameters() for p in g], lr=1e-3)

    def step():
        layers.zero_grad(set_to_none=True)
        logits = fnn.output(fnn.hidden_layers(z)).squeeze(-1)
        F.binary_cross_entropy_with_logits(logits, labels).backward()
        layers.step()

    measure(step)
