"""`ClasswiseCalibration`: a model whose logits are calibrated per class, logits' = s * z + b.

It is part of the model (s and b are buffers in the state dict), so every attack attacks the
calibrated logits. The fitting, against adaptive attacks on held-out data, is in the evaluation
layer (cwr_fast.classwise.calibration: `evaluate --calibrate-split` runs it as `train --calibrate`
does).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cwr_fast.runtime import model_device

CALIBRATION_KEYS = ("scale", "bias")


class ClasswiseCalibration(nn.Module):
    """`ClasswiseCalibration(model, C)(x) == model(x) * scale + bias`; identity at init.

    scale and bias are [C] float32 buffers (saved in the state dict as `scale`, `bias`, the wrapped
    model's tensors as `model.*`). Attacks on the wrapper attack the calibrated logits."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.model = model
        self.num_classes = num_classes
        device = model_device(model)
        self.register_buffer("scale", torch.ones(num_classes, device=device))
        self.register_buffer("bias", torch.zeros(num_classes, device=device))

    def forward(self, x: Tensor) -> Tensor:
        z = self.model(x)
        if z.shape[-1] != self.num_classes:
            raise ValueError(f"the wrapped model gives {z.shape[-1]} logits, the calibration has "
                             f"{self.num_classes} classes")
        return z * self.scale + self.bias

    @torch.no_grad()
    def set_(self, scale: Tensor | None = None, bias: Tensor | None = None) -> "ClasswiseCalibration":
        if scale is not None:
            if (torch.as_tensor(scale) <= 0).any():
                raise ValueError("calibration scales must be > 0 (a negative scale flips a class)")
            self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        if bias is not None:
            self.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return self

    def is_identity(self) -> bool:
        return bool((self.scale == 1).all() and (self.bias == 0).all())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


def is_calibrated_state(state) -> bool:
    """True for the state dict of a ClasswiseCalibration: `scale` and `bias` of the same 1-D shape
    and every other key under `model.`."""
    if not all(k in state for k in CALIBRATION_KEYS):
        return False
    s, b = state["scale"], state["bias"]
    if not (isinstance(s, Tensor) and isinstance(b, Tensor) and s.dim() == 1 and s.shape == b.shape):
        return False
    return all(k in CALIBRATION_KEYS or k.startswith("model.") for k in state)


def calibrated_num_classes(state) -> int:
    return int(state["scale"].shape[0])
