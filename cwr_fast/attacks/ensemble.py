"""Attacks run one after another, each only on the samples that every earlier one failed on: the
rule of AutoAttack for its members, and of APGD-T and FAB-T for their target classes and restarts.
A sample counts as fooled if any run fools it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from cwr_fast.attacks.model_mode import is_channels_last, to_channels_last
from cwr_fast.attacks.result import AttackResult

Run = Callable[[Tensor, Tensor, Tensor], AttackResult]  # (x, y, index into the batch) -> result


def run_until_fooled(x: Tensor, y: Tensor, runs: Iterable[Run]) -> AttackResult:
    """Runs each of `runs` on the samples no earlier run fooled (their images, labels and positions
    in the batch). Returns the combined AttackResult with broken_by = the index of the run that
    fooled each sample first (-1: none; then x_adv is x and pred is y)."""
    n = x.shape[0]
    x_adv, pred = x.clone(), y.clone()
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    broken_by = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    todo = torch.arange(n, device=x.device)
    channels_last = is_channels_last(x)
    for k, run in enumerate(runs):
        if todo.numel() == 0:
            break
        x_todo = x[todo]
        result = run(to_channels_last(x_todo) if channels_last else x_todo, y[todo], todo)
        hit = result.success
        at = todo[hit]
        x_adv[at], pred[at], success[at], broken_by[at] = result.x_adv[hit], result.pred[hit], True, k
        todo = todo[~hit]
    return AttackResult(x_adv, pred, success, broken_by)
