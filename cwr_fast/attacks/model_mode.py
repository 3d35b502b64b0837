"""Putting a model into attack mode (eval, no parameter gradients) and restoring it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def to_channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor with channels-last strides (N, C, H, W) -> (HWC, 1, WC, C); others as they are.

    Unlike .contiguous(memory_format=...), this also restrides tensors with one channel, whose
    plain strides count as channels-last contiguous but make convolutions pick the NCHW kernels."""
    if t.dim() != 4 or is_channels_last(t):
        return t
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a 4-D tensor with exactly the channels-last strides (HWC, 1, WC, C)."""
    if t.dim() != 4:
        return False
    _, c, h, w = t.shape
    return t.stride() == (h * w * c, 1, w * c, c)


@contextlib.contextmanager
def attack_mode(model: nn.Module, channels_last: bool = False) -> Iterator[nn.Module]:
    """Within the block: every module in eval mode and no parameter requires grad, so backward
    passes compute input gradients only; with channels_last, 4-D weights (convolutions) in the
    channels-last layout that oneDNN and cuDNN prefer. On exit, also on error, the caller's
    per-module training flags, per-parameter requires_grad flags and weight tensors are restored."""
    training = [(m, m.training) for m in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    relaid = []
    model.eval()
    for p, _ in requires_grad:
        p.requires_grad_(False)
    if channels_last:
        for p in model.parameters():
            relaid_data = to_channels_last(p.data)
            if relaid_data is not p.data:
                relaid.append((p, p.data))
                p.data = relaid_data
    try:
        yield model
    finally:
        for p, original in relaid:
            p.data = original
        for m, flag in training:
            m.training = flag
        for p, flag in requires_grad:
            p.requires_grad_(flag)
