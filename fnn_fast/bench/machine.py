"""The machine a run was measured on: processor, cores, memory, GPU, versions, and which
fnn_fast it measured (its path and :func:`fnn_fast.backends`)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

_PACKAGES = ("fnn-fast", "torch", "numpy", "triton", "torchfm", "fbgemm-gpu-cpu", "fbgemm-gpu")


def _meminfo(key: str) -> int | None:
    """A /proc/meminfo entry in bytes (Linux), else None."""
    path = Path("/proc/meminfo")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def _cpu_model() -> str:
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class NativeMissing(ValueError):
    """The native backend was meant to be timed, but the fnn_fast imported has no native build."""


def installed() -> dict:
    """Which fnn_fast is imported: its package folder and its backends. Every benchmark records
    this beside its figures. The folder is relative to the working directory where it lies
    below it (``fnn_fast`` for a checkout's own package), so that records name no machine's
    paths; an installed copy keeps its ``site-packages/fnn_fast`` tail."""
    import fnn_fast

    folder, here = package_folder(), Path.cwd().resolve()
    if folder.is_relative_to(here):
        path = str(folder.relative_to(here))
    else:
        path = str(Path(folder.parent.name, folder.name))
    return {"path": path, "backends": fnn_fast.backends()}


def package_folder() -> Path:
    """The imported fnn_fast's folder, in full."""
    import fnn_fast

    return Path(fnn_fast.__file__).resolve().parent


def require_native(remedy: str = "") -> dict:
    """:func:`installed`, after checking that the native CPU backend is available: a benchmark
    meant to time it must not silently time the pure-PyTorch reference instead (an uninstalled
    source tree first on sys.path has no built ``_C``). Raises NativeMissing saying what to do."""
    info = installed()
    backends = info["backends"]
    if "native" not in backends["available"]:
        reason = backends.get("native_error") or "fnn_fast._C is not importable"
        raise NativeMissing(  # the folder in full: which copy to fix
            f"fnn_fast imported from {package_folder()} has no native backend ({reason}): "
            "refusing to time the pure-PyTorch reference where the native kernels were meant. "
            "Install it "
            "with its build (pip install .) and run from a folder where the source tree is not "
            f"first on sys.path (python -P does this){', ' + remedy if remedy else ''}."
        )
    return info


def available_memory(device: str) -> int | None:
    """Bytes free for a new table on the device, or None when unknown."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    return _meminfo("MemAvailable")


def total_memory(device: str) -> int | None:
    """The machine's memory (CPU) in bytes; None on GPU (the card is not shared) or unknown."""
    return None if device == "cuda" else _meminfo("MemTotal")


def machine_info(device: str) -> dict:
    import fnn_fast

    versions = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round((_meminfo("MemTotal") or 0) / 2**30, 1) or None,
        "platform": platform.platform(),
        "device": device,
        "gpu": None,
        "versions": versions,
        "fnn_fast_backends": fnn_fast.backends(),
        "fnn_fast_path": installed()["path"],
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)}
    return info


def describe(info: dict) -> str:
    """One line: processor, cores, memory, GPU, torch."""
    gpu = info["gpu"]["name"] if info["gpu"] else "no GPU"
    backends = info["fnn_fast_backends"]
    return (
        f"{info['cpu']}, {info['usable_cores']} cores ({info['torch_threads']} torch threads), "
        f"{info['memory_gb']} GB, {gpu}; torch {info['versions'].get('torch')}, "
        f"Python {info['versions']['python']}; fnn_fast from {info['fnn_fast_path']}, backends "
        f"{', '.join(backends['available'])} (active: {backends['active']})"
    )
