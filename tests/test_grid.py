"""The one experiment format (issue 14): a comparison file and a paper preset's experiment are
both a grid of base config x arms x seeds (:mod:`biograd.experiments.grid`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from biograd.core.errors import ConfigError
from biograd.experiments import store
from biograd.experiments.compare import compare
from biograd.experiments.grid import load_grid, merge
from biograd.experiments.reproduce import load_preset, plan
from biograd.papers import preset_path
from biograd.runner.train import run_dir_of

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"dataset": "synthetic", "dataset_args": {"n": 48}, "model_args": {"hidden": [6]},
         "batch_size": 16, "epochs": 1, "alignment_batch": 16, "eval_batch_size": 48}


def _file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_comparison_files_are_grids(name: str) -> None:
    grid = load_grid(ROOT / "configs" / name)
    assert grid.reference() == next(iter(grid.arms))  # backprop first
    assert grid.runs("out")


def test_arms_in_each_form_with_per_arm_settings(tmp_path: Path) -> None:
    grid = load_grid(_file(tmp_path, {
        "base": SMALL, "seeds": [1, 2], "name": "g",
        "arms": {"fa": {"rule": "feedback_alignment", "config": {"lr": 0.2}},
                 "fa_slow": {"rule": "feedback_alignment", "config": {"lr": 0.02}},
                 "kolen_pollack": {}},  # no rule: the label is the rule
        "per_arm": {"kolen_pollack": {"rule_args": {"weight_decay": 0.01}}}}))
    assert list(grid.arms) == ["backprop", "fa", "fa_slow", "kolen_pollack"]  # backprop added
    runs = {(r.arm, r.seed): r.config for r in grid.runs(tmp_path / "g")}
    assert len(runs) == 8
    assert runs[("fa", 1)].lr == 0.2 and runs[("fa_slow", 2)].lr == 0.02
    assert runs[("fa", 1)].rule == runs[("fa_slow", 1)].rule == "feedback_alignment"
    assert runs[("kolen_pollack", 2)].rule_args == {"weight_decay": 0.01}
    assert runs[("fa", 2)].run_name == "fa-s2" and runs[("fa", 2)].seed == 2
    assert runs[("backprop", 1)].lr == 0.01  # the default: base holds no lr
    # a --key=value override reaches every run, after the arm's own config
    over = load_grid(_file(tmp_path, {"base": SMALL, "arms": {"fa": {
        "rule": "feedback_alignment", "config": {"lr": 0.2}}}}), ["--lr=0.3", "--seeds=[4]"])
    assert {r.config.lr for r in over.runs(tmp_path)} == {0.3}
    assert {r.seed for r in over.runs(tmp_path)} == {4}
    listed = load_grid(None, ["--arms=[dtp, backprop]", "--model_args.hidden=[4]"])
    assert list(listed.arms) == ["backprop", "dtp"]


def test_a_comparison_file_resolves_to_the_runs_of_the_preset_it_copies(tmp_path: Path) -> None:
    """Written as a comparison file, P3's MLP experiment at the standard budget gives exactly
    the run configs `biograd reproduce` trains (one format for both)."""
    preset = load_preset("p3-weight-transport", preset_path("p3-weight-transport"))
    p = plan(preset, "standard", runs_dir=tmp_path)
    exp, bud = preset["experiments"]["mnist-mlp"], preset["budgets"]["standard"]
    base = merge(merge(merge(preset["base"], bud["config"]), exp["config"]), exp.get("standard"))
    arms = {label: {"rule": a["rule"], "rule_args": a.get("rule_args", {}),
                    "config": merge(a.get("config") or {}, a.get("standard"))}
            for label, a in preset["arms"].items()}
    grid = load_grid(_file(tmp_path, {"base": base, "arms": arms, "seeds": p.seeds}))
    out = tmp_path / "p3-weight-transport" / "standard" / "mnist-mlp"
    mine = {(r.arm, r.seed): r.config for r in grid.runs(out)}
    theirs = {(s.arm, s.seed): s.config for s in p.runs if s.experiment == "mnist-mlp"}
    assert mine == theirs and len(mine) == 15


@pytest.mark.parametrize("data, overrides, message", [
    ({"rules": ["backprop"]}, [], "unknown key 'rules' ('rules' is now arms)"),
    ({"lr": 0.1}, [], "unknown key 'lr'; a run config key goes under 'base'"),
    ({"config_per_rule": {}}, [], "'config_per_rule' is now per_arm.RULE.config"),
    ({}, ["--rule_args_per_rule.dtp.beta=1"], "use per_arm.RULE.rule_args"),
    ({}, ["--run_name=x"], "use name (the comparison's folder)"),
    ({}, ["--seed=3"], "config key 'seed' is set by each arm and seed"),
    ({"base": {"rule": "dtp"}}, [], "base.rule: 'rule' cannot be set there"),
    ({"base": {"lrr": 1}}, [], "base: unknown config key 'lrr'. Did you mean 'lr'"),
    ({"arms": []}, [], "grid key 'arms' must be 'all', a non-empty list"),
    ({"arms": "some"}, [], "grid key 'arms' must be 'all'"),
    ({"arms": ["backprop", "nope"]}, [], "arms.nope: unknown rule 'nope'"),
    ({"arms": {"a": {"rule": "dtp", "args": {}}}}, [], "arms.a: unknown key 'args'"),
    ({"arms": {"a/b": {"rule": "dtp"}}}, [], "arm label 'a/b' must be a folder name"),
    ({"arms": {"a": {"rule": "dtp", "config": {"seed": 1}}}}, [], "arms.a.config.seed"),
    ({"arms": {"a": {"rule": "dtp", "rule_args": {"betta": 1}}}}, [],
     "arms.a.rule_args.betta: rule 'dtp' has no hyper-parameter 'betta'. Did you mean 'beta'"),
    ({"arms": ["dtp"], "per_arm": {"dpt": {}}}, [], "per_arm.dpt: no arm 'dpt'"),
    ({"arms": ["dtp"], "per_arm": {"dtp": {"lr": 1}}}, [], "per_arm.dtp: unknown key 'lr'"),
    ({"seeds": []}, [], "grid key 'seeds' must be a non-empty list of integers"),
    ({"seeds": [0, "x"]}, [], "grid key 'seeds' must be a non-empty list of integers"),
    ({"cost_repeats": -1}, [], "grid key 'cost_repeats' must be an integer >= 0"),
    ({"name": "a/b"}, [], "grid key 'name' must be a folder name"),
    ({"base": {"model": "mpl"}}, [], "unknown model 'mpl'. Did you mean 'mlp'"),
    ({"arms": ["equilibrium_prop"], "base": {"model": "lenet"}}, [],
     "arms.equilibrium_prop: rule 'equilibrium_prop' does not support cnn models"),
])
def test_bad_grids_name_what_is_wrong(tmp_path: Path, data: dict, overrides: list[str],
                                      message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_grid(_file(tmp_path, data), overrides)


def test_two_arms_of_one_rule_train_side_by_side(tmp_path: Path) -> None:
    grid = load_grid(_file(tmp_path, {
        "base": {**SMALL, "out_dir": str(tmp_path / "runs")}, "name": "two", "cost_repeats": 0,
        "arms": {"backprop": {}, "fa_fast": {"rule": "feedback_alignment",
                                             "config": {"lr": 0.1}},
                 "fa_slow": {"rule": "feedback_alignment", "config": {"lr": 0.001}}}}))
    result = compare(grid)
    assert list(result["results"]) == ["backprop", "fa_fast", "fa_slow"]
    out = tmp_path / "runs" / "two"
    saved = {n: yaml.safe_load((out / f"{n}-s0" / "config.yaml").read_text())
             for n in ("fa_fast", "fa_slow")}
    assert (saved["fa_fast"]["lr"], saved["fa_slow"]["lr"]) == (0.1, 0.001)
    assert re.search(r"\| fa_slow \| \S+ \(feedback_alignment\) \| 1 \|", result["table"])
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert record["arms"]["fa_slow"] == {"rule": "feedback_alignment", "rule_args": {},
                                         "config": {"lr": 0.001}}
    assert record["seeds"] == [0] and record["base"]["batch_size"] == 16
    # every run carries the store's fingerprint, so it can join a results store as it is
    for run in grid.runs(out):
        fp = store.read_fingerprint(run_dir_of(run.config))
        assert fp is not None and fp["wall_seconds"] > 0 and not fp.get("adopted")
        assert store.stale_reasons(run_dir_of(run.config), run.config) == []
