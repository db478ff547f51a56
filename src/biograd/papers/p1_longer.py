"""P1's checks that the budget is not what a cell's verdict measures (issue 16), both with
``settings.longer_epochs_factor`` times the epochs (the same cosine schedule stretched over
them), every seed of the budget, through the engine (:func:`biograd.experiments.jobs.run_all`,
two runs at a time) in a temporary folder, stored as measurements keyed by the runs' configs
and the rules' code, so the report is rebuilt without retraining. A run that another of these
measurements already retrained (the same config, factor and rule code: LRA-E in a cell it
both lost and fell behind backprop in) is read from it rather than trained twice, also after a
change of the rule's code that leaves its update probe unchanged:

- :func:`longer_check`: a cell LRA-E lost, LRA-E and the cell's best alternative retrained
  (``_measurements/longer-EXPERIMENT.json``);
- :func:`backprop_check`: a cell that is not testable because backprop stayed below its
  reference accuracy, backprop retrained (``_measurements/longer-backprop-EXPERIMENT.json``),
  to tell an under-trained backprop (the budget) from a net that does not reach the level;
- :func:`gap_check`: a deeper cell where LRA-E's or DTP-sigma's error is more than the
  generalisation claim's threshold above backprop's, that rule and backprop retrained
  (``_measurements/longer-gap-EXPERIMENT-ARM.json``).
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from biograd.experiments import store
from biograd.experiments.jobs import FINISHED, run_all
from biograd.experiments.paper_report import (
    REFERENCE,
    Context,
    completed,
    mean_std,
    same_probes,
)
from biograd.experiments.store import config_view
from biograd.runner.config import Config


def _retrained_elsewhere(ctx: Context, name: str, factor: int,
                         runs: dict[str, dict[str, Any]],
                         configs: dict[str, Config]) -> dict[str, dict[str, Any]]:
    """``{label: stored run}`` for the runs of ``runs`` (label -> config view) that another
    stored retrain measurement of this paper holds with the same factor and config, trained
    with the current code of the run's rule or with code whose update probe equals the
    current one (the measurement's ``probes`` for ``configs[label]``, the run's config:
    a speed change of the rule does not make it retrain)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(ctx.measurements_dir.glob("longer-*.json")):
        if path.stem == name:
            continue
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        key = stored.get("key") or {}
        if key.get("factor") != factor:
            continue
        for run in (stored.get("result") or {}).get("runs", []):
            label = f"{run.get('arm')}-s{run.get('seed')}"
            view = runs.get(label)
            if label in found or view is None or (key.get("runs") or {}).get(label) != view:
                continue
            rule = view.get("rule")
            same_code = (stored.get("code") or {}).get(rule) == store.code_hash(
                store.code_files(rule))
            cfg = configs.get(label)
            if not same_code and (cfg is None or not same_probes(stored.get("probes"), [cfg])):
                continue
            if run.get("status") in FINISHED:
                found[label] = {**run, "from": path.stem}
    return found


def _retrain(ctx: Context, name: str, exp: str, specs: list, factor: int
             ) -> dict[str, Any] | None:
    """The runs ``specs`` of ``exp`` retrained with ``factor`` times their epochs, stored as
    the measurement ``name`` (None when it is missing and this invocation measures nothing);
    runs that another retrain measurement holds are read from it
    (:func:`_retrained_elsewhere`)."""
    epochs = specs[0].config.epochs * factor
    key = {"factor": factor, "runs": {f"{s.arm}-s{s.seed}": config_view(s.config.to_dict())
                                      for s in specs}}

    def compute() -> dict[str, Any]:
        views = json.loads(json.dumps(key["runs"], default=str))  # as a stored key holds them
        have = _retrained_elsewhere(ctx, name, factor, views,
                                    {f"{s.arm}-s{s.seed}": s.config for s in specs})
        todo = [s for s in specs if f"{s.arm}-s{s.seed}" not in have]
        with tempfile.TemporaryDirectory() as tmp:
            subs = [s.config.replace(epochs=epochs, out_dir=tmp, alignment_every=0)
                    for s in todo]
            done = run_all(subs, 2, lambda i: f"[reproduce p1] {exp} {todo[i].arm} seed "
                                              f"{todo[i].seed}, {epochs} epochs")
        trained = {f"{s.arm}-s{s.seed}": {
            "arm": s.arm, "seed": s.seed, "status": summary.get("status"),
            "test_acc": summary.get("test_acc"), "train_loss": summary.get("train_loss"),
            "wall_seconds": round(seconds, 1)}
            for s, (summary, seconds) in zip(todo, done, strict=True)}
        return {"epochs": epochs, "runs": [{**have, **trained}[f"{s.arm}-s{s.seed}"]
                                           for s in specs]}

    return ctx.measure(name, compute, key=key, rules=sorted({s.config.rule for s in specs}),
                       configs=[s.config for s in specs])


def _errors(got: dict[str, Any], arms: tuple[str, ...]) -> dict[str, list[float]]:
    """Test error % of each completed retrained run of a :func:`_retrain` measurement, per
    arm of ``arms``."""
    return {a: [100 * (1 - r["test_acc"]) for r in got["runs"]
                if r["arm"] == a and r.get("status") == "completed"] for a in arms}


def backprop_check(ctx: Context, exp: str) -> str:
    """One sentence on ``exp``, a cell not testable because backprop's mean accuracy is below
    the experiment's reference: backprop retrained with ``longer_epochs_factor`` times the
    epochs, its mean accuracy and training loss against the reference and against the
    budget's own backprop runs; '' when the budget asks for no such check, ``exp`` has a
    backprop run not finished, or backprop reached the reference."""
    factor = int(ctx.plan.settings.get("longer_epochs_factor") or 0)
    target = ctx.reference_target(exp)
    bp = ctx.arm(REFERENCE)
    runs = ctx.runs(exp, bp)
    specs = [s for s in ctx.plan.runs if s.experiment == exp and s.arm == bp]
    if factor < 2 or target is None or not specs or len(completed(runs)) < len(specs):
        return ""
    now = mean_std([100 * r["test_acc"] for r in completed(runs)])[0]
    if now >= target:
        return ""
    epochs = specs[0].config.epochs
    got = _retrain(ctx, f"longer-backprop-{exp}", exp, specs, factor)
    if got is None:
        return f" {exp}: backprop with {factor}x the epochs not measured."
    done = [r for r in got["runs"] if r.get("status") == "completed"]
    if len(done) < len(specs):
        return f" {exp}: backprop with {got['epochs']} epochs: a run did not complete."
    (am, asd), (lm, _) = (mean_std([100 * r["test_acc"] for r in done]),
                          mean_std([r["train_loss"] for r in done]))
    before = mean_std([r["train_loss"] for r in completed(runs)])[0]
    if am >= target:
        why = (f"the budget's {epochs} epochs under-train backprop here: with "
               f"{got['epochs']} epochs for every rule the cell would be testable")
    else:
        why = (f"backprop stays below {target:g} % even with {got['epochs']} epochs, "
               + ("its training loss still falling: backprop trains this net slowly, and "
                  "testing the cell needs a longer budget for every rule (or a reference "
                  "taken from a longer backprop run)" if lm < before else
                  "its training loss no lower: the net does not reach the reference level "
                  "under this protocol"))
    gain = am - now
    return (f" {exp}: backprop retrained with {factor}x the epochs ({got['epochs']}, the same "
            f"schedule stretched, seeds {sorted(r['seed'] for r in done)}) reached "
            f"{am:.2f} ± {asd:.2f} % ({gain:+.2f} points over its {epochs}-epoch runs; "
            f"training loss {lm:.3f}, against {before:.3f} at {epochs} epochs): {why}.")


def longer_check(ctx: Context, exp: str, arms: tuple[str, str], gap: float) -> str:
    """``exp``'s two ``arms`` (LRA-E's label first) retrained with more epochs: one sentence
    with the mean test errors and their difference against ``gap`` (the difference at the
    budget's epochs), or '' when the budget asks for no such check."""
    factor = int(ctx.plan.settings.get("longer_epochs_factor") or 0)
    if factor < 2:
        return ""
    specs = [s for s in ctx.plan.runs if s.experiment == exp and s.arm in arms]
    if not specs:
        return ""
    epochs = specs[0].config.epochs * factor
    got = _retrain(ctx, f"longer-{exp}", exp, specs, factor)
    if got is None:
        return f" {exp} with {factor}x the epochs: not measured."
    errs = _errors(got, arms)
    if not all(errs.values()):
        return f" {exp} with {epochs} epochs: a run did not complete ({got['runs']})."
    (lm, ls), (wm, ws) = mean_std(errs[arms[0]]), mean_std(errs[arms[1]])
    closed = (f"; {gap:+.2f} at {specs[0].config.epochs} epochs: the longer budget closes "
              f"{(gap - (lm - wm)) / gap:.0%} of it" if gap > 0 else "")
    verdict = ("the gap is not the budget alone: a finding under this reading of LRA-E"
               if lm - wm > max(ls, ws) else "the gap closes with the budget")
    return (f" With {factor}x the epochs ({epochs}, the same schedule stretched, seeds "
            f"{sorted({s.seed for s in specs})}, retrained for this check): {exp}: LRA-E "
            f"{lm:.2f} ± {ls:.2f} % vs {arms[1]} {wm:.2f} ± {ws:.2f} % (difference "
            f"{lm - wm:+.2f}{closed}): {verdict}.")


def gap_check(ctx: Context, exp: str, arm: str, gap: float, limit: float) -> str:
    """One sentence on ``exp``, where ``arm``'s mean test error is ``gap`` points above
    backprop's, more than ``limit``: ``arm`` and backprop retrained with
    ``longer_epochs_factor`` times the epochs (``_measurements/longer-gap-EXPERIMENT-ARM.json``)
    and the gap there against ``limit`` and against the per-seed errors, so that a seed still
    learning when the schedule ends (the budget) is told from a gap that stays; '' when the
    budget asks for no such check."""
    factor = int(ctx.plan.settings.get("longer_epochs_factor") or 0)
    bp = ctx.arm(REFERENCE)
    specs = [s for s in ctx.plan.runs if s.experiment == exp and s.arm in (arm, bp)]
    if factor < 2 or not specs:
        return ""
    got = _retrain(ctx, f"longer-gap-{exp}-{arm}", exp, specs, factor)
    if got is None:
        return f" {exp} {arm} with {factor}x the epochs: not measured."
    errs = _errors(got, (arm, bp))
    if len(errs[arm]) + len(errs[bp]) < len(specs):
        return f" {exp} {arm} with {got['epochs']} epochs: a run did not complete."
    (am, asd), (bm, _) = mean_std(errs[arm]), mean_std(errs[bp])
    seeds = ", ".join(f"{e:.2f}" for e in errs[arm])
    verdict = (f"within {limit:g} points: the budget's epochs, not the rule, made the gap"
               if am - bm <= limit else
               f"still more than {limit:g} points: not the budget alone")
    return (f" With {factor}x the epochs ({got['epochs']}, the same schedule stretched, "
            f"retrained for this check): {exp}: {arm} {am:.2f} ± {asd:.2f} % (seeds {seeds}) vs "
            f"backprop {bm:.2f} %, gap {am - bm:+.2f} ({gap:+.2f} at "
            f"{specs[0].config.epochs} epochs): {verdict}.")
