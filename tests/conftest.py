"""Shared fixtures. Tests that need the real data read ../shared/data (or $CWR_FAST_SHARED_DATA)
and FAIL when it is missing: CI must never skip them silently."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    root = Path(os.environ.get("CWR_FAST_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw").is_dir():
        pytest.fail(f"real test data not found at {root} (set CWR_FAST_SHARED_DATA or put "
                    "shared/data beside the repository)", pytrace=False)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


def devices() -> list:
    """CPU always; CUDA as a parameter that skips cleanly without a GPU."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
