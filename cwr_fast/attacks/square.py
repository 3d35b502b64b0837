"""Square Attack (Andriushchenko et al., ECCV 2020): a score-based black-box attack, the last
member of AutoAttack. Random search on the margin loss z_y - max_{j != y} z_j: each query changes
one random square window of the current best image and keeps the change where the margin drops.
The constants and schedules are the reference implementation's (fra31/auto-attack, square.py,
as AutoAttack runs it: p_init = 0.8, margin loss, the schedule of p not rescaled):

- Linf: start from vertical stripes of +-eps; a query sets a window of side s to x_best +- 2 eps
  (one sign per channel), projected back onto the ball and [0, 1];
- L2: start from a 5 x 5 grid of +-"meta-Gaussian" bumps scaled to eps; a query moves the
  perturbation mass of one window (and of a second window, which it clears) into a fresh bump
  in the first, keeping the total norm at eps;
- s = round(sqrt(p * h * w)), p halved at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.

Unlike the reference, which draws one window position (and one L2 bump orientation) per query for
the whole batch, every image draws its own, as in the paper's algorithm: the same distribution for
each image. A sample leaves the batch as soon as its margin is <= 0; it is fooled if the model then
misclassifies it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cwr_fast import ops
from cwr_fast.attacks.attack import (Attack, check_member_settings, confirm_fooled, float32_logits,
                                     float32_predict, run_until_fooled)
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.threat import ThreatModel, threat_model
from cwr_fast.runtime import amp_dtype, autocast, is_channels_last, to_channels_last

_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, query: int) -> float:
    """The fraction of pixels a query changes: p_init, halved after each of _P_HALVINGS."""
    return p_init / 2 ** sum(query > bound for bound in _P_HALVINGS)


def window_side(p: float, h: int, w: int, norm: str | ThreatModel) -> int:
    search = _search(norm)
    side = max(round(math.sqrt(p * h * w)), search.smallest_side)
    if search.odd_side:
        side += side % 2 == 0
    return min(side, h, w)


def _rectangles(rows: int, cols: int) -> Tensor:
    """Concentric rectangles around the centre: sum_{k >= d} 1 / (k + 1)^2 at Chebyshev distance d
    from (rows // 2, cols // 2), over k < max(rows // 2, cols // 2) + 1."""
    i = (torch.arange(rows, dtype=torch.float64) - rows // 2).abs()
    j = (torch.arange(cols, dtype=torch.float64) - cols // 2).abs()
    distance = torch.maximum(i[:, None], j[None, :]).long()
    rings = max(rows // 2, cols // 2) + 1
    tail = (1.0 / torch.arange(1, rings + 1, dtype=torch.float64) ** 2).flip(0).cumsum(0).flip(0)
    return tail[distance]


def l2_bump(side: int) -> Tensor:
    """The L2 attack's s x s "meta-Gaussian" perturbation: a positive bump over a negative one,
    of unit L2 norm (float64; its transpose is equally likely)."""
    top = _rectangles(side // 2, side)
    top = top / top.norm()
    bottom = _rectangles(side - side // 2, side)
    bottom = bottom / bottom.norm()
    bump = torch.cat([top, -bottom]) if side // 2 else -bottom
    return bump / bump.norm()


def _random_signs(shape, device) -> Tensor:
    return torch.where(torch.rand(shape, device=device) < 0.5, -1.0, 1.0)


def _bumps(m: int, side: int, device) -> Tensor:
    """[m, 1, side, side]: the bump, transposed for a random half of the images."""
    bump = l2_bump(side).to(device=device, dtype=torch.float32)
    flip = torch.rand(m, device=device) < 0.5
    return torch.where(flip[:, None, None, None], bump.t(), bump).expand(m, 1, side, side)


def _window_index(m: int, side: int, h: int, w: int, device) -> tuple[Tensor, Tensor]:
    """A random window per image: (flat pixel indices [m, side * side], mask [m, 1, h, w]). Its
    corner is uniform in [0, h - side) x [0, w - side) (the reference's range)."""
    top = (torch.rand(m, device=device) * (h - side)).long()
    left = (torch.rand(m, device=device) * (w - side)).long()
    offsets = torch.arange(side, device=device)
    rows, cols = top[:, None] + offsets, left[:, None] + offsets          # [m, side]
    flat = (rows[:, :, None] * w + cols[:, None, :]).flatten(1)
    pixel_rows, pixel_cols = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (pixel_rows >= top[:, None]) & (pixel_rows < top[:, None] + side)
    in_cols = (pixel_cols >= left[:, None]) & (pixel_cols < left[:, None] + side)
    return flat, (in_rows[:, None, :, None] & in_cols[:, None, None, :])


def _l2(t: Tensor, dims) -> Tensor:
    return (t * t).sum(dim=dims, keepdim=True).sqrt()


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    z = logits.float()
    rows = torch.arange(z.shape[0], device=z.device)
    return z[rows, y] - z.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def _linf_start(x: Tensor, eps: float) -> Tensor:
    n, c, _, w = x.shape
    return torch.clamp(x + eps * _random_signs((n, c, 1, w), x.device), 0.0, 1.0)


def _l2_start(x: Tensor, eps: float) -> Tensor:
    n, c, h, w = x.shape
    side = h // 5
    first = (h - 5 * side) // 2
    delta = torch.zeros_like(x)
    for top in range(first, first + side * (h // side), side):
        for left in range(first, first + side * (w // side), side):
            patch = _bumps(n, side, x.device) * _random_signs((n, c, 1, 1), x.device)
            delta[:, :, top:top + side, left:left + side] += patch[..., :h - top, :w - left]
    return torch.clamp(x + eps * delta / (_l2(delta, (1, 2, 3)) + 1e-12), 0.0, 1.0)


def _linf_query(x: Tensor, x_best: Tensor, eps: float, side: int) -> Tensor:
    """The window moves to x_best +- 2 eps projected onto the ball, which is x +- eps (x_best is in
    the ball), clamped to [0, 1]: one fused op (window corner and signs from one draw per image)."""
    m, c = x.shape[:2]
    return ops.square_linf_query(x, x_best, torch.rand(m, 2 + c, device=x.device), eps, side)


def _l2_query(x: Tensor, x_best: Tensor, eps: float, side: int) -> Tensor:
    m, c, h, w = x.shape
    delta = (x_best - x).reshape(m, c, h * w)
    first, mask1 = _window_index(m, side, h, w, x.device)
    second, mask2 = _window_index(m, side, h, w, x.device)
    first, second = first[:, None].expand(m, c, -1), second[:, None].expand(m, c, -1)
    old = delta.gather(2, first).view(m, c, side, side)
    image_norm = _l2(delta, (1, 2))[..., None]                              # [m, 1, 1, 1]
    windows_norm = _l2(delta.view(m, c, h, w) * (mask1 | mask2), (2, 3))     # [m, c, 1, 1]
    new = _bumps(m, side, x.device) * _random_signs((m, c, 1, 1), x.device)
    new = new + old / (1e-12 + _l2(old, (2, 3)))
    budget = torch.clamp(eps ** 2 - image_norm ** 2, min=0.0) / c + windows_norm ** 2
    new = new / (1e-12 + _l2(new, (2, 3))) * budget.sqrt()
    delta = delta.scatter(2, second, 0.0).scatter(2, first, new.reshape(m, c, -1)).view(m, c, h, w)
    return torch.clamp(x + eps * delta / (_l2(delta, (1, 2, 3)) + 1e-12), 0.0, 1.0)


@dataclass(frozen=True)
class _Search:
    """What the Square Attack does differently in each threat model."""

    smallest_side: int      # of the window
    odd_side: bool          # the L2 bump needs a centre
    smallest_image: int     # the L2 start lays a 5 x 5 grid of bumps
    start: Callable[[Tensor, float], Tensor]
    query: Callable[[Tensor, Tensor, float, int], Tensor]


_SEARCHES = {"linf": _Search(1, False, 0, _linf_start, _linf_query),
             "l2": _Search(3, True, 5, _l2_start, _l2_query)}


def _search(norm: str | ThreatModel) -> _Search:
    return _SEARCHES[threat_model(norm).name]


@torch.no_grad()
def square(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str | ThreatModel = "linf",
           queries: int = 5000, p_init: float = 0.8, amp: str | None = None) -> AttackResult:
    """One Square Attack run on [N, C, H, W] images in [0, 1]; at most `queries` queries after the
    start. The model must be in attack mode. Under amp the verdicts are float32's (precision.py)."""
    dtype = amp_dtype(amp)
    n, _, h, w = x.shape
    threat, search = threat_model(norm), _search(norm)
    if min(h, w) < search.smallest_image:
        size = search.smallest_image
        raise ValueError(f"the {threat.reference_name} Square Attack needs images of at least "
                         f"{size} x {size} pixels, got {h} x {w}")
    layout = to_channels_last if is_channels_last(x) else (lambda t: t)

    def logits_at(images: Tensor) -> Tensor:
        with autocast(images.device, dtype):
            return model(images)

    out_x, out_pred = x.clone(), y.clone()
    out_success = torch.zeros(n, dtype=torch.bool, device=x.device)
    index, x_active, y_active = torch.arange(n, device=x.device), x, y
    x_best = layout(search.start(x, eps))
    best = torch.full((n,), float("inf"), device=x.device)
    pred = ops.square_accept_(x_best, best, x_best, logits_at(x_best), y_active)
    for i in range(queries + 1):
        done = best <= 0
        if bool(done.any()):
            if dtype is not None:  # float32's verdict; where it disagrees, search on from its margin
                done, pred = confirm_fooled(model, x_best, y_active, done, pred, dtype)
                wrong = (best <= 0) & ~done
                if bool(wrong.any()):
                    best[wrong] = _margin(float32_logits(model, x_best[wrong]), y_active[wrong])
            at = index[done]
            out_x[at], out_pred[at], out_success[at] = x_best[done], pred[done], pred[done] != y_active[done]
            keep = ~done
            index, x_active, y_active, x_best, best = (t[keep] for t in (index, x_active, y_active, x_best, best))
            x_best = layout(x_best)
        if index.numel() == 0 or i == queries:
            break
        side = window_side(p_selection(p_init, i), h, w, threat)
        x_new = layout(search.query(x_active, x_best, eps, side))
        pred = ops.square_accept_(x_best, best, x_new, logits_at(x_new), y_active)
    if dtype is not None and index.numel():  # the best points of the images still robust, in float32
        pred32 = float32_predict(model, x_best)
        fooled = pred32 != y_active
        at = index[fooled]
        out_x[at], out_pred[at], out_success[at] = x_best[fooled], pred32[fooled], True
    return AttackResult(out_x, out_pred, out_success)


class Square(Attack):
    """The Square Attack: `restarts` runs of at most `queries` queries each (later runs only on the
    samples not fooled yet)."""

    name = "square"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", queries: int = 5000,
                 p_init: float = 0.8, restarts: int = 1, amp: str | None = None):
        super().__init__(model)
        self.threat = check_member_settings("the Square Attack", eps, norm, amp, queries=queries,
                                            restarts=restarts)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}")
        self.eps, self.norm, self.queries = float(eps), self.threat.name, queries
        self.p_init = float(p_init)
        self.restarts, self.amp = restarts, amp

    def params(self) -> dict:
        return {"eps": self.eps, "norm": self.norm, "queries": self.queries, "p_init": self.p_init,
                "restarts": self.restarts, "amp": self.amp}

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        if x.dim() != 4:
            raise ValueError(f"the Square Attack needs [N, C, H, W] images, got shape {list(x.shape)}")

        def one_run(x_todo: Tensor, y_todo: Tensor, _) -> AttackResult:
            return square(self.model, x_todo, y_todo, eps=self.eps, norm=self.threat,
                          queries=self.queries, p_init=self.p_init, amp=self.amp)

        result = run_until_fooled(x, y, [one_run] * self.restarts)
        result.broken_by = None
        return result
