"""Training on a chosen device: the plumbing on the CPU, the errors where CUDA is missing."""

import pytest
import torch

from fnn_fast.cli import main
from fnn_fast.data.synthetic import plant_model
from fnn_fast.demo import planted_splits
from fnn_fast.train import TrainConfig, resolve_device, to_device, train_two_stage

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="use cpu, cuda, cuda:N or auto"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="trains on cpu or cuda"):
        resolve_device("meta")


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(device):
    with pytest.raises(ValueError, match="CUDA is not available here.*--device cpu"):
        resolve_device(device)


@no_cuda
def test_cli_refuses_cuda_before_reading_any_file(tmp_path, capsys):
    missing = tmp_path / "no-such-file.txt"  # the device is checked first
    code = main(["train", "--train", str(missing), "--format", "libfm",
                 "--out", str(tmp_path / "out"), "--device", "cuda"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "CUDA is not available here" in err and "no such file" not in err
    assert not (tmp_path / "out").exists()


def test_to_device_keeps_cpu_batches():
    batches = [(torch.zeros(2, 3, dtype=torch.int64), None, torch.ones(2))]
    assert list(to_device(iter(batches), torch.device("cpu")))[0] is batches[0]


def small_splits():
    truth = plant_model((12,) * 4, num_factors=3, nonlinear=1.0, seed=0)
    encoder, splits, _ = planted_splits(truth, (1200, 300, 300), 1)
    return encoder, splits


CONFIG = TrainConfig(factors=4, batch_size=128, fm_epochs=2, fnn_epochs=2, hidden=[8, 4],
                     fnn_lr=1e-3)  # fmt: skip


def test_device_cpu_trains_exactly_as_the_default():
    encoder, (train, valid, test) = small_splits()
    default = train_two_stage(train, valid, test, encoder, CONFIG, progress=False)
    on_cpu = train_two_stage(train, valid, test, encoder, CONFIG, progress=False, device="cpu")
    assert default.metrics == on_cpu.metrics
    torch.testing.assert_close(default.fnn.table, on_cpu.fnn.table, rtol=0, atol=0)
