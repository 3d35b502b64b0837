"""CFA: Class-wise Calibrated Fair Adversarial Training (`--defense cfa`).

Zeming Wei, Yifei Wang, Yiwen Guo, Yisen Wang. "CFA: Class-Wise Calibrated Fair Adversarial
Training." CVPR 2023 (arXiv:2303.14460); authors' code https://github.com/PKU-ML/CFA (train.py,
attack.py, utils.py), whose defaults are used here.

Three parts, each with an on/off option:

CCM, class-wise calibrated margin. With t_k the robust accuracy of class k on its own training
(adversarial) inputs in the previous epoch (the trainer's train_counts: correct_k / n_k),

    eps_k = (lambda1 + t_k) * eps,

so a class that is already robust trains with a larger budget and a vulnerable one with a smaller
one. As in the authors' code the PGD step size alpha is NOT rescaled with eps_k (option
scale_alpha=true rescales it as the base policy does), and the margins are used from epoch `begin`
(0-based, default 10) on; before it every class trains at eps.

CCR, class-wise calibrated regularisation (TRADES; MART's beta alike):

    beta_k = (lambda2 + t_k) * beta,
    loss_i = (CE(f(x_i), y_i) + beta_{y_i} KL(f(x_i) || f(x'_i))) / (1 + beta_{y_i}),

the normalised form of the authors' attack.py (1 - b_k) CE + b_k KL with b_k = beta_k/(1+beta_k).
Here the per-sample factor is (1 + beta) / (1 + beta_k) (class_weight), so that at beta_k = beta
the loss is this package's plain TRADES loss (the constant 1/(1 + beta) the authors apply to every
class is a rescaling of the learning rate). CCR is a no-op for methods without a beta (PGD-AT).

t_k is the last epoch's accuracy, as in the authors' code (no smoothing there); momentum=m > 0
optionally smooths it, t_k <- m t_k + (1 - m) acc_k.

FAWA, fairness-aware weight averaging. After every epoch the training weights theta are validated
(the trainer's PGD check on the held-out validation images, at eps); only if their worst-class
robust accuracy clears the threshold are they absorbed into the average:

    if min_k R_k(theta) >= threshold:  theta_avg <- decay * theta_avg + (1 - decay) * theta
                                        (theta_avg <- theta at the first absorbed epoch)
    else:                               theta_avg unchanged.

The average (all float entries of the state dict: parameters and BatchNorm statistics, as the
authors' utils.weight_average) is the model the trainer validates, saves as best, and reports
(the trainer's `averaged_model` hook). Until the first epoch clears the threshold the average
mirrors the training weights (the authors' average is then still at its random initialisation,
which is meaningless to validate). FAWA costs one extra validation pass per epoch.

Defaults (authors' train.py): lambda1 = lambda2 = 0.5, begin = 10, decay = 0.88, threshold = 0.24
(their README's AT example uses 0.2). Options: ccm, ccr, fawa (true/false), lambda1, lambda2,
begin, momentum, decay, threshold, scale_alpha.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from cwr_fast.defenses.base import (ClasswisePolicy, bool_option, float_option, int_option,
                                    register_defense)
from cwr_fast.methods import BatchPolicy


@register_defense
class CFA(ClasswisePolicy):
    """CCM + CCR + FAWA of Wei et al. (CVPR 2023); see the module docstring."""

    name = "cfa"

    def __init__(self, num_classes: int, eps: float, alpha: float, beta: float | None, *,
                 ccm: bool = True, ccr: bool = True, fawa: bool = True, lambda1: float = 0.5,
                 lambda2: float = 0.5, begin: int = 10, momentum: float = 0.0, decay: float = 0.88,
                 threshold: float = 0.24, scale_alpha: bool = False):
        super().__init__(num_classes, eps, alpha, beta)
        flag = lambda name, value: bool_option(self.name, name, value)  # noqa: E731
        self.ccm, self.ccr, self.fawa = flag("ccm", ccm), flag("ccr", ccr), flag("fawa", fawa)
        self.scale_alpha = flag("scale_alpha", scale_alpha)
        self.lambda1 = float_option(self.name, "lambda1", lambda1, low=0.0)
        self.lambda2 = float_option(self.name, "lambda2", lambda2, low=0.0)
        self.begin = int_option(self.name, "begin", begin)
        self.momentum = float_option(self.name, "momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.decay = float_option(self.name, "decay", decay, low=0.0, high=1.0, high_open=True)
        self.threshold = float_option(self.name, "threshold", threshold, low=0.0, high=1.0)
        self.train_robust: Tensor | None = None   # t_k, [C] float64
        self.avg_model: nn.Module | None = None   # the FAWA average (created by averaged_model)
        self.fawa_count = 0                       # epochs absorbed into the average
        self._pending_avg: dict | None = None     # average weights loaded before the module exists
        self._fawa_log: dict = {}

    # ---- per-sample knobs: CCM keeps alpha as in the authors' code ----
    def batch_policy(self, y: Tensor, eps: float, alpha: float, beta: float | None) -> BatchPolicy:
        batch = super().batch_policy(y, eps, alpha, beta)
        if not self.scale_alpha:
            batch.alpha = alpha
        return batch

    # ---- CCM / CCR ----
    def calibrate(self, acc: Tensor, beta: float | None) -> None:
        """Sets class_eps_scale / class_beta / class_weight from t_k = acc (a [C] tensor)."""
        t = acc.to(torch.float64)
        if self.ccm:
            self.class_eps_scale = (self.lambda1 + t).to(torch.float32)
        if self.ccr and beta is not None:
            beta_k = (self.lambda2 + t) * float(beta)
            self.class_beta = beta_k.to(torch.float32)
            self.class_weight = ((1.0 + float(beta)) / (1.0 + beta_k)).to(torch.float32)

    def update(self, epoch: int, val_counts, train_counts: dict, context=None) -> dict:
        n = train_counts["n"].to(torch.float64).cpu()
        correct = train_counts["correct"].to(torch.float64).cpu()
        acc = torch.where(n > 0, correct / n.clamp_min(1), torch.nan)
        if self.train_robust is None:  # a class absent this epoch starts at the mean of the others
            fill = float(acc[n > 0].mean()) if bool((n > 0).any()) else 0.0
            self.train_robust = torch.where(n > 0, acc, torch.full_like(acc, fill))
        else:
            acc = torch.where(n > 0, acc, self.train_robust)
            self.train_robust = self.momentum * self.train_robust + (1.0 - self.momentum) * acc
        beta = context.method.beta if context is not None else self.beta
        active = epoch + 1 >= self.begin   # the next epoch (0-based epoch + 1) uses the calibration
        if active:
            self.calibrate(self.train_robust, beta)
        log = {"train_robust": [round(float(v), 6) for v in self.train_robust],
               "calibrated": bool(active)}
        if self.class_eps_scale is not None:
            log["eps"] = [float(v) * self.eps for v in self.class_eps_scale]
        if self.class_beta is not None:
            log["beta"] = [float(v) for v in self.class_beta]
            log["weight"] = [float(v) for v in self.class_weight]
        if self.fawa:
            log["fawa"] = dict(self._fawa_log)
        return log

    # ---- FAWA: the trainer hooks ----
    def averaged_model(self, model: nn.Module) -> nn.Module | None:
        """Trainer hook (once, before a resume loads state): the module the trainer evaluates and
        reports instead of the training weights; None without FAWA."""
        if not self.fawa:
            return None
        self.avg_model = copy.deepcopy(model).eval()
        for p in self.avg_model.parameters():
            p.requires_grad_(False)
        if self._pending_avg is not None:
            self.avg_model.load_state_dict(self._pending_avg)
            self._pending_avg = None
        return self.avg_model

    def before_validation(self, epoch: int, context) -> None:
        """Trainer hook (end of every epoch, before its validation of the averaged model):
        validates the training weights and absorbs them if their worst class clears the bar."""
        if not self.fawa or self.avg_model is None:
            return
        counts, val = context.validate(context.model)
        self.absorb(context.model, val["robust_worst"])
        self._fawa_log["train_weights_val"] = {"robust_mean": val["robust_mean"],
                                               "robust_worst": val["robust_worst"]}

    @torch.no_grad()
    def absorb(self, model: nn.Module, worst_robust: float | None) -> bool:
        """One FAWA step with the worst-class validation robust accuracy of `model`'s weights;
        True if they were absorbed into the average."""
        if self.avg_model is None:
            raise RuntimeError("FAWA is off or averaged_model() was not called")
        ok = worst_robust is not None and not math.isnan(worst_robust) \
            and worst_robust >= self.threshold
        src = model.state_dict()
        if ok or self.fawa_count == 0:
            d = 0.0 if self.fawa_count == 0 else self.decay
            for key, avg in self.avg_model.state_dict().items():
                new = src[key].detach()
                if avg.is_floating_point() and d > 0.0:
                    avg.mul_(d).add_(new.to(avg.dtype), alpha=1.0 - d)
                else:
                    avg.copy_(new)
        if ok:
            self.fawa_count += 1
        self._fawa_log = {"worst": worst_robust, "threshold": self.threshold, "absorbed": bool(ok),
                          "count": self.fawa_count}
        return bool(ok)

    # ---- state ----
    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update({
            "train_robust": self.train_robust, "fawa_count": self.fawa_count,
            "fawa_log": dict(self._fawa_log),
            "avg_model": None if self.avg_model is None else
            {k: v.detach().cpu().clone() for k, v in self.avg_model.state_dict().items()},
            "options": self.describe()})
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.train_robust = state.get("train_robust")
        self.fawa_count = int(state.get("fawa_count", 0))
        self._fawa_log = dict(state.get("fawa_log") or {})
        avg = state.get("avg_model")
        if self.fawa and avg is None:
            raise ValueError("the checkpoint has no FAWA average but this run uses fawa=true")
        if avg is not None and self.fawa:
            if self.avg_model is not None:
                self.avg_model.load_state_dict(avg)
            else:
                self._pending_avg = avg

    def describe(self) -> dict:
        return {"name": self.name, "ccm": self.ccm, "ccr": self.ccr, "fawa": self.fawa,
                "lambda1": self.lambda1, "lambda2": self.lambda2, "begin": self.begin,
                "momentum": self.momentum, "decay": self.decay, "threshold": self.threshold,
                "scale_alpha": self.scale_alpha}
