"""Pure-PyTorch reference of every fused op: the ground truth of the tests, and the eager backend
(`cwr_fast.ops.backend_module("eager")`: training's `--ops eager`, `CWR_FAST_BACKEND=reference`,
and the fallback when the compiled extension is missing). Code outside the op layer reaches it
only through `cwr_fast.ops.backend_module`.

Each function has the semantics of the op of the same name in `cwr_fast.ops`: computation in
float32 (float64 stays float64), results rounded once to the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cwr_fast.op_checks import check_dlr_classes

_L2_TINY = 1e-12  # keeps grad / ||grad|| finite for an all-zero gradient


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _per_sample(value, x: Tensor) -> Tensor:
    """A scalar or a [N] tensor, shaped to broadcast over the sample dimension of x."""
    v = torch.as_tensor(value, dtype=_compute_dtype(x), device=x.device)
    return v.reshape(-1, *([1] * (x.dim() - 1))) if v.dim() == 1 else v


def _refuse_grad(op: str, *, what: str = "the PGD step is", **inputs) -> None:
    """The contract of the steps and the Square Attack's ops (csrc/steps_autograd.cpp,
    csrc/square_autograd.cpp): not differentiable, so while grad mode is on an input that requires
    grad is refused."""
    if not torch.is_grad_enabled():
        return
    for name, t in inputs.items():
        if isinstance(t, Tensor) and t.requires_grad:
            raise RuntimeError(f"cwr_fast::{op}: {name} requires grad, but {what} not "
                               "differentiable: call it under torch.no_grad() or on detached tensors")


def _step_inputs(op: str, x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha, eps):
    """The step's inputs in the compute dtype, the budgets shaped per sample."""
    _refuse_grad(op, x_adv=x_adv, grad=grad, x_nat=x_nat, alpha_per_sample=alpha, eps_per_sample=eps)
    dt = _compute_dtype(x_adv)
    x = x_adv.to(dt)
    return x, grad.to(dt), x_nat.to(dt), _per_sample(alpha, x), _per_sample(eps, x)


def linf_pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha, eps, lo: float = 0.0,
                   hi: float = 1.0) -> Tensor:
    x, g, xn, a, e = _step_inputs("linf_pgd_step_", x_adv, grad, x_nat, alpha, eps)
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
    x, g, xn, a, e = _step_inputs("l2_pgd_step_", x_adv, grad, x_nat, alpha, eps)
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


def dlr_loss_fwd_bwd(logits: Tensor, target: Tensor, attack_target: Tensor | None = None,
                     weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample DLR loss (Croce & Hein, 2020) and its gradient, pi the descending stable order:
    untargeted -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), targeted toward t
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). The gradient collects its terms in the
    order y, competitor (or t), pi1, pi3, pi4, as the kernels do."""
    check_dlr_classes(logits.shape[1], attack_target is not None)
    z = logits.to(_compute_dtype(logits))
    order = torch.sort(z, dim=1, descending=True, stable=True).indices[:, :4]
    top = z.gather(1, order)
    if attack_target is None:
        other = torch.where(order[:, 0] != target, order[:, 0], order[:, 1])
        denominator = top[:, 0] - top[:, 2] + 1e-12
    else:
        other = attack_target
        denominator = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    numerator = z.gather(1, target[:, None]).squeeze(1) - z.gather(1, other[:, None]).squeeze(1)
    ratio = numerator / denominator
    d_num, d_den = 1 / denominator, ratio / denominator
    if attack_target is None:
        where = torch.stack([target, other, order[:, 0], order[:, 2]], dim=1)
        terms = torch.stack([-d_num, d_num, d_den, -d_den], dim=1)
    else:
        where = torch.stack([target, other, order[:, 0], order[:, 2], order[:, 3]], dim=1)
        terms = torch.stack([-d_num, d_num, d_den, -0.5 * d_den, -0.5 * d_den], dim=1)
    dz = torch.zeros_like(z)
    for k in range(where.shape[1]):  # one term at a time: the kernels' order of summation
        dz.scatter_add_(1, where[:, k:k + 1], terms[:, k:k + 1])
    loss, dz = _weighted(-ratio, dz, weight)
    return loss, dz.to(logits.dtype)


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


def dlr_loss(logits: Tensor, target: Tensor, attack_target: Tensor | None = None,
             weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Differentiable DLR loss (untargeted, or targeted toward attack_target)."""
    check_dlr_classes(logits.shape[1], attack_target is not None)
    z = logits.to(_compute_dtype(logits))
    top = torch.sort(z, dim=1, descending=True, stable=True)
    values, order = top.values, top.indices
    if attack_target is None:
        z_other = torch.where(order[:, 0] != target, values[:, 0], values[:, 1])
        denominator = values[:, 0] - values[:, 2] + 1e-12
    else:
        z_other = z.gather(1, attack_target[:, None]).squeeze(1)
        denominator = values[:, 0] - 0.5 * (values[:, 2] + values[:, 3]) + 1e-12
    loss = -(z.gather(1, target[:, None]).squeeze(1) - z_other) / denominator
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


# ---- hyperplane projections (FAB) ----------------------------------------------------------------
# Projection of points onto a hyperplane within the box [0, 1]^d, in the Linf or L2 norm: the
# step of FAB (Croce & Hein, 2020). For each row: the smallest perturbation d (in that norm) with
# w . (t + d) = b and 0 <= t + d <= 1; where the hyperplane cannot be reached inside the box, the
# box corner that gets closest to it.
#
# Both have a closed form after one sort. Orient w so that c = w . t - b >= 0; then reaching the
# hyperplane means lowering w . (t + d) by c, and the optimal d moves each coordinate against w
# until its box bound stops it: d_i = -sign(w_i) min(s_i, cap_i), cap_i = t_i (w_i > 0) or 1 - t_i
# (w_i < 0), with s_i = lam for Linf and s_i = lam |w_i| for L2. The decrease
# F(lam) = sum_i |w_i| min(s_i, cap_i) is piecewise linear and increasing in lam, with breakpoints
# where coordinates reach their bounds: sorted once, F at every breakpoint is a cumulative sum, and
# lam solves F(lam) = c on the first segment where F reaches c.

_PROJECTION_L2_ZERO_W = 1e-8  # L2: |w_i| at or below this counts as 0, as the reference AutoAttack does


def _orient_plane(t: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(w oriented so that c >= 0, c = w . t - b >= 0)."""
    c = (w * t).sum(dim=1) - b
    sign = torch.where(c >= 0, 1.0, -1.0).to(w.dtype)
    return w * sign[:, None], c * sign


def _solve_plane(breakpoints: Tensor, slope_weights: Tensor, full_drop: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """lam with F(lam) = c, for F(lam) = sum_i min(lam * slope_weights_i, full_drop_i) whose
    coordinate i saturates at lam = breakpoints_i; and whether c is reachable (F(inf) >= c)."""
    order = breakpoints.argsort(dim=1)
    r = breakpoints.gather(1, order)
    k = slope_weights.gather(1, order)
    f = full_drop.gather(1, order)
    saturated = torch.cumsum(f, dim=1) - f         # drop of the coordinates saturated before r_j
    slope = k.flip(1).cumsum(dim=1).flip(1)        # slope of F on the segment ending at r_j
    at_break = saturated + r * slope               # F(r_j)
    reachable = f.sum(dim=1) >= c
    segment = (at_break >= c[:, None]).to(torch.int8).argmax(dim=1, keepdim=True)
    lam = (c[:, None] - saturated.gather(1, segment)) / slope.gather(1, segment)
    lam = torch.nan_to_num(lam.squeeze(1).clamp_min(0.0), nan=0.0)
    return lam, reachable


def hyperplane_projection_linf(points: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """[M, D] points, normals w, offsets b [M] -> perturbations d [M, D], smallest in Linf."""
    if points.shape[1] == 0:
        return torch.zeros_like(points)
    t = points
    w, c = _orient_plane(t, w, b)
    active = w != 0
    cap = torch.where(w > 0, t, 1 - t)
    box = torch.where(w > 0, -t, 1 - t)            # the move to the box bound against w
    cap_active = torch.where(active, cap, 0.0)
    lam, reachable = _solve_plane(cap_active, w.abs(), w.abs() * cap_active, c)
    d = -torch.sign(w) * torch.minimum(lam[:, None], cap)
    d = torch.where(reachable[:, None], d, box)
    return torch.where(active, d, 0.0)


def hyperplane_projection_l2(points: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """[M, D] points, normals w, offsets b [M] -> perturbations d [M, D], smallest in L2."""
    if points.shape[1] == 0:
        return torch.zeros_like(points)
    t = points
    w, c = _orient_plane(t, w, b)
    active = w.abs() > _PROJECTION_L2_ZERO_W
    w = torch.where(active, w, 0.0)
    cap = torch.where(w > 0, t, 1 - t)
    box = torch.where(w > 0, -t, 1 - t)
    breakpoints = torch.where(active, cap / w.abs().clamp_min(_PROJECTION_L2_ZERO_W), 0.0)
    lam, reachable = _solve_plane(breakpoints, w * w, w.abs() * torch.where(active, cap, 0.0), c)
    d = -torch.sign(w) * torch.minimum(lam[:, None] * w.abs(), cap)
    d = torch.where(reachable[:, None], d, box)
    return torch.where(active, d, 0.0)


# ---- the Square Attack's Linf query loop ----------------------------------------------------------
# One query per image: a random square window of side `side` set to the corner x_nat +- eps of the
# Linf ball (one sign per channel), clamped to [0, 1]; and the accept step, which keeps a query
# where the margin loss z_y - max_{j != y} z_j drops. The draws come in one tensor u [M, 2 + C] of
# uniform numbers: the window's row and column, then the signs.

_SQUARE_OPS_ARE = "the Square Attack's ops are"


def square_linf_query(x_nat: Tensor, x_best: Tensor, u: Tensor, eps: float, side: int) -> Tensor:
    """x_best with, in each image's window, clamp(x_nat + sign_c * eps, 0, 1); the window's corner
    is (floor(u0 * (H - side)), floor(u1 * (W - side))) with float32 products, sign_c = +1 where
    u[2 + c] >= 0.5, else -1. Computed in float32 (float64 for float64), rounded to x_best's dtype."""
    _refuse_grad("square_linf_query", what=_SQUARE_OPS_ARE, x_nat=x_nat, x_best=x_best, u=u)
    m, c, h, w = x_nat.shape
    top = (u[:, 0] * (h - side)).long()
    left = (u[:, 1] * (w - side)).long()
    rows, cols = torch.arange(h, device=u.device), torch.arange(w, device=u.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)          # [m, h]
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)        # [m, w]
    window = in_rows[:, None, :, None] & in_cols[:, None, None, :]           # [m, 1, h, w]
    dt = _compute_dtype(x_nat)
    sign = torch.where(u[:, 2:] >= 0.5, 1.0, -1.0).to(dt)[:, :, None, None]  # [m, c, 1, 1]
    corner = torch.clamp(x_nat.to(dt) + sign * eps, 0.0, 1.0)
    out = torch.where(window, corner.to(x_best.dtype), x_best)
    return torch.empty_like(x_best).copy_(out)  # in x_best's memory layout, as the op


def square_margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j in float32 (+inf for a single class with a finite z_y)."""
    z = logits.float()
    rows = torch.arange(z.shape[0], device=z.device)
    return z[rows, y] - z.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def square_accept_(x_best: Tensor, margin_best: Tensor, x_new: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """Where the margin of the new images is below margin_best: margin_best <- margin and
    x_best[i] <- x_new[i], in place. Returns logits.argmax(dim=1)."""
    _refuse_grad("square_accept_", what=_SQUARE_OPS_ARE, x_best=x_best, margin_best=margin_best, x_new=x_new,
                 logits=logits, y=y)
    margin = square_margin(logits, y)
    better = margin < margin_best
    x_best.copy_(torch.where(better[:, None, None, None], x_new, x_best))
    margin_best.copy_(torch.where(better, margin, margin_best))
    return logits.argmax(dim=1)
