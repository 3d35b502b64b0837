"""Loader throughput (images/s) of the three backends, and FFCV's numba compile time apart.

    pytest bench/bench_data.py --benchmark-only

One benchmark round is one epoch (train: shuffled, augmented on the device). Setups:
  cifar:  the real CIFAR-10 subset (5,085 train images, 32x32) from the shared data, batch 512;
  jpeg:   256 synthetic 224x224 JPEGs (ImageNet path: decode + random-resized crop for train,
          centre crop for eval), batch 64; the gpu loader only serves eval (decoded once).
Each line printed gives images/s in steady state and, apart, the first batch of a fresh loader
(FFCV: numba compilation of its pipeline) and the first epoch. Runs on CUDA when torch sees it.
"""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cwr_fast.data import make_loader, write_beton

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
WORKERS = min(8, os.cpu_count() or 1)


@pytest.fixture(scope="module")
def cifar() -> str:
    root = Path(os.environ.get("CWR_FAST_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root / "cifar10-subset" / "cifar10_subset.npz"
    if not path.is_file():
        pytest.fail(f"real benchmark data not found at {path} (set CWR_FAST_SHARED_DATA)",
                    pytrace=False)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def cifar_beton(cifar, tmp_path_factory) -> Path:
    return write_beton(cifar, "train", tmp_path_factory.mktemp("bench") / "cifar.beton")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> tuple[str, Path]:
    """256 smooth-plus-noise 224x224 JPEGs in 8 classes (about ImageNet's bytes per pixel)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224]
    for i in range(256):
        folder = root / "train" / f"class{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.01, 0.05, 3)
        smooth = 127 + 100 * np.sin(xx[..., None] * f + yy[..., None] * f[::-1])
        img = np.clip(smooth + rng.normal(0, 12, (224, 224, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.JPEG", quality=90)
    name = f"folder:{root}"
    return name, write_beton(name, "train", root / "jpegs.beton", write_mode="jpg",
                             max_resolution=256)


def consume(loader) -> int:
    n = 0
    for images, _ in loader:
        n += len(images)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return n


def measure(benchmark, capsys, make, label: str, rounds: int):
    """Times a fresh loader's first batch and first epoch, then `rounds` steady epochs."""
    start = time.perf_counter()
    loader = make()
    batches = iter(loader)
    next(batches)
    first_batch = time.perf_counter() - start
    for _ in batches:
        pass
    first_epoch = time.perf_counter() - start
    benchmark.pedantic(consume, args=(loader,), rounds=rounds, iterations=1)
    if benchmark.disabled:  # --benchmark-disable: the code ran once, there is nothing to report
        return
    epoch = benchmark.stats.stats.mean
    rate = loader.num_samples / epoch
    benchmark.extra_info.update(images_per_s=rate, first_batch_s=first_batch,
                                first_epoch_s=first_epoch, images=loader.num_samples,
                                backend=loader.backend, device=DEVICE)
    with capsys.disabled():
        print(f"\n  {label:<24} {rate:>10,.0f} images/s   first batch {first_batch:6.2f} s "
              f"(compile + startup)   first epoch {first_epoch:6.2f} s")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["gpu", "torch", "ffcv"])
def test_cifar_subset(benchmark, capsys, cifar, cifar_beton, backend, train):
    benchmark.group = f"cifar10-subset {'train' if train else 'eval'} (5,085 images, batch 512)"
    workers = {"gpu": None, "torch": WORKERS, "ffcv": WORKERS}[backend]
    measure(benchmark, capsys,
            lambda: make_loader(cifar, "train", 512, train=train, loader=backend, device=DEVICE,
                                beton=cifar_beton, num_workers=workers),
            f"cifar {backend} {'train' if train else 'eval'}", rounds=5)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["gpu", "torch", "ffcv"])
def test_jpeg_224(benchmark, capsys, jpegs, backend, train):
    if backend == "gpu" and train:
        pytest.skip("the gpu loader serves variable-size sources for eval only")
    name, beton = jpegs
    benchmark.group = f"224px JPEG {'train' if train else 'eval'} (256 images, batch 64)"
    measure(benchmark, capsys,
            lambda: make_loader(name, "train", 64, train=train, loader=backend, device=DEVICE,
                                beton=beton, num_workers=WORKERS, resolution=224),
            f"jpeg224 {backend} {'train' if train else 'eval'}", rounds=3)
