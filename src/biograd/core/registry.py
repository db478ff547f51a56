"""Registry of learning rules: ``register_rule``, ``create_rule``, ``list_rules``, ``rule_info``.

Rules register themselves with a decorator in their own module under ``biograd.rules``;
``biograd.rules`` imports every module of its folder (so adding a rule is adding a file) and
``import biograd`` imports ``biograd.rules``, so the core never imports the rules.
Rules defined outside biograd register the same way once their module is imported; so that the
CLI and ``rules: all`` see them too, the registry imports, on first use, every module named
by an entry point of the group ``biograd.rules`` (an installed package) and every module listed
in the environment variable ``BIOGRAD_PLUGINS`` (comma-separated, importable from
``sys.path``, e.g. with ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from biograd.core.errors import ConfigError, UnsupportedModelError, close_matches, unknown_name
from biograd.core.losses import LossFn
from biograd.core.rule import LearningRule

#: Model kinds a rule can claim to support (contract tests build one model of each):
#: ``mlp`` / ``cnn`` block stacks, ``resnet`` (skips, BatchNorm), ``graph`` (any fx-traceable
#: module: RNN, LSTM, transformer blocks).
MODEL_KINDS = ("mlp", "cnn", "resnet", "graph")

#: The reference every comparison is made against (listed first, trained first, cost 1.00x):
#: exact backpropagation. Code that needs it names this constant, never the string.
REFERENCE_RULE = "backprop"


@dataclass(frozen=True)
class RuleInfo:
    """What a rule is and what it accepts."""

    name: str
    family: str
    paper: str
    supports: tuple[str, ...]
    hparams: dict[str, Any]
    summary: str
    cls: type[LearningRule]


_REGISTRY: dict[str, RuleInfo] = {}
_DISCOVERED = False


def _hparams(cls: type) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {
        n: p.default
        for n, p in sig.parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def register_rule(
    name: str, *, family: str, paper: str, supports: tuple[str, ...]
) -> Callable[[type[LearningRule]], type[LearningRule]]:
    """Class decorator registering a :class:`LearningRule` subclass under ``name``."""
    bad = [k for k in supports if k not in MODEL_KINDS]
    if bad:
        raise ValueError(f"rule {name!r}: unknown model kinds {bad}; use {MODEL_KINDS}")

    def deco(cls: type[LearningRule]) -> type[LearningRule]:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"rule name {name!r} is already registered")
        cls.name = name
        doc = (cls.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = RuleInfo(
            name, family, paper, tuple(supports), _hparams(cls), doc[0] if doc else "", cls
        )
        return cls

    return deco


#: Entry-point group and environment variable naming modules that register more rules.
ENTRY_POINT_GROUP = "biograd.rules"
PLUGINS_ENV = "BIOGRAD_PLUGINS"


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True  # before the plugins: a plugin may call list_rules() while importing
    try:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _import_plugin(ep.value.partition(":")[0],
                           f"entry point {ep.name!r} (group {ENTRY_POINT_GROUP!r})")
        for name in os.environ.get(PLUGINS_ENV, "").split(","):
            if name.strip():
                _import_plugin(name.strip(), f"{PLUGINS_ENV}={os.environ[PLUGINS_ENV]!r}")
    except ConfigError:
        _DISCOVERED = False  # asked again, the same error again
        raise


def _import_plugin(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of the plugin is reported the same way
        raise ConfigError(
            f"cannot import rule plugin module {module!r} named by {where}: "
            f"{type(exc).__name__}: {exc}. Check the module name and that its folder is on "
            f"sys.path (e.g. PYTHONPATH), or unset {PLUGINS_ENV}."
        ) from exc


def list_rules() -> list[str]:
    """Names of every registered rule: the reference (backprop) first, then by name."""
    _discover()
    names = list(_REGISTRY)
    return sorted(names, key=lambda n: (n != REFERENCE_RULE, n))


def rule_info(name: str) -> RuleInfo:
    """Family, paper, supported model kinds and hyper-parameters (with defaults) of a rule."""
    _discover()
    if name not in _REGISTRY:
        raise unknown_name("rule", name, _REGISTRY)
    return _REGISTRY[name]


def create_rule(
    name: str, model: nn.Module, loss: str | LossFn = "cross_entropy", **hparams: Any
) -> LearningRule:
    """Build the rule ``name`` around ``model``; unknown hyper-parameters are errors."""
    info = rule_info(name)
    unknown = [k for k in hparams if k not in info.hparams]
    if unknown:
        k = unknown[0]
        valid = ", ".join(info.hparams) or "(none)"
        raise ConfigError(
            f"rule {name!r} has no hyper-parameter {k!r}.{close_matches(k, info.hparams)} "
            f"Its hyper-parameters: {valid}."
        )
    try:
        return info.cls(model, loss=loss, **hparams)
    except UnsupportedModelError as exc:
        if getattr(exc, "alternatives_listed", False):  # a rule built inside another rule
            raise
        general = [n for n in list_rules() if "graph" in rule_info(n).supports and n != name]
        error = UnsupportedModelError(
            f"{exc} Other rules that accept arbitrary (torch.fx-traceable) models: "
            f"{', '.join(general)}; rule_info(name).supports lists each rule's model kinds."
        )
        error.alternatives_listed = True  # type: ignore[attr-defined]
        raise error from None
