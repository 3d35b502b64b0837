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
from cwr_fast.data.info import DEFAULT_RESOLUTION, Augment, DatasetInfo
from cwr_fast.data.registry import dataset_info
from cwr_fast.data.sources import file_samples, load_arrays
from cwr_fast.data.subset import class_balanced_subset
from cwr_fast.data.torch_loader import ArrayDataset, TorchLoader
from cwr_fast.errors import MissingInput, UsageError

BACKENDS = ("auto", "gpu", "ffcv", "torch")
DEVICE_MEMORY_FRACTION = 0.5  # auto: a split goes on the GPU if it takes at most this much free memory


def make_loader(dataset: str, split: str, batch_size: int, train: bool, loader: str = "auto",
                device: str | torch.device = "cpu", distributed: bool = False, seed: int = 0,
                data_dir: str | os.PathLike | None = None, per_class: int | None = None,
                drop_last: bool | None = None, num_workers: int | None = None, *,
                beton: str | os.PathLike | None = None, shuffle: bool | None = None,
                augment: Augment | None = None, resolution: int | None = None,
                subset_seed: int | None = None, exclude=None, download: bool = True,
                rank: int | None = None, world_size: int | None = None) -> BatchLoader:
    """A loader of (images float32 [0, 1] NCHW, labels int64) on `device`.

    train: shuffle each epoch, drop the last incomplete batch and augment (the dataset's
      info.train_augment on the device, or `augment`); eval: dataset order, every sample once.
      shuffle/drop_last override the first two.
    per_class=k: only the first k images of each class (a seeded draw with subset_seed), chosen
      before sharding. exclude: dataset indices never visited (e.g. a held-out validation
      subset), removed after the per_class choice. distributed: shard by torch.distributed's rank and world size (or the
      rank/world_size given). seed: the shuffle and augmentation seed (the same on every rank).
    num_workers: DataLoader workers (torch) or decoding threads (ffcv); default: the CPU count
      for decoded files, 0 for in-memory arrays (torch).
    beton: the .beton for loader='ffcv' (default <data root>/ffcv/<dataset>-<split>.beton).
    resolution: output side of variable-size sources (ImageNet, folder:), default 224.
    """
    if loader not in BACKENDS:
        raise UsageError(f"loader must be one of {', '.join(BACKENDS)}, got {loader!r}")
    info = dataset_info(dataset)
    info.check_split(split)
    if not info.fixed_size:
        r = resolution or DEFAULT_RESOLUTION
        info = dataclasses.replace(info, image_shape=(info.image_shape[0], r, r))
    elif resolution is not None and resolution != info.image_shape[-1]:
        raise UsageError(f"{dataset} has fixed {info.image_shape[1]}x{info.image_shape[2]} "
                         "images; resolution= is for ImageNet and folder: sources")
    device = _device(device)
    rank, world_size = _shard(distributed, rank, world_size)
    request = _Request(
        dataset=dataset, split=split, info=info, train=train, device=device,
        data_dir=data_dir, download=download, num_workers=num_workers,
        beton=Path(beton) if beton is not None else default_beton_path(dataset, split, data_dir),
        transform=DeviceTransform(info.train_augment if augment is None else augment, train,
                                  device, seed, rank),
        order_args=dict(batch_size=batch_size, shuffle=train if shuffle is None else shuffle,
                        drop_last=train if drop_last is None else drop_last, seed=seed,
                        rank=rank, world_size=world_size),
        per_class=per_class, subset_seed=subset_seed,
        exclude=None if exclude is None else torch.as_tensor(exclude, dtype=torch.long))
    backend = _auto_backend(request) if loader == "auto" else loader
    return _BUILDERS[backend](request)


@dataclasses.dataclass
class _Request:
    """Everything make_loader was asked, resolved; the builders below turn it into a loader."""
    dataset: str
    split: str
    info: DatasetInfo
    train: bool
    device: torch.device
    data_dir: str | os.PathLike | None
    download: bool
    num_workers: int | None
    beton: Path | None
    transform: DeviceTransform
    order_args: dict
    per_class: int | None
    subset_seed: int | None
    exclude: torch.Tensor | None
    _arrays: tuple | None = None

    def order_for(self, labels) -> EpochOrder:
        labels = torch.as_tensor(labels)
        indices = (torch.arange(len(labels)) if self.per_class is None
                   else class_balanced_subset(labels, self.per_class, self.subset_seed))
        if self.exclude is not None:
            indices = indices[~torch.isin(indices, self.exclude)]
        return EpochOrder(indices, **self.order_args)

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arrays is None:
            self._arrays = load_arrays(self.dataset, self.split, self.data_dir,
                                       download=self.download,
                                       resolution=self.info.image_shape[-1])
        return self._arrays


def _auto_backend(req: _Request) -> str:
    if req.info.fixed_size and _fits(req.arrays()[0], req.device):
        return "gpu"
    return "ffcv" if _ffcv_usable(req.beton) else "torch"


def _gpu_loader(req: _Request) -> BatchLoader:
    if req.train and not req.info.fixed_size:
        raise DatasetError(f"loader='gpu' holds fixed-size images; {req.dataset} is decoded per "
                           "image for training (random-resized crops): use loader='ffcv' or "
                           "'torch'")
    images, labels = req.arrays()
    return GpuLoader(req.info, images, labels, req.order_for(labels), req.transform, req.device)


def _torch_loader(req: _Request) -> BatchLoader:
    if req.info.fixed_size:
        images, labels = req.arrays()
        dataset, workers = ArrayDataset(images, labels), req.num_workers or 0
    else:
        samples = file_samples(req.dataset, req.split, req.data_dir)
        dataset = DecodedFiles(samples, "train" if req.train else "eval",
                               req.info.image_shape[-1], req.order_args["seed"])
        labels = [label for _, label in samples]
        workers = (os.cpu_count() or 1) if req.num_workers is None else req.num_workers
    return TorchLoader(req.info, dataset, req.order_for(labels), req.transform, req.device,
                       workers)


def _ffcv_loader(req: _Request) -> BatchLoader:
    dataset, split, beton, info = req.dataset, req.split, req.beton, req.info
    if beton is None:  # the CLIs have no option naming a .beton: say what the user can do
        raise UsageError(
            f"loader 'ffcv' reads a .beton, and for {dataset} (a folder:/npz: source) there is no "
            "default one that the command line finds (only the registered datasets have one, at "
            "<data root>/ffcv/<name>-<split>.beton, written by python -m cwr_fast.data.beton "
            f"--dataset NAME --split {split}): use --loader torch or --loader gpu for this source, "
            "or from Python make_loader(..., loader='ffcv', beton=PATH) after python -m "
            f"cwr_fast.data.beton --dataset {dataset} --split {split} --out PATH")
    import_ffcv()
    from cwr_fast.data.ffcv_loader import FfcvLoader

    if not beton.is_file():
        raise MissingInput(
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
    return FfcvLoader(info, beton, kind, req.order_for(labels), req.transform, req.device,
                      req.train, req.num_workers or os.cpu_count() or 1)


_BUILDERS = {"gpu": _gpu_loader, "torch": _torch_loader, "ffcv": _ffcv_loader}


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} asked for, but torch sees no CUDA device")
    return device


def _shard(distributed: bool, rank: int | None, world_size: int | None) -> tuple[int, int]:
    if not distributed:
        if (rank or 0) != 0 or (world_size or 1) != 1:
            raise UsageError("rank/world_size given without distributed=True")
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
