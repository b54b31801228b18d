"""fnn_fast: a fast, faithful engine for the FNN click-through-rate model.

Two stages (Zhang, Du, Wang, ECIR 2016): an FM over multi-field categorical features, then a
DNN whose input layer starts from the FM's parameters. ``fnn_fast.FM`` and ``fnn_fast.FNN`` are
drop-in ``nn.Module``s; :func:`backends` says which kernels run. :func:`fit` trains both stages
from files, pandas DataFrames or Arrow tables as ``fnn-fast train`` does, and :func:`load` opens
a saved model; both return a :class:`TrainedModel` (fnn_fast.api, imported on first use).
Without the native kernels (fnn_fast._C) importing warns (:class:`NativeKernelsMissing`), and
with ``FNN_FAST_REQUIRE_NATIVE=1`` fails.
"""

from fnn_fast.modules import FM, FNN
from fnn_fast.native_check import NativeKernelsMissing, check_native
from fnn_fast.ops import backends, set_backend, use_backend
from fnn_fast.optim import SparseRowOptimizer

check_native()

__version__ = "0.1.0"
__all__ = [
    "FM",
    "FNN",
    "NativeKernelsMissing",
    "SparseRowOptimizer",
    "TrainedModel",
    "backends",
    "fit",
    "load",
    "set_backend",
    "use_backend",
    "__version__",
]

_API = ("fit", "load", "TrainedModel")


def __getattr__(name: str):
    if name in _API:  # fnn_fast.api reads data (pyarrow) and saves models: loaded when used
        from fnn_fast import api

        return getattr(api, name)
    raise AttributeError(f"module 'fnn_fast' has no attribute {name!r}")
