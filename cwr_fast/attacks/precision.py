"""Mixed precision may cost speed, never a rosier number. Under bf16 or fp16 autocast an attack
steers by the reduced-precision model, but every verdict is float32's: a point counts as fooling
only where the float32 model misclassifies it, and the best point a run found for an image it
did not fool is re-checked in float32 before the image counts as robust."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def float32_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The float32 model's (no autocast) logits at x."""
    with torch.autocast(x.device.type, enabled=False):
        return model(x)


def float32_predict(model: nn.Module, x: Tensor) -> Tensor:
    """[N] classes the float32 model predicts at x."""
    return float32_logits(model, x).argmax(dim=1)


def confirm_fooled(model: nn.Module, x: Tensor, y: Tensor, fooled: Tensor, pred: Tensor,
                   dtype: torch.dtype | None, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(fooled, pred) as float32 sees them where the run is in reduced precision (dtype not None):
    the points the autocast model says fool are passed through the float32 model, and only those
    it misclassifies (as `target`, for a targeted attack) stay fooled, with its prediction.
    Without autocast: as given."""
    if dtype is None or not bool(fooled.any()):
        return fooled, pred
    at = fooled.nonzero().flatten()
    pred32 = float32_predict(model, x[at])
    fooled, pred = fooled.clone(), pred.clone()
    fooled[at] = pred32 == target[at] if target is not None else pred32 != y[at]
    pred[at] = pred32
    return fooled, pred
