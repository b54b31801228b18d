"""A missing native extension is never silent: a warning once per process and in the first
lines of every fnn-fast run, an error under FNN_FAST_REQUIRE_NATIVE=1."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def package_copy(folder: Path, source_tree: bool, build_error: str | None = None) -> Path:
    """The package's Python files without fnn_fast._C: a source tree (as the repository root
    after a non-editable install), or an installed package whose kernel build failed."""
    shutil.copytree(
        ROOT / "fnn_fast",
        folder / "fnn_fast",
        ignore=shutil.ignore_patterns("_C*", "__pycache__", "native_build_error.txt"),
    )
    if source_tree:
        for name in ("pyproject.toml", "CMakeLists.txt"):
            shutil.copy(ROOT / name, folder / name)
    if build_error is not None:
        (folder / "fnn_fast" / "native_build_error.txt").write_text(build_error)
    return folder


# An editable install maps `fnn_fast` to its own tree, whatever sys.path says: drop its finder
# so that the copy is what gets imported, as with a regular install.
FROM_COPY = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
"""


def run(folder: Path, script: str, *options: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FNN_FAST_")}
    environment.update(PYTHONPATH=str(folder), **env)
    return subprocess.run(
        [sys.executable, *options, "-c", FROM_COPY + script],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
    )


IMPORT_TWICE = """
import importlib, fnn_fast, fnn_fast.cli
assert fnn_fast.__file__.startswith({folder!r}), fnn_fast.__file__
importlib.import_module("fnn_fast.score")
print(fnn_fast.backends()["active"])
"""


def test_import_from_a_source_tree_warns_once(tmp_path):
    folder = package_copy(tmp_path, source_tree=True)
    result = run(folder, IMPORT_TWICE.format(folder=str(folder)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    assert result.stderr.count("NativeKernelsMissing") == 1, result.stderr
    assert "source tree" in result.stderr and "pip install -e ." in result.stderr


def test_failed_build_warns_with_its_reason(tmp_path):
    folder = package_copy(tmp_path, source_tree=False, build_error="omp.h: no such file")
    result = run(folder, IMPORT_TWICE.format(folder=str(folder)))
    assert result.returncode == 0, result.stderr
    assert "failed to compile" in result.stderr and "omp.h: no such file" in result.stderr


def test_require_native_makes_it_an_error(tmp_path):
    folder = package_copy(tmp_path, source_tree=True)
    result = run(folder, "import fnn_fast", FNN_FAST_REQUIRE_NATIVE="1")
    assert result.returncode != 0
    assert "ImportError: FNN_FAST_REQUIRE_NATIVE is set" in result.stderr


def test_every_cli_run_says_it_first(tmp_path):
    """Even where warnings are filtered out, the command's first line says it."""
    folder = package_copy(tmp_path, source_tree=True)
    script = (
        "from fnn_fast.cli import main; sys.exit(main(['evaluate', '--model', 'm', '--data', 'd']))"
    )
    result = run(folder, script, "-W", "ignore")
    assert result.returncode == 2
    first, *rest = result.stderr.splitlines()
    assert first.startswith("fnn-fast: warning: the native C++ kernels are not loaded")
    assert "NativeKernelsMissing" not in result.stderr and rest


@pytest.mark.skipif(
    not os.environ.get("FNN_FAST_REQUIRE_NATIVE"),
    reason="set FNN_FAST_REQUIRE_NATIVE=1 where fnn_fast._C must have been built",
)
def test_installed_package_is_silent():
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import fnn_fast"], capture_output=True, text=True
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
