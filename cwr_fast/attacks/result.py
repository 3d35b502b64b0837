"""What an attack returns to the evaluator."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class AttackResult:
    """x_adv: adversarial images (float32, the shape of x). pred: the model's prediction at x_adv
    ([N] int64). success: [N] bool, pred != y (untargeted) or pred == target (targeted).
    pred and success are None when the attack was asked not to score its last iterate.
    broken_by: for an ensemble of attacks run one after another (AutoAttack), [N] int64: the index
    of the member that fooled the sample first, -1 where none did; None for a single attack.
    step: for the gradient attacks, [N] int64: the iterate that fooled the sample first (0 is the
    start point, `steps` the last iterate; restart r counts from r * (steps + 1)), -1 where none
    did; None for attacks that do not say."""

    x_adv: Tensor
    pred: Tensor | None
    success: Tensor | None
    broken_by: Tensor | None = None
    step: Tensor | None = None
