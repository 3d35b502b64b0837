"""Threat models: the norm ball an attack searches, as an object (as MadryLab/robustness's
`attack_steps.LinfStep` and `L2Step`). An attack holds one and calls its methods instead of
branching on the norm's name:

    threat = threat_model("linf")              # a Linf or an L2; "linf" and "l2" are the names
    step_ = threat.step_op(ops)                # ops.linf_pgd_step_ / ops.l2_pgd_step_ (in place)
    x = threat.project(x, x_nat, eps)          # onto the eps-ball around x_nat, then into [0, 1]
    x = threat.random_start(x_nat, eps)        # a random point of the ball (torchattacks' PGD draw)
    u = threat.start_direction(x_nat)          # AutoAttack's start direction, drawn on the CPU
    threat.norm(t), threat.dual_norm(t)        # per sample, over the dims from start_dim on

`name` is the spelling of cwr_fast's attacks, spec language and report ("linf", "l2");
`reference_name` that of fra31/auto-attack, torchattacks and RobustBench ("Linf", "L2"). The
threat models hold no state: `threat_model` hands out one instance of each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from cwr_fast import ops as fused_ops
from cwr_fast.runtime import is_channels_last, to_channels_last

_PLAIN = {"memory_format": torch.contiguous_format}


# Random starts drawn as the reference AutoAttack draws them: `torch.rand` / `torch.randn` of the
# image's shape on the CPU, from the global CPU generator, then copied to the image's device
# (fra31/auto-attack: `torch.rand(x.shape).to(self.device)`). With a seed, a start is then the same
# on a GPU as on the CPU, and the same as the reference's on either, so `aa:seed=0` attacks from the
# same points everywhere (where the model's own arithmetic differs between devices, trajectories may
# still part later). Costs one host-to-device copy of the start per run.

def uniform_like(x: Tensor) -> Tensor:
    """U[0, 1) of x's shape, drawn in float32 on the CPU and copied to x's device and dtype, in the
    plain (contiguous) layout. Equal to torch.rand_like(x) for a contiguous float32 CPU x."""
    return torch.rand(x.shape, dtype=torch.float32).to(x.device, x.dtype)


def normal_like(x: Tensor) -> Tensor:
    """N(0, 1) of x's shape, drawn like `uniform_like`."""
    return torch.randn(x.shape, dtype=torch.float32).to(x.device, x.dtype)


class ThreatModel:
    """The operations an attack needs from its norm ball (module docstring)."""

    name = ""
    reference_name = ""
    largest_budget = math.inf  # budgets above this are refused (a Linf budget is in pixel units)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def norm(self, t: Tensor, start_dim: int = 1) -> Tensor:
        """||t|| per sample, over the dims from start_dim on."""
        raise NotImplementedError

    def dual_norm(self, t: Tensor, start_dim: int = 1) -> Tensor:
        """The dual norm per sample (L1 for Linf, L2 for L2): FAB's distance to a linearised
        boundary is |f| / ||grad f||_dual."""
        raise NotImplementedError

    def project(self, x: Tensor, x_nat: Tensor, eps: float) -> Tensor:
        """x projected onto the eps-ball around x_nat, then clamped into [0, 1]."""
        raise NotImplementedError

    def step_op(self, ops: ModuleType = fused_ops) -> Callable:
        """The in-place PGD step of the ops backend `ops` (`cwr_fast.ops.backend_module`):
        (x_adv, grad, x_nat, alpha, eps) -> x_adv moved along the steepest ascent and projected."""
        raise NotImplementedError

    def hyperplane_projection(self, ops: ModuleType = fused_ops) -> Callable:
        """FAB's projection onto a hyperplane within [0, 1]^d, smallest in this norm."""
        raise NotImplementedError

    def start_direction(self, like: Tensor) -> Tensor:
        """The direction u of AutoAttack's random starts (x + r u / ||u||), drawn as the reference
        draws it: on the CPU, then copied to like's device (`uniform_like` above)."""
        raise NotImplementedError

    def random_start(self, x_nat: Tensor, eps: float | Tensor) -> Tensor:
        """A random point of the eps-ball around x_nat as torchattacks' PGD draws it (eps: a number
        or [N] tensor), clamped to [0, 1]. The noise is drawn in NCHW order whatever the layout of
        x_nat, so a channels-last batch gets the same start."""
        x = torch.clamp(x_nat + self._ball_point(x_nat, eps), 0.0, 1.0)
        return to_channels_last(x) if is_channels_last(x_nat) else x

    def _ball_point(self, x_nat: Tensor, eps: float | Tensor) -> Tensor:
        raise NotImplementedError

    def check_budget(self, name: str, largest: float) -> None:
        """Refuses a budget whose largest value exceeds `largest_budget` (none by default)."""


def _per_sample_shape(x: Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (x.dim() - 1)


class Linf(ThreatModel):
    """The Linf ball: sign-gradient steps, coordinate-wise clipping."""

    name, reference_name, largest_budget = "linf", "Linf", 1.0

    def norm(self, t: Tensor, start_dim: int = 1) -> Tensor:
        return t.flatten(start_dim).abs().amax(dim=start_dim)

    def dual_norm(self, t: Tensor, start_dim: int = 1) -> Tensor:
        return t.flatten(start_dim).abs().sum(dim=start_dim)

    def project(self, x: Tensor, x_nat: Tensor, eps: float) -> Tensor:
        return torch.clamp(torch.minimum(torch.maximum(x, x_nat - eps), x_nat + eps), 0.0, 1.0)

    def step_op(self, ops: ModuleType = fused_ops) -> Callable:
        return ops.linf_pgd_step_

    def hyperplane_projection(self, ops: ModuleType = fused_ops) -> Callable:
        return ops.hyperplane_projection_linf

    def start_direction(self, like: Tensor) -> Tensor:
        return uniform_like(like) * 2 - 1  # uniform in [-1, 1]^d

    def _ball_point(self, x_nat: Tensor, eps: float | Tensor) -> Tensor:
        """Uniform in the cube (for a scalar eps exactly torchattacks' `uniform_(-eps, eps)`)."""
        if isinstance(eps, Tensor):
            return (torch.rand_like(x_nat, **_PLAIN) * 2 - 1) * eps.view(_per_sample_shape(x_nat))
        return torch.empty_like(x_nat, **_PLAIN).uniform_(-eps, eps)

    def check_budget(self, name: str, largest: float) -> None:
        if largest > self.largest_budget:
            raise ValueError(f"{name}={largest} exceeds 1: Linf budgets are in pixel units of [0, 1] "
                             f"images (did you mean {largest:g}/255 = {largest / 255:.4f}?)")


class L2(ThreatModel):
    """The L2 ball: normalised-gradient steps, radial projection."""

    name, reference_name = "l2", "L2"

    def norm(self, t: Tensor, start_dim: int = 1) -> Tensor:
        return t.flatten(start_dim).norm(dim=start_dim)

    def dual_norm(self, t: Tensor, start_dim: int = 1) -> Tensor:
        return self.norm(t, start_dim)  # L2 is its own dual

    def project(self, x: Tensor, x_nat: Tensor, eps: float) -> Tensor:
        delta = x - x_nat
        size = self.norm(delta).view(_per_sample_shape(x))
        return torch.clamp(x_nat + delta / (size + 1e-12) * torch.clamp(size, max=eps), 0.0, 1.0)

    def step_op(self, ops: ModuleType = fused_ops) -> Callable:
        return ops.l2_pgd_step_

    def hyperplane_projection(self, ops: ModuleType = fused_ops) -> Callable:
        return ops.hyperplane_projection_l2

    def start_direction(self, like: Tensor) -> Tensor:
        return normal_like(like)  # Gaussian

    def _ball_point(self, x_nat: Tensor, eps: float | Tensor) -> Tensor:
        """A Gaussian direction scaled to a uniform radius in [0, eps)."""
        shape = _per_sample_shape(x_nat)
        delta = torch.randn_like(x_nat, **_PLAIN)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        radius = torch.rand(x_nat.shape[0], device=x_nat.device, dtype=x_nat.dtype).view(shape)
        return delta / norms * radius * (eps.view(shape) if isinstance(eps, Tensor) else eps)


THREAT_MODELS = {threat.name: threat for threat in (Linf(), L2())}
NORMS = tuple(THREAT_MODELS)  # ("linf", "l2"): the names attacks, specs and reports use


def threat_model(norm: str | ThreatModel, what: str = "norm") -> ThreatModel:
    """The threat model of a name the attacks accept ("linf", "l2"; a ThreatModel passes through).
    Anything else is a ValueError naming `what` and the accepted names."""
    if isinstance(norm, ThreatModel):
        return norm
    if norm not in NORMS:
        raise ValueError(f"{what} must be one of {NORMS}, got {norm!r}")
    return THREAT_MODELS[norm]
