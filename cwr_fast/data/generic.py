"""Users' own data: `npz:PATH` (uint8 arrays) and `folder:PATH` (an ImageFolder of any images).

npz:PATH -- a NumPy .npz with, for each split S, `S_images` (uint8, [N, H, W] grey, [N, H, W, C]
  or [N, C, H, W] with C in {1, 3}) and `S_labels` (integers 0..K-1); or just `images`/`labels`,
  which make one split called 'all'. Optional: `class_names` [K] (str), `mean` and `std` [C] (in
  [0, 1] units; computed from the train split when absent), `layout` ('NCHW' or 'NHWC'). A shape
  that reads both ways ([N, 3, H, 1], [N, 1, H, 3], [N, 3, H, 3], ...) takes the channel count
  of `mean`; when that does not decide, `layout` must say. Fixed-size: read whole into memory;
  training augmentation: random crop padded by H/8 and horizontal flip.
folder:PATH -- PATH/<split>/<class>/<image> for the splits among train, val and test that exist,
  or PATH/<class>/<image> as one split called 'all'. Any format PIL reads; every image is
  converted to RGB (grey, palette, CMYK, alpha). Variable-size, like ImageNet: random-resized
  crop at decode time for training, centre crop for eval, to DEFAULT_RESOLUTION unless the loader
  asks for another; ImageNet's mean/std. A directory link inside a class folder is followed only
  if it leads out of the dataset's tree to a folder not yet listed (a link back into the tree
  would loop or relabel other classes' images); a skipped link is named once on stderr.
"""

from __future__ import annotations

import functools
import os
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

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

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a .npz is a zip archive (empty or not)


def permission_denied(err: PermissionError, path) -> DatasetError:
    return DatasetError(f"permission denied: {err.filename or path}")


def _npz(name: str):
    path = source_path(name)
    bad = f"{name}: {path} is not a valid .npz"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except PermissionError as err:
        raise permission_denied(err, path) from None
    except IsADirectoryError:
        raise DatasetError(f"{bad} (it is a folder; for an ImageFolder use folder:{path})") from None
    except OSError as err:
        raise DatasetError(f"{bad} ({err})") from None
    if not magic.startswith(_ZIP_MAGIC):
        what = "a single .npy array" if magic.startswith(b"\x93NUMPY") else "not a zip archive"
        raise DatasetError(f"{bad} ({what}; write it with numpy.savez)")
    try:
        return np.load(path, allow_pickle=False)
    except PermissionError as err:
        raise permission_denied(err, path) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{bad} (damaged or truncated: {err})") from None


def _npz_array(name: str, files, key: str) -> np.ndarray:
    """files[key], with a damaged member reported as one line."""
    try:
        return files[key]
    except ValueError as err:
        if "pickle" in str(err):
            raise DatasetError(f"{name}: {key} is not a plain array (object arrays are refused); "
                               "store numbers or strings") from None
        raise DatasetError(f"{name}: {key} cannot be read; the .npz is not valid ({err})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DatasetError(f"{name}: {key} cannot be read; the .npz is not valid (damaged or "
                           f"truncated: {err})") from None


def _npz_splits(name: str, files) -> tuple[str, ...]:
    splits = tuple(k[:-len("_images")] for k in files if k.endswith("_images")
                   and k[:-len("_images")] + "_labels" in files)
    if not splits and "images" in files and "labels" in files:
        splits = (WHOLE,)
    if not splits:
        raise DatasetError(f"{name}: no image arrays found; expected keys like train_images and "
                           f"train_labels (or images and labels), got {sorted(files)}")
    return splits


def _layout(name: str, files) -> str | None:
    if "layout" not in files.files:
        return None
    layout = str(_npz_array(name, files, "layout")).upper()
    if layout not in ("NCHW", "NHWC"):
        raise DatasetError(f"{name}: layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def _known_channels(name: str, files) -> int | None:
    """The dataset's channel count where something other than the images' shape says it: the
    length of `mean` (every split has the same image shape, so no split can tell another's)."""
    if "mean" in files.files:
        return int(np.size(_npz_array(name, files, "mean")))
    return None


def _to_nchw(name: str, key: str, images: np.ndarray, layout: str | None = None,
             channels: int | None = None) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DatasetError(f"{name}: {key} must be uint8 pixels, got {images.dtype}")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        layout = "bad"
    elif layout is None:
        first, last = images.shape[1] in (1, 3), images.shape[-1] in (1, 3)
        if first and last:  # reads both ways: the dataset's channel count decides, or `layout`
            if channels is not None and images.shape[1] != images.shape[-1]:
                if channels in (images.shape[1], images.shape[-1]):
                    layout = "NCHW" if images.shape[1] == channels else "NHWC"
            if layout is None:
                n, a, b, c = images.shape
                raise DatasetError(
                    f"{name}: {key} of shape {images.shape} reads two ways: [N, C, H, W] "
                    f"({a} channel(s), {b}x{c}) or [N, H, W, C] ({c} channel(s), {a}x{b}); "
                    "add layout='NCHW' or layout='NHWC' to the .npz")
        else:
            layout = "NHWC" if last else "NCHW" if first else "bad"
    channel_axis = {"NHWC": -1, "NCHW": 1}.get(layout)
    if channel_axis is None or images.shape[channel_axis] not in (1, 3):
        raise DatasetError(f"{name}: {key} has shape {images.shape}; expected [N, H, W], "
                           f"[N, H, W, C] or [N, C, H, W] with C = 1 or 3"
                           + (f" (layout {layout})" if channel_axis is not None else ""))
    return images.transpose(0, 3, 1, 2) if layout == "NHWC" else images


def npz_arrays(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = _npz(name)
    splits = _npz_splits(name, files.files)
    if split not in splits:
        raise DatasetError(f"{name} has no split {split!r}; its splits are {', '.join(splits)}")
    prefix = "" if split == WHOLE else split + "_"
    layout = _layout(name, files)
    images = _npz_array(name, files, prefix + "images")
    channels = None
    if layout is None and images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] in (1, 3):
        channels = _known_channels(name, files)
    images = _to_nchw(name, prefix + "images", images, layout, channels)
    labels = _npz_array(name, files, prefix + "labels")
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
        class_names = [str(c) for c in _npz_array(name, files, "class_names")]
        if len(class_names) < top:
            raise DatasetError(f"{name}: {len(class_names)} class_names but labels go up to "
                               f"{top - 1}")
    else:
        class_names = [str(i) for i in range(top)]
    if "mean" in files.files and "std" in files.files:
        mean, std = _npz_array(name, files, "mean"), _npz_array(name, files, "std")
    else:
        mean, std = _channel_stats(arrays["train" if "train" in arrays else splits[0]][0])
        constant = [c for c, s in enumerate(std) if s == 0]
        if constant:  # normalising by 0 would make them infinite; x - mean is 0 there anyway
            print(f"warning: {name}: image channel(s) {constant} are constant in the training images "
                  "(std 0): normalised with std 1 (they carry nothing to learn from)", file=sys.stderr)
            std = [1.0 if s == 0 else s for s in std]
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
        with os.scandir(folder) as entries:
            classes = sorted(e.name for e in entries if e.is_dir())
    except PermissionError as err:
        raise permission_denied(err, folder) from None
    except FileNotFoundError:
        classes = []
    if not classes:
        raise DatasetError(f"{what}: {folder} holds no class folders; expected "
                           f"{folder}/<class>/<image>")
    return classes


_WARNED_LINKS: set[str] = set()


def _inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip(os.sep) + os.sep)


def _class_files(class_dir: str, tree: str, skipped: list[tuple[str, str]]) -> list[str]:
    """The image files under one class folder, in torchvision's make_dataset order, following
    directory links only out of the dataset's tree (`tree`, a real path) and each target once."""
    def refuse(err: OSError):
        if isinstance(err, PermissionError):
            raise permission_denied(err, err.filename)

    visited = {os.path.realpath(class_dir)}
    walked = []
    for root, dirs, fnames in os.walk(class_dir, onerror=refuse, followlinks=True):
        for d in list(dirs):
            full = os.path.join(root, d)
            if os.path.islink(full):
                real = os.path.realpath(full)
                if _inside(real, tree) or real in visited:
                    dirs.remove(d)
                    skipped.append((full, os.readlink(full)))
                else:
                    visited.add(real)
        walked.append((root, fnames))
    return [os.path.join(root, f) for root, fnames in sorted(walked) for f in sorted(fnames)
            if f.lower().endswith(IMG_EXTENSIONS)]


def image_folder_samples(folder: Path, what: str, tree: Path | None = None) -> list[tuple[str, int]]:
    """[(image path, label)] of an ImageFolder split, as torchvision's ImageFolder lists them,
    except that a directory link inside a class folder leading back into `tree` (default: the
    split folder) or to a folder already listed is not followed (named once on stderr)."""
    classes = image_folder_classes(folder, what)
    tree_real = os.path.realpath(tree if tree is not None else folder)
    samples, skipped, empty = [], [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(str(folder), name)
        if _inside(tree_real, os.path.realpath(class_dir)):
            raise DatasetError(f"{what}: class folder {class_dir} leads to "
                               f"{os.path.realpath(class_dir)}, which holds the dataset itself; "
                               "remove that link")
        files = _class_files(class_dir, tree_real, skipped)
        if not files:
            empty.append(name)
        samples += [(f, label) for f in files]
    if empty:
        raise DatasetError(f"{what}: no image file in the class folder(s) {', '.join(empty[:5])}"
                           f"{' ...' if len(empty) > 5 else ''} of {folder} (image files: "
                           f"{', '.join(IMG_EXTENSIONS)})")
    if skipped and skipped[0][0] not in _WARNED_LINKS:
        _WARNED_LINKS.add(skipped[0][0])
        link, target = skipped[0]
        more = f" (and {len(skipped) - 1} more such link(s))" if len(skipped) > 1 else ""
        print(f"cwr_fast: warning: {what}: not following the directory link {link} -> {target}: "
              f"it leads back into the dataset or to a folder already read{more}",
              file=sys.stderr)
    return samples


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
