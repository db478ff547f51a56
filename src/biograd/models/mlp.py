"""Multi-layer perceptron as a plain ``nn.Sequential`` block stack."""

from __future__ import annotations

from torch import nn

from biograd.core.errors import ConfigError, unknown_name

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """An activation module from its name (``tanh``, ``relu``, ``elu``, ...)."""
    if name not in ACTIVATIONS:
        raise unknown_name("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def mlp(
    in_features: int,
    hidden: list[int],
    out_features: int,
    activation: str = "tanh",
    flatten: bool = True,
) -> nn.Sequential:
    """``Flatten -> [Linear -> act] * len(hidden) -> Linear`` (logits, no output activation).

    P1 uses tanh hidden units with a softmax output (the softmax lives in the loss).
    """
    sizes = [in_features, *hidden, out_features]
    if any((not isinstance(s, int)) or s < 1 for s in sizes):
        raise ConfigError(f"mlp: layer sizes must be positive integers, got {sizes}")
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)
