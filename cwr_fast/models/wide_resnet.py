"""Wide ResNet (Zagoruyko & Komodakis, 2016); WRN-34-10 is the model of Madry et al., TRADES and
the class-wise robustness paper on CIFAR-10. Parameter names follow TRADES' implementation
(block1.layer.0.convShortcut, ...), so its published checkpoints load as they are."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1,
                                                                     stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class NetworkBlock(nn.Module):
    """A group of blocks (a module with `.layer`, as in TRADES, for checkpoint compatibility)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._make_group(widths[0], widths[1], n, stride=1)
        self.block2 = self._make_group(widths[1], widths[2], n, stride=2)
        self.block3 = self._make_group(widths[2], widths[3], n, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_group(in_planes: int, out_planes: int, n: int, stride: int) -> "NetworkBlock":
        return NetworkBlock([WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                            stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def wrn34_10(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(34, 10, num_classes, in_channels)
