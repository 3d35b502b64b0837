"""The fallback loader: a torch DataLoader with worker processes and pinned memory.

It reads in-memory arrays (fixed-size datasets) or decodes files per image (ImageNet, folder:),
in the EpochOrder's batches, and moves uint8 batches to the device, where the same augmentation
as in the other loaders runs."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from cwr_fast.data.augment import DeviceTransform
from cwr_fast.data.base import BatchLoader
from cwr_fast.data.errors import DatasetError
from cwr_fast.data.order import EpochOrder
from cwr_fast.data.info import DatasetInfo


class ArrayDataset(Dataset):
    """(uint8 [C, H, W], label) of in-memory arrays."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


class TorchLoader(BatchLoader):
    backend = "torch"

    def __init__(self, info: DatasetInfo, dataset: Dataset, order: EpochOrder,
                 transform: DeviceTransform, device: torch.device, num_workers: int):
        super().__init__(info, order, transform, device)
        self.dataset, self.num_workers = dataset, num_workers

    def _uint8_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch  # seeds per-image random crops (decode.DecodedFiles)
        batches = [b.tolist() for b in self.order.batches(epoch)]
        cuda = self.device.type == "cuda"
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=cuda,
                            prefetch_factor=4 if self.num_workers > 0 else None)
        try:
            for images, labels in loader:
                yield (images.to(self.device, non_blocking=cuda),
                       labels.to(self.device, torch.int64, non_blocking=cuda))
        except DatasetError as err:
            raise DatasetError(worker_message(err)) from None


def worker_message(err: Exception) -> str:
    """The error's own message: a DataLoader worker re-raises it with the worker's traceback
    ('Caught DatasetError in DataLoader worker process 0. Original Traceback ...') prepended."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(type(err).__module__) else last
