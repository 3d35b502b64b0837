"""Pure-PyTorch reference of every fused op: the ground truth of the tests and the fallback when the
compiled extension is missing.

Each function has the semantics of the op of the same name in `cwr_fast.ops`: computation in
float32 (float64 stays float64), results rounded once to the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

_L2_TINY = 1e-12  # keeps grad / ||grad|| finite for an all-zero gradient


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _per_sample(value, x: Tensor) -> Tensor:
    """A scalar or a [N] tensor, shaped to broadcast over the sample dimension of x."""
    v = torch.as_tensor(value, dtype=_compute_dtype(x), device=x.device)
    return v.reshape(-1, *([1] * (x.dim() - 1))) if v.dim() == 1 else v


def linf_pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha, eps, lo: float = 0.0,
                   hi: float = 1.0) -> Tensor:
    dt = _compute_dtype(x_adv)
    x, g, xn = x_adv.to(dt), grad.to(dt), x_nat.to(dt)
    a, e = _per_sample(alpha, x), _per_sample(eps, x)
    delta = torch.clamp(x + a * torch.sign(g) - xn, -e, e)
    return x_adv.copy_(torch.clamp(xn + delta, lo, hi))


def _norm_per_sample(t: Tensor) -> Tensor:
    """||t_i||_2 per sample, accumulated in float64 (squares of float32 overflow above ~1e19),
    returned in t's dtype, shaped to broadcast."""
    dims = tuple(range(1, t.dim()))
    norm = torch.linalg.vector_norm(t.double(), dim=dims, keepdim=True) if dims else t.double().abs()
    return norm.to(t.dtype)


def l2_pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha, eps, lo: float = 0.0,
                 hi: float = 1.0) -> Tensor:
    dt = _compute_dtype(x_adv)
    x, g, xn = x_adv.to(dt), grad.to(dt), x_nat.to(dt)
    a, e = _per_sample(alpha, x), _per_sample(eps, x)
    g_norm = _norm_per_sample(g)
    delta = x + a * g / (g_norm + _L2_TINY) - xn
    d_norm = _norm_per_sample(delta)
    factor = torch.where(d_norm > e, e / d_norm.clamp_min(_L2_TINY), torch.ones_like(d_norm))
    return x_adv.copy_(torch.clamp(xn + delta * factor, lo, hi))


def _weighted(loss: Tensor, dz: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    if weight is None:
        return loss, dz
    w = weight.to(loss.dtype)
    return loss * w, dz * w[:, None]


def temperature_ce_fwd_bwd(logits: Tensor, target: Tensor, temperature: float = 1.0,
                           weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample loss w * CE(softmax(z / T), y) and dL/dz = w * (softmax(z / T) - onehot(y)) / T."""
    z = logits.to(_compute_dtype(logits)) / temperature
    log_p = torch.log_softmax(z, dim=1)
    loss = -log_p.gather(1, target[:, None]).squeeze(1)
    with torch.no_grad():  # dz is a result, not a differentiable output (as in the fused op)
        dz = (log_p.exp() - torch.nn.functional.one_hot(target, logits.shape[1]).to(z.dtype)) / temperature
    loss, dz = _weighted(loss, dz, weight)
    return loss.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), dz.to(logits.dtype)


def margin_loss_fwd_bwd(logits: Tensor, target: Tensor,
                        weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample loss w * (max_{j != y} z_j - z_y) and its gradient (+w at the first arg-max j != y,
    -w at y). With a single class there is no competitor: loss and gradient are 0."""
    z = logits.to(_compute_dtype(logits))
    n, c = z.shape
    if c == 1:
        loss, dz = z.new_zeros(n), torch.zeros_like(z)
    else:
        z_true = z.gather(1, target[:, None]).squeeze(1)
        others = z.scatter(1, target[:, None], float("-inf"))
        z_other, j_other = others.max(dim=1)
        loss = z_other - z_true
        dz = torch.zeros_like(z)
        dz.scatter_(1, j_other[:, None], 1.0)
        dz.scatter_(1, target[:, None], -1.0)
    loss, dz = _weighted(loss, dz, weight)
    return loss.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), dz.to(logits.dtype)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def temperature_cross_entropy(logits: Tensor, target: Tensor, temperature: float = 1.0,
                              weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Differentiable w * CE(softmax(z / T), y); 'mean' divides the weighted sum by N."""
    z = logits.to(_compute_dtype(logits)) / temperature
    loss = torch.nn.functional.cross_entropy(z, target, reduction="none")
    return _reduce(loss if weight is None else loss * weight.to(loss.dtype), reduction)


def margin_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None,
                reduction: str = "mean") -> Tensor:
    z = logits.to(_compute_dtype(logits))
    if z.shape[1] == 1:
        loss = (z * 0).sum(dim=1)
    else:
        z_true = z.gather(1, target[:, None]).squeeze(1)
        z_other = z.scatter(1, target[:, None], float("-inf")).max(dim=1).values
        loss = z_other - z_true
    return _reduce(loss if weight is None else loss * weight.to(loss.dtype), reduction)
