"""Fair Robust Learning ("frl"): Xu, Liu, Li, Jain and Tang, "To be Robust or to be Fair: Towards
Fairness in Adversarial Training", ICML 2021 (arXiv:2010.06121), written after the paper and the
conventions of the authors' code (github.com/hannxu123/fair_robust, utils_frl*.py).

FRL trains TRADES under per-class fairness constraints on the clean error and on the boundary
error (clean-correct but not robust), each measured against the overall error:

    R_nat(f, k) - R_nat(f) <= tau1,      R_bndy(f, k) - R_bndy(f) <= tau2      (every class k)

and solves the Lagrangian min_f max_{phi >= 0} by alternating one epoch of training with one
ascent step on the multipliers, computed from the held-out validation check (the trainer's
per-epoch PGD check: clean_correct and robust counts of `val_counts`, the attack
`context.val_attack`). After an epoch with a check, with n_k, cc_k, rob_k the validation images,
clean-correct and robust images of class k:

    e_nat_k  = 1 - cc_k / n_k                 E_nat  = 1 - sum cc / sum n
    e_bndy_k = (cc_k - rob_k) / n_k           E_bndy = (sum cc - sum rob) / sum n
    g_nat_k  = e_nat_k  - E_nat  - tau1       g_bndy_k = e_bndy_k - E_bndy - tau2   (violations)
    (the totals are over images, as in the authors' code; a class without validation images has
    g = 0)

  reweight (FRL-Reweight):
    phi_nat  <- P(phi_nat  + alpha1     * g_nat)
    phi_bndy <- P(phi_bndy + alpha_bndy * g_bndy)          alpha_bndy = 2 alpha1 by default
    P(v) = max(v, 0), then rescaled to sum lim if its sum exceeds lim (the authors'
    normalize_lambda: a projection back onto a bounded simplex)
    The Lagrangian's per-class coefficients (the authors' cost_sensitive):
    c_nat_k  = 1/C + phi_nat_k  - (1/C) sum_j phi_nat_j      (> 0 since lim < 1)
    c_bndy_k = 1/C + phi_bndy_k - (1/C) sum_j phi_bndy_j
    The training loss of a sample (x, y) is C (c_nat_y CE(f(x), y) + beta c_bndy_y KL(f(x) || f(x'))),
    i.e. loss weight w_y = C c_nat_y and TRADES beta_y = beta c_bndy_y / c_nat_y, with beta the
    run's TRADES beta (`--beta`, default 6; the authors' code uses 1). With phi = 0 this is
    exactly TRADES. (The authors divide the batch's weighted sum by sum_i (c_nat_yi + c_bndy_yi);
    we use the fixed factor C instead, the same up to a constant on class-balanced batches, so
    that the learning rate keeps its meaning.)

  remargin (FRL-Remargin):
    phi_rm <- phi_rm + alpha2 * g_bndy                       (not clipped, as the authors' code)
    eps_k = s_k * eps,  s_k = clip(exp(2 phi_rm_k), eps_scale_min, min(eps_scale_max, 1/eps))
    (the step alpha scales alike): the budget grows for the classes whose boundary error exceeds
    the tolerance and shrinks (down to 0.98 eps by default) for the others.

  mode=both (default) is the paper's FRL-RWRM (reweight + remargin).

Defaults (the authors' code, frlrmrw.py): tau1 = tau2 = 0.1 (option tau sets both), alpha1 = 0.05,
alpha_bndy = 2 alpha1, alpha2 = 0.1, lim = 0.5, eps_scale_min = 0.98, eps_scale_max = 3.0. Not
reproduced: the authors' halving of alpha1 every 40 epochs and their warm start from a
pre-trained model. On epochs without a check nothing changes.

The method must be TRADES (`--method trades`), as in the paper: the weights split the natural and
the boundary (KL) term. The defense is built with its method (check_method), so another method
is a ConfigError at start-up, before any data is read.

Logged per epoch (metrics.jsonl "defense"): updated, clean_err, bndy_err, g_nat, g_bndy, phi_nat,
phi_bndy, phi_rm, class_weight, class_beta, class_eps_scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cwr_fast.defenses.base import (ClasswisePolicy, check_options, choice_option, float_option,
                                    register_defense)
from cwr_fast.errors import ConfigError
from cwr_fast.methods import DEFAULT_BETA, BatchPolicy

_MODES = ("both", "reweight", "remargin")


def project_multipliers(v: Tensor, lim: float) -> Tensor:
    """The authors' normalize_lambda: clip at 0, then rescale to sum `lim` if the sum exceeds it."""
    v = v.clamp_min(0.0)
    total = float(v.sum())
    return v * (lim / total) if total > lim else v


def lagrangian_coefficients(phi: Tensor) -> Tensor:
    """c_k = 1/C + phi_k - (1/C) sum_j phi_j: the coefficient of class k's error in
    R(f) + sum_k phi_k (R(f, k) - R(f)) with R(f) = (1/C) sum_k R(f, k)."""
    c = phi.numel()
    return 1.0 / c + phi - phi.sum() / c


@register_defense
class FairRobustLearning(ClasswisePolicy):
    """See the module docstring."""

    name = "frl"
    OPTIONS = ("mode", "tau", "tau1", "tau2", "alpha1", "alpha_bndy", "alpha2", "lim",
               "eps_scale_min", "eps_scale_max")

    def __init__(self, num_classes: int, eps: float, alpha: float, beta: float | None,
                 **options):
        check_options(self.name, options, self.OPTIONS)
        super().__init__(num_classes, eps, alpha, beta)
        self.mode = choice_option(self.name, "mode", options.get("mode", "both"), _MODES)
        if "tau" in options and ("tau1" in options or "tau2" in options):
            raise ConfigError("defense options: give tau (both tolerances) or tau1/tau2, not both")
        tau = options.get("tau", 0.1)
        self.tau1 = float_option(self.name, "tau1", options.get("tau1", tau), low=0.0)
        self.tau2 = float_option(self.name, "tau2", options.get("tau2", tau), low=0.0)
        self.alpha1 = float_option(self.name, "alpha1", options.get("alpha1", 0.05), low=0.0)
        self.alpha_bndy = float_option(self.name, "alpha_bndy", options.get("alpha_bndy", 2 * self.alpha1),
                                        low=0.0)
        self.alpha2 = float_option(self.name, "alpha2", options.get("alpha2", 0.1), low=0.0)
        self.lim = float_option(self.name, "lim", options.get("lim", 0.5), low=0.0, low_open=True)
        if self.lim >= 1.0:
            raise ConfigError(f"defense option lim must be < 1 (it keeps every class's loss weight "
                              f"positive), got {self.lim:g}")
        self.eps_scale_min = float_option(self.name, "eps_scale_min", options.get("eps_scale_min", 0.98),
                                           low=0.0, high=1.0, low_open=True)
        self.eps_scale_max = float_option(self.name, "eps_scale_max", options.get("eps_scale_max", 3.0),
                                           low=1.0)
        if beta is not None and beta <= 0:
            raise ConfigError(f"defense 'frl' needs a TRADES --beta > 0, got {beta:g}")
        self.base_beta = float(beta) if beta is not None else DEFAULT_BETA["trades"]
        c = num_classes
        self.phi_nat = torch.zeros(c, dtype=torch.float64)
        self.phi_bndy = torch.zeros(c, dtype=torch.float64)
        self.phi_rm = torch.zeros(c, dtype=torch.float64)
        self.num_updates = 0

    # ---- the method must be TRADES ----
    def check_method(self, method: str) -> None:
        if method != "trades":
            raise ConfigError(f"defense 'frl' reweights the natural and boundary terms of TRADES "
                              f"(Xu et al., 2021): use --method trades, not {method}")

    def batch_policy(self, y: Tensor, eps: float, alpha: float, beta: float | None) -> BatchPolicy:
        if beta is None:  # standard, pgd-at, fgsm-rs: no TRADES regulariser to reweight
            raise ConfigError("defense 'frl' reweights the natural and boundary terms of TRADES "
                              "(Xu et al., 2021): use --method trades")
        return super().batch_policy(y, eps, alpha, beta)

    # ---- the updates ----
    def errors(self, val_counts, label: str):
        """Per-class clean and boundary errors (NaN for empty classes) and their overall values."""
        n = val_counts.n.to(torch.float64).cpu()
        cc = val_counts.clean_correct.to(torch.float64).cpu()
        rob = val_counts.robust(label).to(torch.float64).cpu()
        has = n > 0
        nan = torch.full_like(n, float("nan"))
        e_nat = torch.where(has, 1.0 - cc / n.clamp_min(1), nan)
        e_bndy = torch.where(has, (cc - rob) / n.clamp_min(1), nan)
        total = float(n.sum())
        return e_nat, e_bndy, 1.0 - float(cc.sum()) / total, float((cc - rob).sum()) / total

    def update(self, epoch: int, val_counts, train_counts: dict, context=None) -> dict:
        if val_counts is None or int(val_counts.n.sum()) == 0:
            return {"updated": False, **self._log()}
        label = context.val_attack if context is not None else val_counts.attack_names[0]
        if val_counts.num_classes != self.num_classes:
            raise ValueError(f"defense {self.name!r}: validation counts have "
                             f"{val_counts.num_classes} classes, expected {self.num_classes}")
        e_nat, e_bndy, total_nat, total_bndy = self.errors(val_counts, label)
        g_nat = torch.nan_to_num(e_nat - total_nat - self.tau1, nan=0.0)
        g_bndy = torch.nan_to_num(e_bndy - total_bndy - self.tau2, nan=0.0)
        if self.mode in ("both", "reweight"):
            self.phi_nat = project_multipliers(self.phi_nat + self.alpha1 * g_nat, self.lim)
            self.phi_bndy = project_multipliers(self.phi_bndy + self.alpha_bndy * g_bndy, self.lim)
            c_nat = lagrangian_coefficients(self.phi_nat)
            c_bndy = lagrangian_coefficients(self.phi_bndy)
            self.class_weight = (self.num_classes * c_nat).to(torch.float32)
            self.class_beta = (self.base_beta * c_bndy / c_nat).to(torch.float32)
        if self.mode in ("both", "remargin"):
            self.phi_rm = self.phi_rm + self.alpha2 * g_bndy
            high = self.eps_scale_max if self.eps <= 0 else min(self.eps_scale_max, 1.0 / self.eps)
            self.class_eps_scale = torch.exp(2.0 * self.phi_rm).clamp(
                min(self.eps_scale_min, high), high).to(torch.float32)
        self.num_updates += 1
        nums = lambda t: [None if math.isnan(v) else round(v, 6) for v in t.tolist()]  # noqa: E731
        return {"updated": True, "attack": label,
                "clean_err": nums(e_nat), "bndy_err": nums(e_bndy),
                "total_clean_err": round(total_nat, 6), "total_bndy_err": round(total_bndy, 6),
                "g_nat": nums(g_nat), "g_bndy": nums(g_bndy), **self._log()}

    def _log(self) -> dict:
        lst = lambda t: None if t is None else [round(float(v), 6) for v in t]  # noqa: E731
        return {"mode": self.mode, "num_updates": self.num_updates,
                "phi_nat": lst(self.phi_nat), "phi_bndy": lst(self.phi_bndy),
                "phi_rm": lst(self.phi_rm), "class_weight": lst(self.class_weight),
                "class_beta": lst(self.class_beta), "class_eps_scale": lst(self.class_eps_scale)}

    # ---- checkpoints ----
    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(phi_nat=self.phi_nat, phi_bndy=self.phi_bndy, phi_rm=self.phi_rm,
                     base_beta=self.base_beta, num_updates=self.num_updates)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for key in ("phi_nat", "phi_bndy", "phi_rm"):
            value = state.get(key)
            if value is None or tuple(value.shape) != (self.num_classes,):
                raise ValueError(f"defense 'frl': the checkpoint's {key} does not fit "
                                 f"{self.num_classes} classes")
            setattr(self, key, value.to(torch.float64))
        self.base_beta = float(state.get("base_beta", self.base_beta))
        self.num_updates = int(state.get("num_updates", 0))

    def describe(self) -> dict:
        return {"name": self.name, "mode": self.mode, "tau1": self.tau1, "tau2": self.tau2,
                "alpha1": self.alpha1, "alpha_bndy": self.alpha_bndy, "alpha2": self.alpha2,
                "lim": self.lim, "eps_scale_min": self.eps_scale_min,
                "eps_scale_max": self.eps_scale_max, "beta": self.base_beta}
