"""APGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that halves where progress
stalls, on the cross-entropy, the DLR loss or the targeted DLR loss (APGD-CE, APGD-DLR, APGD-T),
on the fused ops of `cwr_fast.ops`. The schedule is the reference implementation's
(fra31/auto-attack, `autopgd_base.py`):

- start: x + eps * u / ||u|| (u uniform in [-1, 1]^d for Linf, Gaussian for L2), clamped to [0, 1];
  step size 2 eps for every sample;
- momentum 0.75: z = P(x_k + eta * sign(g)) (L2: eta * g / ||g||), x_{k+1} = P(x_k + 0.75 (z - x_k)
  + 0.25 (x_k - x_{k-1})), P the projection onto the eps-ball and [0, 1]; no momentum at step 0;
- checkpoints after 0.22 n iterations, then after periods 0.03 n shorter each, down to 0.06 n. At
  a checkpoint a sample halves its step and restarts from its best point if its loss rose in at
  most rho = 0.75 of the period's steps, or if its step was not halved at the previous checkpoint
  and its best loss has not improved since.

A sample counts as fooled at the first iterate that fools the model and then leaves the batch, so
no compute is spent on it; every quantity is per sample, so the others' trajectories are the same
as in a full batch. Restarts and target classes run only on the samples not fooled yet.

Randomised models (APGD with eot > 1, AutoAttack's version rand) follow the reference's other rule
instead (`autopgd_base.perturb`, `attack_single_run`, and `run_standard_evaluation`): a noisy clean
pass picks the images to attack; every one of them runs all the steps (track="last"), its
adversarial image is the last iterate whose noisy prediction was wrong (the clean image where no
iterate fooled it), and a fresh forward pass on that image decides whether it counts as fooled.
The model's train/eval mode is then left as the caller set it (dropout stays random).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cwr_fast import ops
from cwr_fast.attacks.attack import (Attack, check_count, check_member_settings, confirm_fooled,
                                     float32_predict, run_until_fooled)
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.threat import ThreatModel, threat_model
from cwr_fast.op_checks import check_dlr_classes
from cwr_fast.runtime import amp_dtype, autocast, fp16_loss_scale, is_channels_last, to_channels_last

APGD_LOSSES = ("ce", "dlr")
APGD_TRACKS = ("first", "last")


def checkpoints(steps: int) -> dict[int, int]:
    """{iteration (0-based): length of the period it ends}: the reference's periods 0.22 n, then
    each 0.03 n shorter, but not below 0.06 n (n = 100: after 22, 41, 57, 70, 80, 87, 93, 99)."""
    period, shortest, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    points, i = {}, period - 1
    while i < steps:
        points[i] = period
        period = max(period - decrease, shortest)
        i += period
    return points


def _shape(t: Tensor, like: Tensor) -> Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _normalize(t: Tensor, threat: ThreatModel) -> Tensor:
    return t / _shape(threat.norm(t) + 1e-12, t)


def random_start(x_nat: Tensor, eps: float, norm: str | ThreatModel) -> Tensor:
    """x + eps * u / ||u||: u uniform in [-1, 1]^d (Linf) or Gaussian (L2); clamped to [0, 1]. u is
    drawn as the reference draws it, on the CPU and then copied (`ThreatModel.start_direction`)."""
    threat = threat_model(norm)
    x = torch.clamp(x_nat + eps * _normalize(threat.start_direction(x_nat), threat), 0.0, 1.0)
    return to_channels_last(x) if is_channels_last(x_nat) else x


class _State:
    """The per-sample state of one APGD run; `keep` compacts it when fooled samples leave."""

    FIELDS = ("index", "x_nat", "y", "target", "x", "x_old", "grad", "loss", "x_best", "grad_best",
              "loss_best", "loss_last", "rises", "step", "best_at_check", "halved_at_check")

    def __init__(self, **tensors):
        for name in self.FIELDS:
            setattr(self, name, tensors.get(name))

    def keep(self, mask: Tensor, channels_last: bool) -> None:
        for name in self.FIELDS:
            t = getattr(self, name)
            if t is not None:
                t = t[mask]
                setattr(self, name, to_channels_last(t) if channels_last else t)


def _loss_and_grad(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, loss: str,
                   dtype: torch.dtype | None, eot: int) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, per-sample loss, input gradient); with eot > 1 the gradient is the mean over eot
    passes (for randomised models) and the logits and loss are those of the last pass."""
    grad = None
    scale = fp16_loss_scale(dtype)
    x = x.detach()  # the caller's iterate stays a plain tensor (no graph through the momentum)
    for _ in range(eot):
        x.requires_grad_(True)
        with torch.enable_grad(), autocast(x.device, dtype):
            logits = model(x)
        z = logits.detach()
        if loss == "ce":
            value, dz = ops.temperature_ce_fwd_bwd(z, y, 1.0)
        else:
            value, dz = ops.dlr_loss_fwd_bwd(z, y, target)
        if scale is not None:
            dz = dz * scale
        (g,) = torch.autograd.grad(logits, x, dz)
        grad = g if grad is None else grad.add_(g)
        x = x.detach()
    if eot > 1:
        grad /= eot
    return z, value, grad


def _check_apgd_call(track: str, norm: str | ThreatModel, loss: str) -> ThreatModel:
    if track not in APGD_TRACKS:
        raise ValueError(f"APGD track must be one of {APGD_TRACKS}, got {track!r}")
    threat = threat_model(norm)
    if loss not in APGD_LOSSES:
        raise ValueError(f"APGD loss must be one of {APGD_LOSSES}, got {loss!r}")
    return threat


def _start_schedule(s: _State, eps: float) -> None:
    """The state after the first evaluation: best point and loss so far, step size 2 eps, and the
    counters of the first checkpoint period."""
    s.x_old, s.x_best, s.grad_best, s.loss_best = s.x.clone(), s.x.clone(), s.grad.clone(), s.loss
    # The reference counts the loss rises of the first period from a loss of 0, not from the loss
    # at the start (its history buffer is read at index -1 there); kept, for the same schedule.
    s.loss_last = torch.zeros_like(s.loss)
    s.rises = torch.zeros_like(s.loss)
    s.step = torch.full_like(s.loss, 2.0 * eps)
    s.best_at_check = s.loss.clone()
    s.halved_at_check = torch.ones_like(s.loss, dtype=torch.bool)


def _momentum_step(s: _State, step_: Callable, threat: ThreatModel, eps: float, first: bool) -> None:
    """z = P(x_k + eta * step direction), x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))
    (no momentum at step 0); s.x_old <- x_k, s.x <- x_{k+1}."""
    momentum = 1.0 if first else 0.75
    x_prev = s.x
    z = step_(x_prev.clone(), s.grad, s.x_nat, s.step, eps)
    x = threat.project(x_prev + momentum * (z - x_prev) + (1 - momentum) * (x_prev - s.x_old),
                       s.x_nat, eps)
    s.x_old, s.x = x_prev, x


def _record_progress(s: _State) -> None:
    """Counts a loss rise since the last iterate and keeps the best point, gradient and loss."""
    s.rises += (s.loss > s.loss_last).to(s.rises.dtype)
    s.loss_last = s.loss
    better = s.loss > s.loss_best
    s.x_best = torch.where(_shape(better, s.x), s.x, s.x_best)
    s.grad_best = torch.where(_shape(better, s.grad), s.grad, s.grad_best)
    s.loss_best = torch.where(better, s.loss, s.loss_best)


def _checkpoint(s: _State, period: int, rho: float) -> None:
    """The end of a period: a sample halves its step and restarts from its best point if its loss
    rose in at most rho of the period's steps, or if its step was not halved at the previous
    checkpoint and its best loss has not improved since."""
    stalled = s.rises <= period * rho
    no_progress = ~s.halved_at_check & (s.best_at_check >= s.loss_best)
    halve = stalled | no_progress
    s.halved_at_check, s.best_at_check = halve, s.loss_best
    s.step = torch.where(halve, s.step / 2, s.step)
    s.x = torch.where(_shape(halve, s.x), s.x_best, s.x)
    s.grad = torch.where(_shape(halve, s.grad), s.grad_best, s.grad)
    s.rises = torch.zeros_like(s.rises)


def apgd(model: nn.Module, x_nat: Tensor, y: Tensor, *, eps: float, norm: str | ThreatModel = "linf",
         steps: int = 100, loss: str = "ce", target: Tensor | None = None, rho: float = 0.75,
         eot: int = 1, amp: str | None = None, return_best_loss: bool = False,
         track: str = "first"):
    """One APGD run on (x_nat, y); loss "ce" or "dlr", and with `target` ([N] classes) the targeted
    DLR loss. The model must be in attack mode (see `attack_mode`). Returns AttackResult: x_adv is
    the first fooling iterate where one exists (a fooled sample then leaves the batch), else the
    start of the run; with track="last" (randomised models, the reference's rule) every sample runs
    all the steps and x_adv is the last iterate that fooled it; pred is the prediction there
    (success: some iterate fooled it). With return_best_loss, also the highest loss each sample
    reached (until it was fooled, with track="first"), as (result, best_loss)."""
    threat = _check_apgd_call(track, norm, loss)
    dtype = amp_dtype(amp)
    n = x_nat.shape[0]
    out_x, out_pred = x_nat.clone(), y.clone()
    out_success = torch.zeros(n, dtype=torch.bool, device=x_nat.device)
    out_best = torch.full((n,), float("nan"), device=x_nat.device)

    def finish():
        result = AttackResult(out_x, out_pred, out_success)
        return (result, out_best) if return_best_loss else result

    if n == 0:
        return finish()
    channels_last = is_channels_last(x_nat)
    check_at = checkpoints(steps)
    s = _State(index=torch.arange(n, device=x_nat.device), x_nat=x_nat, y=y, target=target,
               x=random_start(x_nat, eps, threat))
    out_x.copy_(s.x)

    def evaluate() -> bool:
        """Loss and gradient at s.x; records the samples it fools, and with track="first" drops
        them (True: none left)."""
        if channels_last:
            s.x = to_channels_last(s.x)
        logits, s.loss, s.grad = _loss_and_grad(model, s.x, s.y, s.target, loss, dtype, eot)
        pred = logits.argmax(dim=1)
        fooled, pred = confirm_fooled(model, s.x, s.y, pred != s.y, pred, dtype)
        if bool(fooled.any()):
            at = s.index[fooled]
            out_x[at], out_pred[at], out_success[at] = s.x[fooled], pred[fooled], True
            if track == "first":
                best = s.loss if s.loss_best is None else torch.maximum(s.loss, s.loss_best)
                out_best[at] = best[fooled].to(out_best.dtype)
                s.keep(~fooled, channels_last)
        return s.index.numel() == 0

    if evaluate():
        return finish()
    _start_schedule(s, eps)
    step_ = threat.step_op(ops)
    for i in range(steps):
        _momentum_step(s, step_, threat, eps, first=i == 0)
        if evaluate():
            break
        _record_progress(s)
        if i in check_at:
            _checkpoint(s, check_at[i], rho)
    if s.index.numel():
        out_best[s.index] = s.loss_best.to(out_best.dtype)
        if dtype is not None and track == "first":  # under amp: the best points, in float32
            pred32 = float32_predict(model, s.x_best)
            fooled = pred32 != s.y
            at = s.index[fooled]
            out_x[at], out_pred[at], out_success[at] = s.x_best[fooled], pred32[fooled], True
    return finish()


def target_ranking(model: nn.Module, x: Tensor, amp: str | None) -> Tensor:
    """[N, C] classes by decreasing clean logit: column k is the (k+1)-th most likely class, the
    target of APGD-T's and FAB-T's k-th target run."""
    with torch.no_grad(), autocast(x.device, amp_dtype(amp)):
        logits = model(x)
    return logits.float().argsort(dim=1, descending=True, stable=True)


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, amp: str | None) -> Tensor:
    """[N] classes the model predicts at x (one forward pass; a noisy one for randomised models)."""
    with autocast(x.device, amp_dtype(amp)):
        return model(x).argmax(dim=1)


def _check_apgd(eps, norm, steps, restarts, rho, eot, amp) -> ThreatModel:
    threat = check_member_settings("APGD", eps, norm, amp, steps=steps, restarts=restarts, eot=eot)
    if not 0 < rho <= 1:
        raise ValueError(f"rho must lie in (0, 1], got {rho!r}")
    return threat


class APGD(Attack):
    """APGD-CE (loss="ce") or APGD-DLR (loss="dlr"): `restarts` runs from random starts, each on
    the samples the earlier ones did not fool. eot > 1 averages the gradient over that many passes
    (AutoAttack's version for randomised defenses) and follows the reference's rule for randomised
    models (module docstring): the model keeps its train/eval mode, every image runs all the steps,
    and a fresh forward pass on the last fooling iterate decides whether it is fooled."""

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 100,
                 loss: str = "ce", restarts: int = 1, rho: float = 0.75, eot: int = 1,
                 amp: str | None = None):
        super().__init__(model)
        self.threat = _check_apgd(eps, norm, steps, restarts, rho, eot, amp)
        if loss not in APGD_LOSSES:
            raise ValueError(f"APGD loss must be one of {APGD_LOSSES}, got {loss!r}")
        self.name = f"apgd-{loss}"
        self.eps, self.norm, self.steps, self.loss = float(eps), self.threat.name, steps, loss
        self.restarts, self.rho, self.eot, self.amp = restarts, float(rho), eot, amp

    def params(self) -> dict:
        return {"eps": self.eps, "norm": self.norm, "steps": self.steps, "restarts": self.restarts,
                "rho": self.rho, "eot": self.eot, "amp": self.amp}

    @property
    def keeps_model_mode(self) -> bool:
        return self.eot > 1

    @property
    def min_classes(self) -> int:
        return self.classes_needed(loss=self.loss)

    @classmethod
    def classes_needed(cls, loss: str = "ce", **settings) -> int:
        return 3 if loss == "dlr" else 2  # the DLR loss reads the 3rd largest logit

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        if self.eot > 1:
            return self._run_randomised(x, y)

        def one_run(x_todo: Tensor, y_todo: Tensor, _) -> AttackResult:
            return apgd(self.model, x_todo, y_todo, eps=self.eps, norm=self.threat, steps=self.steps,
                        loss=self.loss, rho=self.rho, eot=self.eot, amp=self.amp)

        result = run_until_fooled(x, y, [one_run] * self.restarts)
        result.broken_by = None
        return result

    def _run_randomised(self, x: Tensor, y: Tensor) -> AttackResult:
        """The reference's `perturb` on a randomised model, scored as its `run_standard_evaluation`
        scores it: a noisy clean pass picks the images to attack; each restart attacks those no
        earlier iterate fooled, to the last step; x_adv is the last fooling iterate (the clean
        image where none fooled it); pred, and so success, come from a fresh pass at x_adv."""
        todo = _predict(self.model, x, self.amp) == y
        x_adv = x.clone()
        for _ in range(self.restarts):
            index = todo.nonzero().flatten()
            if index.numel() == 0:
                break
            x_todo = to_channels_last(x[index]) if is_channels_last(x) else x[index]
            run = apgd(self.model, x_todo, y[index], eps=self.eps, norm=self.threat, steps=self.steps,
                       loss=self.loss, rho=self.rho, eot=self.eot, amp=self.amp, track="last")
            fooled = index[run.success]
            x_adv[fooled] = run.x_adv[run.success]
            todo[fooled] = False
        pred = float32_predict(self.model, x_adv)
        return AttackResult(x_adv, pred, pred != y)


class APGDT(Attack):
    """APGD-T: APGD on the targeted DLR loss toward the 2nd, 3rd, ... most likely class of the
    clean image (`targets` of them, at most C - 1), `restarts` runs each; every run attacks only
    the samples no earlier one fooled, and a sample is fooled when it is misclassified."""

    name = "apgd-t"
    min_classes = 4  # the targeted DLR loss reads the 4th largest logit

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 100,
                 targets: int = 9, restarts: int = 1, rho: float = 0.75, amp: str | None = None):
        super().__init__(model)
        self.threat = _check_apgd(eps, norm, steps, restarts, rho, 1, amp)
        check_count(targets, "targets")
        self.eps, self.norm, self.steps, self.targets = float(eps), self.threat.name, steps, targets
        self.restarts, self.rho, self.amp = restarts, float(rho), amp

    def params(self) -> dict:
        return {"eps": self.eps, "norm": self.norm, "steps": self.steps, "targets": self.targets,
                "restarts": self.restarts, "rho": self.rho, "amp": self.amp}

    def target_classes(self, x: Tensor, y: Tensor) -> Tensor:
        """[N, K]: each image's target classes in the order they are tried, here the 2nd, 3rd, ...
        most likely classes of the clean image (K = min(targets, C - 1))."""
        ranking = target_ranking(self.model, x, self.amp)
        check_dlr_classes(ranking.shape[1], targeted=True)
        return ranking[:, 1:1 + min(self.targets, ranking.shape[1] - 1)]

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        chosen = self.target_classes(x, y)

        def toward(rank: int):
            def one_run(x_todo: Tensor, y_todo: Tensor, index: Tensor) -> AttackResult:
                with self._timed(rank):
                    return apgd(self.model, x_todo, y_todo, eps=self.eps, norm=self.threat,
                                steps=self.steps, loss="dlr", target=chosen[index, rank], rho=self.rho,
                                amp=self.amp)
            return one_run

        runs = [toward(rank) for rank in range(chosen.shape[1]) for _ in range(self.restarts)]
        result = run_until_fooled(x, y, runs)
        result.broken_by = None if self.broken_at_unit != "member" else result.broken_by // self.restarts
        return result

    def _timed(self, rank: int):
        return contextlib.nullcontext()
