"""Tables in huge pages: the same tensors as torch.zeros, only placed differently."""

import sys

import torch

from fnn_fast import FM, FNN
from fnn_fast.memory import HUGE_PAGE, MIN_BYTES, table_zeros
from fnn_fast.optim import RowUpdate


def test_table_zeros_is_a_zeroed_contiguous_tensor():
    rows = MIN_BYTES // (4 * 11) + 3  # past the threshold, not a whole number of huge pages
    for shape in ((rows, 11), (5, 3)):
        table = table_zeros(*shape)
        assert table.shape == shape and table.dtype == torch.float32
        assert table.is_contiguous() and not table.any()
        table[-1, -1] = 1.0  # every byte is writable
    big = table_zeros(rows, 11)
    if sys.platform.startswith("linux"):
        assert big.data_ptr() % HUGE_PAGE == 0


def test_modules_and_state_allocate_tables_this_way():
    rows = MIN_BYTES // (4 * 11) + 1
    torch.manual_seed(0)
    fnn = FNN(rows, 3, 10, hidden=(4,), init_std=0.1)
    torch.manual_seed(0)
    expected = torch.randn(rows, 11) * 0.1  # the same draw as before huge pages
    assert torch.equal(fnn.table, expected)
    fm = FM(rows, 10).fuse_update(RowUpdate("adam", 0.01))
    assert fm.update_state1.shape == fm.table.shape and not fm.update_state1.any()
    if sys.platform.startswith("linux"):
        assert fm.table.data_ptr() % HUGE_PAGE == 0
        assert fm.update_state1.data_ptr() % HUGE_PAGE == 0
