"""The data layer: datasets, readers, class-balanced subsets and the three loaders.

    from cwr_fast.data import make_loader, dataset_info, load_arrays
    loader = make_loader("cifar10", "train", batch_size=512, train=True, device="cuda")
    info = loader.info                  # classes, image shape, mean/std for the model wrapper

Datasets: mnist, cifar10, cifar100, svhn, stl10, imagenet, mnist-embedded (offline, no
download), and the generic sources folder:PATH and npz:PATH. The root is --data-dir, else
$CWR_FAST_DATA, else ~/.cache/cwr_fast/data. See README_SECTION.md in this folder.
"""

from cwr_fast.data.errors import ChecksumError, DatasetError, DatasetNotFoundError
from cwr_fast.data.base import BatchLoader
from cwr_fast.data.ffcv_io import default_beton_path, write_beton
from cwr_fast.data.loader import BACKENDS, make_loader
from cwr_fast.data.order import EpochOrder
from cwr_fast.data.info import Augment, DatasetInfo
from cwr_fast.data.registry import DATA_ENV, DATASETS, EMBEDDED, GENERIC_PREFIXES, data_root, dataset_info
from cwr_fast.data.sources import file_samples, load_arrays
from cwr_fast.data.subset import class_balanced_subset

__all__ = [
    "Augment", "BACKENDS", "BatchLoader", "ChecksumError", "DATASETS", "DATA_ENV",
    "DatasetError", "DatasetInfo", "DatasetNotFoundError", "EMBEDDED", "EpochOrder",
    "GENERIC_PREFIXES",
    "class_balanced_subset", "data_root", "dataset_info", "default_beton_path", "file_samples",
    "load_arrays", "make_loader", "write_beton",
]
