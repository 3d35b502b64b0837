"""The device side of every loader: uint8 batch -> float32 [0, 1], with training augmentation.

Augmentation works on whole uint8 batches where they already are (the GPU, or the CPU), with a
generator seeded by (seed, epoch, rank): the same draws whichever backend delivered the batch.
Per batch the draws are, in this order: crop offsets (dy, then dx), then flip decisions.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from cwr_fast.data.order import derive_seed
from cwr_fast.data.info import NO_AUGMENT, Augment


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per image, a random HxW window of the image zero-padded by `pad` on each side."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).contiguous()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    # every window as a view [N, dy, dx, C, H, W]; then one gather of whole windows
    sn, sc, sh, sw = padded.stride()
    windows = padded.as_strided((n, 2 * pad + 1, 2 * pad + 1, c, h, w), (sn, sh, sw, sc, sh, sw))
    return windows[torch.arange(n, device=x.device), dy, dx]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.randint(0, 2, (x.shape[0],), generator=generator, device=x.device).bool()
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], contiguous NCHW (a new tensor: loaders may reuse x's memory)."""
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255)


class DeviceTransform:
    """The transform of one loader; `for_epoch(e)` gives the callable for epoch e."""

    def __init__(self, augment: Augment, train: bool, device: torch.device, seed: int = 0,
                 rank: int = 0):
        self.augment = augment if train else NO_AUGMENT
        self.device, self.seed, self.rank = torch.device(device), seed, rank

    def for_epoch(self, epoch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        augment = self.augment
        if augment == NO_AUGMENT:
            return to_float
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.seed, epoch, self.rank, 0xA06))

        def transform(x: torch.Tensor) -> torch.Tensor:
            if augment.crop_pad:
                x = random_crop(x, augment.crop_pad, generator)
            if augment.flip:
                x = random_flip(x, generator)
            return to_float(x)

        return transform
