"""P1 (Ororbia & Mali 2019, arXiv:1805.11703, Tables 1-2): test error of BP, FA, DFA, EqProp,
DTP, DTP-sigma and LRA-E on MNIST / Fashion-MNIST MLPs of 3, 5 and 8 tanh layers x 256 units,
mean +- std over seeds, and the diverged runs per rule and cell (the paper's "stability").

Claim checks (each on the cells, i.e. experiments, the budget can test:
:meth:`~biograd.experiments.paper_report.Context.untestable`, every run of the arms involved
finished, at least :func:`min_seeds` seeds, backprop at the experiment's reference accuracy):

1. *stable with depth*: no run of LRA-E or DTP-sigma diverged and none ended at chance, in the
   deeper cells (more hidden layers than the shallowest net);
2. *generalise well with depth*: in each deeper cell, the rule's mean test error over seeds is
   within :data:`GAP_POINTS` of backprop's;
3. *LRA-E is the best alternative*: in each cell, LRA-E's mean test error is the lowest of the
   six alternatives to backprop.
"""

from __future__ import annotations

from typing import Any

from biograd.experiments.paper_report import (
    NOT_HELD,
    NOT_TESTABLE,
    REFERENCE,
    Claim,
    Context,
    Section,
    accuracies,
    cell,
    completed,
    cost_table,
    lost,
    mean_std,
    num,
    verdict_of,
)
from biograd.papers import p1_eqprop
from biograd.papers.p1_longer import backprop_check, gap_check, longer_check

ALTERNATIVES_OF_INTEREST = ("lra_e", "dtp_sigma")  # roles (rules) of the arms
#: claim 2's threshold: mean test error at most this many points above backprop's, same cell
GAP_POINTS = 2.0
#: a completed run whose test accuracy is below this (%) ended at chance level (10 classes):
#: counted as unstable with the diverged runs
CHANCE_ACC = 20.0


def min_seeds(ctx: Context) -> int:
    """Completed backprop seeds a cell needs to be testable: 3 (mean ± std over seeds) at the
    standard and full budgets; quick budgets run one seed."""
    return 1 if ctx.plan.budget == "quick" else 3


def depth(ctx: Context, exp: str) -> int:
    """Hidden layers of ``exp``'s MLP."""
    return len(ctx.plan.experiments[exp].model_args.get("hidden", []))


def _error(ctx: Context, exp: str, arm: str) -> tuple[float, float, int, int]:
    """(mean, std) of the test error % over completed seeds, unstable runs (diverged, failed
    or at chance), runs that exist (finished or not)."""
    runs = [s for s in ctx.runs(exp, arm) if s.get("status") != "missing"]
    errs = [100 - a for a in accuracies(runs)]
    mean, std = mean_std(errs)
    return mean, std, len(_unstable(runs)), len(runs)


def _unstable(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Diverged or failed runs, and completed runs that ended at chance (< CHANCE_ACC %)."""
    return [s for s in runs if lost(s)
            or (s in completed(runs) and 100 * s["test_acc"] < CHANCE_ACC)]


def _final_train_loss(ctx: Context, exp: str, arm: str) -> tuple[float, float]:
    return mean_std([s["train_loss"] for s in completed(ctx.runs(exp, arm))
                     if num(s.get("train_loss"))])


def _plot(ctx: Context, datasets: dict[str, list[tuple[int, str]]], arms: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, (ds, exps) in zip(axes[0], datasets.items(), strict=True):
        for arm in arms:
            pts = [(d, *_error(ctx, e, arm)[:2]) for d, e in exps]
            pts = [p for p in pts if p[1] == p[1]]
            if pts:
                xs, ys, sd = zip(*pts, strict=True)
                ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=arm)
        ax.set_title(ds)
        ax.set_xlabel("hidden layers")
        ax.set_ylabel("test error % (mean ± std over seeds)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path, link = ctx.figure("error_vs_depth.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![test error vs depth]({link})\n"


def _missing(ctx: Context, exp: str, arm: str) -> int:
    return sum(s.get("status") == "missing" for s in ctx.runs(exp, arm))


def report(ctx: Context) -> Section:
    exps = list(ctx.plan.experiments)
    arms = list(dict.fromkeys(a for e in exps for a in ctx.arms(e)))
    datasets: dict[str, list[tuple[int, str]]] = {}
    for e in exps:
        datasets.setdefault(ctx.plan.experiments[e].dataset, []).append((depth(ctx, e), e))
    for items in datasets.values():
        items.sort()
    order = [e for items in datasets.values() for _, e in items]
    head = " | ".join(f"{ds} d{d}" for ds, items in datasets.items() for d, _ in items)
    best = {e: b for e in order if (b := _best(ctx, e, arms)) is not None}
    bp = ctx.arm(REFERENCE)
    lines = ["## Test error (%) and unstable runs", "",
             "Cells: test error mean ± std over completed seeds; in brackets the runs that "
             "diverged, failed or ended at chance (test accuracy below "
             f"{CHANCE_ACC:g} %) and the runs not trained yet. Lower is better; **bold** = best "
             "alternative to backprop. Reference: backprop's test accuracy at which a cell "
             "counts as converged (the preset's reference_accuracy).", "",
             f"| rule | {head} |", "| --- |" + " --- |" * len(order)]
    refs = [ctx.reference_target(e) for e in order]
    lines.append("| *reference (backprop acc. %)* | "
                 + " | ".join(f"≥ {r:g}" if r is not None else "-" for r in refs) + " |")
    for arm in arms:
        row = []
        for e in order:
            mean, std, bad, n = _error(ctx, e, arm)
            text = cell([100 - a for a in accuracies(ctx.runs(e, arm))])
            if best.get(e) == arm:
                text = f"**{text}**"
            notes = ([f"{bad}/{n} unstable"] if bad else []) + (
                [f"{m} missing"] if (m := _missing(ctx, e, arm)) else [])
            row.append(text + (f" ({', '.join(notes)})" if notes else ""))
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    lines += ["", "Final training loss (cross-entropy over the last epoch, mean ± std over "
              "seeds): whether a rule fits the training set or stops short of it.", "",
              f"| rule | {head} |", "| --- |" + " --- |" * len(order)]
    for arm in arms:
        row = []
        for e in order:
            m, s = _final_train_loss(ctx, e, arm)
            row.append("-" if m != m else (f"{m:.4f} ± {s:.4f}" if s == s else f"{m:.4f}"))
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    lines += ["", _diverged_table(ctx, order, arms), "", _plot(ctx, datasets, arms), "",
              *cost_table(ctx, order, arms), "", *p1_eqprop.section(ctx)[0]]
    claims = _claims(ctx, order, arms, best)
    lra_arm = ctx.arm("lra_e")
    ok = [e for e in order if ctx.untestable(e, arms, min_seeds(ctx)) is None]
    lra = [_error(ctx, e, lra_arm)[0] for e in ok]
    ref = [_error(ctx, e, bp)[0] for e in ok]
    key = (f"LRA-E best alternative in {sum(best.get(e) == lra_arm for e in ok)}/{len(ok)} "
           f"testable cells (of {len(order)}); mean error there LRA-E {_avg(lra):.2f}% vs BP "
           f"{_avg(ref):.2f}%; unstable runs: {_diverged(ctx, order, arms)}")
    return Section("\n".join(lines), claims, key)


def _diverged_table(ctx: Context, exps: list[str], arms: list[str]) -> str:
    """Unstable runs per arm and cell: ``k/n`` (diverged, failed or at chance / finished)."""
    lines = ["Unstable runs per rule and cell (diverged: NaN/inf or loss above max_loss; "
             f"failed; or completed below {CHANCE_ACC:g} % test accuracy) over the runs "
             "finished:", "", "| rule | " + " | ".join(exps) + " |",
             "| --- |" + " ---: |" * len(exps)]
    for arm in arms:
        cells = []
        for e in exps:
            runs = [s for s in ctx.runs(e, arm) if s.get("status") in
                    ("completed", "diverged", "failed")]
            cells.append(f"{len(_unstable(runs))}/{len(runs)}" if runs else "-")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best(ctx: Context, exp: str, arms: list[str]) -> str | None:
    alts = [(mean, a) for a in arms if a != ctx.arm(REFERENCE)
            for mean in [_error(ctx, exp, a)[0]] if mean == mean]
    return min(alts)[1] if alts else None


def _avg(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def _diverged(ctx: Context, exps: list[str], arms: list[str]) -> str:
    counts = {a: sum(_error(ctx, e, a)[2] for e in exps) for a in arms}
    return ", ".join(f"{a} {n}" for a, n in counts.items() if n) or "none"


def _pm(ctx: Context, exp: str, arm: str) -> str:
    mean, std, _, _ = _error(ctx, exp, arm)
    return f"{mean:.2f} ± {std:.2f} %"


def _untestable_text(ctx: Context, skipped: dict[str, str]) -> str:
    """The cells a claim could not test and why, with, where backprop did not converge, what
    backprop reached with more epochs (:func:`backprop_check`)."""
    if not skipped:
        return ""
    return (" Not testable at this budget: "
            + "; ".join(f"{e} ({why})" for e, why in skipped.items()) + "."
            + "".join(backprop_check(ctx, e) for e in skipped))


def _split(ctx: Context, exps: list[str], arms: list[str]) -> tuple[list[str], dict[str, str]]:
    """(testable cells, {untestable cell: why}) for a claim involving ``arms``."""
    ok, skipped = [], {}
    for e in exps:
        why = ctx.untestable(e, arms, min_seeds(ctx))
        if why is None:
            ok.append(e)
        else:
            skipped[e] = why
    return ok, skipped


def _claims(ctx: Context, exps: list[str], arms: list[str], best: dict[str, str]) -> list[Claim]:
    bp = ctx.arm(REFERENCE)
    ours = [a for r in ALTERNATIVES_OF_INTEREST if (a := ctx.find_arm(r)) in arms]
    shallowest = min(depth(ctx, e) for e in exps)
    deep = [e for e in exps if depth(ctx, e) > shallowest]
    shallow = [e for e in exps if depth(ctx, e) == shallowest]
    return [_stable(ctx, deep, shallow, ours, shallowest),
            _generalise(ctx, deep, shallow, ours, bp),
            _lra_best(ctx, exps, arms, best, bp)]


def _context_line(ctx: Context, cells: list[str], text: Any) -> str:
    ok = [e for e in cells if ctx.untestable(e, (), min_seeds(ctx)) is None]
    return f" For comparison, at the shallowest depth: {text(ok)}." if ok else ""


def _stable(ctx: Context, deep: list[str], shallow: list[str], ours: list[str],
            shallowest: int) -> Claim:
    ok, skipped = _split(ctx, deep, ours)
    counts = {(e, a): (len(_unstable(ctx.runs(e, a))), len(ctx.runs(e, a)))
              for e in ok for a in ours}
    held = sum(counts[(e, a)][0] == 0 for e in ok for a in ours)
    stat = ", ".join(f"{a} {e} {k}/{n}" for (e, a), (k, n) in counts.items())
    verdict = verdict_of(held, len(ok) * len(ours))
    evidence = (f"Judged on {len(ok)} of {len(deep)} deeper cells."
                + _untestable_text(ctx, skipped)
                + _context_line(ctx, shallow, lambda cells: ", ".join(
                    f"{a} {e} {len(_unstable(ctx.runs(e, a)))}/{len(ctx.runs(e, a))} "
                    "unstable" for e in cells for a in ours)))
    return Claim("With deeper tanh nets LRA-E and DTP-sigma stay stable (no run diverges or "
                 "ends at chance).", verdict, evidence,
                 statistic=f"unstable runs per rule and cell: {stat or 'none testable'}",
                 spread=f"counted over {min_seeds(ctx)}+ seeds per cell",
                 threshold=f"0 unstable runs in every deeper cell (more than {shallowest} "
                           "hidden layers)")


def _generalise(ctx: Context, deep: list[str], shallow: list[str], ours: list[str],
                bp: str) -> Claim:
    ok, skipped = _split(ctx, deep, ours)
    gaps = {(e, a): _error(ctx, e, a)[0] - _error(ctx, e, bp)[0] for e in ok for a in ours}
    held = sum(g <= GAP_POINTS for g in gaps.values())
    verdict = verdict_of(held, len(gaps)) if ok else NOT_TESTABLE
    stat = "; ".join(f"{e}: {a} {_pm(ctx, e, a)} vs backprop {_pm(ctx, e, bp)} (gap {g:+.2f})"
                     for (e, a), g in gaps.items())
    evidence = (f"Judged on {len(ok)} of {len(deep)} deeper cells."
                + "".join(gap_check(ctx, e, a, g, GAP_POINTS) for (e, a), g in gaps.items()
                          if g > GAP_POINTS)
                + _untestable_text(ctx, skipped)
                + _context_line(ctx, shallow, lambda cells: "; ".join(
                    f"{e}: " + ", ".join(f"{a} {_pm(ctx, e, a)}" for a in [*ours, bp])
                    for e in cells)))
    return Claim("With deeper tanh nets LRA-E and DTP-sigma generalise well.", verdict,
                 evidence, statistic=f"test error, mean ± std over seeds: {stat or 'none'}",
                 spread="± = std over seeds",
                 threshold=f"mean error at most {GAP_POINTS:g} points above backprop's in the "
                           "same cell")


def _lra_best(ctx: Context, exps: list[str], arms: list[str], best: dict[str, str],
              bp: str) -> Claim:
    lra = ctx.arm("lra_e")
    ok, skipped = _split(ctx, exps, arms)
    wins = [e for e in ok if best.get(e) == lra]
    verdict = verdict_of(len(wins), len(ok))
    per = []
    for e in ok:
        alts = sorted((_error(ctx, e, a)[0], a) for a in arms if a not in (bp, lra))
        rival = alts[0][1]
        diff = _error(ctx, e, lra)[0] - _error(ctx, e, rival)[0]
        spread = max(_error(ctx, e, lra)[1], _error(ctx, e, rival)[1])
        within = " (within one std)" if abs(diff) <= spread else ""
        per.append(f"{e}: LRA-E {_pm(ctx, e, lra)}, best other {rival} {_pm(ctx, e, rival)}, "
                   f"difference {diff:+.2f}{within}")
    evidence = (f"LRA-E lowest in {len(wins)} of {len(ok)} testable cells (of {len(exps)})."
                + _untestable_text(ctx, skipped))
    if verdict in (NOT_HELD, "partly held") and ok:
        evidence += " " + _why_not_best(ctx, [e for e in ok if e not in wins], lra)
    return Claim("LRA-E is the best of the backprop alternatives.", verdict, evidence,
                 statistic="test error, mean ± std over seeds: " + ("; ".join(per) or "none"),
                 spread="± = std over seeds",
                 threshold="LRA-E's mean error the lowest of the six alternatives in a cell")


def _why_not_best(ctx: Context, lost: list[str], lra: str) -> str:
    """Measured facts on the cells LRA-E did not win: its training loss and update angle to
    backprop's gradient against the winner's, with backprop converged (so not the budget)."""
    out = []
    for e in lost:
        win = _best(ctx, e, [a for a in ctx.arms(e) if a != lra] or [lra]) or "-"
        (lt, _), (wt, _) = _final_train_loss(ctx, e, lra), _final_train_loss(ctx, e, win)
        la, wa = _angle(ctx, e, lra), _angle(ctx, e, win)
        out.append(f"{e}: final training loss LRA-E {lt:.4f} vs {win} {wt:.4f}; update angle "
                   f"to backprop's gradient at the end LRA-E {la:.1f}° vs {win} {wa:.1f}°")
    longer = ""
    for e in lost:  # a gap beyond the seeds' spread: retrained with more epochs, if asked
        win = _best(ctx, e, [a for a in ctx.arms(e) if a != lra] or [lra]) or "-"
        (lm, ls, _, _), (wm, ws, _, _) = _error(ctx, e, lra), _error(ctx, e, win)
        if win != "-" and lm - wm > max(ls, ws):
            longer += longer_check(ctx, e, (lra, win), lm - wm)
    return ("Where LRA-E lost, backprop had converged (the cell is testable) and every rule "
            "trained the same epochs; measured: " + "; ".join(out) + "." + longer)


def _angle(ctx: Context, exp: str, arm: str) -> float:
    return mean_std([s["angle_update"] for s in completed(ctx.runs(exp, arm))
                     if num(s.get("angle_update"))])[0]

