"""The torchattacks-style base class: `atk = PGD(model, ...); x_adv = atk(x, y)`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cwr_fast.attacks.model_mode import attack_mode
from cwr_fast.attacks.result import AttackResult


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
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"images must lie in [0, 1] (normalisation belongs inside the model), got "
                         f"range [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attacks need autograd: do not call them under torch.inference_mode()")


class Attack:
    """Base class. Subclasses implement `_run(x, y) -> AttackResult`.

    `atk(x, y)` returns the adversarial images; `atk.run(x, y)` the full AttackResult (with the
    prediction at x_adv and per-sample success) that the class-wise evaluator uses. During the
    attack the model is in eval mode with no parameter gradients; the caller's flags are restored.
    """

    name = "attack"

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.run(x, y).x_adv

    def run(self, x: Tensor, y: Tensor) -> AttackResult:
        check_inputs(x, y)
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        with attack_mode(self.model):
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
