"""P4 (Millidge et al. 2020, arXiv:2009.05359): activation relaxation and its variants vs
backprop on MNIST / Fashion-MNIST (learning curves, Fig. 2-4), and the relaxation's
convergence to backprop's gradients per layer over relaxation steps (Fig. 1), measured
directly: the rule relaxes a batch for ``t`` steps and each activity ``x_l`` is compared with
autograd's per-sample gradient ``dl_i/dz_l`` (the fixed point, P4 Eq. 5)."""

from __future__ import annotations

import torch

from biograd.core.registry import create_rule
from biograd.experiments.paper_report import (
    REFERENCE,
    Claim,
    Context,
    Section,
    acc_cell,
    accuracies,
    cost_table,
    learning_curves,
    mean_std,
)
from biograd.runner.config import Config
from biograd.runner.data import load_data
from biograd.runner.models import build_model

AR = "activation_relaxation"
#: a variant "keeps performance" when within this many accuracy points of backprop
KEEP_POINTS = 2.0


def relaxation_errors(cfg: Config, rule_args: dict, batch: int, steps: int) -> list[list[float]]:
    """Relative error ``||x_l(t) - dl_i/dz_l|| / ||dl_i/dz_l||`` per hidden layer (rows) and
    relaxation step t = 0..steps (columns), on the first ``batch`` training samples and the
    model initialised with ``cfg.seed``."""
    data = load_data(cfg)
    x, y = data.train_x[:batch], data.train_y[:batch]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.model_args)
    rule = create_rule(AR, model, loss=cfg.loss, **{**rule_args, "tol": None})
    zs, z = [], x
    for block in rule.blocks:
        z = block(z)
        zs.append(z)
    grads = torch.autograd.grad(rule.loss_fn(zs[-1], y), zs[:-1])
    targets = [g.detach() * len(x) for g in grads]  # per-sample gradients dl_i/dz_l
    errors: list[list[float]] = [[] for _ in targets]
    for t in range(steps + 1):
        if t == 0:
            acts = [zz.detach() for zz in zs[:-1]]  # the relaxation starts at the forward pass
        else:
            rule.steps = t
            acts = rule.relax_activities(x, y)[0][:-1]
        for i, (a, g) in enumerate(zip(acts, targets, strict=True)):
            errors[i].append(float((a - g).norm() / g.norm()))
    return errors


def _plot(ctx: Context, curves: dict[str, list[list[float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax, (label, errs) in zip(axes.flat, curves.items(), strict=False):
        for i, e in enumerate(errs):
            ax.plot(range(len(e)), e, label=f"hidden layer {i + 1}")
        ax.set_yscale("log")
        ax.set_xlabel("relaxation step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("||x_l - dl/dz_l|| / ||dl/dz_l||")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path, link = ctx.figure("relaxation_convergence.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![relaxation convergence]({link})\n"


def report(ctx: Context) -> Section:
    exps = list(ctx.plan.experiments)
    arms = list(dict.fromkeys(a for e in exps for a in ctx.arms(e)))
    arm_cfg = ctx.plan.preset.get("arms") or {}
    st = ctx.plan.settings
    batch, steps = int(st.get("relax_batch", 64)), int(st.get("relax_steps", 100))
    first = ctx.plan.experiments[exps[0]]
    curves = {a: relaxation_errors(first, arm_cfg[a].get("rule_args") or {}, batch, steps)
              for a in arms if arm_cfg[a]["rule"] == AR}
    lines = ["## Test accuracy", "", "Test accuracy % (mean ± std over seeds) after training.",
             "", "| arm | " + " | ".join(exps) + " |", "| --- |" + " --- |" * len(exps)]
    acc = {(e, a): mean_std(accuracies(ctx.runs(e, a))) for e in exps for a in arms}
    for a in arms:
        lines.append(f"| {a} | " + " | ".join(acc_cell(ctx.runs(e, a)) for e in exps) + " |")
    lines += ["", "## Learning curves", ""]
    lines += [learning_curves(ctx, e, f"learning_curves_{e}.png") for e in exps]
    marks = sorted({0, 1, 10, 25, 50, steps} & set(range(steps + 1)))
    lines += ["## Relaxation convergence to the backprop gradient (P4 Fig. 1)", "",
              f"{first.dataset}, the untrained {first.model} of seed {first.seed}, first {batch} "
              f"training samples, Euler step from the rule's settings; relative error of each "
              "hidden layer's activity to autograd's per-sample gradient dl/dz_l after t "
              "relaxation steps (t = 0 is the feed-forward start).", "",
              "| arm | layer | " + " | ".join(f"t={t}" for t in marks) + " |",
              "| --- | --- |" + " --- |" * len(marks)]
    for a, errs in curves.items():
        for i, e in enumerate(errs):
            lines.append(f"| {a} | {i + 1} | " + " | ".join(f"{e[t]:.2e}" for t in marks) + " |")
    lines += ["", "Only standard AR has the backprop gradient as its fixed point; the variants "
              "relax to another point (with random or learned backward weights, which are equal "
              "before training, the fixed point of feedback alignment), so their error stays "
              "O(1) by design.", "", _plot(ctx, curves), "", *cost_table(ctx, exps, arms)]
    claims = _claims(ctx, exps, arms, acc, curves, arm_cfg)
    std = next((a for a in curves if not arm_cfg[a].get("rule_args")), None)
    key = (f"AR relax error after {steps} steps: "
           + (f"{max(e[-1] for e in curves[std]):.1e}" if std else "-")
           + "; acc " + ", ".join(
               f"{e}: BP {acc[e, ctx.arm(REFERENCE)][0]:.1f} / AR {acc[e, std][0]:.1f}"
               for e in exps
               if std))
    return Section("\n".join(lines), claims, key)


def _claims(ctx: Context, exps: list[str], arms: list[str], acc: dict, curves: dict,
            arm_cfg: dict) -> list[Claim]:
    std = next((a for a in curves if not arm_cfg[a].get("rule_args")), None)
    out = []
    if std:
        final = [e[-1] for e in curves[std]]
        out.append(Claim(
            "AR's relaxed activities converge to backprop's gradients.",
            "held" if max(final) < 1e-2 else "did not hold",
            "Relative error per hidden layer after the last step: "
            + ", ".join(f"{v:.1e}" for v in final) + " (start: "
            + ", ".join(f"{e[0]:.2f}" for e in curves[std]) + "); converged = below 1e-2 in "
            "every layer. The error contracts geometrically with the Euler step, as the "
            "linear dynamics predict; lower layers start later, so they lag by a few steps "
            "per layer."))
        gaps = {e: acc[e, ctx.arm(REFERENCE)][0] - acc[e, std][0] for e in exps}
        out.append(Claim(
            "AR's accuracy matches backprop's.",
            "held" if all(g <= 1.0 for g in gaps.values()) else "did not hold",
            "BP - AR (points): " + ", ".join(f"{e} {g:+.2f}" for e, g in gaps.items())
            + " (matching = at most 1 point below backprop)."))
    variants = [a for a in arms if a in arm_cfg and arm_cfg[a]["rule"] == AR and a != std
                and (arm_cfg[a].get("rule_args") or {}).get("backward") != "random"]
    if variants:
        bp = ctx.arm(REFERENCE)
        gaps = {(e, a): acc[e, bp][0] - acc[e, a][0] for e in exps for a in variants}
        kept = sum(g <= KEEP_POINTS for g in gaps.values())
        out.append(Claim(
            "The simplifications (learned backward weights, dropped derivatives) keep "
            "performance.",
            "held" if kept == len(gaps) else ("partly held" if kept else "did not hold"),
            "BP - variant (points): " + ", ".join(f"{a} on {e} {g:+.2f}"
                                                  for (e, a), g in gaps.items())
            + f" (kept = at most {KEEP_POINTS:g} points below backprop). Short quick-budget "
            "training leaves learned backward weights little time to align, so they trail "
            "more than in P4."))
    return out
