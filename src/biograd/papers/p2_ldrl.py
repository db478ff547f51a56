"""P2 (Ernoult et al. 2022, arXiv:2201.13415): BP, DTP, DRL and L-DRL on MNIST /
Fashion-MNIST MLPs and LeNets: accuracy, the update-vs-backprop angle per layer over training
(P2's gradient-alignment figures) and the training cost relative to backprop."""

from __future__ import annotations

from biograd.experiments.paper_report import (
    REFERENCE,
    Claim,
    Context,
    Section,
    acc_cell,
    completed,
    fmt,
    mean_accuracy,
    mean_std,
    num,
    plot_layer_angles,
)

#: arms L-DRL's update angle is compared with; P2's "DRL" baselines are s-DDTP and p-DDTP
TP = ("dtp", "drl", "ldrl", "s_ddtp", "p_ddtp")  # roles (rules) of the arms


def final_angle(ctx: Context, exp: str, arm: str) -> float:
    """Mean over seeds of the last measured mean update-vs-backprop angle (degrees)."""
    vals = [s["angle_update"] for s in completed(ctx.runs(exp, arm)) if num(s.get("angle_update"))]
    return mean_std(vals)[0]


def report(ctx: Context) -> Section:
    exps = list(ctx.plan.experiments)
    arms = list(dict.fromkeys(a for e in exps for a in ctx.arms(e)))
    lines = ["## Accuracy, update angle and cost", "",
             "Per experiment: test accuracy % (mean ± std over seeds) / final update-vs-backprop "
             "angle (degrees, mean over weight matrices, on a fixed batch of training samples) "
             "/ training step time relative to backprop (rule.step + optimizer step against "
             "backprop's on the same model, batch and optimizer; median of "
             f"{ctx.cost_repeats} interleaved block pairs, measured in one process when the "
             "report is written).", "",
             "| rule | " + " | ".join(exps) + " |", "| --- |" + " --- |" * len(exps)]
    for arm in arms:
        row = []
        for e in exps:
            text = acc_cell(ctx.runs(e, arm))
            row.append(f"{text} / {fmt(final_angle(ctx, e, arm), '.1f', '°')} / "
                       f"{fmt(ctx.step_cost(e, arm), '.1f', '×')}")
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    lines += ["", "## Update-vs-backprop angle per layer over training", ""]
    for e in exps:
        lines.append(plot_layer_angles(ctx, e, [a for a in arms if a != ctx.arm(REFERENCE)],
                                       "angle_update/", f"angles_{e}.png",
                                       "update vs backprop angle (deg)"))
    tp = [a for a in (ctx.find_arm(r) for r in TP) if a in arms]
    claims = _claims(ctx, exps, tp)
    def gap(e: str) -> float:
        return mean_accuracy(ctx, e, ctx.arm("ldrl")) - mean_accuracy(ctx, e, ctx.arm(REFERENCE))

    key = "; ".join(
        f"{e}: L-DRL {fmt(gap(e), '+.1f')} pts vs BP, "
        f"{fmt(final_angle(ctx, e, ctx.arm('ldrl')), '.0f', '°')} (DTP "
        f"{fmt(final_angle(ctx, e, ctx.arm('dtp')), '.0f', '°')}), "
        f"{fmt(ctx.step_cost(e, ctx.arm('ldrl')), '.1f', '×')} BP" for e in exps[:2])
    return Section("\n".join(lines), claims, key)


def _claims(ctx: Context, exps: list[str], tp: list[str]) -> list[Claim]:
    # a rule with no finite angle (diverged) cannot beat L-DRL; L-DRL without one cannot win
    ldrl, drl, bp = ctx.arm("ldrl"), ctx.arm("drl"), ctx.arm(REFERENCE)
    best_angle = [e for e in exps if final_angle(ctx, e, ldrl) == final_angle(ctx, e, ldrl)
                  and all(not final_angle(ctx, e, ldrl) > final_angle(ctx, e, a) for a in tp)]
    angles = ", ".join(
        f"{e}: " + ", ".join(f"{a} {fmt(final_angle(ctx, e, a), '.1f', '°')}" for a in tp)
        for e in exps)
    gaps = {e: mean_accuracy(ctx, e, bp) - mean_accuracy(ctx, e, ldrl) for e in exps}
    near = [e for e, g in gaps.items() if g <= 1.0]
    ahead = [e for e in exps if mean_accuracy(ctx, e, ldrl) == mean_accuracy(ctx, e, ldrl)
             and not mean_accuracy(ctx, e, ldrl) < mean_accuracy(ctx, e, drl)]
    ratios = {e: ctx.step_cost(e, ldrl) for e in exps}

    def verdict(n: int) -> str:
        return "held" if n == len(exps) else ("partly held" if n else "did not hold")

    return [
        Claim("L-DRL's updates align with backprop's gradient better than DTP's and DRL's.",
              verdict(len(best_angle)),
              f"Smallest final angle in {len(best_angle)}/{len(exps)} experiments ({angles})."),
        Claim("L-DRL is within about 1% of backprop's accuracy and ahead of DRL.",
              verdict(len(set(near) & set(ahead))),
              "Accuracy gap BP - L-DRL (points): "
              + ", ".join(f"{e} {fmt(g, '+.2f')}" for e, g in gaps.items())
              + f"; L-DRL >= DRL in {len(ahead)}/{len(exps)}. At the quick budget (one short "
              "epoch on a subset) the feedback weights have had few batches to learn, which "
              "favours backprop; P2 trains for tens of epochs."),
        Claim("L-DRL costs several times backprop per batch.",
              verdict(sum(r >= 2 for r in ratios.values() if r == r)),
              "Training step time relative to backprop (paired blocks in one process): "
              + ", ".join(f"{e} {fmt(r, '.1f', '×')}" for e, r in ratios.items()) + "."),
    ]
