"""P2 (Ernoult et al. 2022, arXiv:2201.13415): BP, DTP, DRL, L-DRL and P2's DDTP baselines on
MNIST / Fashion-MNIST MLPs and LeNets: accuracy, the update-vs-backprop angle per layer over
training (P2's gradient-alignment figures) and the training cost relative to backprop.

Each claim is judged only on the experiments the budget can test
(:meth:`~biograd.experiments.paper_report.Context.untestable`: every run of the arms it
compares finished, backprop converged to the experiment's ``reference_accuracy``, enough
seeds); the statistic is the mean over seeds, its spread the standard deviation over seeds."""

from __future__ import annotations

from pathlib import Path

from biograd.experiments.paper_report import (
    REFERENCE,
    Claim,
    Context,
    Section,
    acc_cell,
    accuracies,
    cell,
    completed,
    fmt,
    mean_std,
    num,
    plot_layer_angles,
    verdict_of,
)
from biograd.rundir import ALIGNMENT, read_rows

#: roles (rules) of the target-propagation arms whose update angles are compared with L-DRL's
TP = ("dtp", "drl", "ldrl", "s_ddtp", "p_ddtp")
#: the difference-reconstruction arms L-DRL should beat in accuracy: DRL and P2's DDTP
#: baselines (Meulemans et al.'s DDTP-linear in two schedules)
DRL_FAMILY = ("drl", "s_ddtp", "p_ddtp")
#: "within about 1 %" of backprop's test accuracy (P2's wording), in points
ACC_GAP = 1.0
#: "several times backprop per batch": L-DRL's step time over backprop's at least this
COST_FACTOR = 2.0


def min_seeds(ctx: Context) -> int:
    """Completed seeds a claim needs: 3 (mean ± std) at the standard and full budgets, 1 at
    quick (one seed by design: a smoke test)."""
    return 1 if ctx.plan.budget == "quick" else 3


def final_angles(ctx: Context, exp: str, arm: str) -> list[float]:
    """Last measured mean update-vs-backprop angle (degrees) of each completed seed."""
    return [s["angle_update"] for s in completed(ctx.runs(exp, arm))
            if num(s.get("angle_update"))]


def final_angle(ctx: Context, exp: str, arm: str) -> float:
    """Mean over completed seeds of :func:`final_angles` (NaN when none)."""
    return mean_std(final_angles(ctx, exp, arm))[0]


def layer_angles(ctx: Context, exp: str, arm: str, row: int = -1) -> dict[str, list[float]]:
    """Per weight matrix (alignment.csv column ``angle_update/NAME.weight``): the
    update-vs-backprop angle of each completed seed in its alignment.csv row ``row`` (the last
    logged by default, 0 the first)."""
    out: dict[str, list[float]] = {}
    for s in completed(ctx.runs(exp, arm)):
        rows = read_rows(Path(s["run_dir"]) / ALIGNMENT) if s.get("run_dir") else []
        if not rows:
            continue
        for key, value in rows[row].items():
            if key.startswith("angle_update/") and key.endswith(".weight") and num(value):
                out.setdefault(key.removeprefix("angle_update/"), []).append(value)
    return out


def _diverged(ctx: Context, exp: str, arm: str) -> int:
    return sum(s.get("status") == "diverged" for s in ctx.runs(exp, arm))


def _present(ctx: Context, exps: list[str], roles: tuple[str, ...]) -> list[str]:
    arms = {a for e in exps for a in ctx.arms(e)} | set(ctx.plan.preset.get("arms") or {})
    return [a for a in (ctx.find_arm(r) for r in roles) if a in arms]


def report(ctx: Context) -> Section:
    exps = list(ctx.plan.experiments)
    arms = list(dict.fromkeys([a for e in exps for a in ctx.arms(e)]
                              + list(ctx.plan.preset.get("arms") or {})))
    bp = ctx.arm(REFERENCE)
    lines = ["## Accuracy, update angle and cost", "",
             "Test accuracy % (mean ± std over completed seeds; diverged runs counted beside "
             "it) / final update-vs-backprop angle (degrees, mean over weight matrices on a "
             "fixed batch of training samples; mean ± std over seeds) / training step time "
             "relative to backprop (rule.step + optimizer step against backprop's on the same "
             f"model, batch and optimizer; median of {ctx.cost_repeats} interleaved block pairs, "
             "a stored measurement).", "",
             "| rule | " + " | ".join(exps) + " |", "| --- |" + " --- |" * len(exps)]
    for arm in arms:
        row = []
        for e in exps:
            text = acc_cell(ctx.runs(e, arm))
            angle = cell(final_angles(ctx, e, arm), ".1f")
            row.append(f"{text} / {angle}{'°' * (angle != '-')} / "
                       f"{fmt(ctx.step_cost(e, arm), '.1f', '×')}")
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    others = [a for a in arms if a != bp]
    lines += ["", "## Update-vs-backprop angle per layer over training", "",
              "Angle between each rule's update and backprop's gradient of the same loss on the "
              "same batch and weights, per weight matrix (layers numbered as in the model), "
              "logged every `alignment_every` steps; curves are means over seeds. The tables "
              "give, per layer, the first logged angle (mean over completed seeds) → the last "
              "one (mean ± std over completed seeds).", ""]
    for e in exps:
        lines.append(plot_layer_angles(ctx, e, others, "angle_update/", f"angles_{e}.png",
                                       "update vs backprop angle (deg)"))
        last = {a: layer_angles(ctx, e, a) for a in others}
        first = {a: layer_angles(ctx, e, a, row=0) for a in others}
        layers = list(dict.fromkeys(k for a in others for k in last[a]))
        if layers:
            lines += [f"Update-vs-backprop angle per layer, first → last logged, {e} (degrees):",
                      "", "| rule | " + " | ".join(layers) + " |",
                      "| --- |" + " ---: |" * len(layers)]
            lines += [f"| {a} | " + " | ".join(_trend(first[a], last[a], k) for k in layers)
                      + " |" for a in others if last[a]]
            lines.append("")
    tp = _present(ctx, exps, TP)
    claims = _claims(ctx, exps, tp)

    def gap(e: str) -> float:
        ldrl = mean_std(accuracies(ctx.runs(e, ctx.arm("ldrl"))))[0]
        return ldrl - mean_std(accuracies(ctx.runs(e, bp)))[0]

    key = "; ".join(
        f"{e}: L-DRL {fmt(gap(e), '+.2f')} pts vs BP, "
        f"{fmt(final_angle(ctx, e, ctx.arm('ldrl')), '.0f', '°')} (DTP "
        f"{fmt(final_angle(ctx, e, ctx.arm('dtp')), '.0f', '°')}), "
        f"{fmt(ctx.step_cost(e, ctx.arm('ldrl')), '.1f', '×')} BP" for e in exps[:2])
    return Section("\n".join(lines), claims, key)


def _trend(first: dict[str, list[float]], last: dict[str, list[float]], layer: str) -> str:
    """'first → last ± std' of one layer's angle (means over seeds)."""
    start = fmt(mean_std(first.get(layer, []))[0], ".1f")
    return f"{start} → {cell(last.get(layer, []), '.1f')}"


def _testable(ctx: Context, exps: list[str], arms: list[str]) -> tuple[list[str], list[str]]:
    """(experiments the budget can test a claim on, 'EXP: why not' for the others)."""
    ok, why = [], []
    for e in exps:
        reason = ctx.untestable(e, arms, min_seeds=min_seeds(ctx))
        if reason is None:
            ok.append(e)
        else:
            why.append(_why(e, reason))
    return ok, why


def _untested_note(why: list[str]) -> str:
    return f" Not testable at this budget: {'; '.join(why)}." if why else ""


def _why(exp: str, reason: str) -> str:
    """'EXP: reason', without repeating the experiment's name the reason starts with."""
    return reason if reason.startswith(f"{exp}") else f"{exp}: {reason}"


def _stat(values: list[float], spec: str, unit: str = "") -> str:
    mean, std = mean_std(values)
    return f"{fmt(mean, spec, unit)} ± {fmt(std, spec, unit)}" if values else "-"


def _claims(ctx: Context, exps: list[str], tp: list[str]) -> list[Claim]:
    return [_alignment_claim(ctx, exps, tp), _gap_claim(ctx, exps), _ahead_claim(ctx, exps),
            _cost_claim(ctx, exps)]


def _alignment_claim(ctx: Context, exps: list[str], tp: list[str]) -> Claim:
    """L-DRL's final mean update angle (mean over seeds) below every other TP arm's; an arm
    with no completed seed (every run diverged) has no angle and does not beat L-DRL."""
    ldrl = ctx.arm("ldrl")
    rivals = [a for a in tp if a != ldrl]
    ok, why = _testable(ctx, exps, [ldrl, *rivals])
    held, stats = 0, []
    for e in ok:
        mine = final_angle(ctx, e, ldrl)
        theirs = {a: final_angle(ctx, e, a) for a in rivals}
        wins = mine == mine and _diverged(ctx, e, ldrl) == 0 and all(
            not t <= mine for t in theirs.values())
        held += wins
        stats.append(f"{e}: " + ", ".join(
            f"{a} {_stat(final_angles(ctx, e, a), '.1f', '°')}"
            + (f" ({_diverged(ctx, e, a)} diverged)" if _diverged(ctx, e, a) else "")
            for a in [ldrl, *rivals]))
    return Claim(
        "L-DRL's updates align with backprop's gradient better than those of DTP, DRL and "
        "the DDTP baselines.", verdict_of(held, len(ok)),
        f"L-DRL has the smallest mean angle in {held} of {len(ok)} testable experiments "
        "(a rule whose every seed diverged has no angle and counts as worse)."
        + _untested_note(why),
        statistic="final update-vs-backprop angle, mean over weight matrices: "
        + ("; ".join(stats) or "-"), spread="mean ± std over seeds",
        threshold="L-DRL's mean below every other target-propagation rule's mean")


def _gap_claim(ctx: Context, exps: list[str]) -> Claim:
    ldrl, bp = ctx.arm("ldrl"), ctx.arm(REFERENCE)
    ok, why = _testable(ctx, exps, [ldrl])
    held, stats, causes = 0, [], []
    for e in ok:
        a_bp, a_l = accuracies(ctx.runs(e, bp)), accuracies(ctx.runs(e, ldrl))
        gap = mean_std(a_bp)[0] - mean_std(a_l)[0]
        fine = _diverged(ctx, e, ldrl) == 0 and gap <= ACC_GAP
        held += fine
        stats.append(f"{e}: BP {_stat(a_bp, '.2f')} %, L-DRL {_stat(a_l, '.2f')} %, "
                     f"gap {fmt(gap, '+.2f')} pts")
        if not fine:
            causes.append(f"{e}: L-DRL " + (f"diverged in {_diverged(ctx, e, ldrl)} seeds"
                                             if _diverged(ctx, e, ldrl) else
                                             f"{fmt(gap, '.2f')} points below backprop"))
    evidence = (f"Within {ACC_GAP:g} point in {held} of {len(ok)} testable experiments"
                + (f" ({'; '.join(causes)})" if causes else "") + "." + _untested_note(why))
    return Claim("L-DRL's test accuracy is within about 1 % of backprop's.",
                 verdict_of(held, len(ok)), evidence,
                 statistic="; ".join(stats) or "-", spread="mean ± std over seeds",
                 threshold=f"backprop's mean - L-DRL's mean <= {ACC_GAP:g} point, no "
                           "L-DRL seed diverged")


def _ahead_claim(ctx: Context, exps: list[str]) -> Claim:
    ldrl = ctx.arm("ldrl")
    rivals = _present(ctx, exps, DRL_FAMILY)
    ok, why = _testable(ctx, exps, [ldrl, *rivals])
    held, stats = 0, []
    for e in ok:
        mine = mean_std(accuracies(ctx.runs(e, ldrl)))[0]
        theirs = {a: mean_std(accuracies(ctx.runs(e, a)))[0] for a in rivals}
        held += mine == mine and _diverged(ctx, e, ldrl) == 0 and all(
            not t > mine for t in theirs.values())
        stats.append(f"{e}: " + ", ".join(
            f"{a} {_stat(accuracies(ctx.runs(e, a)), '.2f')} %"
            + (f" ({_diverged(ctx, e, a)} diverged)" if _diverged(ctx, e, a) else "")
            for a in [ldrl, *rivals]))
    return Claim(
        "L-DRL's test accuracy is ahead of DRL's and of the DDTP baselines'.",
        verdict_of(held, len(ok)),
        f"L-DRL's mean at least every rival's in {held} of {len(ok)} testable experiments "
        "(a rule whose every seed diverged has no accuracy and counts as behind)."
        + _untested_note(why),
        statistic="; ".join(stats) or "-", spread="mean ± std over seeds",
        threshold="L-DRL's mean >= the mean of " + ", ".join(rivals))


def _cost_claim(ctx: Context, exps: list[str]) -> Claim:
    """Judged on every experiment whose cost was measured: a per-step timing on the
    experiment's model needs no trained run."""
    ldrl = ctx.arm("ldrl")
    ratios = {e: ctx.step_cost(e, ldrl) for e in exps}
    measured = {e: r for e, r in ratios.items() if r == r}
    held = sum(r >= COST_FACTOR for r in measured.values())
    missing = [f"{e}: not measured" for e in exps if e not in measured]
    return Claim(
        "L-DRL costs several times backprop per batch.", verdict_of(held, len(measured)),
        f"At least {COST_FACTOR:g} times backprop's step time in {held} of {len(measured)} "
        "measured experiments (a timing of one step on the experiment's model and batch: it "
        "needs no trained run, so it is judged wherever it was measured)."
        + _untested_note(missing),
        statistic="L-DRL step time relative to backprop (paired blocks): "
        + ", ".join(f"{e} {fmt(r, '.1f', '×')}" for e, r in ratios.items()),
        spread=f"median of {ctx.cost_repeats} interleaved block pairs, one measurement per "
        "experiment (a timing, not a per-seed quantity)",
        threshold=f"ratio >= {COST_FACTOR:g} (several times)")
