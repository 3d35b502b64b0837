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
def attack_mode(model: nn.Module, channels_last: bool = False,
                eval_mode: bool = True) -> Iterator[nn.Module]:
    """Within the block: every module in eval mode and no parameter requires grad, so backward
    passes compute input gradients only; with channels_last, 4-D weights (convolutions) in the
    channels-last layout that oneDNN and cuDNN prefer. eval_mode=False leaves each module's
    train/eval flag as the caller set it (attacks on randomised models: a dropout left in train
    mode stays random, as the reference AutoAttack's version rand sees it). On exit, also on error,
    the caller's per-module training flags, per-parameter requires_grad flags and weight tensors
    are restored."""
    training = [(m, m.training) for m in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    relaid = []
    if eval_mode:
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


def bf16_speedup(model: nn.Module, sample: torch.Tensor, channels_last: bool = True,
                 repeats: int = 7) -> float:
    """The float32 time over the bf16-autocast time of the attacks' unit of work on this device:
    one forward pass and one input-gradient backward pass of `model` in attack mode on `sample`
    (images in [0, 1]); medians of `repeats` after a warm-up, the two precisions interleaved so
    that a busy moment of the machine slows both. > 1: bf16 is faster."""
    import statistics
    import time

    sample = to_channels_last(sample) if channels_last else sample

    def seconds(dtype) -> float:
        x = sample.detach().requires_grad_(True)
        started = time.perf_counter()
        with torch.autocast(sample.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        torch.autograd.grad(logits.float().sum(), x)
        if sample.device.type == "cuda":
            torch.cuda.synchronize(sample.device)
        return time.perf_counter() - started

    with attack_mode(model, channels_last):
        seconds(None), seconds(torch.bfloat16)  # warm-up: oneDNN builds its primitives
        pairs = [(seconds(None), seconds(torch.bfloat16)) for _ in range(repeats)]
    return statistics.median(f32 for f32, _ in pairs) / statistics.median(bf16 for _, bf16 in pairs)
