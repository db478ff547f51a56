"""Run configuration: typed dataclass defaults <- YAML file <- ``--key=value`` overrides.

Every key is a field of :class:`Config`. Unknown keys (with close-match suggestions), values of
the wrong type and out-of-range values raise :class:`ConfigError` naming the key (DESIGN.md
principle 6). Nested dicts (``rule_args``, ``model_args``, ...) take dotted overrides:
``--rule_args.weight_decay=1e-4``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from biograd.core.errors import ConfigError, close_matches
from biograd.runner.device import BACKENDS, check_device_name
from biograd.runner.yamlio import parse_scalar, read_yaml

OPTIMIZERS = ("sgd", "adam")
#: keys a run's config.yaml held before issue 14 moved comparisons to their own grid format
#: (:mod:`biograd.experiments.grid`); only ``biograd compare`` read them, so a saved config
#: that holds them describes the same run without them
LEGACY_KEYS = ("rules", "seeds", "rule_args_per_rule", "config_per_rule", "cost_repeats")
#: keys added to :class:`Config` after results were first stored: a stored config or
#: measurement key without one meant its default, so they enter keys and hashes only when set
#: to something else (:func:`keyed`), and stored results stay current
ADDED_KEYS = ("warmup_steps", "stop_after_epochs")
SCHEDULERS = ("none", "cosine")


@dataclass
class Config:
    """Everything one training run (``biograd train``) reads; a comparison or a paper's
    experiment is a grid of these (:mod:`biograd.experiments.grid`)."""

    # what is trained
    rule: str = "backprop"
    rule_args: dict[str, Any] = field(default_factory=dict)
    loss: str = "cross_entropy"
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    # data
    dataset: str = "mnist"
    dataset_args: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    val_size: int | float = 0
    train_subset: int | None = None
    test_subset: int | None = None
    # optimisation
    epochs: int = 1
    batch_size: int = 64
    eval_batch_size: int = 1000
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    feedback_lr: float | None = None
    feedback_weight_decay: float | None = None
    feedback_epochs: int | None = None
    extra_feedback_epochs: int | None = None
    scheduler: str = "none"
    #: linear learning-rate warm-up over the first N optimizer steps (step t uses
    #: lr * (t + 1) / N, on top of the scheduler's rate); 0: none
    warmup_steps: int = 0
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    dist_backend: str = "auto"
    # run directory and logging
    out_dir: str = "runs"
    run_name: str | None = None
    alignment_every: int = 0
    alignment_batch: int = 256
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    max_loss: float = 1e4
    time_limit: float | None = None
    #: end the run after this many epochs of its schedule (a cosine schedule still spans
    #: ``epochs``; the summary says ``truncated``): the start of a longer run, e.g. a probe
    #: of its first epochs; null: train every epoch
    stop_after_epochs: int | None = None
    tensorboard: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        """A validated copy with ``changes`` applied."""
        return from_dict({**self.to_dict(), **changes})


_HINTS: dict[str, Any] = typing.get_type_hints(Config)
FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Does ``value`` (parsed YAML) fit the type ``hint``? (ints count as floats, not bools)"""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_matches(v, item) for v in value.values())
    return isinstance(value, hint)


def _unknown_key(key: str) -> ConfigError:
    if key in ("base", "arms", "per_arm", "name", *LEGACY_KEYS):
        return ConfigError(
            f"config key {key!r} belongs to a comparison, not to one run: run a comparison file "
            "with `biograd compare --config FILE` (its format: docs/usage.md, 'Comparing "
            "rules')")
    return ConfigError(
        f"unknown config key {key!r}.{close_matches(key, FIELDS)} "
        f"Valid keys: {', '.join(FIELDS)}."
    )


def _check_range(cfg: Config) -> None:
    def bad(key: str, rule: str) -> ConfigError:
        return ConfigError(f"config key {key!r} must be {rule}, got {getattr(cfg, key)!r}")

    for key in ("epochs", "batch_size", "eval_batch_size", "alignment_batch", "keep_checkpoints"):
        if getattr(cfg, key) < 1:
            raise bad(key, ">= 1")
    for key in ("lr", "max_loss"):
        if not getattr(cfg, key) > 0:
            raise bad(key, "> 0")
    for key in ("feedback_lr", "time_limit"):
        if getattr(cfg, key) is not None and not getattr(cfg, key) > 0:
            raise bad(key, "> 0 (or null)")
    for key in ("momentum", "weight_decay", "threads", "alignment_every", "checkpoint_every",
                "warmup_steps"):
        if getattr(cfg, key) < 0:
            raise bad(key, ">= 0")
    if cfg.stop_after_epochs is not None and cfg.stop_after_epochs < 1:
        raise bad("stop_after_epochs", ">= 1 (or null)")
    for key in ("feedback_weight_decay", "feedback_epochs", "extra_feedback_epochs"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 0:
            raise bad(key, ">= 0 (or null)")
    for key in ("train_subset", "test_subset"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise bad(key, ">= 1 (or null for the whole split)")
    if isinstance(cfg.val_size, float) and not 0 <= cfg.val_size < 1:
        raise bad("val_size", "a fraction in [0, 1) or a sample count")
    if cfg.val_size < 0:
        raise bad("val_size", ">= 0")
    if cfg.momentum > 0 and cfg.optimizer == "adam":
        raise bad("momentum", "0 with optimizer 'adam' (Adam has no momentum argument)")
    check_device_name(cfg.device)
    for key, choices in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                         ("dist_backend", BACKENDS)):
        if getattr(cfg, key) not in choices:
            raise ConfigError(
                f"config key {key!r}: unknown {key} {getattr(cfg, key)!r}."
                f"{close_matches(getattr(cfg, key), choices)} Valid: {', '.join(choices)}."
            )


def from_dict(data: dict[str, Any]) -> Config:
    """Validate keys, types and ranges of ``data`` and build a :class:`Config`."""
    for key, value in data.items():
        if key not in _HINTS:
            raise _unknown_key(key)
        if not _matches(value, _HINTS[key]):
            raise ConfigError(
                f"config key {key!r} must be {_type_name(_HINTS[key])}, "
                f"got {value!r} ({type(value).__name__})"
            )
    cfg = Config(**data)
    _check_range(cfg)
    return cfg


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``key=value`` (or ``a.b=value``) override to the nested dict ``data``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like --key=value")
    key, text = item.split("=", 1)
    key = key.strip().removeprefix("--")
    parts = key.split(".")
    if parts[0] not in _HINTS:
        raise _unknown_key(parts[0])
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])!r} is not a mapping")
        node = child
    node[parts[-1]] = parse_scalar(text)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- ``base`` (e.g. a saved run's config) <- YAML ``path`` <- ``overrides``."""
    data: dict[str, Any] = without_legacy(base or {})
    if path is not None:
        data.update(read_yaml(path))
    for item in overrides:
        apply_override(data, item)
    return from_dict(data)


_DEFAULTS = dataclasses.asdict(Config())


def keyed(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the :data:`ADDED_KEYS` that hold their default: what keys of
    stored results (measurement keys, config hashes) are made of."""
    defaults = _DEFAULTS
    return {k: v for k, v in data.items() if not (k in ADDED_KEYS and v == defaults[k])}


def without_legacy(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved ``config.yaml`` without :data:`LEGACY_KEYS`."""
    return {k: v for k, v in saved.items() if k not in LEGACY_KEYS}


def same_config(saved: dict[str, Any], current: Config) -> bool:
    """Whether a saved ``config.yaml`` describes the same run as ``current``: every saved key
    equal (:data:`LEGACY_KEYS` left out), and every key the saved file lacks (added in a later
    biograd) at its default."""
    saved = without_legacy(saved)
    now = current.to_dict()
    defaults = Config().to_dict()
    if set(saved) - set(now):
        return False
    return all(saved[k] == v if k in saved else v == defaults[k] for k, v in now.items())
