"""The README's code runs as written: the blocks are read from README.md, so the docs cannot
drift from the API."""

import contextlib
import io
import re
from pathlib import Path

import pytest

import fnn_fast

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def run(source: str) -> tuple[dict, str]:
    namespace: dict = {"__name__": "readme"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, str(README), "exec"), namespace)
    return namespace, printed.getvalue()


def aucs(printed: str) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(r"^(\w+) test AUC (\S+)$", printed, re.M)}


@pytest.fixture(scope="module")
def loop_blocks():
    blocks = python_blocks("Use the modules in your own loop")
    assert len(blocks) >= 2, "the section's training loop and its fuse_update line"
    return blocks


def test_the_training_loop_runs_and_learns(loop_blocks):
    namespace, printed = run(loop_blocks[0])
    found = aucs(printed)
    assert set(found) == {"FM", "FNN"}, printed
    assert found["FM"] > 0.75 and found["FNN"] > 0.75, printed
    assert namespace["fnn"].table.grad is not None  # the sparse gradient path


def test_the_loop_with_the_fused_update(loop_blocks):
    # "fuse the rule before the loop; the loop above runs unchanged": put the README's
    # fuse_update block right after the FNN is built.
    loop, fuse = loop_blocks[0], loop_blocks[1]
    anchor = next(line for line in loop.splitlines() if line.startswith("fnn = FNN.from_fm("))
    namespace, printed = run(loop.replace(anchor, anchor + "\n" + fuse, 1))
    found = aucs(printed)
    assert found["FNN"] > 0.75, printed
    assert namespace["fnn"].row_update is not None
    if fnn_fast.backends()["active"] == "native":  # the reference keeps the sparse gradient
        assert namespace["fnn"].table.grad is None  # updated inside backward


def test_the_python_training_api(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # the example saves into runs/clicks
    blocks = python_blocks("Train from Python")
    assert len(blocks) == 1
    namespace, printed = run(blocks[0])
    found = aucs(printed)
    assert set(found) == {"FM", "FNN"} and min(found.values()) > 0.7, printed
    assert isinstance(namespace["same"], fnn_fast.TrainedModel)
    assert (tmp_path / "runs" / "clicks" / "report.html").exists()
