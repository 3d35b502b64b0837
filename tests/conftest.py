"""Shared fixtures. Tests that need the real data read ../shared/data (or $CWR_FAST_SHARED_DATA)
and FAIL when it is missing: CI must never skip them silently."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # cwr_fast's registry of the files it wrote (cwr_fast.outputs) goes to this test session's own
    # folder, and the CLIs the tests start inherit it
    os.environ.setdefault("CWR_FAST_STATE", tempfile.mkdtemp(prefix="cwr_fast-state-"))


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


# ---- fused ops (tests/ops/) -------------------------------------------------------------
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


# ---- data layer (cwr_fast.data): shared by tests/data/ ----------------------------------

@pytest.fixture(scope="session")
def cifar_subset(shared_data) -> str:
    """The real CIFAR-10 subset as an npz: source name."""
    return f"npz:{shared_data / 'cifar10-subset' / 'cifar10_subset.npz'}"


def _write_jpeg_folder(root: Path, classes, per_class: int, split: str = "train", seed: int = 0):
    """root/split/<class>/<i>.JPEG of assorted small sizes, in RGB, grey and CMYK."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = 10 + 3 * ((c + i) % 4), 12 + 2 * (i % 8)
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            img.convert(("RGB", "L", "CMYK")[(c + i) % 3]).save(folder / f"{i}.JPEG", quality=90)
    return root


@pytest.fixture
def jpeg_folder():
    """write(root, classes, per_class, split="train"): an ImageFolder of small JPEGs."""
    return _write_jpeg_folder


# ---- attacks, models and class-wise evaluation (tests/test_attacks*, test_models*, test_evaluate*) --
# One small MNIST CNN, trained once per session on real MNIST (a few seconds on a CPU), and a fixed
# set of real test images. Read straight from the official idx files under shared_data.

MNIST_EVAL_IMAGES = 300


from helpers.mnist_recipe import MNIST_TRAIN_IMAGES, train_small_mnist_cnn  # noqa: E402
from helpers.mnist_recipe import mnist_arrays as _mnist_arrays  # noqa: E402


@pytest.fixture(scope="session")
def mnist_model(shared_data):
    return train_small_mnist_cnn(shared_data)


@pytest.fixture(scope="session")
def mnist_eval(shared_data):
    """(images float [0, 1] [N, 1, 28, 28], labels int64 [N]): the first real MNIST test images."""
    images, labels = _mnist_arrays(shared_data, "test")
    return images[:MNIST_EVAL_IMAGES].float() / 255, labels[:MNIST_EVAL_IMAGES].clone()


@pytest.fixture(scope="session")
def mnist_checkpoint(mnist_model, tmp_path_factory):
    """The session model's state dict saved to a file."""
    path = tmp_path_factory.mktemp("checkpoint") / "small_cnn.pt"
    torch.save(mnist_model.state_dict(), path)
    return path


# ---- adversarially trained models (tests/attacks/) -------------------------------------
# Trained once per session by the tool's own training CLI on real data, seeded: a small CNN on MNIST
# (PGD-AT at eps 0.2, attacked at 0.25; about a minute) and a short run on the CIFAR-10 subset (eps 8/255).

class RobustFixture:
    """(model in eval mode, class-balanced test images in [0, 1], labels, eps, name)."""

    def __init__(self, model, x, y, eps, name):
        self.model, self.x, self.y, self.eps, self.name = model, x, y, eps, name


def _train_robust(out: Path, dataset: str, *args: str) -> Path:
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "cwr_fast.train", "--dataset", dataset, "--val-per-class", "5",
           "--no-final-eval", "--progress", "off", "--seed", "0", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"training the fixture model failed:\n{proc.stderr[-3000:]}"
    return out / "checkpoints" / "last.pt"


def _robust_fixture(checkpoint: Path, source: str, data_kwargs: dict, per_class: int, eps: float,
                    name: str) -> RobustFixture:
    from cwr_fast.data import dataset_info, load_arrays
    from cwr_fast.models import build_model
    from cwr_fast.models.checkpoint import load_weights

    info = dataset_info(source)
    model = build_model("small_cnn", info.num_classes, info.mean, info.std, info.image_shape[0])
    load_weights(model, checkpoint)
    images, labels = load_arrays(source, "test", **data_kwargs)
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(info.num_classes)])
    keep = keep.sort().values
    return RobustFixture(model.eval(), images[keep].float() / 255, labels[keep].clone(), eps, name)


@pytest.fixture(scope="session")
def mnist_robust(shared_data, tmp_path_factory) -> RobustFixture:
    ckpt = _train_robust(tmp_path_factory.mktemp("mnist_robust") / "run", "mnist", "--data-dir",
                         str(shared_data), "--train-per-class", "300", "--epochs", "8", "--steps", "5",
                         "--alpha", "0.06", "--eps", "0.2", "--eps-warmup-epochs", "3",
                         "--batch-size", "50")
    return _robust_fixture(ckpt, "mnist", {"data_dir": shared_data}, 20, 0.25, "mnist")


@pytest.fixture(scope="session")
def cifar_robust(shared_data, tmp_path_factory) -> RobustFixture:
    source = f"npz:{shared_data / 'cifar10-subset' / 'cifar10_subset.npz'}"
    ckpt = _train_robust(tmp_path_factory.mktemp("cifar_robust") / "run", source, "--arch", "small_cnn",
                         "--epochs", "6", "--steps", "4", "--alpha", "3/255", "--batch-size", "50",
                         "--lr", "0.02", "--schedule", "cosine", "--eps-warmup-epochs", "2",
                         "--weight-decay", "0")
    return _robust_fixture(ckpt, source, {}, 20, 8 / 255, "cifar10-subset")
