"""Random starts drawn as the reference AutoAttack draws them: `torch.rand` / `torch.randn` of the
image's shape on the CPU, from the global CPU generator, then copied to the image's device
(fra31/auto-attack: `torch.rand(x.shape).to(self.device)`). With a seed, a start is then the same
on a GPU as on the CPU, and the same as the reference's on either, so `aa:seed=0` attacks from the
same points everywhere (where the model's own arithmetic differs between devices, trajectories
may still part later). Costs one host-to-device copy of the start per run.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_like(x: Tensor) -> Tensor:
    """U[0, 1) of x's shape, drawn in float32 on the CPU and copied to x's device and dtype, in the
    plain (contiguous) layout. Equal to torch.rand_like(x) for a contiguous float32 CPU x."""
    return torch.rand(x.shape, dtype=torch.float32).to(x.device, x.dtype)


def normal_like(x: Tensor) -> Tensor:
    """N(0, 1) of x's shape, drawn like `uniform_like`."""
    return torch.randn(x.shape, dtype=torch.float32).to(x.device, x.dtype)
