"""The FFCV loader: decoding on the CPU (numba-compiled, threaded), everything else on the device.

Pipelines, declared per field:
  image, raw .beton (fixed-size):   NDArrayDecoder -> ToTensor [-> ToDevice]     uint8 [B, C, H, W]
  image, RGB .beton, train:         RandomResizedCropRGBImageDecoder(res) -> ToTensor [-> ToDevice]
  image, RGB .beton, eval:          CenterCropRGBImageDecoder(res, 224/256) -> ToTensor [-> ToDevice]
  label:                            IntDecoder -> ToTensor [-> ToDevice]
then, on the device and shared with the other loaders: uint8 -> float [0, 1], random crop with
padding and flip (train). No FFCV normalisation: it lives in the model.

The order is the EpochOrder (a seeded RANDOM permutation per epoch, never QUASI_RANDOM, whose
batches hold few distinct classes), handed to FFCV as its traversal order, so FFCV batches hold
the same samples as the other loaders' and distributed sharding is the same too. The only thing
FFCV draws itself is the random-resized crop of RGB .betons (numba's RNG, not seeded).
Note: FFCV sets torch's intra-op thread count to its num_workers (default here: all CPUs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from ffcv.fields.decoders import (CenterCropRGBImageDecoder, IntDecoder, NDArrayDecoder,
                                  RandomResizedCropRGBImageDecoder)
from ffcv.loader import Loader
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import ToDevice, ToTensor

from cwr_fast.data.augment import DeviceTransform
from cwr_fast.data.base import BatchLoader
from cwr_fast.data.order import EpochOrder
from cwr_fast.data.info import CENTER_CROP_RATIO, DatasetInfo


# The compiled pipelines of every FFCV loader made, kept for the life of the process. Freeing
# them runs numba dispatcher finalizers that can raise (an ignored KeyError); on CPython 3.11.7
# such an error raised by the garbage collector inside AST code (an import, pytest's assertion
# rewriting) corrupts the AST state and later imports fail with "AST constructor recursion depth
# mismatch". A pipeline's machine code is small; a process makes few loaders.
_COMPILED_PIPELINES: list = []


class _EpochOrderTraversal(TraversalOrder):
    """The FfcvLoader's current EpochOrder as FFCV's traversal order. (ffcv 1.0.2 takes a
    TraversalOrder instance and calls it with the loader, hence __call__.)"""

    def __init__(self, owner: "FfcvLoader"):
        self.owner = owner

    def __call__(self, loader) -> "_EpochOrderTraversal":
        super().__init__(loader)
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.owner.order.for_epoch(epoch).numpy().astype(np.uint64)


def declare_pipelines(kind: str, train: bool, resolution: int, device: torch.device) -> dict:
    to_device = [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []
    if kind == "ndarray":
        decoder = NDArrayDecoder()
    elif train:
        decoder = RandomResizedCropRGBImageDecoder((resolution, resolution))
    else:
        decoder = CenterCropRGBImageDecoder((resolution, resolution), ratio=CENTER_CROP_RATIO)
    return {"image": [decoder, ToTensor(), *to_device],
            "label": [IntDecoder(), ToTensor(), *to_device]}


class FfcvLoader(BatchLoader):
    backend = "ffcv"

    def __init__(self, info: DatasetInfo, beton: Path, kind: str, order: EpochOrder,
                 transform: DeviceTransform, device: torch.device, train: bool,
                 num_workers: int):
        super().__init__(info, order, transform, device)
        self.beton, self.kind = beton, kind
        self._loader = Loader(
            str(beton), batch_size=order.batch_size, num_workers=num_workers,
            order=_EpochOrderTraversal(self), drop_last=False,  # the EpochOrder already drops
            pipelines=declare_pipelines(kind, train, info.image_shape[-1], device),
            os_cache=True, seed=order.seed)
        _COMPILED_PIPELINES.append(self._loader.code)

    @property
    def order(self) -> EpochOrder:
        return self._order

    @order.setter
    def order(self, order: EpochOrder) -> None:  # replaceable between epochs, as in every loader
        self._order = order
        if hasattr(self, "_loader"):  # FFCV sizes its epochs by its first order
            if order.batch_size != self._loader.batch_size:
                raise ValueError("a new order must keep the loader's batch size")
            self._loader.first_traversal_order = order.for_epoch(0).numpy()

    def _uint8_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._loader.next_epoch = epoch
        for images, labels in self._loader:
            if self.kind == "rgb":  # RGB decoders give [B, H, W, 3]
                images = images.permute(0, 3, 1, 2)
            # FFCV reuses its output buffers: the transform copies images, labels are cloned.
            yield images, labels.reshape(-1).clone()
