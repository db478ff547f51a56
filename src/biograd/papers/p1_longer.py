"""P1's check that a cell LRA-E lost is not lost to the budget (issue 16): LRA-E and the cell's
best alternative retrained with ``settings.longer_epochs_factor`` times the epochs (the same
cosine schedule stretched over them), every seed of the budget, through the engine
(:func:`biograd.experiments.jobs.run_all`, two runs at a time) in a temporary folder. The
numbers are stored as a measurement (``_measurements/longer-EXPERIMENT.json``, keyed by the
runs' configs and the two rules' code), so the report is rebuilt without retraining.
"""

from __future__ import annotations

import tempfile
from typing import Any

from biograd.experiments.jobs import run_all
from biograd.experiments.paper_report import Context, mean_std
from biograd.experiments.store import config_view


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
    key = {"factor": factor, "runs": {f"{s.arm}-s{s.seed}": config_view(s.config.to_dict())
                                      for s in specs}}

    def compute() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            subs = [s.config.replace(epochs=epochs, out_dir=tmp, alignment_every=0)
                    for s in specs]
            done = run_all(subs, 2, lambda i: f"[reproduce p1] {exp} {specs[i].arm} seed "
                                              f"{specs[i].seed}, {epochs} epochs")
        return {"epochs": epochs, "runs": [
            {"arm": s.arm, "seed": s.seed, "status": summary.get("status"),
             "test_acc": summary.get("test_acc"), "train_loss": summary.get("train_loss"),
             "wall_seconds": round(seconds, 1)}
            for s, (summary, seconds) in zip(specs, done, strict=True)]}

    got = ctx.measure(f"longer-{exp}", compute, key=key, rules=sorted({s.config.rule
                                                                       for s in specs}))
    if got is None:
        return f" {exp} with {factor}x the epochs: not measured."
    errs = {a: [100 * (1 - r["test_acc"]) for r in got["runs"]
                if r["arm"] == a and r.get("status") == "completed"] for a in arms}
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
