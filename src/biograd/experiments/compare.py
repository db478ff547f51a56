"""``compare(config)``: several rules x seeds on one model and dataset.

One training per (rule, seed) in ``<out_dir>/<run_name>/<rule>-s<seed>/`` (full run
directories), backprop first and always included; then each rule's step cost against backprop
(:mod:`biograd.experiments.cost_probe`, ``cost_repeats`` paired blocks), ``compare.md`` (a
Markdown table), ``compare.json``, ``learning_curves.png`` and ``angles.png`` (plots read the run
directories).
Finished sub-runs whose saved config matches are reused; interrupted ones are resumed
(:mod:`biograd.experiments.jobs`, which also runs them ``jobs`` at a time).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from biograd import rundir
from biograd.core.errors import ConfigError
from biograd.core.registry import REFERENCE_RULE, list_rules, rule_info
from biograd.experiments.compare_table import table
from biograd.experiments.cost_probe import step_cost_ratios
from biograd.experiments.jobs import check_reusable, dry_build, run_all
from biograd.plots import angle_curves, learning_curves
from biograd.runner.config import Config
from biograd.runner.models import model_kind
from biograd.runner.train import run_dir_of, tensorboard_writer
from biograd.runner.validate import check_names
from biograd.runner.yamlio import write_yaml


def compare_dir_of(cfg: Config) -> Path:
    """``out_dir/run_name`` (default name: ``compare-model-dataset``)."""
    return Path(cfg.out_dir) / (cfg.run_name or f"compare-{cfg.model}-{cfg.dataset}")


def rules_to_run(cfg: Config) -> tuple[list[str], dict[str, str]]:
    """Rules to train (backprop first) and the rules skipped with the reason."""
    kind = model_kind(cfg.model)
    requested = list_rules() if cfg.rules == "all" else list(dict.fromkeys(cfg.rules))
    names = [REFERENCE_RULE] + [n for n in requested if n != REFERENCE_RULE]
    skipped = {n: f"does not support {kind} models" for n in names
               if kind not in rule_info(n).supports}
    if cfg.rules != "all" and skipped:
        name, why = next(iter(skipped.items()))
        raise ConfigError(f"config key 'rules': rule {name!r} {why} (model {cfg.model!r})")
    return [n for n in names if n not in skipped], skipped


def sub_config(cfg: Config, rule: str, seed: int, out: Path) -> Config:
    """The single-run config of ``rule`` with ``seed`` inside the comparison ``out``."""
    return cfg.replace(**{
        **cfg.config_per_rule.get(rule, {}), "rule": rule, "seed": seed,
        "rule_args": dict(cfg.rule_args_per_rule.get(rule, {})), "out_dir": str(out),
        "run_name": f"{rule}-s{seed}", "rules": [rule], "seeds": [seed],
        "rule_args_per_rule": {}, "config_per_rule": {},
        "cost_repeats": Config().cost_repeats,  # compare-only: the default, whatever the compare's
    })


def compare(cfg: Config, *, overwrite: bool = False, jobs: int = 1) -> dict[str, Any]:
    """Train every requested rule for every seed (``jobs`` runs at a time in parallel
    processes); write and return the comparison."""
    check_names(cfg)
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise ConfigError("biograd compare does not run under torchrun (WORLD_SIZE > 1): "
                          "launch each `biograd train` with torchrun, or compare without it")
    if cfg.rule_args:
        raise ConfigError(
            "config key 'rule_args' applies to one rule; in a comparison give each rule's "
            "hyper-parameters under rule_args_per_rule: {rule: {name: value}}"
        )
    tensorboard_writer(cfg)
    names, skipped = rules_to_run(cfg)
    out = compare_dir_of(cfg)
    subs = {n: [sub_config(cfg, n, s, out) for s in cfg.seeds] for n in names}
    for i, runs in enumerate(subs.values()):
        check_names(runs[0])
        dry_build(runs[0], warm_up_steps=20 if i == 0 and jobs == 1 else 0)  # 1st timed run
    if out.exists() and overwrite:
        shutil.rmtree(out)
    for runs in subs.values():
        for sub in runs:
            check_reusable(sub)
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / rundir.CONFIG, cfg.to_dict())
    order = [(name, sub) for name, runs in subs.items() for sub in runs]
    done = run_all([sub for _, sub in order], jobs,
                   lambda i: f"[compare] {order[i][0]} seed {order[i][1].seed}")
    results: dict[str, list[dict[str, Any]]] = {}
    for (name, _), (summary, _) in zip(order, done, strict=True):
        results.setdefault(name, []).append(summary)
    probed = {n: runs[0] for n, runs in subs.items()
              if any(s.get("status") != "failed" for s in results.get(n, []))}
    if cfg.cost_repeats:
        print(f"[compare] step cost against backprop ({cfg.cost_repeats} paired blocks per "
              f"rule)", file=sys.stderr, flush=True)
    costs = step_cost_ratios(probed, cfg.cost_repeats)
    text = table(cfg, results, skipped, costs)
    (out / "compare.md").write_text(text)
    rundir.write_json(out / "compare.json", {"results": results, "skipped": skipped,
                                             "step_cost_ratio": costs})
    groups = {n: [run_dir_of(s) for s in runs] for n, runs in subs.items()}
    title = f"{cfg.model} on {cfg.dataset}"
    learning_curves(groups, out / "learning_curves.png", title=title)
    angle_curves(groups, out / "angles.png", title=title)
    print(text)
    return {"dir": str(out), "results": results, "skipped": skipped, "table": text}
