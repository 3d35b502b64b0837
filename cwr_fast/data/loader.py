"""make_loader: the one entry point to every dataset through every backend.

    loader = make_loader("cifar10", "train", batch_size=512, train=True, device="cuda")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # float32 [B, 3, 32, 32] in [0, 1], int64 [B], on cuda
            ...

Backends, identical in what they yield (same EpochOrder, same device-side transform):
  gpu    the whole uint8 split on the device (in memory on the CPU); fixed-size datasets, and the
         eval split of variable-size ones (decoded once with the eval crop);
  ffcv   a .beton written by `python -m cwr_fast.data.beton`;
  torch  a torch DataLoader with workers and pinned memory.
  auto   gpu when the split is fixed-size and fits (on the CPU: always); else ffcv when a .beton is
         given or found at the default location and ffcv imports; else torch.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch

from cwr_fast.data.augment import DeviceTransform
from cwr_fast.data.base import BatchLoader
from cwr_fast.data.decode import DecodedFiles
from cwr_fast.data.errors import DatasetError
from cwr_fast.data.ffcv_io import (beton_contents, default_beton_path, ffcv_installed,
                                   import_ffcv)
from cwr_fast.data.gpu_loader import GpuLoader
from cwr_fast.data.order import EpochOrder
from cwr_fast.data.registry import DEFAULT_RESOLUTION, Augment, dataset_info
from cwr_fast.data.sources import file_samples, load_arrays
from cwr_fast.data.subset import class_balanced_subset
from cwr_fast.data.torch_loader import ArrayDataset, TorchLoader

BACKENDS = ("auto", "gpu", "ffcv", "torch")
DEVICE_MEMORY_FRACTION = 0.5  # auto: a split goes on the GPU if it takes at most this much free memory


def make_loader(dataset: str, split: str, batch_size: int, train: bool, loader: str = "auto",
                device: str | torch.device = "cpu", distributed: bool = False, seed: int = 0,
                data_dir: str | os.PathLike | None = None, per_class: int | None = None,
                drop_last: bool | None = None, num_workers: int | None = None, *,
                beton: str | os.PathLike | None = None, shuffle: bool | None = None,
                augment: Augment | None = None, resolution: int | None = None,
                subset_seed: int | None = None, download: bool = True,
                rank: int | None = None, world_size: int | None = None) -> BatchLoader:
    """A loader of (images float32 [0, 1] NCHW, labels int64) on `device`.

    train: shuffle each epoch, drop the last incomplete batch and augment (the dataset's
      info.train_augment on the device, or `augment`); eval: dataset order, every sample once.
      shuffle/drop_last override the first two.
    per_class=k: only the first k images of each class (a seeded draw with subset_seed), chosen
      before sharding. distributed: shard by torch.distributed's rank and world size (or the
      rank/world_size given). seed: the shuffle and augmentation seed (the same on every rank).
    num_workers: DataLoader workers (torch) or decoding threads (ffcv); default: the CPU count
      for decoded files, 0 for in-memory arrays (torch).
    beton: the .beton for loader='ffcv' (default <data root>/ffcv/<dataset>-<split>.beton).
    resolution: output side of variable-size sources (ImageNet, folder:), default 224.
    """
    if loader not in BACKENDS:
        raise ValueError(f"loader must be one of {', '.join(BACKENDS)}, got {loader!r}")
    info = dataset_info(dataset)
    info.check_split(split)
    if not info.fixed_size:
        r = resolution or DEFAULT_RESOLUTION
        info = dataclasses.replace(info, image_shape=(info.image_shape[0], r, r))
    elif resolution is not None and resolution != info.image_shape[-1]:
        raise ValueError(f"{dataset} has fixed {info.image_shape[1]}x{info.image_shape[2]} "
                         "images; resolution= is for ImageNet and folder: sources")
    device = _device(device)
    rank, world_size = _shard(distributed, rank, world_size)
    transform = DeviceTransform(info.train_augment if augment is None else augment, train,
                                device, seed, rank)
    drop_last = train if drop_last is None else drop_last
    shuffle = train if shuffle is None else shuffle

    def order_for(labels) -> EpochOrder:
        labels = torch.as_tensor(labels)
        indices = (torch.arange(len(labels)) if per_class is None
                   else class_balanced_subset(labels, per_class, subset_seed))
        return EpochOrder(indices, batch_size, shuffle, drop_last, seed, rank, world_size)

    beton = Path(beton) if beton is not None else default_beton_path(dataset, split, data_dir)
    backend = loader
    if backend == "gpu" and not info.fixed_size and train:
        raise DatasetError(f"loader='gpu' holds fixed-size images; {dataset} is decoded per image "
                           "for training (random-resized crops): use loader='ffcv' or 'torch'")
    if backend == "auto" and not info.fixed_size:
        backend = "ffcv" if _ffcv_usable(beton) else "torch"

    if backend == "ffcv":
        return _ffcv_loader(info, dataset, split, beton, order_for, transform, device, train,
                            num_workers)
    if info.fixed_size or backend == "gpu":
        images, labels = load_arrays(dataset, split, data_dir, download=download,
                                     resolution=info.image_shape[-1])
        if backend == "auto":
            if _fits(images, device):
                backend = "gpu"
            elif _ffcv_usable(beton):
                return _ffcv_loader(info, dataset, split, beton, order_for, transform, device,
                                    train, num_workers)
            else:
                backend = "torch"
        if backend == "gpu":
            return GpuLoader(info, images, labels, order_for(labels), transform, device)
        return TorchLoader(info, ArrayDataset(images, labels), order_for(labels), transform,
                           device, num_workers or 0)
    samples = file_samples(dataset, split, data_dir)
    files = DecodedFiles(samples, "train" if train else "eval", info.image_shape[-1], seed)
    return TorchLoader(info, files, order_for([label for _, label in samples]), transform,
                       device, (os.cpu_count() or 1) if num_workers is None else num_workers)


def _ffcv_loader(info, dataset, split, beton, order_for, transform, device, train, num_workers):
    import_ffcv()
    from cwr_fast.data.ffcv_loader import FfcvLoader

    if beton is None:
        raise ValueError(f"loader='ffcv' for {dataset} needs beton=PATH (a generic source has no "
                         "default .beton location)")
    if not beton.is_file():
        raise FileNotFoundError(
            f"no .beton for {dataset} split {split!r} at {beton}. Write it with:\n"
            f"  python -m cwr_fast.data.beton --dataset {dataset} --split {split} --out {beton}")
    kind, shape, labels = beton_contents(beton)
    if (kind == "ndarray") != info.fixed_size or (shape is not None and shape != info.image_shape):
        found = f"raw images of shape {shape}" if shape else "RGB (JPEG) images"
        raise DatasetError(f"{beton} holds {found}, which is not {dataset} "
                           f"({info.image_shape}); was it written for another dataset?")
    if len(labels) and int(labels.max()) >= info.num_classes:
        raise DatasetError(f"{beton} has label {int(labels.max())} but {dataset} has "
                           f"{info.num_classes} classes; was it written for another dataset?")
    return FfcvLoader(info, beton, kind, order_for(labels), transform, device, train,
                      num_workers or os.cpu_count() or 1)


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} asked for, but torch sees no CUDA device")
    return device


def _shard(distributed: bool, rank: int | None, world_size: int | None) -> tuple[int, int]:
    if not distributed:
        if (rank or 0) != 0 or (world_size or 1) != 1:
            raise ValueError("rank/world_size given without distributed=True")
        return 0, 1
    if rank is None or world_size is None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("distributed=True needs torch.distributed initialised (torchrun "
                               "and init_process_group), or explicit rank= and world_size=")
        rank = torch.distributed.get_rank() if rank is None else rank
        world_size = torch.distributed.get_world_size() if world_size is None else world_size
    return rank, world_size


def _fits(images: torch.Tensor, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() <= DEVICE_MEMORY_FRACTION * free


def _ffcv_usable(beton: Path | None) -> bool:
    if beton is None or not beton.is_file() or not ffcv_installed():
        return False
    try:
        import_ffcv()
    except ImportError as err:
        warnings.warn(f"a .beton is at {beton} but {err}; using the torch loader", stacklevel=3)
        return False
    return True
