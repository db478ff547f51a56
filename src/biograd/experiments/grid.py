"""The one experiment format of ``biograd compare`` and ``biograd reproduce`` (issue 14): an
experiment is a base run config x arms x seeds, each arm a rule with its hyper-parameters and
its own config overrides.

A comparison file (``biograd compare --config FILE``) is a grid::

    base:     run config keys shared by every run (what ``biograd train`` reads)
    arms:     all | [rule, ...] | {label: {rule: NAME, rule_args: {...}, config: {...}}}
              (``all``: every registered rule that supports the model; in a mapping a missing
              ``rule`` is the label itself)
    per_arm:  {label: {rule_args: {...}, config: {...}}}, merged into the arms above (how one
              rule gets its settings under ``arms: all``)
    seeds:    [0, 1, 2]
    name:     the comparison's folder under ``base.out_dir`` (default compare-MODEL-DATASET)
    cost_repeats: paired timing blocks per arm for the report's "x backprop" column (0: none)

A paper preset's experiment (:mod:`biograd.experiments.reproduce`) resolves to the same
:class:`Grid` (its base is the preset's base <- the budget's config <- the experiment's config,
its arms the preset's arms with their budget's config), and both expand it with
:meth:`Grid.runs`: each run's config is ``base <- arm.config <- --key=value overrides`` plus the
arm's rule and rule_args, the seed and the run directory ``OUT/LABEL-sSEED``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biograd.core.errors import ConfigError, close_matches
from biograd.core.registry import REFERENCE_RULE, list_rules, rule_info
from biograd.runner.config import FIELDS, Config, apply_override, from_dict
from biograd.runner.models import model_kind
from biograd.runner.validate import check_names, check_rule_args
from biograd.runner.yamlio import parse_scalar, read_yaml

#: the keys of a comparison file
GRID_KEYS = ("base", "arms", "per_arm", "seeds", "name", "cost_repeats")
#: run config keys every run gets from its arm and seed (never from base or an override)
ARM_FIXED = ("rule", "rule_args", "seed", "run_name")
_ARM_KEYS = ("rule", "rule_args", "config")
#: the flat comparison keys before issue 14, and where each went
#: (``seeds`` and ``cost_repeats`` kept their names as grid keys)
_MOVED = {"rules": "arms", "rule_args_per_rule": "per_arm.RULE.rule_args",
          "config_per_rule": "per_arm.RULE.config", "run_name": "name (the comparison's folder)"}
#: paired timing blocks per arm for the cost ratios of comparisons and paper reports
COST_REPEATS = 5


def merge(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """Deep merge (nested dicts merged key by key, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Arm:
    """One arm: its rule, the rule's hyper-parameters and its run config overrides."""

    label: str
    rule: str
    rule_args: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridRun:
    """One training of a grid: the arm's label, the seed and the resolved run config."""

    arm: str
    seed: int
    config: Config


@dataclass
class Grid:
    """An experiment: ``base`` run config x ``arms`` x ``seeds``; ``overrides`` (``key=value``)
    apply to every run after the arm's config."""

    base: dict[str, Any]
    arms: dict[str, Arm]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    name: str | None = None
    cost_repeats: int = COST_REPEATS
    skipped: dict[str, str] = field(default_factory=dict)  # label -> why (arms: all)

    def __post_init__(self) -> None:
        _check_config_keys("base", self.base)  # no rule, rule_args, seed or run_name there

    def base_config(self, out_dir: str | Path | None = None) -> Config:
        """The arm-free config (base <- overrides), e.g. for the model and dataset."""
        data = _overridden(self.base, self.overrides)
        return from_dict(data if out_dir is None else {**data, "out_dir": str(out_dir)})

    def run_config(self, label: str, seed: int, out_dir: str | Path) -> Config:
        """The config of ``label``'s run with ``seed`` in the folder ``out_dir``."""
        arm = self.arms[label]
        data = _overridden(merge(self.base, arm.config), self.overrides)
        return from_dict({**data, "rule": arm.rule, "rule_args": copy.deepcopy(arm.rule_args),
                          "seed": seed, "out_dir": str(out_dir), "run_name": f"{label}-s{seed}"})

    def runs(self, out_dir: str | Path) -> list[GridRun]:
        """Every (arm, seed) run, arm by arm in the grid's order."""
        return [GridRun(label, seed, self.run_config(label, seed, out_dir))
                for label in self.arms for seed in self.seeds]

    def reference(self) -> str | None:
        """The label of the backprop arm (the first one), or None."""
        return next((a.label for a in self.arms.values() if a.rule == REFERENCE_RULE), None)


def _overridden(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = merge(data, {})
    for item in overrides:
        key = item.removeprefix("--").split("=", 1)[0].split(".")[0]
        if key in ARM_FIXED:
            raise ConfigError(
                f"override {item!r}: config key {key!r} is set by each arm and seed; give it "
                "per arm (--arms.LABEL.rule_args.NAME=value in a comparison, or the preset's "
                "arms) or choose the seeds with --seeds")
        apply_override(out, item)
    return out


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _check_config_keys(where: str, data: dict[str, Any]) -> None:
    for key in data:
        if key not in FIELDS:
            raise ConfigError(f"{where}: unknown config key {key!r}."
                              f"{close_matches(key, FIELDS)} Valid keys: {', '.join(FIELDS)}.")
        if key in ARM_FIXED:
            raise ConfigError(f"{where}.{key}: {key!r} cannot be set there; each arm has its "
                              "rule and rule_args (arms.LABEL.rule_args), the seeds are the "
                              "grid's 'seeds'")


def make_arm(label: str, data: Any, where: str = "arms") -> Arm:
    """An :class:`Arm` from ``{rule, rule_args, config}`` (``rule`` defaults to ``label``)."""
    if not isinstance(label, str) or not label or "/" in label or label.startswith("."):
        raise ConfigError(f"{where}: arm label {label!r} must be a folder name (its runs go "
                          "to LABEL-sSEED)")
    data = _mapping(f"{where}.{label}", data)
    bad = sorted(set(data) - set(_ARM_KEYS))
    if bad:
        raise ConfigError(f"{where}.{label}: unknown key {bad[0]!r}; an arm has "
                          f"{', '.join(_ARM_KEYS)}")
    rule = data.get("rule", label)
    if not isinstance(rule, str):
        raise ConfigError(f"{where}.{label}.rule must be a rule name, got {rule!r}")
    config = _mapping(f"{where}.{label}.config", data.get("config"))
    _check_config_keys(f"{where}.{label}.config", config)
    return Arm(label, rule, dict(_mapping(f"{where}.{label}.rule_args", data.get("rule_args"))),
               dict(config))


def check_arm_names(grid: Grid) -> None:
    """Every arm's rule exists and its rule_args are the rule's hyper-parameters."""
    rules = list_rules()
    for arm in grid.arms.values():
        if arm.rule not in rules:
            raise ConfigError(f"arms.{arm.label}: unknown rule {arm.rule!r}."
                              f"{close_matches(arm.rule, rules)} Valid: {', '.join(rules)}.")
        check_rule_args(arm.rule, arm.rule_args, f"arms.{arm.label}.rule_args.{{}}")


def _arms(spec: Any, per_arm: dict[str, Any], model: str) -> tuple[dict[str, Arm], dict[str, str]]:
    """The arms of a comparison (backprop first, added when no arm runs it) and the rules
    ``arms: all`` skipped with the reason."""
    kind, skipped = model_kind(model), {}
    if spec == "all" or isinstance(spec, list):
        if spec == "all":
            names = list_rules()
        else:
            if not spec or not all(isinstance(n, str) for n in spec):
                raise ConfigError(f"grid key 'arms' must be 'all', a non-empty list of rule "
                                  f"names or a mapping label -> arm, got {spec!r}")
            names = list(dict.fromkeys(spec))
        data = {n: {"rule": n} for n in names}
    elif isinstance(spec, dict) and spec:
        data = dict(spec)
    else:
        raise ConfigError(f"grid key 'arms' must be 'all', a non-empty list of rule names or "
                          f"a mapping label -> arm, got {spec!r}")
    for label, extra in per_arm.items():
        if label not in data:
            raise ConfigError(f"per_arm.{label}: no arm {label!r}; arms: {', '.join(data)}")
        extra = _mapping(f"per_arm.{label}", extra)
        bad = sorted(set(extra) - {"rule_args", "config"})
        if bad:
            raise ConfigError(f"per_arm.{label}: unknown key {bad[0]!r}; valid: config, "
                              "rule_args")
        data[label] = merge(_mapping(f"arms.{label}", data[label]), extra)
    arms = {label: make_arm(label, value) for label, value in data.items()}
    if not any(a.rule == REFERENCE_RULE for a in arms.values()):
        arms = {REFERENCE_RULE: Arm(REFERENCE_RULE, REFERENCE_RULE), **arms}
    else:  # the reference first, so the others' step costs are timed against it
        ref = next(a for a in arms.values() if a.rule == REFERENCE_RULE)
        arms = {ref.label: ref, **{k: v for k, v in arms.items() if k != ref.label}}
    rules = set(list_rules())
    for arm in arms.values():
        if arm.rule in rules and kind not in rule_info(arm.rule).supports:
            if spec != "all":
                raise ConfigError(f"arms.{arm.label}: rule {arm.rule!r} does not support "
                                  f"{kind} models (model {model!r})")
            skipped[arm.label] = f"does not support {kind} models"
    return {k: v for k, v in arms.items() if k not in skipped}, skipped


def _set(data: dict[str, Any], item: str) -> None:
    """Apply ``key=value`` (dotted for nested) to the grid's own keys."""
    key, text = item.split("=", 1)
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
        node = child
    node[last] = parse_scalar(text)


def load_grid(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """A comparison grid from the YAML file ``path`` (None: an empty one, every key from the
    defaults and ``overrides``); ``--KEY=value`` overrides set the grid's own keys
    (``--seeds=[0,1]``, ``--arms=[backprop,dtp]``, ``--arms.LABEL.rule_args.NAME=value``,
    ``--name=...``, ``--cost_repeats=0``) or, for any run config key, every run
    (``--epochs=1``)."""
    data: dict[str, Any] = {} if path is None else read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"comparison file {str(path)!r} must hold a mapping")
    where = f"comparison file {str(path)!r}" if path is not None else "comparison"
    runs: list[str] = []
    for item in overrides:
        item = item.removeprefix("--")
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like --key=value")
        top = item.split("=", 1)[0].split(".")[0]
        if top in GRID_KEYS:
            _set(data, item)
        elif top in _MOVED:
            raise ConfigError(f"--{top} is not a comparison key any more: use {_MOVED[top]} "
                              "(docs/usage.md, 'Comparing rules')")
        else:
            runs.append(item)
    for key in data:
        if key not in GRID_KEYS:
            moved = f" ('{key}' is now {_MOVED[key]})" if key in _MOVED else ""
            hint = ("; a run config key goes under 'base'" if key in FIELDS and not moved
                    else "")
            raise ConfigError(f"{where}: unknown key {key!r}{moved}{hint}. A comparison has "
                              f"{', '.join(GRID_KEYS)} (docs/usage.md, 'Comparing rules')")
    base = dict(_mapping("base", data.get("base")))
    _check_config_keys("base", base)
    seeds = data.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"grid key 'seeds' must be a non-empty list of integers, got "
                          f"{seeds!r}")
    repeats = data.get("cost_repeats", COST_REPEATS)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 0:
        raise ConfigError(f"grid key 'cost_repeats' must be an integer >= 0 (0 measures no "
                          f"step cost), got {repeats!r}")
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise ConfigError(f"grid key 'name' must be a folder name, got {name!r}")
    grid = Grid(base, {}, list(seeds), runs, name, repeats)
    check_names(grid.base_config())  # model, dataset and loss exist (the rule is backprop's)
    model = grid.base_config().model
    grid.arms, grid.skipped = _arms(data.get("arms", "all"),
                                    _mapping("per_arm", data.get("per_arm")), model)
    check_arm_names(grid)
    return grid
