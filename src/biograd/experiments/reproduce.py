"""A paper's preset resolved into runs and trained (``biograd reproduce``, issue 5; the papers
themselves live in :mod:`biograd.papers`).

A paper's preset (``biograd/papers/presets/PAPER.yaml``, package data) holds the paper's
architectures and hyper-parameters as ``biograd train`` config keys::

    base:        config keys shared by every run
    budgets:     quick / standard / full -> {seeds: N, config: {...}, settings: {...},
                 reason: why this budget can test the claims (written into the report)}
    experiments: name -> {config: {...}, quick: {...}, standard: {...}, full: {...},
                          arms: [subset], only: [budgets it runs in],
                          reference_accuracy: backprop's test accuracy % at which the
                          experiment counts as converged (claims on it are "not testable
                          at this budget" below it),
                          per_arm: {label: {rule_args: {...}, config: {...}}}}
    arms:        label -> {rule: NAME, rule_args: {...}, config: {...}, quick/standard/full:
                 {...} (the arm's config in one budget), role: NAME}
                 (``role``: how a paper's report finds the arm, whatever its label; without
                 it an arm is found by its rule, :meth:`paper_report.Context.arm`)
    settings:    paper-specific measurement settings (P4's relaxation batch, P5's repeats);
                 every paper also has ``cost_repeats`` (paired timing blocks per arm of the
                 report's cost ratios, default 5; 0 measures none)

Each run's config is ``base <- budget.config <- experiment.config <- experiment[budget] <-
arm.config <- arm[budget] <- experiment.per_arm[arm].config <- --key=value overrides`` plus
the arm's rule, its rule_args updated by ``experiment.per_arm[arm].rule_args`` (settings one
rule needs on one architecture only), and the seed. Runs are
ordinary run directories (``RUNS/PAPER/BUDGET/EXPERIMENT/ARM-sSEED``; RUNS is the results store
``results/`` for the standard budget, ``runs/reproduce`` otherwise) trained with
:func:`biograd.runner.train.train`; finished ones are reused and interrupted ones resumed, by
the same mechanism as ``biograd compare``, and each gets a ``fingerprint.json``: a stored run
whose config or rule code changed is moved to ``RUNS/PAPER/BUDGET/.stale/`` and retrained
(:mod:`biograd.experiments.store`). ``run_plan(train=False)`` trains nothing and
``train_minutes`` starts no run after that long: the runs not trained are reported
``missing``. The paper's module (:mod:`biograd.papers.p1_lra` ...) then reads or measures what
the runs do not (P4's relaxation, P5's exactness and cost; :meth:`paper_report.Context.measure`
stores them in ``RUNS/PAPER/BUDGET/_measurements/``) and writes the tables and claim check;
:mod:`biograd.experiments.paper_report` writes ``OUT/PAPER.md`` (standard budget;
``OUT/PAPER-quick.md`` etc. for the others, :mod:`biograd.experiments.summary`), its PNGs,
its JSON summary and ``OUT/README.md``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biograd.core.errors import ConfigError, unknown_name
from biograd.experiments import store
from biograd.experiments.grid import COST_REPEATS, Grid, make_arm, merge
from biograd.experiments.jobs import NOT_STARTED, dry_build, is_finished, run_all
from biograd.runner.config import Config
from biograd.runner.train import run_dir_of
from biograd.runner.validate import check_names
from biograd.runner.yamlio import parse_scalar, read_yaml

BUDGETS = ("quick", "standard", "full")
#: the results store: where ``standard`` runs are kept and committed (relative to the folder
#: ``biograd reproduce`` runs in, the repository root)
STORE = "results"
_TOP = {"paper", "title", "reference", "claim", "base", "budgets", "experiments", "arms",
        "settings"}
_BUDGET = {"seeds", "config", "settings", "reason"}
_EXPERIMENT = {"label", "config", "arms", "only", "per_arm", "reference_accuracy",
               *BUDGETS}
_PER_ARM = {"rule_args", "config"}
_ARM = {"rule", "rule_args", "config", "role", *BUDGETS}


@dataclass
class RunSpec:
    """One training of the plan: experiment, arm (label), seed and its resolved config."""

    experiment: str
    arm: str
    seed: int
    config: Config


@dataclass
class Plan:
    """A preset resolved for one budget: the runs and the paper-specific settings."""

    paper: str
    budget: str
    preset: dict[str, Any]
    seeds: list[int]
    runs: list[RunSpec]
    settings: dict[str, Any]
    experiments: dict[str, Config] = field(default_factory=dict)  # arm-free config per exp
    runs_dir: str = "runs/reproduce"  # root of the run directories (RUNS/PAPER/BUDGET/...)


def _check_keys(where: str, data: Any, allowed: set[str]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {where} must be a mapping, got {data!r}")
    bad = sorted(set(data) - allowed)
    if bad:
        raise ConfigError(f"preset {where}: unknown key {bad[0]!r}; valid: "
                          f"{', '.join(sorted(allowed))}")
    return data


def load_preset(paper: str, file: str | Path) -> dict[str, Any]:
    """Read and check the preset of ``paper`` from ``file``."""
    file = Path(file)
    if not file.is_file():
        raise ConfigError(f"preset {str(file)!r} not found; pass --preset FILE or leave it out "
                          f"to use the preset shipped with biograd (biograd/papers/presets/)")
    data = _check_keys(str(file), read_yaml(file), _TOP)
    if data.get("paper") != paper:
        raise ConfigError(f"preset {str(file)!r} is for {data.get('paper')!r}, not {paper!r}")
    for name in BUDGETS:
        _check_keys(f"budgets.{name}", (data.get("budgets") or {}).get(name), _BUDGET)
    for name, exp in (data.get("experiments") or {}).items():
        _check_keys(f"experiments.{name}", exp, _EXPERIMENT)
        for arm in exp.get("arms") or []:
            if arm not in (data.get("arms") or {}):
                raise ConfigError(f"preset experiments.{name}.arms: unknown arm {arm!r}")
        for arm, extra in (exp.get("per_arm") or {}).items():
            if arm not in (data.get("arms") or {}):
                raise ConfigError(f"preset experiments.{name}.per_arm: unknown arm {arm!r}")
            _check_keys(f"experiments.{name}.per_arm.{arm}", extra, _PER_ARM)
    for name, arm in (data.get("arms") or {}).items():
        if "rule" not in _check_keys(f"arms.{name}", arm, _ARM):
            raise ConfigError(f"preset arms.{name} needs a 'rule'")
    return data


def plan(preset: dict[str, Any], budget: str, *, seeds: int | None = None,
         overrides: list[str] | tuple[str, ...] = (), runs_dir: str | Path = "runs/reproduce",
         ) -> Plan:
    """Resolve ``preset`` for ``budget``: every (experiment, arm, seed) with its config.
    ``overrides`` (``key=value``) apply to every run; ``settings.key=value`` to the settings."""
    if budget not in BUDGETS:
        raise unknown_name("budget", budget, BUDGETS)
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    bud = (preset.get("budgets") or {}).get(budget) or {}
    n_seeds = seeds if seeds is not None else int(bud.get("seeds", 1))
    settings = merge({"cost_repeats": COST_REPEATS},
                     merge(preset.get("settings") or {}, bud.get("settings") or {}))
    run_over = []
    for item in overrides:
        key = item.removeprefix("--")
        if key.startswith("settings."):
            _set_dotted(settings, key.removeprefix("settings."))
        else:
            run_over.append(key)
    repeats = settings["cost_repeats"]
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 0:
        raise ConfigError(f"settings.cost_repeats must be an integer >= 0 (paired timing "
                          f"blocks of the reports' cost ratios; 0 measures none), got "
                          f"{repeats!r}")
    paper, out = preset["paper"], Path(runs_dir) / preset["paper"] / budget
    result = Plan(paper, budget, preset, list(range(n_seeds)), [], settings,
                  runs_dir=str(runs_dir))
    for name, exp in (preset.get("experiments") or {}).items():
        if budget not in exp.get("only", BUDGETS):
            continue
        grid = experiment_grid(preset, budget, name, result.seeds, run_over)
        result.experiments[name] = grid.base_config(out / name)
        for run in grid.runs(out / name):
            result.runs.append(RunSpec(name, run.arm, run.seed, run.config))
    return result


def experiment_grid(preset: dict[str, Any], budget: str, name: str, seeds: list[int],
                    overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """The preset's experiment ``name`` in ``budget`` as a :class:`~biograd.experiments.grid.Grid`
    (the format ``biograd compare`` reads): base = preset base <- budget config <- experiment
    config <- experiment[budget]; each arm's config = arm config <- arm[budget] <-
    experiment.per_arm[arm].config, its rule_args = arm rule_args <- per_arm rule_args."""
    exp, arms = preset["experiments"][name], preset.get("arms") or {}
    bud = (preset.get("budgets") or {}).get(budget) or {}
    base = merge(merge(merge(preset.get("base") or {}, bud.get("config") or {}),
                       exp.get("config") or {}), exp.get(budget) or {})
    grid_arms = {}
    for label in exp.get("arms") or list(arms):
        arm = arms[label]
        extra = (exp.get("per_arm") or {}).get(label) or {}
        config = merge(merge(arm.get("config") or {}, arm.get(budget) or {}),
                       extra.get("config") or {})
        grid_arms[label] = make_arm(label, {
            "rule": arm["rule"], "config": config,
            "rule_args": merge(arm.get("rule_args") or {}, extra.get("rule_args") or {})},
            where=f"preset {preset['paper']} arms")
    return Grid(base, grid_arms, list(seeds), list(overrides))


def _set_dotted(settings: dict[str, Any], item: str) -> None:
    """Apply ``key=value`` (dotted for nested) to the paper's measurement settings."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like --settings.key=value")
    key, text = item.split("=", 1)
    *parents, last = key.split(".")
    if key.split(".")[0] not in settings:
        raise ConfigError(f"unknown setting {key.split('.')[0]!r}; this paper's settings: "
                          f"{', '.join(settings) or 'none'}")
    node = settings
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = parse_scalar(text)


def runs_root(p: Plan) -> Path:
    """``RUNS/PAPER/BUDGET``: the folder of ``p``'s run directories."""
    return Path(p.runs_dir) / p.paper / p.budget


def default_runs_dir(budget: str) -> str:
    """Where ``budget``'s runs go when no ``--runs`` is given: the results store
    (:data:`STORE`, committed) for ``standard``, ``runs/reproduce`` (git-ignored) otherwise."""
    return STORE if budget == "standard" else "runs/reproduce"


def run_label(spec: RunSpec) -> str:
    """``EXPERIMENT/ARM-sSEED``: a run's name in logs, reports and ``wall_seconds.json``."""
    return f"{spec.experiment}/{spec.arm}-s{spec.seed}"


def _set_aside_stale(p: Plan, train: bool, chosen: set[int]) -> dict[int, str]:
    """Check every stored run of ``p`` against its fingerprint
    (:func:`biograd.experiments.store.stale_reasons`): a stale one is moved to
    ``.stale/`` (to be retrained) or, when this invocation does not train it (``--no-train``,
    or not in ``chosen``), left where it is and reported missing. Returns ``{run index:
    why}`` of the stale runs left in place."""
    left: dict[int, str] = {}
    for i, spec in enumerate(p.runs):
        where = run_dir_of(spec.config)
        if not where.is_dir():
            continue
        why = store.stale_reasons(where, spec.config)
        if not why:
            continue
        if train and i in chosen:
            dest = store.move_stale(where, runs_root(p))
            print(f"[reproduce {p.paper}] stale run {run_label(spec)} ({'; '.join(why)}): "
                  f"moved to {dest}, retraining it", file=sys.stderr, flush=True)
        else:
            left[i] = f"stale ({'; '.join(why)})"
            print(f"[reproduce {p.paper}] stale run {run_label(spec)} ({'; '.join(why)}): "
                  f"not used ({'--no-train' if not train else 'not chosen by --only'})",
                  file=sys.stderr, flush=True)
    return left


def select_runs(p: Plan, only: Sequence[str]) -> set[int]:
    """Indices of the runs of ``p`` that ``only``'s shell-style patterns choose (all runs when
    ``only`` is empty). A pattern chooses a run when it matches the run's label
    ``EXPERIMENT/ARM-sSEED``, its ``EXPERIMENT/ARM`` or its ``EXPERIMENT``: ``mnist-lenet``,
    ``mnist-lenet/dtp``, ``*/kolen_pollack``, ``mnist-lenet/*-s0``. A pattern that chooses
    no run is a ConfigError that lists what there is."""
    if not only:
        return set(range(len(p.runs)))
    chosen: set[int] = set()
    for pattern in only:
        hit = {i for i, spec in enumerate(p.runs) if any(
            fnmatch.fnmatchcase(name, pattern) for name in (
                run_label(spec), f"{spec.experiment}/{spec.arm}", spec.experiment))}
        if not hit:
            exps = sorted({s.experiment for s in p.runs})
            arms = sorted({s.arm for s in p.runs})
            raise ConfigError(
                f"--only {pattern!r} chooses no run of {p.paper} ({p.budget}): give "
                "EXPERIMENT, EXPERIMENT/ARM or EXPERIMENT/ARM-sSEED (shell patterns allowed), "
                f"with experiments {', '.join(exps) or 'none'} and arms {', '.join(arms)}")
        chosen |= hit
    return chosen


def run_plan(p: Plan, *, overwrite: bool = False, jobs: int = 1, train: bool = True,
             train_minutes: float | None = None, started: float | None = None,
             only: Sequence[str] = ()) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Train every run of ``p`` (reusing finished runs, resuming interrupted ones, retraining
    stale ones: :mod:`biograd.experiments.store`), ``jobs`` at a time in parallel processes
    (:func:`biograd.experiments.jobs.run_all`). ``train=False`` trains nothing,
    ``train_minutes`` starts no run after that many minutes since ``started`` (a
    ``time.perf_counter()`` value; default now) and ``only`` (patterns, :func:`select_runs`)
    trains the chosen runs only (the others are reused when finished and current): runs not
    trained are in the results with status ``missing`` and the reason, and listed on
    stderr."""
    for spec in p.runs:
        check_names(spec.config)
    if train_minutes is not None and train_minutes < 0:
        raise ConfigError(f"--train-minutes must be >= 0, got {train_minutes}")
    if only and overwrite:
        raise ConfigError("--overwrite deletes every run of the budget, not only the chosen "
                          "ones: drop --only, or drop --overwrite (stale chosen runs are "
                          "retrained anyway)")
    if only and not train:
        raise ConfigError("--only chooses runs to train, and --no-train trains none: drop one")
    chosen = select_runs(p, only)
    if overwrite and train:
        for d in {Path(s.config.out_dir) for s in p.runs}:
            shutil.rmtree(d, ignore_errors=True)
    stale = _set_aside_stale(p, train, chosen)
    deadline = None
    if train_minutes is not None:
        deadline = (time.perf_counter() if started is None else started) + 60 * train_minutes

    def may_start() -> bool:
        return train and (deadline is None or time.perf_counter() < deadline)

    finished = {i for i, s in enumerate(p.runs) if is_finished(s.config)}
    todo = [p.runs[i] for i in sorted(chosen - finished)]
    if todo and may_start():  # one-time costs out of the first timed run (as compare does)
        dry_build(todo[0].config, warm_up_steps=10 if jobs == 1 else 0)
    live = [i for i in range(len(p.runs)) if i not in stale and (i in chosen or i in finished)]
    done = run_all([p.runs[i].config for i in live], jobs, lambda k: (
        f"[reproduce {p.paper}] {live[k] + 1}/{len(p.runs)} {p.runs[live[k]].experiment} "
        f"{p.runs[live[k]].arm} seed {p.runs[live[k]].seed}"),
        may_start=None if train and deadline is None else may_start, record=train)
    summaries = dict(zip(live, done, strict=True))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    walls = WallLog(p)
    missing = []
    for i, spec in enumerate(p.runs):
        key = run_label(spec)
        summary, seconds = summaries.get(i, ({"status": NOT_STARTED}, 0.0))
        info = {"arm": spec.arm, "experiment": spec.experiment, "seed": spec.seed}
        if summary.get("status") == NOT_STARTED or i in stale:
            why = stale.get(i) or summary.get("reason") or (
                "not trained (--no-train)" if not train else
                "not chosen by --only" if i not in chosen else
                "not started (--train-minutes reached)")
            results.setdefault((spec.experiment, spec.arm), []).append(
                {"rule": spec.config.rule, **info, "status": NOT_STARTED, "reason": why})
            missing.append(f"{key}: {why}")
            continue
        if not summary.get("reused"):
            walls.record(key, seconds)
        where = run_dir_of(spec.config)
        print_ = store.read_fingerprint(where) or {}
        wall = walls.get(key) if walls.get(key) is not None else print_.get("wall_seconds")
        summary = {**summary, **info, "run_dir": str(where), "wall_seconds": wall,
                   "code_hash": print_.get("code_hash"), "hardware": print_.get("hardware"),
                   "git_commit": print_.get("git_commit")}
        results.setdefault((spec.experiment, spec.arm), []).append(summary)
    if missing:
        shown = missing[:20] + ([f"... {len(missing) - 20} more (all listed in the report)"]
                                if len(missing) > 20 else [])
        print(f"[reproduce {p.paper}] {len(missing)} of {len(p.runs)} runs missing from the "
              "report:\n  " + "\n  ".join(shown), file=sys.stderr, flush=True)
    return results


class WallLog:
    """Wall seconds each run took when it was trained (``wall_seconds.json`` beside the runs),
    so a report regenerated from reused runs still states how long they took."""

    def __init__(self, p: Plan) -> None:
        root = {Path(s.config.out_dir).parent for s in p.runs}
        self.path = next(iter(root)) / "wall_seconds.json" if root else None
        self.data: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            self.data = json.loads(self.path.read_text())

    def record(self, key: str, seconds: float) -> None:
        """Add ``key``'s wall time to the file: re-read just before writing (another reproduce
        process on the same store, with a disjoint ``--only``, may have added runs since) and
        replaced atomically, so concurrent invocations keep each other's entries."""
        if self.path is not None:
            if self.path.is_file():
                self.data = {**self.data, **json.loads(self.path.read_text())}
            self.data[key] = round(seconds, 2)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)

    def get(self, key: str) -> float | None:
        return self.data.get(key)

    def forget(self, key: str) -> None:
        """Drop ``key``'s entry (a run replaced by one whose wall time is not known here:
        its fingerprint's then speaks for it), written as :meth:`record` writes."""
        if self.path is not None and self.path.is_file():
            self.data = {**self.data, **json.loads(self.path.read_text())}
            if self.data.pop(key, None) is not None:
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(self.data, indent=1))
                os.replace(tmp, self.path)
