"""Users' own data: `npz:PATH` (uint8 arrays) and `folder:PATH` (an ImageFolder of any images).

npz:PATH -- a NumPy .npz with, for each split S, `S_images` (uint8, [N, H, W] grey, [N, H, W, C]
  or [N, C, H, W] with C in {1, 3}) and `S_labels` (integers 0..K-1); or just `images`/`labels`,
  which make one split called 'all'. Optional: `class_names` [K] (str), `mean` and `std` [C] (in
  [0, 1] units; computed from the train split when absent). Fixed-size: read whole into memory;
  training augmentation: random crop padded by H/8 and horizontal flip.
folder:PATH -- PATH/<split>/<class>/<image> for the splits among train, val and test that exist,
  or PATH/<class>/<image> as one split called 'all'. Any format PIL reads; every image is
  converted to RGB (grey, palette, CMYK, alpha). Variable-size, like ImageNet: random-resized
  crop at decode time for training, centre crop for eval, to DEFAULT_RESOLUTION unless the loader
  asks for another; ImageNet's mean/std.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from cwr_fast.data.errors import DatasetError, DatasetNotFoundError
from cwr_fast.data.info import DEFAULT_RESOLUTION, IMAGENET_MEAN, IMAGENET_STD, Augment, DatasetInfo

FOLDER_SPLITS = ("train", "val", "test")
WHOLE = "all"


def source_path(name: str) -> Path:
    path = Path(name.split(":", 1)[1]).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"{name}: {path} does not exist")
    return path


# ---- npz -----------------------------------------------------------------------------------------

def _npz(name: str):
    path = source_path(name)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{name}: {path} is not a readable .npz ({err})") from err


def _npz_splits(name: str, files) -> tuple[str, ...]:
    splits = tuple(k[:-len("_images")] for k in files if k.endswith("_images")
                   and k[:-len("_images")] + "_labels" in files)
    if not splits and "images" in files and "labels" in files:
        splits = (WHOLE,)
    if not splits:
        raise DatasetError(f"{name}: no image arrays found; expected keys like train_images and "
                           f"train_labels (or images and labels), got {sorted(files)}")
    return splits


def _to_nchw(name: str, key: str, images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DatasetError(f"{name}: {key} must be uint8 pixels, got {images.dtype}")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    raise DatasetError(f"{name}: {key} has shape {images.shape}; expected [N, H, W], "
                       "[N, H, W, C] or [N, C, H, W] with C = 1 or 3")


def npz_arrays(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = _npz(name)
    splits = _npz_splits(name, files.files)
    if split not in splits:
        raise DatasetError(f"{name} has no split {split!r}; its splits are {', '.join(splits)}")
    prefix = "" if split == WHOLE else split + "_"
    images = _to_nchw(name, prefix + "images", files[prefix + "images"])
    labels = files[prefix + "labels"]
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{name}: {prefix}labels must be {len(images)} integers, got "
                           f"{labels.dtype} {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise DatasetError(f"{name}: {prefix}labels must be >= 0, got {labels.min()}")
    return (torch.from_numpy(np.ascontiguousarray(images)),
            torch.from_numpy(labels.astype(np.int64)))


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list, list]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in bounded memory."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        part = part.double() / 255
        total += part.sum((0, 2, 3))
        squares += part.square().sum((0, 2, 3))
    n = max(1, images.numel() // images.shape[1])
    mean = total / n
    return mean.tolist(), (squares / n - mean.square()).clamp(min=0).sqrt().tolist()


def npz_info(name: str) -> DatasetInfo:
    path = source_path(name)
    stat = path.stat()
    return _npz_info(name, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _npz_info(name: str, mtime_ns: int, size: int) -> DatasetInfo:  # cached while the file is unchanged
    files = _npz(name)
    splits = _npz_splits(name, files.files)
    arrays = {s: npz_arrays(name, s) for s in splits}
    shapes = {tuple(x.shape[1:]) for x, _ in arrays.values()}
    if len(shapes) != 1:
        raise DatasetError(f"{name}: splits have different image shapes {sorted(shapes)}")
    (shape,) = shapes
    top = max(int(y.max()) + 1 if len(y) else 0 for _, y in arrays.values())
    if "class_names" in files.files:
        class_names = [str(c) for c in files["class_names"]]
        if len(class_names) < top:
            raise DatasetError(f"{name}: {len(class_names)} class_names but labels go up to "
                               f"{top - 1}")
    else:
        class_names = [str(i) for i in range(top)]
    if "mean" in files.files and "std" in files.files:
        mean, std = files["mean"], files["std"]
    else:
        mean, std = _channel_stats(arrays["train" if "train" in arrays else splits[0]][0])
    return DatasetInfo(name=name, num_classes=len(class_names), class_names=class_names,
                       image_shape=shape, mean=tuple(float(m) for m in mean),
                       std=tuple(float(s) for s in std), splits=splits,
                       train_augment=Augment(crop_pad=max(1, shape[1] // 8), flip=True),
                       description=f"uint8 arrays from {source_path(name)}")


# ---- folder --------------------------------------------------------------------------------------

def folder_splits(name: str) -> dict[str, Path]:
    path = source_path(name)
    if not path.is_dir():
        raise DatasetError(f"{name}: {path} is not a folder")
    splits = {s: path / s for s in FOLDER_SPLITS if (path / s).is_dir()}
    return splits or {WHOLE: path}


def folder_split_dir(name: str, split: str) -> Path:
    splits = folder_splits(name)
    if split not in splits:
        raise DatasetError(f"{name} has no split {split!r}; its splits are {', '.join(splits)}")
    return splits[split]


def image_folder_classes(folder: Path, what: str) -> list[str]:
    """The sorted class folders of an ImageFolder split (labels are their indices)."""
    try:
        classes, _ = find_classes(str(folder))
    except FileNotFoundError:
        raise DatasetError(f"{what}: {folder} holds no class folders; expected "
                           f"{folder}/<class>/<image>") from None
    return classes


def image_folder_samples(folder: Path, what: str) -> list[tuple[str, int]]:
    """[(image path, label)] of an ImageFolder split, as torchvision's ImageFolder lists them."""
    classes = image_folder_classes(folder, what)
    try:
        return make_dataset(str(folder), {c: i for i, c in enumerate(classes)},
                            extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:  # a class folder without any image
        raise DatasetError(f"{what}: {err} (image files: {', '.join(IMG_EXTENSIONS)})") from None


def folder_info(name: str) -> DatasetInfo:
    splits = folder_splits(name)
    first = next(iter(splits))
    classes = image_folder_classes(splits[first], name)
    for split, folder in splits.items():
        other = image_folder_classes(folder, name)
        if other != classes:
            raise DatasetError(f"{name}: split {split!r} has classes {other[:5]}... but "
                               f"{first!r} has {classes[:5]}...; every split needs the same "
                               "class folders (labels are their sorted order)")
    r = DEFAULT_RESOLUTION
    return DatasetInfo(name=name, num_classes=len(classes), class_names=classes,
                       image_shape=(3, r, r), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       splits=tuple(splits), train_augment=Augment(flip=True), fixed_size=False,
                       description=f"ImageFolder at {source_path(name)}")
