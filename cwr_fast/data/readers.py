"""The official datasets in their official on-disk formats, read with torchvision.datasets.

Layout under the data root (torchvision's own, so an existing torchvision download is found):

    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar-100-python/{train, test, meta}
    svhn/{train,test,extra}_32x32.mat
    stl10_binary/{train,test}_{X,y}.bin
    imagenet/{train,val}/<wnid>/*.JPEG        (ImageFolder; val sorted into class folders)

Before reading, every file the split needs is checked against its official md5 (the tables are
torchvision's; MNIST's decompressed idx files are checked against MD5_MNIST_IDX). Missing files
are downloaded with torchvision when allowed and possible; otherwise DatasetNotFoundError lists
exactly which files to put where. ImageNet cannot be downloaded and has no per-file checksums:
its folders are checked for the 1000 wnid classes instead.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torchvision import datasets as tvd
from torchvision.datasets.utils import extract_archive

from cwr_fast.data.errors import ChecksumError, DatasetError, DatasetNotFoundError

# md5 of the decompressed official MNIST idx files (the .gz files' md5s are torchvision's).
MD5_MNIST_IDX = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IMAGENET_FOLDER = "imagenet"
_WNID = re.compile(r"^n\d{8}$")


def md5sum(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _trusting(cls):
    """`cls` without its own all-splits file check: we have verified this split's files."""
    return type(cls.__name__, (cls,), {"_check_integrity": lambda self: True,
                                       "_check_exists": lambda self: True})


@dataclass(frozen=True)
class _Official:
    """How one official dataset lives on disk and is read."""
    title: str
    files: Callable[[Path, str], list[tuple[Path, str]]]  # (root, split) -> [(path, md5)]
    download: Callable[[Path, str], None]
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]  # -> (uint8 NCHW, labels)
    source: Callable[[], str]  # where the files come from, for the error message


# ---- MNIST -------------------------------------------------------------------------------------

def _mnist_files(root: Path, split: str) -> list[tuple[Path, str]]:
    prefix = "train" if split == "train" else "t10k"
    raw = root / "MNIST" / "raw"
    out = []
    for gz_name, gz_md5 in tvd.MNIST.resources:
        if not gz_name.startswith(prefix):
            continue
        idx_name = gz_name[:-3]
        if (raw / gz_name).is_file() and not (raw / idx_name).is_file():
            _check_md5(raw / gz_name, gz_md5, "MNIST")
            extract_archive(str(raw / gz_name), str(raw))
        if (raw / gz_name).is_file():
            out.append((raw / gz_name, gz_md5))
        out.append((raw / idx_name, MD5_MNIST_IDX[idx_name]))
    return out


def _mnist_read(root: Path, split: str):
    ds = _trusting(tvd.MNIST)(str(root), train=(split == "train"))
    return ds.data.numpy()[:, None], ds.targets.numpy()


MNIST = _Official(
    title="MNIST", files=_mnist_files,
    download=lambda root, split: tvd.MNIST(str(root), train=(split == "train"), download=True),
    read=_mnist_read,
    source=lambda: (f"the four .gz files {', '.join(n for n, _ in tvd.MNIST.resources)} from "
                    f"{tvd.MNIST.mirrors[0]} (decompressed or not)"))


# ---- CIFAR-10 / CIFAR-100 ----------------------------------------------------------------------

def _cifar(cls, title: str) -> _Official:
    def files(root: Path, split: str):
        folder = root / cls.base_folder
        batches = cls.train_list if split == "train" else cls.test_list
        return ([(folder / name, md5) for name, md5 in batches]
                + [(folder / cls.meta["filename"], cls.meta["md5"])])

    def read(root: Path, split: str):
        ds = _trusting(cls)(str(root), train=(split == "train"))
        return ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)

    return _Official(
        title=title, files=files, read=read,
        download=lambda root, split: cls(str(root), train=(split == "train"), download=True),
        source=lambda: f"{cls.url} (extract it in the data root; it holds {cls.base_folder}/)")


CIFAR10 = _cifar(tvd.CIFAR10, "CIFAR-10")
CIFAR100 = _cifar(tvd.CIFAR100, "CIFAR-100")


# ---- SVHN --------------------------------------------------------------------------------------

def _svhn_read(root: Path, split: str):
    ds = _trusting(tvd.SVHN)(str(root / "svhn"), split=split)
    return ds.data, ds.labels  # data is already [N, 3, 32, 32]; torchvision maps label 10 to 0


SVHN = _Official(
    title="SVHN",
    files=lambda root, split: [(root / "svhn" / tvd.SVHN.split_list[split][1],
                                tvd.SVHN.split_list[split][2])],
    download=lambda root, split: tvd.SVHN(str(root / "svhn"), split=split, download=True),
    read=_svhn_read,
    source=lambda: "the split's .mat file of the cropped-digits format (Format 2) from "
                   + tvd.SVHN.split_list["train"][0].rsplit("/", 1)[0] + "/")


# ---- STL-10 ------------------------------------------------------------------------------------

def _stl10_files(root: Path, split: str):
    folder = root / tvd.STL10.base_folder
    wanted = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")}[split]
    table = dict(tvd.STL10.train_list + tvd.STL10.test_list)
    return [(folder / name, table[name]) for name in wanted]


def _stl10_read(root: Path, split: str):
    ds = _trusting(tvd.STL10)(str(root), split=split)
    return ds.data, ds.labels.astype(np.int64)


STL10 = _Official(
    title="STL-10", files=_stl10_files,
    download=lambda root, split: tvd.STL10(str(root), split=split, download=True),
    read=_stl10_read,
    source=lambda: f"{tvd.STL10.url} (extract it in the data root; it holds "
                   f"{tvd.STL10.base_folder}/; unlabeled_X.bin is not needed)")

OFFICIAL = {"mnist": MNIST, "cifar10": CIFAR10, "cifar100": CIFAR100, "svhn": SVHN,
            "stl10": STL10}


# ---- verification and the one entry point --------------------------------------------------------

def _check_md5(path: Path, expected: str, title: str) -> None:
    got = md5sum(path)
    if got != expected:
        raise ChecksumError(
            f"{path}: md5 {got}, expected {expected} (the official {title} file). The file is "
            "damaged or not the official release: delete it and download it again.")


def _missing_error(spec: _Official, name: str, split: str, root: Path,
                   files: list[tuple[Path, str]], why: str) -> DatasetNotFoundError:
    lines = [f"{spec.title} ({name!r}, split {split!r}) not found under {root}: {why}.",
             "Put these files there:"]
    lines += [f"  {path}   (md5 {md5})" for path, md5 in files]
    lines += [f"They come from {spec.source()}.",
              "Or point to another root with --data-dir or $CWR_FAST_DATA."]
    return DatasetNotFoundError("\n".join(lines))


def read_official(name: str, split: str, root: Path,
                  download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, C, H, W], int64 [N]) of one split of mnist, cifar10, cifar100, svhn or stl10,
    after checking its files' md5s; downloads missing files when `download` and the network
    allow."""
    try:
        return _read_official(name, split, root, download)
    except PermissionError as err:  # an unreadable data root, folder or file
        raise DatasetError(f"permission denied: {err.filename or root}") from None


def _read_official(name: str, split: str, root: Path,
                   download: bool) -> tuple[np.ndarray, np.ndarray]:
    spec = OFFICIAL[name]
    files = spec.files(root, split)
    missing = [p for p, _ in files if not p.is_file()]
    if missing:
        if not download:
            raise _missing_error(spec, name, split, root, files, "download=False and "
                                 f"{len(missing)} file(s) missing, e.g. {missing[0]}")
        try:
            _download_or_clean(spec, root, split)
        except PermissionError:
            raise
        except Exception as err:  # no network, a dead mirror, a full disk: all reported the same
            raise _missing_error(spec, name, split, root, spec.files(root, split),
                                 f"the download failed ({type(err).__name__}: {err})") from err
        files = spec.files(root, split)
    for path, md5 in files:
        _check_md5(path, md5, spec.title)
    images, labels = spec.read(root, split)
    return np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def _folders(root: Path) -> set[Path]:
    """root and the folders below it that exist now; the missing parents of root, too."""
    found = {d for d in [root, *root.parents] if d.is_dir()}
    level = [root] if root.is_dir() else []
    for _ in range(3):  # a download creates its folders near the root (MNIST/raw); not a walk of ImageNet
        below = []
        for folder in level:
            try:
                below += [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
        found.update(below)
        level = below
    return found


def _download_or_clean(spec: _Official, root: Path, split: str) -> None:
    """spec.download, and when it fails (no network...), the folders it created are removed
    again, if they are still empty: a failed download leaves no empty MNIST/raw behind."""
    before = _folders(root)
    try:
        spec.download(root, split)
    except BaseException:
        created = [d for d in _folders(root) if d not in before]
        created += [d for d in [root, *root.parents] if d not in before and d.is_dir()]
        for folder in sorted(set(created), key=lambda d: len(d.parts), reverse=True):  # deepest first
            try:
                folder.rmdir()  # only if empty: a file fetched before the failure stays
            except OSError:
                pass
        raise


# ---- ImageNet (ImageFolder) ----------------------------------------------------------------------

def imagenet_split_dir(root: Path, split: str) -> Path:
    """root/imagenet/<split>, checked to hold the 1000 wnid class folders of ImageNet-1k."""
    folder = root / IMAGENET_FOLDER / split
    layout = (f"ImageNet is read as an ImageFolder: {root / IMAGENET_FOLDER}/train/<wnid>/*.JPEG "
              f"and {root / IMAGENET_FOLDER}/val/<wnid>/*.JPEG, 1000 wnid folders (n01440764, ...) "
              "each; the official val images must first be sorted into their class folders. "
              "It cannot be downloaded automatically. For a subset of the classes use "
              "'folder:PATH'. Or point to another root with --data-dir or $CWR_FAST_DATA.")
    if not folder.is_dir():
        raise DatasetNotFoundError(f"ImageNet split {split!r} not found: no folder {folder}.\n"
                                   + layout)
    classes = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    bad = [c for c in classes if not _WNID.match(c)]
    if len(classes) != 1000 or bad:
        raise DatasetError(f"{folder} holds {len(classes)} class folders"
                           f"{' (not wnids: ' + ', '.join(bad[:5]) + ')' if bad else ''}; "
                           "expected the 1000 wnid folders of ImageNet-1k.\n" + layout)
    return folder
