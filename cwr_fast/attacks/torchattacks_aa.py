"""torchattacks' AutoAttack (`aa-ta`), kept for comparison with the reference protocol (`aa`).

torchattacks 3.5.1 builds its members with their own defaults: APGD, APGD-T and FAB with 10
iterations instead of 100, and APGD-T over all C - 1 target classes. Its robust accuracy is
therefore higher than the reference AutoAttack's (Croce & Hein, 2020), which `aa` reproduces.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cwr_fast.attacks.attack import Attack
from cwr_fast.attacks.autoattack import VERSIONS
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.threat import NORMS, THREAT_MODELS


def _torchattacks():
    try:
        import torchattacks
    except ImportError as err:
        raise RuntimeError("attack 'aa-ta' runs torchattacks' AutoAttack, which is not installed: "
                           "pip install torchattacks (attack 'aa' needs nothing extra)") from err
    return torchattacks


class TorchattacksAutoAttack(Attack):
    """torchattacks' AutoAttack with its own member defaults (10 iterations, see above), standard
    version unless `version` says otherwise. `num_classes` is needed by its targeted members."""

    name = "aa-ta"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf",
                 version: str = "standard", num_classes: int = 10, seed: int = 0):
        super().__init__(model)
        if norm not in NORMS:
            raise ValueError(f"AutoAttack norm must be one of {list(NORMS)}, got {norm!r}")
        threat = THREAT_MODELS[norm]
        if version not in VERSIONS:
            raise ValueError(f"AutoAttack version must be one of {tuple(VERSIONS)}, got {version!r}")
        if not isinstance(eps, (int, float)) or not eps >= 0 or eps > threat.largest_budget:
            raise ValueError(f"AutoAttack eps must be a number in [0, 1] for linf (>= 0 for l2), got {eps!r}")
        self._impl = _torchattacks().AutoAttack(_ContiguousGradients(model), norm=threat.reference_name,
                                                eps=float(eps), version=version,
                                                n_classes=int(num_classes), seed=seed)
        self.threat = threat
        self.eps, self.norm, self.version, self.num_classes, self.seed = eps, norm, version, num_classes, seed

    def params(self) -> dict:
        return {"eps": self.eps, "norm": self.norm, "version": self.version,
                "num_classes": self.num_classes, "seed": self.seed}

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        self._impl.set_device(x.device)
        x_adv = self._impl(x.contiguous(), y).detach().float()
        with torch.no_grad():
            pred = self.model(x_adv).argmax(dim=1)
        return AttackResult(x_adv, pred, pred != y)


class _ContiguousGradients(nn.Module):
    """The model as torchattacks sees it: input gradients in the default memory format, since its
    FAB `.view`s them (a channels_last model otherwise hands back channels_last gradients)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            x.register_hook(lambda grad: grad.contiguous())
        return self.model(x)
