"""What a reproduction would need, without doing any of it (``biograd reproduce --check``).

For every run of a paper's plan: ``current`` (finished, and its fingerprint matches the code
and config: reused as is), ``stale`` (finished under other code or config: retrained, with
the fingerprint's reasons), ``training`` (another process holds its lock,
:mod:`biograd.runlock`: a reproduction now would leave it to that process), ``interrupted``
(started, not finished: resumed), ``failed`` (crashed, with its error: trained again) or
``absent``;
for every stored measurement the report reads (:meth:`biograd.experiments.paper_report.
Context.measure`): ``current``, ``stale: WHY`` or ``missing``; the training time still
needed, estimated from the wall time the same runs (or the other seeds of the same arm) took
when they were last trained (``wall_seconds.json``; a run that diverged or was cut short
counts pro rata, as the whole run it stopped short of), or for an arm never trained here from
backprop's wall time on the experiment x the arm's stored step cost; and the verdicts a
report written from what is current would give, beside those of the report already written.

Nothing is trained, measured, moved or written: the report is built in a temporary folder and
thrown away. This is the safe first step before ``--no-train`` or ``--train-minutes``, which
rewrite the report and drop stale runs and measurements from it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biograd import rundir, runlock
from biograd.core.errors import ConfigError
from biograd.experiments import paper_report, store
from biograd.experiments.jobs import FINISHED
from biograd.experiments.reproduce import Plan, WallLog, run_label, run_plan
from biograd.experiments.summary import report_stem
from biograd.runner.train import run_dir_of

CURRENT, STALE, TRAINING, INTERRUPTED, FAILED, ABSENT = (
    "current", "stale", "training", "interrupted", "failed", "absent")


@dataclass
class RunState:
    """One run of the plan: its label ``EXPERIMENT/ARM-sSEED``, state, why (for stale runs)
    and the estimated wall seconds to (re)train it (None: current, or no earlier wall time)."""

    label: str
    state: str
    why: str = ""
    estimate: float | None = None
    #: the estimate is backprop's wall time on the experiment x the arm's stored step cost
    #: (the arm has never been trained here)
    scaled: bool = False


def _arm_wall(walls: dict[str, float], experiment: str, arm: str) -> float | None:
    """Mean wall seconds of ``arm``'s runs (any seed) on ``experiment``, or None."""
    prefix = f"{experiment}/{arm}-s"
    found = [v for k, v in walls.items() if k.startswith(prefix)]
    return statistics.mean(found) if found else None


def full_run_walls(p: Plan, walls: dict[str, float]) -> dict[str, float]:
    """``walls`` with each stored run's wall time scaled to the run the plan asks for (x
    planned steps / steps done, the planned steps being the plan's epochs x the stored run's
    steps per epoch): a run that diverged at step 264 of 3752 took 7 % of a whole one and
    must not make the other seeds of its arm look cheap, and a stale run trained for 10
    epochs where the plan now asks 20 estimates twice its time."""
    out = dict(walls)
    for spec in p.runs:
        key, path = run_label(spec), run_dir_of(spec.config) / rundir.SUMMARY
        if key not in walls or not path.is_file():
            continue
        summary = rundir.read_json(path)
        steps, per_epoch = summary.get("steps"), summary.get("steps_per_epoch")
        if not (steps and per_epoch):
            continue
        factor = spec.config.epochs * per_epoch / steps
        if summary.get("status") == "diverged" or summary.get("truncated"):
            factor = max(1.0, factor)  # stopped short: at least the time it took
        elif summary.get("epochs_completed") == spec.config.epochs:
            continue  # the run the plan asks for
        out[key] = walls[key] * factor
    return out


def run_states(p: Plan, walls: dict[str, float]) -> list[RunState]:
    """The state of every run of ``p`` in the store (read only); ``walls``: the wall seconds
    of earlier runs (:class:`WallLog`), for the estimates."""
    out = []
    for spec in p.runs:
        key, where = run_label(spec), run_dir_of(spec.config)
        path = where / rundir.SUMMARY
        summary = rundir.read_json(path) if path.is_file() else {}
        if not where.is_dir():
            state, why = ABSENT, ""
        elif summary.get("status") in FINISHED:
            reasons, kept = store.check_run(where, spec.config)
            state, why = (STALE, "; ".join(reasons)) if reasons else (CURRENT, "")
            if not reasons and kept:
                why = (f"code of {spec.config.rule} changed ({', '.join(kept)}), its "
                       "updates did not (update probe): reproduce records the new code")
        elif summary.get("status") == "failed":  # trained again
            state, why = FAILED, str(summary.get("error", ""))
        else:  # started: resumed from its checkpoint
            state, why = INTERRUPTED, ""
        if state != CURRENT and (owner := runlock.holder(where)) is not None:
            state, why = TRAINING, f"by pid {owner.get('pid')} on {owner.get('host')}"
        estimate = None
        if state != CURRENT:
            estimate = walls.get(key)
            if estimate is None:  # the other seeds of the same arm
                estimate = _arm_wall(walls, spec.experiment, spec.arm)
        out.append(RunState(key, state, why, estimate))
    return out


def _scale_from_backprop(p: Plan, runs: list[RunState], ctx: paper_report.Context,
                         walls: dict[str, float]) -> None:
    """Estimate the runs of arms never trained here: the mean wall time of the experiment's
    backprop runs x the arm's step cost relative to backprop (the report's stored, current
    ``cost-EXPERIMENT`` measurement; evaluation and alignment rows are not scaled, so it is
    rough). Runs without both stay unestimated."""
    try:
        reference = ctx.arm(paper_report.REFERENCE)
    except ConfigError:
        return
    specs = {run_label(s): s for s in p.runs}
    for r in runs:
        spec = specs[r.label]
        if r.estimate is not None or r.state == CURRENT or \
                ctx.found.get(f"cost-{spec.experiment}") != CURRENT:
            continue
        base = _arm_wall(walls, spec.experiment, reference)
        ratio = ctx.step_cost(spec.experiment, spec.arm)
        if base is not None and ratio == ratio:
            r.estimate, r.scaled = base * ratio, True


def check(p: Plan, module_name: str, out: Path) -> dict[str, Any]:
    """Run states, measurement states and verdicts of ``p`` (see the module docstring);
    ``out`` is the report folder whose existing report is compared."""
    walls = full_run_walls(p, WallLog(p).data)
    runs = run_states(p, walls)
    quiet = io.StringIO()  # the progress lines of a normal reproduction
    with (tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(quiet),
          contextlib.redirect_stdout(quiet)):
        results = run_plan(p, train=False)
        ctx = paper_report.Context(p, results, Path(tmp), time.perf_counter(), [],
                                   measure_missing=False)
        section = importlib.import_module(module_name).report(ctx)
        _scale_from_backprop(p, runs, ctx, walls)
    written = out / f"{report_stem(p.paper, p.budget)}.json"
    before = json.loads(written.read_text()).get("verdicts") if written.is_file() else None
    todo = [r for r in runs if r.state != CURRENT]
    known = [r.estimate for r in todo if r.estimate is not None]
    return {"paper": p.paper, "budget": p.budget, "runs": runs, "measurements": dict(ctx.found),
            "verdicts": [c.verdict for c in section.claims], "written_verdicts": before,
            "train_seconds": sum(known), "unestimated": len(todo) - len(known),
            "current": not todo and all(v == CURRENT for v in ctx.found.values())}


def lines(status: dict[str, Any]) -> list[str]:
    """``status`` (:func:`check`) as the lines ``biograd reproduce --check`` prints."""
    runs: list[RunState] = status["runs"]
    counts = {s: sum(r.state == s for r in runs)
              for s in (CURRENT, STALE, TRAINING, INTERRUPTED, FAILED, ABSENT)}
    head = f"{status['paper']} ({status['budget']}): " + (f"{len(runs)} runs: " + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n) if runs else "no training runs")
    out = [head]
    for r in runs:
        if r.state != CURRENT or r.why:
            took = "" if r.estimate is None else (
                f" (~{r.estimate / 60:.1f} min{' = backprop x step cost' if r.scaled else ''})")
            out.append(f"  {r.state:<11} {r.label}{took}{': ' + r.why if r.why else ''}")
    if counts[CURRENT] < len(runs):
        unknown = status["unestimated"]
        known = len(runs) - counts[CURRENT] - unknown
        scaled = sum(r.scaled for r in runs)
        parts = ([f"about {status['train_seconds'] / 60:.0f} min of run wall time for {known} "
                  "runs (as they ran before: their threads and machine"
                  + (f"; {scaled} of them never trained here, estimated as backprop's wall "
                     "time on the experiment x the arm's step cost" if scaled else "") + ")"]
                 if known else [])
        parts += [f"{unknown} runs with no earlier wall time to estimate from"] if unknown else []
        out.append("  to train: " + "; ".join(parts))
    found = status["measurements"]
    out.append(f"measurements: {len(found)}: " + ", ".join(
        f"{n} {s}" for s in ("current", "stale", "missing")
        if (n := sum(v.split(":")[0] == s for v in found.values()))))
    out += [f"  {v.split(':')[0]:<11} {k}{':' + v.split(':', 1)[1] if ':' in v else ''}"
            for k, v in found.items() if v != CURRENT]
    now = ", ".join(status["verdicts"])
    if status["written_verdicts"] is not None:
        out.append(f"verdicts of the written report: {', '.join(status['written_verdicts'])}")
    out.append(f"verdicts from what is current: {now}")
    out.append("up to date: nothing to train or measure" if status["current"] else
               "not up to date: `biograd reproduce` (without --check) trains and measures what "
               "is listed; --no-train would write the report without it")
    return out
