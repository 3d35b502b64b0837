"""From a dataset name and split to data: whole uint8 arrays (fixed-size sources) or a list of
image files (variable-size sources). The one place that knows which reader serves which name."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from cwr_fast.data import generic
from cwr_fast.data.decode import DecodedFiles
from cwr_fast.data.embedded import load_embedded
from cwr_fast.data.readers import OFFICIAL, imagenet_split_dir, read_official
from cwr_fast.data.info import DEFAULT_RESOLUTION
from cwr_fast.data.registry import EMBEDDED, data_root, dataset_info


def load_arrays(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                download: bool = True,
                resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in memory: (uint8 [N, C, H, W], int64 [N]), in the dataset's own order.

    For mnist, cifar10, cifar100, svhn, stl10, mnist-embedded and npz: sources. Variable-size
    sources (imagenet, folder:) are decoded with the eval crop at `resolution` (default 224):
    possible, but slow and large for ImageNet, whose loaders stream files instead.
    """
    info = dataset_info(name)
    info.check_split(split)
    if name == EMBEDDED:
        return load_embedded(split)
    if name in OFFICIAL:
        images, labels = read_official(name, split, data_root(data_dir), download)
        return torch.from_numpy(images), torch.from_numpy(labels)
    if name.startswith("npz:"):
        return generic.npz_arrays(name, split)
    files = DecodedFiles(file_samples(name, split, data_dir), "eval",
                         resolution or DEFAULT_RESOLUTION)
    workers = min(8, os.cpu_count() or 1) if len(files) > 256 else 0
    batches = list(DataLoader(files, batch_size=256, num_workers=workers))
    if not batches:
        return torch.empty(0, *info.image_shape, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]).long()


def file_samples(name: str, split: str,
                 data_dir: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """[(image path, label)] of a variable-size source (imagenet, folder:), ImageFolder order."""
    dataset_info(name).check_split(split)
    if name == "imagenet":
        return generic.image_folder_samples(imagenet_split_dir(data_root(data_dir), split), name)
    if name.startswith("folder:"):
        return generic.image_folder_samples(generic.folder_split_dir(name, split), name,
                                            tree=generic.source_path(name))
    raise ValueError(f"{name} is a fixed-size dataset: read it with load_arrays")
