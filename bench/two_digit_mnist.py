"""A CIFAR-100-shaped dataset from real MNIST, for the benchmarks that need many classes.

CIFAR-100 itself is not available offline here. "Two-digit MNIST" has its shape (100 classes,
3x32x32 uint8, 500 training and 100 test images per class at most) and a class structure like
its superclasses: class 10*a + b shows the digit a on the left and b on the right, so each class
has 18 near neighbours (one digit shared) and 81 far ones, and a model's nearest decision
boundaries are not simply its most likely classes. Each half is a real MNIST digit scaled to
16x16 (area averaging) on a 32x32 black canvas, grey in all three channels; training pairs come
from MNIST's training split and test pairs from its test split, drawn with a fixed seed, so the
file is the same on every machine.

    python bench/two_digit_mnist.py OUT.npz      # or two_digit_mnist(path) from a benchmark
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = 100
PER_CLASS = {"train": 200, "test": 20}
SEED = 0


def scaled_digits(digits: torch.Tensor) -> torch.Tensor:
    """MNIST digits [N, 28, 28] (any leading layout) as the [N, 16, 16] float halves of a pair."""
    return F.interpolate(digits.reshape(-1, 1, 28, 28).float(), size=(16, 16), mode="area")[:, 0]


def _pairs(digits: torch.Tensor, labels: torch.Tensor, per_class: int, generator: torch.Generator):
    """[100 * per_class, 32, 32, 3] uint8 images and their labels 10*a + b, in class order."""
    small = scaled_digits(digits)
    by_digit = [torch.nonzero(labels == d).flatten() for d in range(10)]
    images = torch.zeros(CLASSES * per_class, 32, 32, dtype=torch.float32)
    for c in range(CLASSES):
        for half, digit in enumerate(divmod(c, 10)):
            pool = by_digit[digit]
            pick = pool[torch.randint(len(pool), (per_class,), generator=generator)]
            images[c * per_class:(c + 1) * per_class, 8:24, 16 * half:16 * half + 16] = small[pick]
    images = images.round().clamp(0, 255).to(torch.uint8)
    return images[..., None].expand(-1, -1, -1, 3).numpy(), np.repeat(np.arange(CLASSES), per_class)


def two_digit_mnist(out: Path, mnist_root: Path) -> Path:
    """Writes the .npz (once; an existing file is kept) and returns its path."""
    from cwr_fast.data import load_arrays

    out = Path(out)
    if out.is_file():
        return out
    generator = torch.Generator().manual_seed(SEED)
    arrays = {}
    for split, per_class in PER_CLASS.items():
        digits, labels = load_arrays("mnist", split, data_dir=mnist_root)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _pairs(digits, labels, per_class, generator)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.npz")
    np.savez_compressed(partial, **arrays, class_names=np.array([f"{c:02d}" for c in range(CLASSES)]),
                        layout="NHWC")
    partial.replace(out)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_autoattack import shared_data

    print(two_digit_mnist(Path(sys.argv[1]), shared_data()))
