from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def ipinyou_dir():
    path = SHARED_DATA / "ipinyou-2997"
    if not (path / "train.fm.txt").exists():
        pytest.skip("shared iPinYou data not present")
    return path
