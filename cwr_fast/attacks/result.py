"""What an attack returns to the evaluator."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class AttackResult:
    """x_adv: adversarial images (float32, the shape of x). pred: the model's prediction at x_adv
    ([N] int64). success: [N] bool, pred != y (untargeted) or pred == target (targeted).
    pred and success are None when the attack was asked not to score its last iterate."""

    x_adv: Tensor
    pred: Tensor | None
    success: Tensor | None
