"""``compare(config)``: several rules x seeds on one model and dataset.

One training per (rule, seed) in ``<out_dir>/<run_name>/<rule>-s<seed>/`` (full run
directories), backprop first and always included; then each rule's step cost against backprop
(:mod:`biograd.runner.cost_probe`, ``cost_repeats`` paired blocks), ``compare.md`` (a Markdown
table), ``compare.json``, ``learning_curves.png`` and ``angles.png`` (plots read the run
directories).
Finished sub-runs whose saved config matches are reused; interrupted ones are resumed.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from biograd.core.errors import ConfigError
from biograd.core.registry import list_rules, rule_info
from biograd.metrics.cost import training_step
from biograd.plots import angle_curves, learning_curves
from biograd.runner import rundir
from biograd.runner.config import Config, same_config
from biograd.runner.cost_probe import rule_on_first_batch, step_cost_ratios
from biograd.runner.data import load_data
from biograd.runner.device import fork_rng, resolve_device
from biograd.runner.models import model_kind
from biograd.runner.report import table
from biograd.runner.train import run_dir_of, tensorboard_writer, train
from biograd.runner.validate import check_names
from biograd.runner.yamlio import read_yaml, write_yaml

FINISHED = ("completed", "diverged")


def compare_dir_of(cfg: Config) -> Path:
    """``out_dir/run_name`` (default name: ``compare-model-dataset``)."""
    return Path(cfg.out_dir) / (cfg.run_name or f"compare-{cfg.model}-{cfg.dataset}")


def rules_to_run(cfg: Config) -> tuple[list[str], dict[str, str]]:
    """Rules to train (backprop first) and the rules skipped with the reason."""
    kind = model_kind(cfg.model)
    requested = list_rules() if cfg.rules == "all" else list(dict.fromkeys(cfg.rules))
    names = ["backprop"] + [n for n in requested if n != "backprop"]
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


def dry_build(sub: Config, warm_up_steps: int = 0) -> None:
    """Build each rule once so bad per-rule settings fail before any run; ``warm_up_steps``
    untimed steps on a throw-away copy take one-time costs (allocator, lazy init) out of the
    first timed run, so backprop's seconds are not inflated by running first."""
    device = resolve_device(sub.device)
    with fork_rng(device):
        step = training_step(*rule_on_first_batch(sub, load_data(sub), device))
        for _ in range(warm_up_steps):
            step()


def check_reusable(sub: Config) -> None:
    """An existing sub-run must have been made with the same config (else nothing is reused
    silently and nothing is overwritten without --overwrite); keys added to biograd since it
    was saved count as equal when they hold their default (:func:`same_config`)."""
    path = run_dir_of(sub) / rundir.CONFIG
    if path.is_file() and not same_config(read_yaml(path), sub):
        raise ConfigError(
            f"sub-run {str(path.parent)!r} was trained with a different config; pass "
            f"--overwrite to retrain everything or choose another --run_name"
        )


def run_one(sub: Config) -> dict[str, Any]:
    """Train one sub-run, or reuse it: a finished run's summary is returned as it is (marked
    ``reused``), a started one resumes from its checkpoint (or restarts if it has none)."""
    out = run_dir_of(sub)
    if out.exists():
        summary_path = out / rundir.SUMMARY
        if summary_path.is_file():
            summary = rundir.read_json(summary_path)
            if summary.get("status") in FINISHED:
                return {**summary, "reused": True}
        if (out / rundir.CHECKPOINT).is_file():
            return train(sub, resume=True)
        return train(sub, overwrite=True)  # started but nothing to resume from
    return train(sub)


def compare(cfg: Config, *, overwrite: bool = False) -> dict[str, Any]:
    """Train every requested rule for every seed; write and return the comparison."""
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
        dry_build(runs[0], warm_up_steps=20 if i == 0 else 0)  # the first timed run
    if out.exists() and overwrite:
        shutil.rmtree(out)
    for runs in subs.values():
        for sub in runs:
            check_reusable(sub)
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / rundir.CONFIG, cfg.to_dict())
    results: dict[str, list[dict[str, Any]]] = {}
    for name, runs in subs.items():
        for sub in runs:
            print(f"[compare] {name} seed {sub.seed}", file=sys.stderr, flush=True)
            try:
                summary = run_one(sub)
            except ConfigError:
                raise
            except Exception as exc:  # a broken rule must not sink the whole comparison
                traceback.print_exc()
                summary = {"status": "failed", "rule": name, "seed": sub.seed,
                           "error": f"{type(exc).__name__}: {exc}"}
                if run_dir_of(sub).is_dir():
                    rundir.write_json(run_dir_of(sub) / rundir.SUMMARY, summary)
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
