"""Per-image decoding of variable-size sources (ImageNet, folder:), for the torch loader, for
load_arrays and for the FFCV writer.

Every image is converted to RGB first (grey, palette, CMYK and alpha images occur in ImageNet).
The crops are those of FFCV's decoders, so the torch and FFCV paths mean the same thing:
  train: random-resized crop (area 8%-100%, aspect 3/4-4/3), resized to resolution^2;
  eval:  centre square of CENTER_CROP_RATIO x the short side, resized to resolution^2
         (= resize the short side to resolution / ratio, then centre crop).
Random draws come from a generator seeded by (seed, epoch, index): reproducible whatever the
number of workers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cwr_fast.data.errors import DatasetError
from cwr_fast.data.info import CENTER_CROP_RATIO

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def open_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from err


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) as FFCV's (and torchvision's) RandomResizedCrop draws it."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.uniform(0, height - h + 1)), int(rng.uniform(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: the central crop of the allowed aspect
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, ratio: float = CENTER_CROP_RATIO):
    """(top, left, c, c): the centred square of side ratio x the short side (FFCV's)."""
    c = int(ratio * min(height, width))
    return (height - c) // 2, (width - c) // 2, c, c


class DecodedFiles(Dataset):
    """(image, label) of [(path, label)] samples.

    mode 'train' or 'eval': uint8 [3, R, R] tensors cropped as above; 'full': the whole RGB image
    as a uint8 [H, W, 3] array (what the FFCV writer stores). Set `epoch` before each epoch.
    """

    def __init__(self, samples: list[tuple[str, int]], mode: str, resolution: int = 224,
                 seed: int = 0):
        if mode not in ("train", "eval", "full"):
            raise ValueError(f"mode must be train, eval or full, got {mode!r}")
        self.samples, self.mode, self.resolution, self.seed = samples, mode, resolution, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        img = open_rgb(path)
        if self.mode == "full":
            return np.asarray(img), label
        if self.mode == "train":
            rng = np.random.default_rng([self.seed, self.epoch, index])
            top, left, h, w = random_resized_crop_box(img.height, img.width, rng)
        else:
            top, left, h, w = center_crop_box(img.height, img.width)
        r = self.resolution
        img = img.resize((r, r), Image.BILINEAR, box=(left, top, left + w, top + h))
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous(), label
