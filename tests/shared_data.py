"""Where the real-data tests find the shared data sets (iPinYou 2997, UCI Adult): the folder
``FNN_FAST_DATA`` names, else ``../shared/data`` beside the repository. Tests that need a set
skip, saying so, when it is not there."""

import os
from pathlib import Path

DATA = Path(
    os.environ.get("FNN_FAST_DATA")
    or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
)


def require(*parts: str) -> Path:
    """The path of a shared data file; the test skips, naming the folder, when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        import pytest

        pytest.skip(f"{'/'.join(parts)} not present in {DATA} (set FNN_FAST_DATA)")
    return path
