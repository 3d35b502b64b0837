"""Learning-rate and budget schedules, as pure functions of the global step.

A schedule's value at step s depends only on s and its settings, so a resumed run recomputes
exactly the same values; the checkpoint stores the settings and the step for checking.

    lr = LRSchedule("piecewise", base_lr=0.1, total_steps=E * S, steps_per_epoch=S,
                    milestones=[0.75 * E, 0.9 * E])
    for group in optimizer.param_groups: group["lr"] = lr(step)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SCHEDULES = ("piecewise", "cosine", "one-cycle", "constant")


class LRSchedule:
    """kind:
      piecewise  base_lr, times gamma at each milestone (in epochs; Madry et al., Rice et al.)
      cosine     base_lr * (1 + cos(pi * t)) / 2 over the run (Loshchilov & Hutter)
      one-cycle  linear 0 -> base_lr at peak * total, then linear -> 0 (Wong et al., fast AT)
      constant   base_lr
    warmup_epochs: linear ramp from 0 over the first epochs (piecewise, cosine, constant).
    """

    def __init__(self, kind: str, base_lr: float, total_steps: int, steps_per_epoch: int,
                 milestones: Sequence[float] = (), gamma: float = 0.1, warmup_epochs: float = 0.0,
                 peak: float = 0.4):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        if total_steps < 1 or steps_per_epoch < 1:
            raise ValueError("a schedule needs at least one step")
        if not 0 < peak < 1:
            raise ValueError(f"one-cycle peak must lie in (0, 1), got {peak}")
        self.kind, self.base_lr, self.total_steps = kind, float(base_lr), int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.milestones = sorted(float(m) for m in milestones)
        self.gamma, self.warmup_epochs, self.peak = float(gamma), float(warmup_epochs), float(peak)

    def __call__(self, step: int) -> float:
        lr = self._main(step)
        warmup = self.warmup_epochs * self.steps_per_epoch
        if warmup > 0 and self.kind != "one-cycle" and step < warmup:
            lr *= (step + 1) / warmup
        return lr

    def _main(self, step: int) -> float:
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "piecewise":
            epoch = step / self.steps_per_epoch
            return self.base_lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        t = min(step / self.total_steps, 1.0)
        if self.kind == "cosine":
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
        # one-cycle: np.interp([t], [0, peak, 1], [0, base, 0]) (Wong et al. 2020), never exactly 0
        # at step 0 so that the first step moves
        t = (step + 1) / self.total_steps
        if t <= self.peak:
            return self.base_lr * t / self.peak
        return self.base_lr * max(0.0, (1.0 - t) / (1.0 - self.peak))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "base_lr": self.base_lr, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "milestones": list(self.milestones),
                "gamma": self.gamma, "warmup_epochs": self.warmup_epochs, "peak": self.peak}

    def check_state_dict(self, state: dict) -> None:
        """Raises ValueError when a checkpoint's schedule differs from this one."""
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError("the checkpoint's learning-rate schedule differs from this run's: "
                             + ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items()))


def eps_at(step: int, eps: float, warmup_epochs: float, steps_per_epoch: int) -> float:
    """The training budget at `step`: linear ramp from eps / ramp_steps to eps over warmup_epochs
    (a standard aid for large budgets such as MNIST's 0.3), then eps."""
    ramp = warmup_epochs * steps_per_epoch
    if ramp <= 0 or step + 1 >= ramp:
        return float(eps)
    return float(eps) * (step + 1) / ramp
