"""CIFAR-style ResNet-18 (He et al. 2016) with a width option, as used by P3 and P5."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from biograd.core.errors import ConfigError


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a (projected when needed) skip connection."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem (no max-pool), four stages of BasicBlocks, global average pool, Linear."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 64,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"resnet: width must be >= 1, got {width}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(c_in, c_out, 2 if (j == 0 and i > 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> ResNet:
    """CIFAR-style ResNet-18; ``width`` is the first stage's channels (64 in the paper)."""
    return ResNet((2, 2, 2, 2), in_channels, num_classes, width)
