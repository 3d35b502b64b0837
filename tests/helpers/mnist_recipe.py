"""The small MNIST CNN of the tests, trained on real MNIST: one recipe, used by tests/conftest.py
and by bench/bench_evaluate.py (which measures on the same model)."""

from __future__ import annotations

from pathlib import Path

import torch

MNIST_TRAIN_IMAGES = 3000


def mnist_arrays(root: Path, split: str):
    try:
        from cwr_fast.data import load_arrays
        return load_arrays("mnist", split, data_dir=root)
    except ImportError:  # the data layer is not there: read the idx files with torchvision
        import torchvision
        ds = torchvision.datasets.MNIST(root=str(root), train=split == "train", download=False)
        return ds.data[:, None].clone(), ds.targets.clone()


def train_small_mnist_cnn(root: Path, num_images: int = MNIST_TRAIN_IMAGES, epochs: int = 2,
                          seed: int = 0):
    """SmallCNN (with MNIST normalisation inside) trained with Adam on the first num_images real
    training images; eval mode on return. About 95% test accuracy."""
    from cwr_fast.models import build_model

    images, labels = mnist_arrays(root, "train")
    x, y = images[:num_images].float() / 255, labels[:num_images]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model("small_cnn", 10, mean=[0.1307], std=[0.3081])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(num_images, generator=g)
        for i in range(0, num_images, 128):
            idx = perm[i:i + 128]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
