"""The device-resident loader (as airbench does): the whole uint8 split lives on the device;
each epoch is a seeded permutation of it, cut into batches with index_select, augmented in batch
on the device. No workers, no host-device copies after the first. On the CPU it is the same
with in-memory tensors."""

from __future__ import annotations

from typing import Iterator

import torch

from cwr_fast.data.augment import DeviceTransform
from cwr_fast.data.base import BatchLoader
from cwr_fast.data.order import EpochOrder
from cwr_fast.data.info import DatasetInfo


class GpuLoader(BatchLoader):
    backend = "gpu"

    def __init__(self, info: DatasetInfo, images: torch.Tensor, labels: torch.Tensor,
                 order: EpochOrder, transform: DeviceTransform, device: torch.device):
        super().__init__(info, order, transform, device)
        self.images = images.to(device).contiguous()
        self.labels = labels.to(device, torch.int64)

    def _uint8_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order.for_epoch(epoch).to(self.device)
        for idx in torch.split(order, self.order.batch_size):
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)
