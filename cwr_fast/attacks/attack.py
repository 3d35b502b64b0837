"""The torchattacks-style base class: `atk = PGD(model, ...); x_adv = atk(x, y)`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import Tensor, nn

from cwr_fast.runtime import amp_dtype
from cwr_fast.attacks.model_mode import attack_mode
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.threat import ThreatModel, threat_model


def check_pixel_range(x: Tensor) -> None:
    """Images must be finite and lie in [0, 1] (a NaN pixel fails every comparison, so it is
    named separately: it would otherwise count as fooled by any attack)."""
    if not x.numel():
        return
    low, high = (float(v) for v in torch.aminmax(x))  # NaN propagates, inf is an extreme: one pass
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("images hold NaN or infinite pixels: clean the data (cwr_fast attacks and "
                         "counts need finite images in [0, 1])")
    if low < 0.0 or high > 1.0:
        raise ValueError(f"images must lie in [0, 1] (normalisation belongs inside the model), got "
                         f"range [{low:.3g}, {high:.3g}]")


def check_inputs(x: Tensor, y: Tensor) -> None:
    """Clear errors for inputs an attack cannot work on."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"images must have a batch dimension, got shape {list(x.shape)}")
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be an int64 tensor of shape [{x.shape[0]}], got "
                         f"{(y.dtype, list(y.shape)) if isinstance(y, Tensor) else type(y).__name__}")
    check_pixel_range(x)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attacks need autograd: do not call them under torch.inference_mode()")


def check_budget(value, name: str, threat: ThreatModel | None = None) -> None:
    """A budget (eps, alpha): a finite number >= 0 or a [N] tensor of them; within the bound of
    `threat` when given (a Linf budget is at most 1)."""
    if isinstance(value, Tensor):
        if value.dim() > 1:
            raise ValueError(f"{name} must be a number or a [N] tensor, got shape {list(value.shape)}")
        low, high = float(value.min()) if value.numel() else 0.0, float(value.max()) if value.numel() else 0.0
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        low = high = float(value)
    else:
        raise TypeError(f"{name} must be a number or a [N] tensor, got {type(value).__name__}")
    if not low >= 0 or not math.isfinite(high):
        raise ValueError(f"{name} must be >= 0 and finite, got {low if not low >= 0 else high}")
    if threat is not None:
        threat.check_budget(name, high)


def check_count(value, name: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_member_settings(attack: str, eps, norm: str | ThreatModel, amp: str | None,
                          **counts: int) -> ThreatModel:
    """The settings of an AutoAttack member: norm linf or l2, one eps for the batch (a finite
    number >= 0, at most 1 for Linf), an autocast mode, and counts (steps, ...) that are ints >= 1.
    Returns the threat model of `norm`."""
    threat = threat_model(norm)
    check_budget(eps, "eps", threat)
    if isinstance(eps, Tensor):
        raise TypeError(f"{attack} takes one eps for the batch (a number)")
    for name, value in counts.items():
        check_count(value, name)
    amp_dtype(amp)
    return threat


class Attack:
    """Base class. Subclasses implement `_run(x, y) -> AttackResult`.

    `atk(x, y)` returns the adversarial images; `atk.run(x, y)` the full AttackResult (with the
    prediction at x_adv and per-sample success) that the class-wise evaluator uses. During the
    attack the model is in eval mode with no parameter gradients; the caller's flags are restored.
    Attacks for randomised models (`keeps_model_mode` True: AutoAttack's version rand, APGD with
    eot > 1) leave each module's train/eval mode as the caller set it, as the reference does.

    What the class-wise engine reads from every attack: `broken_at_unit`, what the result says
    about when a sample was fooled ("member": `AttackResult.broken_by` indexes `member_names`;
    "step": `AttackResult.step` is the iterate; "fooled": neither); for an ensemble its
    `member_names` and `member_seconds` (seconds per member, summed over calls); `check_flags`
    (the automatic checks the attack ran, None if none); `keeps_model_mode`; `min_classes`.
    """

    name = "attack"
    keeps_model_mode = False
    min_classes = 2  # the fewest classes the attack can work with (spec.build refuses fewer)
    broken_at_unit = "fooled"
    member_seconds: Mapping[str, float] = MappingProxyType({})
    check_flags: list[dict] | None = None

    @property
    def member_names(self) -> list[str]:
        """The members of an ensemble, in the order they run (empty for a single attack)."""
        return []

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    def set_normalization_used(self, mean, std) -> "Attack":
        """For a model that expects normalised inputs (torchattacks' convenience): the attack then
        runs on NormalizedModel(model, mean, std), so images stay in [0, 1] pixel space and the
        budget keeps its pixel units."""
        from cwr_fast.models.normalize import NormalizedModel
        from cwr_fast.runtime import model_device
        self.model = NormalizedModel(self.model, mean, std).to(model_device(self.model))
        return self

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.run(x, y).x_adv

    def run(self, x: Tensor, y: Tensor) -> AttackResult:
        check_inputs(x, y)
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        with attack_mode(self.model, eval_mode=not self.keeps_model_mode):
            if x.shape[0] == 0:
                empty = y.new_zeros(0)
                return AttackResult(x.clone(), empty, empty.bool())
            return self._run(x, y.detach())

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"

    def params(self) -> dict:
        return {}
