"""biograd: biologically plausible credit assignment under one API, checked against backprop.

Public API::

    rule = biograd.create_rule("kolen_pollack", model, loss="cross_entropy", **hparams)
    opt = torch.optim.SGD(rule.parameters(), lr=0.01)
    opt.zero_grad(); result = rule.step(x, y); opt.step()
"""

from biograd import data, metrics, models, rules  # noqa: F401  (rules: registers them all)
from biograd.core.errors import (
    BiogradError,
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    UnknownNameError,
    UnsupportedModelError,
)
from biograd.core.registry import RuleInfo, create_rule, list_rules, register_rule, rule_info
from biograd.core.rule import LearningRule, StepResult

__version__ = "0.1.0"

__all__ = [
    "BiogradError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InputError",
    "LearningRule",
    "RuleInfo",
    "StepResult",
    "UnknownNameError",
    "UnsupportedModelError",
    "create_rule",
    "data",
    "list_rules",
    "metrics",
    "models",
    "register_rule",
    "rule_info",
]
