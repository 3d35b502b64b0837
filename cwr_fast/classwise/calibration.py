"""Inference-time class-wise calibration of the final layer, fitted against adaptive attacks: the
fitting lives here, in the evaluation layer, because `cwr_fast.evaluate --calibrate-split` fits one
as `cwr_fast.train --calibrate` does (the wrapper itself is cwr_fast.models.calibration).

Tian et al. (KDD 2021, "Analysis and Applications of Class-wise Robustness in Adversarial
Training") change inference so that the most vulnerable class gains, and an earlier version of
the paper relates a class's robustness to the norm of its classifier weight. OUR formulation of
that idea (not the paper's exact procedure) is a per-class affine calibration of the logits,

    logits'_k = s_k * z_k + b_k

(s_k scales class k's row of the classifier weight and its bias; b_k shifts its logit), fitted on
a HELD-OUT ADVERSARIAL validation split to raise the worst class's robust accuracy while the mean
robust accuracy and the mean clean accuracy drop by at most `max_mean_drop` each.

The calibration is part of the model: `ClasswiseCalibration` wraps it and keeps s and b as buffers
(`scale`, `bias` in the state dict), so every attack attacks the calibrated model (no gradient
masking by construction: the map is affine and differentiable). Fitting therefore alternates:

  (a) PGD (the run's eps, `steps` steps of 2.5 eps / steps, random start, last iterate) against
      the CURRENTLY calibrated model on the validation images; the uncalibrated logits z at the
      clean and adversarial points are kept (a pool that grows by one point per image per round);
  (b) greedy coordinate ascent on (b, and s if params="both") over the pooled points: an image
      counts as robust for a candidate only if the candidate classifies it correctly at the clean
      point and at EVERY pooled adversarial point (pessimistic, and it stops the fit from
      oscillating between attacks). A move changes one class's logit by a step of a grid scaled to
      the median clean logit margin; the best move is the one that raises (worst-class robust
      accuracy, then fewer classes at the worst level), ties broken by the mean, subject to the
      mean-drop bounds (relative to the uncalibrated model). It stops when no move raises the
      worst class.

Each round's calibration is then measured by re-attacking it (the next round's step (a)), and the
calibration kept is the best measured one (worst class first, then mean) among those whose
measured mean robust and clean accuracy respect the bound; the identity (round 0) always does, so
fitting never makes the validation numbers worse than the bound allows. Deterministic given `seed`.

Default params="bias": C numbers to fit on a small held-out set instead of 2C, and a shift is well
defined for logits (softmax is invariant to a common shift of all logits, and a per-class scale of
z_k acts differently on negative and positive logits, so its effect depends on that arbitrary
offset). params="both" also fits the scales (the weight-norm view of the earlier paper version).
"""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cwr_fast import runtime
from cwr_fast.attacks.attack import attack_mode
from cwr_fast.attacks.functional import perturb
from cwr_fast.errors import UsageError
from cwr_fast.models.calibration import ClasswiseCalibration
from cwr_fast.options import at_least, fraction, integer, number, one_of, option
from cwr_fast.runtime import amp_dtype, autocast, model_device

PARAMS = ("bias", "both")
OPTIONS_GROUP = "class-wise calibration (logits' = s*z + b, see cwr_fast.defenses.calibration)"


@dataclass
class CalibrationConfig:
    """The fit's settings, declared once for `cwr_fast.train --calibrate` and `cwr_fast.evaluate
    --calibrate-split` (see cwr_fast.options)."""

    calibrate_max_drop: float = option(
        0.01, "largest drop of the mean robust and of the mean clean accuracy on the calibration "
              "images the calibration may cost, a fraction (0.01 = 1 point)",
        OPTIONS_GROUP, type=number, check=fraction)
    calibrate_steps: int = option(10, "PGD steps of the calibration's attacks",
                                         OPTIONS_GROUP, type=integer, check=at_least(1))
    calibrate_rounds: int = option(3, "attack / fit rounds of the calibration", OPTIONS_GROUP,
                                   type=integer, check=at_least(1))
    calibrate_params: str = option("bias", "fit the logit biases only, or the per-class scales too",
                                   OPTIONS_GROUP, choices=PARAMS, check=one_of(*PARAMS))


def calibrate(model: nn.Module, loader, num_classes: int, eps: float, cfg: CalibrationConfig, *,
              amp: str | None, seed: int, device, log=None) -> tuple[ClasswiseCalibration, dict]:
    """fit_calibration with cfg's settings, the same on every process of a torchrun group (rank
    0's fit): what train and evaluate run. Returns (the calibrated model, the fit's info)."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"calibration: fitting logits' = s*z + b ({cfg.calibrate_params}) on {loader.num_samples} "
        f"held-out images against PGD-{cfg.calibrate_steps} at eps {eps:g}, mean drop <= "
        f"{cfg.calibrate_max_drop:g}")
    cal, info = fit_calibration(model, loader, num_classes, eps, steps=cfg.calibrate_steps,
                                max_mean_drop=cfg.calibrate_max_drop, rounds=cfg.calibrate_rounds,
                                amp=amp, seed=seed, device=device, progress=True, log=say,
                                params=cfg.calibrate_params)
    runtime.broadcast_buffers(cal)
    info["scale"], info["bias"] = cal.scale.tolist(), cal.bias.tolist()
    b, a = info["before"], info["after"]
    say(f"calibration: worst-class robust {100 * b['robust_worst']:.1f}% -> "
        f"{100 * a['robust_worst']:.1f}%, mean robust {100 * b['robust_mean']:.1f}% -> "
        f"{100 * a['robust_mean']:.1f}%, clean {100 * b['clean_mean']:.1f}% -> "
        f"{100 * a['clean_mean']:.1f}% (round {info['chosen_round']} kept)")
    return cal, info


_BIAS_STEPS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)   # in units of the median clean logit margin
_SCALE_STEPS = (0.03, 0.1, 0.2, 0.4)                   # log-scale steps


# ---- fitting ---------------------------------------------------------------------------------------

def _seed(seed: int, round_index: int, batch_index: int) -> int:
    return (seed * 1_000_003 + round_index * 7_919 + batch_index * 104_729
            + zlib.crc32(b"calibration")) % (2 ** 63)


def _attack_round(cal: ClasswiseCalibration, loader, num_classes: int, *, eps: float, steps: int,
                  alpha: float, amp, seed: int, round_index: int, device, need_clean: bool):
    """PGD against the calibrated model on every image: (uncalibrated clean logits or None,
    uncalibrated adversarial logits, labels), all [N, ...] on the CPU."""
    dtype = amp_dtype(amp)
    clean, adv, labels = [], [], []
    rng_devices = [device] if device.type == "cuda" else []
    with attack_mode(cal), torch.random.fork_rng(devices=rng_devices):
        for batch_index, (x, y) in enumerate(loader):
            x = x.to(device, non_blocking=True).float()
            y = y.to(device, non_blocking=True).long()
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise UsageError(f"labels must lie in [0, {num_classes}), got range "
                                 f"[{int(y.min())}, {int(y.max())}]")
            torch.manual_seed(_seed(seed, round_index, batch_index))
            x_adv = perturb(cal, x, y, eps=eps, alpha=alpha, steps=steps, track="final",
                            amp=amp).x_adv if eps > 0 else x
            with torch.no_grad(), autocast(device, dtype):
                if need_clean:
                    clean.append(cal.model(x).float().cpu())
                adv.append(cal.model(x_adv).float().cpu())
            labels.append(y.cpu())
    if not labels:
        raise UsageError("the calibration data is empty")
    return (torch.cat(clean) if need_clean else None), torch.cat(adv), torch.cat(labels)


class _Pool:
    """Uncalibrated logits at the clean points and at every round's adversarial points."""

    def __init__(self, clean: Tensor, y: Tensor, num_classes: int):
        self.z = [clean.double()]           # P tensors [N, C]; index 0 is the clean point
        self.y = y
        self.c = num_classes
        self.n = torch.bincount(y, minlength=num_classes).double()

    def add(self, adv: Tensor) -> None:
        self.z.append(adv.double())

    def stacked(self) -> Tensor:
        return torch.stack(self.z)          # [P, N, C]

    def per_class(self, correct: Tensor) -> Tensor:
        """[..., N] bool -> [..., C] accuracy per class (nan for an empty class)."""
        onehot = torch.nn.functional.one_hot(self.y, self.c).double()   # [N, C]
        return (correct.double() @ onehot) / self.n


def _stats(clean_acc: Tensor, robust_acc: Tensor) -> dict:
    valid = ~torch.isnan(robust_acc)
    r = robust_acc[valid]
    worst = float(r.min()) if r.numel() else float("nan")
    return {"clean_mean": float(clean_acc[valid].mean()), "robust_mean": float(r.mean()),
            "robust_worst": worst,
            "n_at_worst": int(((robust_acc - worst).abs() < 1e-12).sum())}


def _feasible(st: dict, ref: dict, max_mean_drop: float) -> bool:
    """Mean robust and mean clean accuracy at most max_mean_drop below the reference's."""
    return (st["robust_mean"] >= ref["robust_mean"] - max_mean_drop - 1e-9
            and st["clean_mean"] >= ref["clean_mean"] - max_mean_drop - 1e-9)


def _key(st: dict, feasible: bool) -> tuple:
    return (feasible, round(st["robust_worst"], 12), -st["n_at_worst"], round(st["robust_mean"], 12))


class _Fitter:
    """Greedy coordinate ascent over the pooled points (see the module docstring)."""

    def __init__(self, pool: _Pool, ref: dict, max_mean_drop: float, params: str, unit: float,
                 max_moves: int = 200):
        self.pool, self.ref, self.drop = pool, ref, max_mean_drop
        self.params, self.unit, self.max_moves = params, unit, max_moves

    def feasible(self, st: dict) -> bool:
        return _feasible(st, self.ref, self.drop)

    def evaluate(self, z: Tensor, s: Tensor, b: Tensor) -> dict:
        pred = (z * s + b).argmax(-1)                      # [P, N]
        correct = pred == self.pool.y
        clean = self.pool.per_class(correct[0])
        robust = self.pool.per_class(correct.all(0))
        return _stats(clean, robust)

    def _candidates(self, s: Tensor, k: int):
        """(new s_k, new b_k) moves of class k."""
        moves = []
        for d in _BIAS_STEPS:
            moves += [(None, d * self.unit), (None, -d * self.unit)]
        if self.params == "both":
            for d in _SCALE_STEPS:
                moves += [(float(s[k]) * float(torch.exp(torch.tensor(d))), None),
                          (float(s[k]) * float(torch.exp(torch.tensor(-d))), None)]
        return moves

    def fit(self, s: Tensor, b: Tensor) -> tuple[Tensor, Tensor, dict]:
        z = self.pool.stacked()
        y = self.pool.y
        c = self.pool.c
        s, b = s.clone().double(), b.clone().double()
        st = self.evaluate(z, s, b)
        key = _key(st, self.feasible(st))
        for _ in range(self.max_moves):
            logits = z * s + b                                  # [P, N, C]
            top2 = logits.topk(2, dim=-1)
            best = None
            for k in range(c):
                is_top = top2.indices[..., 0] == k
                other_val = torch.where(is_top, top2.values[..., 1], top2.values[..., 0])
                other_arg = torch.where(is_top, top2.indices[..., 1], top2.indices[..., 0])
                for new_s, db in self._candidates(s, k):
                    if new_s is not None:
                        new_k = z[..., k] * new_s + b[k]
                    else:
                        new_k = logits[..., k] + db
                    pred = torch.where(new_k > other_val, torch.full_like(other_arg, k), other_arg)
                    correct = pred == y
                    cst = _stats(self.pool.per_class(correct[0]), self.pool.per_class(correct.all(0)))
                    ckey = _key(cst, self.feasible(cst))
                    if ckey[:3] > key[:3] and (best is None or ckey > best[0]):
                        best = (ckey, k, new_s, db, cst)
            if best is None:
                break
            key, k, new_s, db, st = best
            if new_s is not None:
                s[k] = new_s
            else:
                b[k] += db
        return s.float(), b.float(), st


def _summary(clean_acc: Tensor, robust_acc: Tensor) -> dict:
    st = _stats(clean_acc, robust_acc)
    worst = int(torch.nan_to_num(robust_acc, nan=float("inf")).argmin())
    num = lambda v: None if v != v else float(v)  # noqa: E731
    return {"clean_acc": [num(v) for v in clean_acc.tolist()],
            "robust_acc": [num(v) for v in robust_acc.tolist()],
            "clean_mean": st["clean_mean"], "robust_mean": st["robust_mean"],
            "robust_worst": st["robust_worst"], "worst_class": worst}


def _check_fit(model, max_mean_drop, steps, rounds, eps, params) -> None:
    """fit_calibration's arguments, each refused with a UsageError (a ValueError) naming it."""
    if isinstance(model, ClasswiseCalibration):
        raise UsageError("the model is already calibrated: fit the calibration of the bare model")
    if not (isinstance(max_mean_drop, (int, float)) and 0 <= max_mean_drop <= 1):
        raise UsageError(f"max_mean_drop must be a fraction in [0, 1] (0.01 = 1 point of mean "
                         f"accuracy), got {max_mean_drop!r}")
    for name, value in (("steps", steps), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0 <= eps <= 1:
        raise UsageError(f"eps must lie in [0, 1], got {eps!r}")
    if params not in PARAMS:
        raise UsageError(f"params must be one of {PARAMS}, got {params!r}")


def _logit_unit(pool: _Pool) -> float:
    """The median positive clean logit margin: the unit of the fit's bias steps."""
    y = pool.y
    margin = pool.z[0].gather(1, y[:, None]).squeeze(1) - \
        pool.z[0].scatter(1, y[:, None], float("-inf")).max(1).values
    m = margin[margin > 0]
    unit = float(m.median()) if m.numel() else 1.0
    return unit if unit > 0 and unit == unit else 1.0


def _measure(cal: ClasswiseCalibration, pool: _Pool, adv: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class (clean, robust) accuracy of the current calibration against the attack just run."""
    s, b = cal.scale.detach().cpu().double(), cal.bias.detach().cpu().double()
    clean_ok = (pool.z[0] * s + b).argmax(1) == pool.y
    adv_ok = (adv.double() * s + b).argmax(1) == pool.y
    return pool.per_class(clean_ok), pool.per_class(clean_ok & adv_ok)


def _refit(cal: ClasswiseCalibration, fitter: _Fitter, num_classes: int, device) -> bool:
    """One fit over the pooled points, from the current calibration and from the identity; sets
    the better one and says whether it moved (else re-attacking would measure the same model)."""
    starts = [(cal.scale.cpu(), cal.bias.cpu())]
    if not cal.is_identity():
        starts.append((torch.ones(num_classes), torch.zeros(num_classes)))
    fits = [fitter.fit(s0, b0) for s0, b0 in starts]
    new_s, new_b, _ = max(fits, key=lambda f: _key(f[2], fitter.feasible(f[2])))
    if torch.equal(new_s.to(device), cal.scale) and torch.equal(new_b.to(device), cal.bias):
        return False
    cal.set_(new_s, new_b)
    return True


def _say_round(say, r: int, measured: dict, feasible: bool) -> None:
    say(f"[calibration] round {r}: worst-class robust {100 * measured['robust_worst']:.1f}%, "
        f"mean robust {100 * measured['robust_mean']:.1f}%, clean {100 * measured['clean_mean']:.1f}%"
        f"{'' if feasible else ' (exceeds the mean-drop bound)'}")


def fit_calibration(model: nn.Module, loader, num_classes: int, eps: float, steps: int = 10,
                    max_mean_drop: float = 0.01, rounds: int = 3, amp: str | None = None,
                    seed: int = 0, device=None, progress: bool = False, params: str = "bias",
                    alpha: float | None = None, log=None):
    """Fits a class-wise calibration of `model` on `loader` ((images in [0, 1], labels) batches of
    held-out data, iterated in the same order every time) against PGD-`steps` at `eps`.

    Returns (ClasswiseCalibration wrapping `model`, info): info has the settings, "before" and
    "after" (per-class clean/robust accuracy, means, worst class, measured by attacking the
    uncalibrated and the chosen calibrated model), "chosen_round", "history" (every round's
    measurement), "scale" and "bias". The model itself is not modified (its modes and
    requires_grad flags are restored)."""
    _check_fit(model, max_mean_drop, steps, rounds, eps, params)
    device = torch.device(device) if device is not None else model_device(model)
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    say = (log or (lambda msg: print(msg, file=sys.stderr, flush=True))) if progress else (lambda _msg: None)
    started = time.perf_counter()
    cal = ClasswiseCalibration(model, num_classes).to(device)
    pool, history, best = None, [], None
    for r in range(rounds + 1):
        clean, adv, y = _attack_round(cal, loader, num_classes, eps=eps, steps=steps, alpha=alpha,
                                      amp=amp, seed=seed, round_index=r, device=device,
                                      need_clean=pool is None)
        if pool is None:
            pool = _Pool(clean, y, num_classes)
        elif not torch.equal(y, pool.y):
            raise UsageError("the calibration loader must yield the same images in the same order "
                             "every time (use an unshuffled loader)")
        clean_acc, robust_acc = _measure(cal, pool, adv)
        measured = _summary(clean_acc, robust_acc)
        if r == 0:
            before, unit = measured, _logit_unit(pool)
            ref = {"clean_mean": measured["clean_mean"], "robust_mean": measured["robust_mean"]}
        feasible = _feasible(measured, ref, max_mean_drop)
        history.append({"round": r, "feasible": feasible, "robust_worst": measured["robust_worst"],
                        "robust_mean": measured["robust_mean"], "clean_mean": measured["clean_mean"],
                        "worst_class": measured["worst_class"],
                        "scale": cal.scale.tolist(), "bias": cal.bias.tolist()})
        _say_round(say, r, measured, feasible)
        key = _key(_stats(clean_acc, robust_acc), feasible)
        if best is None or key > best[0]:
            best = (key, r, cal.scale.clone(), cal.bias.clone(), measured)
        if r == rounds:
            break
        pool.add(adv)
        if not _refit(cal, _Fitter(pool, ref, max_mean_drop, params, unit), num_classes, device):
            break
    _, chosen, scale, bias, after = best
    cal.set_(scale, bias)
    info = {"method": "class-wise final-layer calibration logits' = s*z + b (ours, after Tian et "
                      "al., KDD 2021), fitted against PGD on held-out data",
            "params": params, "eps": eps, "steps": steps, "alpha": alpha, "rounds": rounds,
            "max_mean_drop": max_mean_drop, "seed": seed, "num_images": int(pool.y.numel()),
            "per_class_n": pool.n.long().tolist(), "logit_unit": unit,
            "before": before, "after": after, "chosen_round": chosen, "history": history,
            "scale": cal.scale.tolist(), "bias": cal.bias.tolist(),
            "seconds": round(time.perf_counter() - started, 3)}
    return cal, info
