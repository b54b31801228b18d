"""fnn_fast: a fast, faithful engine for the FNN click-through-rate model.

Two stages (Zhang, Du, Wang, ECIR 2016): an FM over multi-field categorical features, then a
DNN whose input layer starts from the FM's parameters. ``fnn_fast.FM`` and ``fnn_fast.FNN`` are
drop-in ``nn.Module``s; :func:`backends` says which kernels run. Without the native kernels
(fnn_fast._C) importing warns (:class:`NativeKernelsMissing`), and with
``FNN_FAST_REQUIRE_NATIVE=1`` fails.
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
    "backends",
    "set_backend",
    "use_backend",
    "__version__",
]
