"""What the paper and its companions state, and that the study tests our runs against."""

from __future__ import annotations

from cwr_fast.data.registry import CIFAR10_CLASSES as _CIFAR10_CLASSES

PAPER = "Tian et al., *Analysis and Applications of Class-wise Robustness in Adversarial Training*, KDD 2021"

# the adversarial trainings the paper analyses; each class-wise defense is compared with the one
# of its training method
BASELINES = ("pgd-at", "trades")

# the published per-class pattern on CIFAR-10 (Tian et al. 2021; Xu et al. 2021): least and most
# robust classes under adversarial training
CIFAR10_CLASSES = tuple(_CIFAR10_CLASSES)
PUBLISHED_LEAST, PUBLISHED_MOST = ("cat", "bird", "deer", "dog"), ("automobile", "truck", "ship")
