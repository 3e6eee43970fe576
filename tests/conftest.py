"""Shared fixtures: where the real (non-commercial) 300-W faces are, and skipping when they are absent."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$CFDRNN_DATA` if set, else `../shared/data` beside the checkout (never inside the repository)."""
    env = os.environ.get("CFDRNN_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "300w").is_dir():
        pytest.skip(f"real 300-W faces not found at {root} (set CFDRNN_DATA to the shared data folder)")
    return root


@pytest.fixture(scope="session")
def samples_dir(shared_data) -> Path:
    path = shared_data / "samples"
    if not path.is_dir():
        pytest.skip(f"sample photos not found at {path}")
    return path
