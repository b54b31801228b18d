"""Saying so when the native kernels (fnn_fast._C) are absent.

The package still works without them (the pure PyTorch reference runs), but many times slower;
that must never happen unnoticed. Importing fnn_fast warns once per process
(:class:`NativeKernelsMissing`) saying why they are absent and how to fix it, every ``fnn-fast``
run says it in its first lines, and ``FNN_FAST_REQUIRE_NATIVE=1`` makes it an ImportError.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path


class NativeKernelsMissing(RuntimeWarning):
    """fnn_fast._C is not loaded: the pure PyTorch reference runs instead (much slower)."""


_shown = False


def missing_native_reason() -> str | None:
    """Why the native kernels are absent and what to do, or None when they are loaded."""
    from fnn_fast.ops import cpu

    if cpu.available():
        return None
    package = Path(__file__).resolve().parent
    source = package.parent
    if (source / "pyproject.toml").is_file() and (source / "CMakeLists.txt").is_file():
        why = (
            f"fnn_fast was imported from its source tree ({package}), where no extension is "
            "built; run from another directory to use the installed package, or build it in "
            "place with `pip install -e .`"
        )
    elif (package / "native_build_error.txt").is_file():
        why = (
            f"the C++ kernels failed to compile when fnn_fast was installed ({cpu.IMPORT_ERROR}"
            "); fix the build (`pip install . -v` shows the compiler's errors) and reinstall"
        )
    else:
        why = f"fnn_fast._C cannot be loaded ({cpu.IMPORT_ERROR}); reinstall with `pip install .`"
    return (
        f"the native C++ kernels are not loaded: {why}. The pure PyTorch reference runs "
        "instead (correct, but much slower); FNN_FAST_REQUIRE_NATIVE=1 makes this an error"
    )


def native_warning_shown() -> bool:
    """Whether importing fnn_fast displayed the warning (filters may have hidden it)."""
    return _shown


def check_native() -> None:
    """At import: raise under FNN_FAST_REQUIRE_NATIVE=1, else warn (once) when the native
    kernels are absent. Forcing the reference (FNN_FAST_BACKEND=reference) is a choice, not
    something to warn about."""
    global _shown
    reason = missing_native_reason()
    if reason is None:
        return
    if os.environ.get("FNN_FAST_REQUIRE_NATIVE", "0") not in ("", "0"):
        raise ImportError(f"FNN_FAST_REQUIRE_NATIVE is set, but {reason}")
    if os.environ.get("FNN_FAST_BACKEND") == "reference" or _shown:
        return
    # recorded, then shown: whether the warning filters let it through decides whether the
    # command line repeats it
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(reason, NativeKernelsMissing, stacklevel=3)
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    _shown = bool(caught)
