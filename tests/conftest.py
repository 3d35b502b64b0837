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


# ---- fused ops (tests/test_ops_*.py) -------------------------------------------------------------
# The op tests compare the COMPILED kernels with cwr_fast.reference. Without the extension they would
# compare the reference with itself, so they fail loudly instead, unless the reference backend is
# forced on purpose (CWR_FAST_BACKEND=reference), which exercises the fallback path only.

def forced_reference_backend() -> bool:
    return os.environ.get("CWR_FAST_BACKEND", "") == "reference"


def _param_device(request) -> str:
    callspec = getattr(request.node, "callspec", None)
    return callspec.params.get("device", "cpu") if callspec is not None else "cpu"


@pytest.fixture
def compiled_backend(request):
    """Fails (never skips) when the compiled kernels for this test's device are missing."""
    from cwr_fast import ops

    if forced_reference_backend():
        return
    backend = ops.backend()
    if not backend.startswith("compiled"):
        pytest.fail(f"cwr_fast.ops.backend() is {backend!r}: the compiled extension is missing, so "
                    "this test would compare the reference with itself. Build it with "
                    "`pip install --no-build-isolation -e .` (or set CWR_FAST_BACKEND=reference "
                    "to exercise the fallback on purpose).", pytrace=False)
    if _param_device(request) == "cuda" and "cuda" not in backend:
        pytest.fail(f"a GPU is present but cwr_fast.ops.backend() is {backend!r}: the CUDA kernels "
                    "were not built (is nvcc on PATH? CWR_FAST_CUDA=1 makes the build insist)",
                    pytrace=False)


@pytest.fixture
def validating_backend(compiled_backend):
    """For tests of argument checks and op registration, which only the compiled ops have."""
    if forced_reference_backend():
        pytest.skip("CWR_FAST_BACKEND=reference: the reference neither validates arguments nor "
                    "registers torch.ops.cwr_fast")
