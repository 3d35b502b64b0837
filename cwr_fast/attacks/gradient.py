"""The gradient attacks: FGSM, PGD (Linf), PGDL2, Temperature-PGD and CW-Linf (PGD on the margin
loss). Targeted variants through `target=` ("random", "least" or "next")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cwr_fast.attacks.attack import Attack, check_budget, check_count
from cwr_fast.attacks.functional import LOSSES, TRACKS, perturb
from cwr_fast.runtime import amp_dtype, autocast
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.threat import ThreatModel, threat_model

TARGET_MODES = ("random", "least", "next")


def choose_targets(mode: str, logits: Tensor, y: Tensor) -> Tensor:
    """Target classes for a targeted attack: 'random' (uniform over the other classes), 'least'
    (the least likely class on the clean input) or 'next' ((y + 1) mod C)."""
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError("a targeted attack needs at least 2 classes")
    if mode == "random":
        offset = torch.randint(1, num_classes, y.shape, device=y.device)
        return (y + offset) % num_classes
    if mode == "least":
        return logits.float().scatter(1, y[:, None], float("inf")).argmin(dim=1)
    if mode == "next":
        return (y + 1) % num_classes
    raise ValueError(f"target must be one of {TARGET_MODES} or None, got {mode!r}")


class GradientAttack(Attack):
    """An iterative gradient attack on the functional core (`cwr_fast.attacks.functional.perturb`).

    eps: budget (number or [N] tensor, pixel units). alpha: step size, default 2.5 * eps / steps
    (Madry et al.). random_start, restarts: as usual; later restarts attack only the samples not yet
    fooled. temperature: T of the CE loss. target: None, 'random', 'least' or 'next'.
    track: 'final' (last iterate) or 'any' (first fooling iterate; fooled samples stop early).
    amp: None, 'bf16' or 'fp16' autocast for the model (x_adv stays float32).
    """

    name = "gradient"
    norm = "linf"  # the name of the threat model (`threat`); subclasses set it
    loss = "ce"
    broken_at_unit = "step"  # AttackResult.step: the iterate that fooled a sample

    def __init__(self, model: nn.Module, eps: float | Tensor = 8 / 255, alpha: float | Tensor | None = None,
                 steps: int = 10, random_start: bool = True, restarts: int = 1,
                 temperature: float = 1.0, target: str | None = None, track: str = "final",
                 amp: str | None = None):
        super().__init__(model)
        check_budget(eps, "eps", self.threat)
        check_count(steps, "steps")
        check_count(restarts, "restarts")
        if alpha is None:
            alpha = 2.5 * eps / steps
        check_budget(alpha, "alpha")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if target is not None and target not in TARGET_MODES:
            raise ValueError(f"target must be one of {TARGET_MODES} or None, got {target!r}")
        if track not in TRACKS:
            raise ValueError(f"track must be one of {TRACKS}, got {track!r}")
        amp_dtype(amp)
        assert self.loss in LOSSES
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.random_start, self.restarts = bool(random_start), restarts
        self.temperature, self.target, self.track, self.amp = float(temperature), target, track, amp

    @property
    def threat(self) -> ThreatModel:
        return threat_model(self.norm)

    def params(self) -> dict:
        return {"eps": self.eps, "alpha": self.alpha, "steps": self.steps,
                "random_start": self.random_start, "restarts": self.restarts,
                "temperature": self.temperature, "target": self.target, "track": self.track,
                "amp": self.amp}

    # torchattacks' mode switches, onto `target` (by_label is not offered: run(x, y) takes the
    # true labels y; give the target rule instead)
    def set_mode_default(self) -> "GradientAttack":
        self.target = None
        return self

    def set_mode_targeted_random(self) -> "GradientAttack":
        self.target = "random"
        return self

    def set_mode_targeted_least_likely(self, kth_min: int = 1) -> "GradientAttack":
        if kth_min != 1:
            raise ValueError(f"only the least likely class (kth_min=1) is supported, got {kth_min}")
        self.target = "least"
        return self

    def _targets(self, x: Tensor, y: Tensor) -> Tensor | None:
        if self.target is None:
            return None
        logits = None
        if self.target == "least":
            with torch.no_grad(), autocast(x.device, amp_dtype(self.amp)):
                logits = self.model(x)
        else:
            with torch.no_grad():
                logits = self.model(x[:1])  # only the number of classes is needed
        return choose_targets(self.target, logits, y)

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        return perturb(self.model, x, y, norm=self.threat, eps=self.eps, alpha=self.alpha,
                       steps=self.steps, loss=self.loss, temperature=self.temperature,
                       random_start=self.random_start, restarts=self.restarts,
                       target=self._targets(x, y), track=self.track, amp=self.amp)


class PGD(GradientAttack):
    """Linf PGD on the cross-entropy loss (Madry et al., 2018)."""

    name = "pgd"


class TemperaturePGD(GradientAttack):
    """Temperature-PGD: PGD on CE(softmax(f(x) / T), y) (Tian et al., 2021). T = 1 is PGD.
    Its spec is `tpgd-N:T=t`. Not torchattacks' `TPGD`, which is TRADES' KL-divergence PGD."""

    name = "tpgd"

    def __init__(self, model: nn.Module, eps: float | Tensor = 8 / 255, alpha=None, steps: int = 10,
                 temperature: float = 1.0, **kwargs):
        super().__init__(model, eps, alpha, steps, temperature=temperature, **kwargs)


class CW(GradientAttack):
    """CW-Linf: Linf PGD on the margin loss max_{j != y} z_j - z_y (Carlini & Wagner's loss)."""

    name = "cw"
    loss = "margin"


class PGDL2(GradientAttack):
    """L2 PGD: normalised gradient steps, projection onto the L2 ball of radius eps."""

    name = "pgdl2"
    norm = "l2"

    def __init__(self, model: nn.Module, eps: float | Tensor = 0.5, alpha=None, steps: int = 10, **kwargs):
        super().__init__(model, eps, alpha, steps, **kwargs)


class FGSM(GradientAttack):
    """FGSM (Goodfellow et al., 2015): one signed-gradient step of size eps from the clean image."""

    name = "fgsm"

    def __init__(self, model: nn.Module, eps: float | Tensor = 8 / 255, target: str | None = None,
                 track: str = "final", amp: str | None = None, temperature: float = 1.0):
        super().__init__(model, eps, alpha=eps, steps=1, random_start=False, restarts=1,
                         temperature=temperature, target=target, track=track, amp=amp)

    def params(self) -> dict:
        return {k: v for k, v in super().params().items()
                if k not in ("alpha", "steps", "random_start", "restarts")}
