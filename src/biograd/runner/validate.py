"""Name checks of a :class:`~biograd.runner.config.Config` against the registries (rules,
losses, models, datasets) and the rules' hyper-parameters; kept apart from config.py because
they import the registries (config.py itself stays import-light)."""

from __future__ import annotations

from typing import Any

import biograd.data
from biograd.core.errors import ConfigError, UnsupportedModelError, close_matches
from biograd.core.losses import LOSSES
from biograd.core.registry import list_rules, rule_info
from biograd.runner.config import Config
from biograd.runner.models import MODELS, model_kind


def check_names(cfg: Config) -> None:
    """Rule, loss, model, optimizer and dataset names must exist; rule_args must be the rule's
    hyper-parameters (ConfigError naming the key otherwise)."""
    tables = {
        "rule": list_rules(),
        "loss": list(LOSSES),
        "model": list(MODELS),
        "dataset": biograd.data.list_datasets(),
    }
    for key, valid in tables.items():
        value = getattr(cfg, key)
        if value not in valid:
            raise ConfigError(
                f"config key {key!r}: unknown {key} {value!r}.{close_matches(value, valid)} "
                f"Valid: {', '.join(valid)}."
            )
    check_rule_args(cfg.rule, cfg.rule_args, "config key 'rule_args.{}'")


def check_rule_args(rule: str, args: dict[str, Any], where: str) -> None:
    """Every key of ``args`` must be a hyper-parameter of ``rule`` (ConfigError naming
    ``where.format(KEY)``, the close matches and the rule's hyper-parameters, otherwise)."""
    hparams = rule_info(rule).hparams
    for arg in args:
        if arg not in hparams:
            raise ConfigError(
                f"{where.format(arg)}: rule {rule!r} has no hyper-parameter "
                f"{arg!r}.{close_matches(arg, hparams)} "
                f"Its hyper-parameters: {', '.join(hparams) or '(none)'}."
            )


def check_supported(cfg: Config) -> None:
    """``cfg.rule`` must support ``cfg.model``'s kind (UnsupportedModelError naming the rules
    that do, otherwise)."""
    kind = model_kind(cfg.model)
    info = rule_info(cfg.rule)
    if kind not in info.supports:
        able = [n for n in list_rules() if kind in rule_info(n).supports]
        raise UnsupportedModelError(
            f"rule {cfg.rule!r} does not support model {cfg.model!r} (a {kind} model; it "
            f"supports {', '.join(info.supports)}). Rules that support {kind} models: "
            f"{', '.join(able)}."
        )
