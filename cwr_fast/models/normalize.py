"""Normalisation inside the model, so that attacks work in [0, 1] pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class NormalizedModel(nn.Module):
    """`NormalizedModel(net, mean, std)(x) == net((x - mean) / std)` for images x in [0, 1].

    mean and std are per-channel sequences (or None for the identity). They are stored as
    buffers, so a checkpoint of the wrapper carries the normalisation it was trained with.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.net = net
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is None:
            mean, std = [0.0], [1.0]
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.dim() != 1 or mean_t.shape != std_t.shape:
            raise ValueError(f"mean and std must be per-channel lists of the same length, got "
                             f"{list(mean)} and {list(std)}")
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
