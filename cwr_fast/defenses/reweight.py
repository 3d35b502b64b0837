"""Class-wise reweighting and re-margining from the validation robustness ("cwr").

The training-side idea of Tian et al., "Analysis and Applications of Class-wise Robustness in
Adversarial Training", KDD 2021 (earlier version: "Intriguing class-wise properties of adversarial
training", ICLR 2021 submission): the classes that adversarial training leaves least robust should
get more of the training signal, both a larger loss weight and a larger training perturbation
budget. The papers' exact formulas are not available to us; what follows is OUR explicit
formulation of that idea, re-estimated after every epoch from the per-class robust accuracy of the
held-out validation check (never from the test set).

After an epoch with a validation check, with r_k^new the validation robust accuracy of class k
under the trainer's validation attack (`val_counts.robust_accuracy(context.val_attack)`):

    smoothing      r_k <- r_k^new                                 (first estimate, taken as is)
                   r_k <- rho * r_k + (1 - rho) * r_k^new         (afterwards)
                   (a class without validation images keeps its r_k; on the first estimate it
                   gets the mean of the others)
    loss weight    u_k = (1 - r_k + delta)^gamma
                   w_k = clip(c * u_k, 1 / max_weight, max_weight), with the scalar c > 0 chosen
                   (bisection) so that mean_k w_k = 1: weights normalised to mean 1 over the
                   classes AND inside the clip range
    eps scale      s_k = clip(1 + kappa * (rbar - r_k) / max(1 - rbar, 0.05),
                          min_eps_scale, min(max_eps_scale, 1 / eps)),   rbar = mean_j r_j
                   i.e. a class whose robust accuracy falls short of the mean by as much as the
                   mean robust error gets (1 + kappa) times the budget; the training budget of
                   class k is eps_k = s_k * eps (the step alpha scales alike), never above 1.

Defaults: mode=both, gamma=1, delta=0.1, max_weight=3, rho=0.5, kappa=0.2, min_eps_scale=0.8,
max_eps_scale=1.25: within [0.8 eps, 1.25 eps] MNIST at eps 0.3 trains stably. mode=weight
applies only the loss weights, mode=eps only the budgets. On epochs without a validation check
(`--val-every`) nothing changes. Every option is checked in the constructor (a bad one is a
ConfigError: `python -m cwr_fast.train` reports it in one line with exit status 2).

Logged per epoch (metrics.jsonl "defense"): updated, robust_acc (the new estimate), robust_smoothed,
class_weight, class_eps_scale.
"""

from __future__ import annotations

import math

import torch

from cwr_fast.defenses.base import (ClasswisePolicy, check_options, choice_option, float_option,
                                    register_defense)
from cwr_fast.errors import ConfigError

_MODES = ("both", "weight", "eps")
_MIN_ERR = 0.05  # floor of the mean robust error in the eps-scale denominator


def normalized_clipped(u: torch.Tensor, max_weight: float, iters: int = 100) -> torch.Tensor:
    """w = clip(c * u, 1/max_weight, max_weight) with c > 0 such that mean(w) = 1 (float64).
    mean(clip(c u)) is continuous and non-decreasing in c, from <= 1 to >= 1: bisection on log c."""
    u = u.to(torch.float64)
    lo_w, hi_w = 1.0 / max_weight, max_weight
    f = lambda c: (c * u).clamp(lo_w, hi_w).mean()  # noqa: E731
    lo, hi = math.log(lo_w / float(u.max())), math.log(hi_w / float(u.min()))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float(f(math.exp(mid))) < 1.0:
            lo = mid
        else:
            hi = mid
    w = (math.exp(0.5 * (lo + hi)) * u).clamp(lo_w, hi_w)
    return w / w.mean() if float(w.max()) < hi_w and float(w.min()) > lo_w else w


@register_defense
class ClasswiseReweight(ClasswisePolicy):
    """See the module docstring."""

    name = "cwr"
    OPTIONS = ("mode", "gamma", "delta", "max_weight", "rho", "kappa", "min_eps_scale",
               "max_eps_scale")

    def __init__(self, num_classes: int, eps: float, alpha: float, beta: float | None,
                 **options):
        check_options(self.name, options, self.OPTIONS)
        super().__init__(num_classes, eps, alpha, beta)
        self.mode = choice_option(self.name, "mode", options.get("mode", "both"), _MODES)
        self.gamma = float_option(self.name, "gamma", options.get("gamma", 1.0), low=0.0, low_open=True)
        self.delta = float_option(self.name, "delta", options.get("delta", 0.1), low=0.0, low_open=True)
        self.max_weight = float_option(self.name, "max_weight", options.get("max_weight", 3.0), low=1.0)
        self.rho = float_option(self.name, "rho", options.get("rho", 0.5), low=0.0, high=1.0)
        if self.rho == 1.0:
            raise ConfigError("defense option rho must be < 1 (rho = 1 never updates the estimate)")
        self.kappa = float_option(self.name, "kappa", options.get("kappa", 0.2), low=0.0)
        self.min_eps_scale = float_option(self.name, "min_eps_scale", options.get("min_eps_scale", 0.8),
                                           low=0.0, high=1.0, low_open=True)
        self.max_eps_scale = float_option(self.name, "max_eps_scale", options.get("max_eps_scale", 1.25),
                                           low=1.0)
        self.robust_smoothed: torch.Tensor | None = None  # [C] float64, r_k
        self.num_updates = 0

    # ---- the formulas ----
    def _smooth(self, r_new: torch.Tensor) -> None:
        known = ~torch.isnan(r_new)
        if self.robust_smoothed is None:
            fill = float(r_new[known].mean())
            self.robust_smoothed = torch.where(known, r_new, torch.full_like(r_new, fill))
        else:
            mixed = self.rho * self.robust_smoothed + (1.0 - self.rho) * r_new
            self.robust_smoothed = torch.where(known, mixed, self.robust_smoothed)

    def weights(self, r: torch.Tensor) -> torch.Tensor:
        u = (1.0 - r + self.delta).clamp_min(1e-12) ** self.gamma
        return normalized_clipped(u, self.max_weight).to(torch.float32)

    def eps_scales(self, r: torch.Tensor) -> torch.Tensor:
        rbar = float(r.mean())
        s = 1.0 + self.kappa * (rbar - r) / max(1.0 - rbar, _MIN_ERR)
        high = self.max_eps_scale if self.eps <= 0 else min(self.max_eps_scale, 1.0 / self.eps)
        return s.clamp(min(self.min_eps_scale, high), high).to(torch.float32)

    def update(self, epoch: int, val_counts, train_counts: dict, context=None) -> dict:
        if val_counts is None:
            return {"updated": False, **self._log()}
        label = context.val_attack if context is not None else val_counts.attack_names[0]
        r_new = val_counts.robust_accuracy(label).to(torch.float64).cpu()
        if r_new.numel() != self.num_classes:
            raise ValueError(f"defense {self.name!r}: validation counts have {r_new.numel()} "
                             f"classes, expected {self.num_classes}")
        if bool(torch.isnan(r_new).all()):  # no validation images at all: nothing to learn from
            return {"updated": False, **self._log()}
        self._smooth(r_new)
        r = self.robust_smoothed
        self.class_weight = self.weights(r) if self.mode in ("both", "weight") else None
        self.class_eps_scale = self.eps_scales(r) if self.mode in ("both", "eps") else None
        self.num_updates += 1
        return {"updated": True, "attack": label,
                "robust_acc": [None if math.isnan(v) else v for v in r_new.tolist()],
                **self._log()}

    def _log(self) -> dict:
        lst = lambda t: None if t is None else [round(float(v), 6) for v in t]  # noqa: E731
        return {"mode": self.mode, "num_updates": self.num_updates,
                "robust_smoothed": lst(self.robust_smoothed),
                "class_weight": lst(self.class_weight),
                "class_eps_scale": lst(self.class_eps_scale)}

    # ---- checkpoints ----
    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(robust_smoothed=self.robust_smoothed, num_updates=self.num_updates)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.robust_smoothed = state.get("robust_smoothed")
        self.num_updates = int(state.get("num_updates", 0))

    def describe(self) -> dict:
        return {"name": self.name, "mode": self.mode, "gamma": self.gamma, "delta": self.delta,
                "max_weight": self.max_weight, "rho": self.rho, "kappa": self.kappa,
                "min_eps_scale": self.min_eps_scale, "max_eps_scale": self.max_eps_scale}
