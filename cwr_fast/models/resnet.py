"""torchvision's ResNet-50 (the ImageNet model), with any number of input channels."""

from __future__ import annotations

from torch import nn


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    import torchvision  # imported here: it takes seconds, and only this model needs it

    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
