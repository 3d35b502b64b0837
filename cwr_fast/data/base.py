"""What every loader is: an iterable of (float32 [0, 1] NCHW images, int64 labels) on the device,
with len(), .info and set_epoch(). Backends only say how to get uint8 batches in EpochOrder."""

from __future__ import annotations

from typing import Iterator

import torch

from cwr_fast.data.augment import DeviceTransform
from cwr_fast.data.order import EpochOrder
from cwr_fast.data.info import DatasetInfo


class BatchLoader:
    """Iterating runs one epoch; epochs count up by themselves, and set_epoch(e) chooses the
    next one (call it before each epoch for an exact resume, as with DistributedSampler).
    `order` (an EpochOrder, same batch size) may be replaced between epochs."""

    backend = "?"

    def __init__(self, info: DatasetInfo, order: EpochOrder, transform: DeviceTransform,
                 device: torch.device):
        self.info, self.order, self.transform, self.device = info, order, transform, device
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        return len(self.order)

    @property
    def num_samples(self) -> int:
        """Images per epoch (on this rank)."""
        return self.order.num_samples

    @property
    def batch_size(self) -> int:
        return self.order.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        transform = self.transform.for_epoch(epoch)
        for images, labels in self._uint8_batches(epoch):
            yield transform(images), labels

    def _uint8_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 [B, C, H, W], int64 [B]) on self.device, in self.order.for_epoch(epoch) order."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.info.name!r}, backend={self.backend!r}, "
                f"batches={len(self)}, batch_size={self.batch_size}, samples={self.num_samples}, "
                f"device={self.device})")
