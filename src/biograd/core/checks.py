"""Validation helpers for rule hyper-parameters: each raises :class:`ConfigError` naming the
rule, the parameter, the bad value and what is allowed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from biograd.core.errors import ConfigError


def positive(rule: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` must be a real number > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"rule {rule!r}: {name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"rule {rule!r}: {name} must be {bound}, got {value!r}")
    return float(value)


def positive_int(rule: str, name: str, value: Any, *, allow_zero: bool = False) -> int:
    """``value`` must be an integer >= 1 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"rule {rule!r}: {name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ConfigError(f"rule {rule!r}: {name} must be {bound}, got {value!r}")
    return value


def flag(rule: str, name: str, value: Any) -> bool:
    """``value`` must be True or False (not a truthy number or string)."""
    if not isinstance(value, bool):
        raise ConfigError(f"rule {rule!r}: {name} must be True or False, got {value!r}")
    return value


def choice(rule: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"rule {rule!r}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def per_layer(rule: str, name: str, value: Any, n: int, *, allow_zero: bool = False) -> list[float]:
    """A scalar broadcast to ``n`` layers, or a list of exactly ``n`` positive numbers."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ConfigError(
            f"rule {rule!r}: {name} has {len(values)} entries but the model has {n} layers; "
            f"give one value per layer or a single scalar"
        )
    return [positive(rule, f"{name}[{i}]", v, allow_zero=allow_zero) for i, v in enumerate(values)]
