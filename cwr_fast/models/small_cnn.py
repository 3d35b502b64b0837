"""A small CNN for MNIST-sized images: 2 conv + 2 fc, fast enough to train and attack on a CPU."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """conv(16, 3x3) - pool - conv(32, 3x3) - pool - fc(128) - fc(num_classes).

    Made for 28x28 inputs (the feature map is then 5x5); other sizes are pooled to 5x5.
    """

    feature_size = 5

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3)
        self.conv2 = nn.Conv2d(width, 2 * width, 3)
        self.fc1 = nn.Linear(2 * width * self.feature_size ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        if x.shape[-2:] != (self.feature_size, self.feature_size):
            x = F.adaptive_avg_pool2d(x, self.feature_size)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
