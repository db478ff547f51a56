"""The five defining papers: each module holds one paper's claims, tables and measurements,
and ``presets/PAPER.yaml`` (package data, so an installed biograd finds them from any folder)
its architectures and hyper-parameters in the grid format of
:mod:`biograd.experiments.reproduce`.

``reproduce(paper, budget)`` trains the preset's runs (or reuses them from the results store)
and writes the paper's report (``biograd reproduce PAPER``); ``check(paper, budget)`` says
what that would train and measure, writing nothing (``biograd reproduce PAPER --check``).
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from biograd.core.errors import ConfigError, unknown_name
from biograd.experiments import paper_report
from biograd.experiments import reproduce as grid
from biograd.experiments.summary import settle_reports

#: paper name -> its module in this package
MODULES = {
    "p1-lra": "biograd.papers.p1_lra",
    "p2-ldrl": "biograd.papers.p2_ldrl",
    "p3-weight-transport": "biograd.papers.p3_weight_transport",
    "p4-activation-relaxation": "biograd.papers.p4_activation_relaxation",
    "p5-zil": "biograd.papers.p5_zil",
}
PAPERS = tuple(MODULES)


def preset_path(paper: str) -> Path:
    """The preset shipped with biograd for ``paper`` (``biograd/papers/presets/PAPER.yaml``)."""
    if paper not in MODULES:
        raise unknown_name("paper", paper, PAPERS)
    return Path(str(resources.files(__name__).joinpath("presets", f"{paper}.yaml")))


def load_preset(paper: str, path: str | Path | None = None) -> dict[str, Any]:
    """Read and check ``paper``'s preset: the shipped one, or ``path``."""
    return grid.load_preset(paper, path or preset_path(paper))


def reproduce(paper: str, budget: str = "quick", *, seeds: int | None = None,
              out: str | Path = "docs/results", runs_dir: str | Path | None = None,
              overrides: list[str] | tuple[str, ...] = (), preset: str | Path | None = None,
              overwrite: bool = False, argv: list[str] | None = None,
              jobs: int = 1, train: bool = True, train_minutes: float | None = None,
              only: Sequence[str] = (), merge_from: str | Path | None = None
              ) -> dict[str, Any]:
    """Run ``paper``'s reproduction at ``budget`` and write its report; returns its summary
    (the verdicts and key numbers also saved as ``OUT/PAPER.json``, ``OUT/PAPER-BUDGET.json``
    for budgets other than standard). ``runs_dir`` defaults to the results store
    ``results`` for the standard budget and ``runs/reproduce`` otherwise
    (:func:`biograd.experiments.reproduce.default_runs_dir`). ``jobs`` runs train in parallel
    processes (:func:`biograd.experiments.jobs.run_all`). ``train=False`` writes the report
    from the stored runs and measurements only (nothing trained or measured; missing runs
    listed); ``train_minutes`` starts no run or measurement after that many minutes of this
    call, then writes the report from what exists; ``only`` trains just the runs its patterns
    choose (:func:`biograd.experiments.reproduce.select_runs`) and measures nothing (the
    report reads every run and measurement that exists; the plain command takes the missing
    measurements once the runs are in). ``merge_from`` (a results root of another store)
    first adopts its finished, current runs and newer measurements
    (:func:`biograd.experiments.merge.merge_store`)."""
    started = time.perf_counter()
    p = _plan(paper, budget, seeds, runs_dir, overrides, preset)
    if merge_from is not None:
        if overwrite:
            raise ConfigError("--overwrite deletes every run of the budget, the adopted ones "
                              "too: drop --merge-from or --overwrite")
        from biograd.experiments.merge import merge_store

        merged = merge_store(p, merge_from)
        print("\n".join(f"[reproduce {paper}] merge from {merge_from}: {line}"
                        for line in merged.lines()), file=sys.stderr, flush=True)
    results = grid.run_plan(p, overwrite=overwrite, jobs=jobs, train=train,
                            train_minutes=train_minutes, started=started, only=only)
    module = importlib.import_module(MODULES[paper])
    settle_reports(Path(out), paper)  # before the report writes its figures
    until = None if train_minutes is None else started + 60 * train_minutes
    # --only trains its runs and measures nothing: two reproductions of one store with
    # disjoint --only would each take the same measurement, timings while the other trains
    ctx = paper_report.Context(p, results, Path(out), started, argv or [],
                               measure_missing=train and not only, measure_until=until)
    return paper_report.write(ctx, module.report(ctx))


def check(paper: str, budget: str = "quick", *, seeds: int | None = None,
          out: str | Path = "docs/results", runs_dir: str | Path | None = None,
          overrides: list[str] | tuple[str, ...] = (), preset: str | Path | None = None,
          ) -> dict[str, Any]:
    """What :func:`reproduce` with the same arguments would train and measure, and the
    verdicts a report from what is current would give, without training, measuring or
    writing anything (:func:`biograd.experiments.status.check`; ``biograd reproduce
    --check``)."""
    from biograd.experiments import status

    return status.check(_plan(paper, budget, seeds, runs_dir, overrides, preset),
                        MODULES[paper], Path(out))


def _plan(paper: str, budget: str, seeds: int | None, runs_dir: str | Path | None,
          overrides: list[str] | tuple[str, ...], preset: str | Path | None) -> grid.Plan:
    """``paper``'s preset resolved for ``budget`` (runs in the budget's default folder when
    ``runs_dir`` is None)."""
    return grid.plan(load_preset(paper, preset), budget, seeds=seeds, overrides=overrides,
                     runs_dir=grid.default_runs_dir(budget) if runs_dir is None else runs_dir)
