import os

import pytest
import torch
from helpers import DATA

# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter. Triton picks
# compiled or interpreted when a kernel is defined, so this must precede any import of
# fnn_fast.ops.triton; it changes nothing else (no other code here runs Triton on the CPU).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The subprocesses tests start (`python -m fnn_fast`, `python -c`) would put their working
# directory first on sys.path: from the repository root that imports the source tree, which has
# no fnn_fast._C after a regular `pip install .`. PYTHONSAFEPATH (Python 3.11+) keeps them on
# the installed package, the one under test.
os.environ.setdefault("PYTHONSAFEPATH", "1")

SHARED_DATA = DATA  # FNN_FAST_DATA, else ../shared/data (tests/helpers.py)


@pytest.fixture(scope="session")
def ipinyou_dir():
    path = SHARED_DATA / "ipinyou-2997"
    if not (path / "train.fm.txt").exists():
        pytest.skip(f"shared iPinYou data not present in {SHARED_DATA} (set FNN_FAST_DATA)")
    return path
