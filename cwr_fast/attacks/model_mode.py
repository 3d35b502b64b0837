"""Putting a model into attack mode (eval, no parameter gradients) and restoring it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block: every module in eval mode and no parameter requires grad, so backward
    passes compute input gradients only. The caller's per-module training flags and per-parameter
    requires_grad flags are restored on exit, also on error."""
    training = [(m, m.training) for m in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in requires_grad:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in requires_grad:
            p.requires_grad_(flag)
