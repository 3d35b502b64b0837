"""FAB (Croce & Hein, ICML 2020): the Fast Adaptive Boundary attack, a minimum-norm attack that
steps to the projection onto the linearised decision boundary, biased back toward the clean image.
FAB-T (targeted, a member of AutoAttack) linearises the boundary to one target class at a time.
The algorithm and its constants are the reference implementation's (fra31/auto-attack, fab_base.py):

    per iteration, at x1 (x0 the clean image):
      f_j = z_j - z_y, g_j = grad f_j (untargeted: every j != y; targeted: j = t only)
      j* = argmin_j |f_j| / ||g_j||_dual            (the closest linearised boundary)
      d1, d2 = projections of x1 and x0 onto {x : f_j* + g_j* . (x - x1) = 0} within [0, 1]^d
      a = min(max(||d1|| / (||d1|| + ||d2||), 0), alpha_max)
      x1 = clamp((x1 + eta d1)(1 - a) + (x0 + eta d2) a, 0, 1)
      if x1 is misclassified: keep it if ||x1 - x0|| is the smallest so far, then x1 = x0 + beta (x1 - x0)

with alpha_max = 0.1, eta = 1.05, beta = 0.9; restarts after the first start at x0 + r u / (2 ||u||),
r = min(smallest perturbation found, eps). For AutoAttack a sample is fooled once FAB has found a
misclassified point within eps; it then leaves the batch (later iterations could only shrink that
perturbation, never change the outcome).

FAB runs in float32 under any `amp`: its step is the distance to a linearised boundary, a ratio of
logit gaps and gradient norms that bf16 logits (8 bits of mantissa) get wrong (issue 25 measured
FAB-20 under bf16 autocast leaving 55 of 100 MNIST images robust at eps 0.15, float32 33).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cwr_fast import ops
from cwr_fast.attacks.apgd import target_ranking
from cwr_fast.attacks.attack import Attack, check_count, check_member_settings, run_until_fooled
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.threat import ThreatModel, threat_model
from cwr_fast.runtime import amp_dtype, autocast, is_channels_last, to_channels_last

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9


def _flat(t: Tensor, like: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, D], the coordinates in the memory order of `like` (a view where t has
    like's layout). The projection and the norms do not depend on the order of the coordinates,
    so channels-last images need no copy to NCHW order."""
    if is_channels_last(like):
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1)


def _unflat(d: Tensor, like: Tensor) -> Tensor:
    """The inverse of _flat: [N, D] in like's memory order -> like's shape and layout (a view)."""
    if is_channels_last(like):
        n, c, h, w = like.shape
        return d.view(n, h, w, c).permute(0, 3, 1, 2)
    return d.view_as(like)


def _boundary_gradients(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None,
                        dtype: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, f [N, K], g [N, K, ...]): f_j = z_j - z_y and its input gradient, for the target
    (K = 1) or for every class (K = C; f_y is set to 1e10 so that y is never the closest)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), autocast(x.device, dtype):
        logits = model(x)
    z = logits.detach().float()
    rows = torch.arange(x.shape[0], device=x.device)
    if target is not None:
        seed = torch.zeros_like(z)
        seed[rows, target] = 1.0
        seed[rows, y] -= 1.0
        (g,) = torch.autograd.grad(logits, x, seed.to(logits.dtype))
        f = (z[rows, target] - z[rows, y])[:, None]
        return z, f, g[:, None].float()
    c = z.shape[1]
    grads = []
    for j in range(c):
        seed = torch.zeros_like(z)
        seed[:, j] = 1.0
        seed[rows, y] -= 1.0
        (g,) = torch.autograd.grad(logits, x, seed.to(logits.dtype), retain_graph=j < c - 1)
        grads.append(g.float())
    f = z - z[rows, y][:, None]
    f[rows, y] = 1e10
    return z, f, torch.stack(grads, dim=1)


def fab(model: nn.Module, x0: Tensor, y: Tensor, *, eps: float, norm: str | ThreatModel = "linf",
        steps: int = 100, target: Tensor | None = None, random_start: bool = False,
        amp: str | None = None) -> AttackResult:
    """One FAB run (targeted toward `target`, [N] classes, if given). success: a misclassified
    point within eps was found. The model must be in attack mode."""
    amp_dtype(amp)  # checked, not used: FAB runs in float32 (module docstring)
    dtype = None
    threat = threat_model(norm)
    project = threat.hyperplane_projection(ops)
    n = x0.shape[0]
    out_x, out_pred = x0.clone(), y.clone()
    out_success = torch.zeros(n, dtype=torch.bool, device=x0.device)
    if n == 0:
        return AttackResult(out_x, out_pred, out_success)
    channels_last = is_channels_last(x0)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    index = torch.arange(n, device=x0.device)
    x_clean, y_clean = x0, y
    x1 = x0.clone()
    if random_start:  # the smallest perturbation found is still infinite: the radius is eps / 2
        u = threat.start_direction(x0)  # as the reference: a CPU draw
        x1 = torch.clamp(x0 + 0.5 * eps * u / threat.norm(u).view(shape), 0.0, 1.0)
    best = torch.full((n,), float("inf"), device=x0.device)
    for _ in range(steps):
        if channels_last:
            x1 = to_channels_last(x1)
        _, f, g = _boundary_gradients(model, x1, y, target, dtype)
        m = x1.shape[0]
        if f.shape[1] == 1:  # targeted: one boundary
            f, g = f[:, 0], g[:, 0]
        else:
            rows = torch.arange(m, device=x1.device)
            closest = (f.abs() / (1e-12 + threat.dual_norm(g, start_dim=2))).argmin(dim=1)
            f, g = f[rows, closest], g[rows, closest]
        w, x1_flat = _flat(g, x1), _flat(x1, x1)
        b = -f + (w * x1_flat).sum(dim=1)
        d = project(torch.cat([x1_flat, _flat(x0, x1)]), torch.cat([w, w]), torch.cat([b, b]))
        d1, d2 = _unflat(d[:m], x1), _unflat(d[m:], x1)
        size = threat.norm(d).clamp_min(1e-8)
        alpha = (size[:m] / (size[:m] + size[m:])).clamp(0.0, ALPHA_MAX).view(shape)
        x1 = ((x1 + ETA * d1) * (1 - alpha) + (x0 + ETA * d2) * alpha).clamp(0.0, 1.0)
        with torch.no_grad(), autocast(x1.device, dtype):
            pred = model(to_channels_last(x1) if channels_last else x1).argmax(dim=1)
        adversarial = pred != y
        if not bool(adversarial.any()):
            continue
        size = threat.norm(x1 - x0)
        smaller = adversarial & (size < best)
        best = torch.where(smaller, size, best)
        out_x[index[smaller]] = x1[smaller]
        out_pred[index[smaller]] = pred[smaller]
        x1 = torch.where(adversarial.view(shape), x0 + (x1 - x0) * BETA, x1)
        done = best <= eps
        if bool(done.any()):
            out_success[index[done]] = True
            keep = ~done
            index, x0, x1, y, best = index[keep], x0[keep], x1[keep], y[keep], best[keep]
            target = target[keep] if target is not None else None
            if index.numel() == 0:
                break
    # A perturbation found but larger than eps is not a success: those samples keep x0.
    failed = ~out_success
    out_x[failed], out_pred[failed] = x_clean[failed], y_clean[failed]
    return AttackResult(out_x, out_pred, out_success)


class FAB(Attack):
    """FAB, untargeted: `restarts` runs (the first from the clean image, later ones from random
    points), each on the samples that the earlier ones did not fool within eps."""

    name = "fab"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 100,
                 restarts: int = 1, amp: str | None = None):
        super().__init__(model)
        self.threat = check_member_settings("FAB", eps, norm, amp, steps=steps, restarts=restarts)
        self.eps, self.norm, self.steps = float(eps), self.threat.name, steps
        self.restarts, self.amp = restarts, amp

    def params(self) -> dict:
        return {"eps": self.eps, "norm": self.norm, "steps": self.steps, "restarts": self.restarts,
                "amp": self.amp}

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        def run(k: int):
            return lambda x_todo, y_todo, _: fab(self.model, x_todo, y_todo, eps=self.eps,
                                                 norm=self.threat, steps=self.steps,
                                                 random_start=k > 0, amp=self.amp)

        result = run_until_fooled(x, y, [run(k) for k in range(self.restarts)])
        result.broken_by = None
        return result


class FABT(Attack):
    """FAB-T: FAB toward the 2nd, 3rd, ... most likely class of the clean image (`targets` of
    them, at most C - 1), `restarts` runs each, every run on the samples not fooled yet."""

    name = "fab-t"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 100,
                 targets: int = 9, restarts: int = 1, amp: str | None = None):
        super().__init__(model)
        self.threat = check_member_settings("FAB", eps, norm, amp, steps=steps, restarts=restarts)
        check_count(targets, "targets")
        self.eps, self.norm, self.steps, self.targets = float(eps), self.threat.name, steps, targets
        self.restarts, self.amp = restarts, amp

    def params(self) -> dict:
        return {"eps": self.eps, "norm": self.norm, "steps": self.steps, "targets": self.targets,
                "restarts": self.restarts, "amp": self.amp}

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        ranking = target_ranking(self.model, x, self.amp)

        def run(rank: int, restart: int):
            def one_run(x_todo: Tensor, y_todo: Tensor, index: Tensor) -> AttackResult:
                return fab(self.model, x_todo, y_todo, eps=self.eps, norm=self.threat, steps=self.steps,
                           target=ranking[index, rank], random_start=restart > 0, amp=self.amp)
            return one_run

        ranks = range(1, min(self.targets, ranking.shape[1] - 1) + 1)
        result = run_until_fooled(x, y, [run(k, r) for k in ranks for r in range(self.restarts)])
        result.broken_by = None
        return result
