"""Convolutional block stacks: a LeNet-style CNN (P2's MNIST model) and P2's 5-block
"simple VGG" (conv3x3 -> ELU -> maxpool2; channels 128,128,256,256,512; linear classifier)."""

from __future__ import annotations

from torch import nn

from biograd.core.errors import ConfigError
from biograd.models.mlp import make_activation


def lenet(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    channels: tuple[int, int] = (32, 64),
    hidden: int = 512,
    activation: str = "elu",
) -> nn.Sequential:
    """conv5x5 -> act -> maxpool2, twice, then Linear -> act -> Linear (LeNet-like, P2)."""
    if image_size % 4:
        raise ConfigError(f"lenet: image_size must be divisible by 4, got {image_size}")
    c1, c2 = channels
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, padding=2),
        make_activation(activation),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2),
        make_activation(activation),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * side * side, hidden),
        make_activation(activation),
        nn.Linear(hidden, num_classes),
    )


def simple_vgg(
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    width: float = 1.0,
    activation: str = "elu",
) -> nn.Sequential:
    """P2's 5-block VGG: channels (128,128,256,256,512) x ``width``, each conv3x3 -> ELU ->
    maxpool2, then a linear classifier. ``width`` < 1 shrinks it to fit a CPU."""
    if image_size % 32:
        raise ConfigError(f"simple_vgg: image_size must be divisible by 32, got {image_size}")
    if width <= 0:
        raise ConfigError(f"simple_vgg: width must be > 0, got {width}")
    chans = [max(1, round(c * width)) for c in (128, 128, 256, 256, 512)]
    layers: list[nn.Module] = []
    c_in = in_channels
    for c in chans:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), make_activation(activation), nn.MaxPool2d(2)]
        c_in = c
    side = image_size // 32
    layers += [nn.Flatten(), nn.Linear(c_in * side * side, num_classes)]
    return nn.Sequential(*layers)
