"""Model factory table for the runner: a model name -> a builder taking the dataset's
``input_shape`` (C, H, W) and ``num_classes`` plus ``model_args`` from the config.

To add a model, write a builder and add a :class:`ModelEntry` to :data:`MODELS`; ``kind`` is the
registry's model kind (``mlp`` / ``cnn`` / ``resnet`` / ``graph``), matched against each rule's
``supports`` by ``biograd compare``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from biograd import models
from biograd.core.errors import ConfigError, close_matches, unknown_name

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelEntry:
    """A builder ``(input_shape, num_classes, **model_args) -> nn.Module`` and its kind."""

    build: Callable[..., nn.Module]
    kind: str


def _mlp(
    input_shape: Shape, num_classes: int, hidden: list[int] | None = None, activation: str = "tanh"
) -> nn.Module:
    """``Flatten -> [Linear -> act] x len(hidden) -> Linear``; default hidden [256, 256]."""
    hidden = [256, 256] if hidden is None else list(hidden)
    return models.mlp(math.prod(input_shape), hidden, num_classes, activation=activation)


def _lenet(input_shape: Shape, num_classes: int, **kw: Any) -> nn.Module:
    if "channels" in kw:
        kw["channels"] = tuple(kw["channels"])
    return models.lenet(input_shape[0], num_classes, image_size=input_shape[-1], **kw)


def _simple_vgg(input_shape: Shape, num_classes: int, **kw: Any) -> nn.Module:
    return models.simple_vgg(input_shape[0], num_classes, image_size=input_shape[-1], **kw)


def _resnet18(input_shape: Shape, num_classes: int, **kw: Any) -> nn.Module:
    return models.resnet18(input_shape[0], num_classes, **kw)


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(_mlp, "mlp"),
    "lenet": ModelEntry(_lenet, "cnn"),
    "simple_vgg": ModelEntry(_simple_vgg, "cnn"),
    "resnet18": ModelEntry(_resnet18, "resnet"),
}

_TARGETS: dict[str, Callable[..., nn.Module]] = {
    "lenet": models.lenet,
    "simple_vgg": models.simple_vgg,
    "resnet18": models.resnet18,
}
_FIXED = {"input_shape", "num_classes", "in_channels", "image_size", "in_features", "kw"}


def model_args_of(name: str) -> list[str]:
    """The ``model_args`` keys model ``name`` accepts."""
    fn = _TARGETS.get(name, MODELS[name].build)
    return [p for p in inspect.signature(fn).parameters if p not in _FIXED]


def model_kind(name: str) -> str:
    """The registry model kind of model ``name``."""
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name].kind


def build_model(
    name: str, input_shape: Shape, num_classes: int, model_args: dict[str, Any] | None = None
) -> nn.Module:
    """Build model ``name`` for data of ``input_shape`` with ``num_classes`` outputs."""
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    args = dict(model_args or {})
    valid = model_args_of(name)
    for key in args:
        if key not in valid:
            raise ConfigError(
                f"config key 'model_args.{key}': model {name!r} has no argument {key!r}."
                f"{close_matches(key, valid)} Its arguments: {', '.join(valid)}."
            )
    return MODELS[name].build(tuple(input_shape), num_classes, **args)
