"""What a dataset is: `DatasetInfo` (classes, image shape, channel statistics, splits, training
augmentation, customary threat model) and the constants it is built from. The registry of named
datasets is cwr_fast.data.registry; generic sources are cwr_fast.data.generic."""

from __future__ import annotations

from dataclasses import dataclass, field

from cwr_fast.data.errors import DatasetError

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
class Budget:
    """The dataset's customary Linf threat model: budget eps, PGD step alpha and steps (training's
    and evaluation's default). Sources: Madry et al. 2018 (MNIST 0.3, 40 steps of 0.01; CIFAR
    8/255, steps of 2/255); Salman et al. 2020 (ImageNet 4/255, 3 steps of 2 eps / 3). Generic
    sources get CIFAR's."""
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10


MNIST_BUDGET = Budget(eps=0.3, alpha=0.01, steps=40)
# the default run's REDUCED budget: 10 steps of 0.04, the same total step length as Madry et al.'s
EMBEDDED_BUDGET = Budget(eps=0.3, alpha=0.04, steps=10)
IMAGENET_BUDGET = Budget(eps=4 / 255, alpha=2 * 4 / 255 / 3, steps=3)


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
    budget: Budget = Budget()

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
