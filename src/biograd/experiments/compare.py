"""``compare(grid)``: an experiment grid (:mod:`biograd.experiments.grid`: base config x arms
x seeds) trained on one model and dataset.

One training per (arm, seed) in ``<out_dir>/<name>/<arm>-s<seed>/`` (full run directories,
each with the ``fingerprint.json`` of :mod:`biograd.experiments.store`: git commit, code hash
of its rule, hardware, wall seconds; so a finished run can be moved into a paper's results
store and is checked there like the runs ``reproduce`` trained), the backprop arm first and
always included; then each arm's step cost against backprop
(:mod:`biograd.experiments.cost_probe`, ``cost_repeats`` paired blocks), ``compare.md`` (a
Markdown table), ``compare.json``, ``learning_curves.png`` and ``angles.png`` (plots read the run
directories). Finished sub-runs whose saved config matches are reused; interrupted ones are
resumed (:mod:`biograd.experiments.jobs`, which also runs them ``jobs`` at a time).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from biograd import rundir
from biograd.core.errors import ConfigError
from biograd.experiments.compare_table import table
from biograd.experiments.cost_probe import step_cost_ratios
from biograd.experiments.grid import Grid
from biograd.experiments.jobs import check_reusable, dry_build, run_all
from biograd.plots import angle_curves, learning_curves
from biograd.runner.train import run_dir_of, tensorboard_writer
from biograd.runner.validate import check_names
from biograd.runner.yamlio import write_yaml


def compare_dir_of(grid: Grid) -> Path:
    """``base.out_dir/name`` (default name: ``compare-MODEL-DATASET``)."""
    cfg = grid.base_config()
    return Path(cfg.out_dir) / (grid.name or f"compare-{cfg.model}-{cfg.dataset}")


def grid_record(grid: Grid) -> dict[str, Any]:
    """What ``compare``'s ``config.yaml`` holds: the grid as resolved (overrides applied)."""
    return {"base": grid.base_config().to_dict(), "seeds": grid.seeds, "name": grid.name,
            "cost_repeats": grid.cost_repeats,
            "arms": {a.label: {"rule": a.rule, "rule_args": a.rule_args, "config": a.config}
                     for a in grid.arms.values()}}


def compare(grid: Grid, *, overwrite: bool = False, jobs: int = 1) -> dict[str, Any]:
    """Train every arm of ``grid`` for every seed (``jobs`` runs at a time in parallel
    processes); write and return the comparison."""
    base = grid.base_config()
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise ConfigError("biograd compare does not run under torchrun (WORLD_SIZE > 1): "
                          "launch each `biograd train` with torchrun, or compare without it")
    tensorboard_writer(base)
    out = compare_dir_of(grid)
    runs = grid.runs(out)
    subs: dict[str, list] = {}
    for run in runs:
        subs.setdefault(run.arm, []).append(run.config)
    for i, configs in enumerate(subs.values()):
        check_names(configs[0])
        dry_build(configs[0], warm_up_steps=20 if i == 0 and jobs == 1 else 0)  # 1st timed
    if out.exists() and overwrite:
        shutil.rmtree(out)
    for run in runs:
        check_reusable(run.config)
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / rundir.CONFIG, grid_record(grid))
    done = run_all([run.config for run in runs], jobs,
                   lambda i: f"[compare] {runs[i].arm} seed {runs[i].seed}", record=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for run, (summary, _) in zip(runs, done, strict=True):
        results.setdefault(run.arm, []).append(summary)
    probed = {label: configs[0] for label, configs in subs.items()
              if any(s.get("status") != "failed" for s in results.get(label, []))}
    if grid.cost_repeats:
        print(f"[compare] step cost against backprop ({grid.cost_repeats} paired blocks per "
              f"arm)", file=sys.stderr, flush=True)
    costs = step_cost_ratios(probed, grid.cost_repeats)
    text = table(grid, results, costs)
    (out / "compare.md").write_text(text)
    rundir.write_json(out / "compare.json", {"results": results, "skipped": grid.skipped,
                                             "step_cost_ratio": costs})
    groups = {label: [run_dir_of(c) for c in configs] for label, configs in subs.items()}
    title = f"{base.model} on {base.dataset}"
    learning_curves(groups, out / "learning_curves.png", title=title)
    angle_curves(groups, out / "angles.png", title=title)
    print(text)
    return {"dir": str(out), "results": results, "skipped": grid.skipped, "table": text}
