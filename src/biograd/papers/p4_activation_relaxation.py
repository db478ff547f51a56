"""P4 (Millidge et al. 2020, arXiv:2009.05359): activation relaxation and its variants vs
backprop on MNIST / Fashion-MNIST (learning curves, Fig. 2-4), and the relaxation's
convergence to backprop's gradients per layer over relaxation steps (Fig. 1), measured
directly: the rule relaxes a batch for ``t`` steps and each activity ``x_l`` is compared with
autograd's per-sample gradient ``dl_i/dz_l`` (the fixed point, P4 Eq. 5)."""

from __future__ import annotations

import dataclasses
import functools
from unittest import mock

import torch
from torch import Tensor

from biograd.core.registry import create_rule
from biograd.core.relax import relax
from biograd.experiments.paper_report import (
    NOT_TESTABLE,
    REFERENCE,
    Claim,
    Context,
    Section,
    acc_cell,
    accuracies,
    cost_table,
    learning_curves,
    lost,
    mean_std,
    pm,
    verdict_of,
)
from biograd.rules import activation_relaxation as ar_module
from biograd.runner.config import Config
from biograd.runner.data import load_data
from biograd.runner.models import build_model

AR = "activation_relaxation"
#: a variant "keeps performance" when within this many accuracy points of backprop
KEEP_POINTS = 2.0
#: AR "matches" backprop's accuracy when at most this many points below it
MATCH_POINTS = 1.0
#: the relaxation "converged" when every hidden layer's relative error is below this once the
#: dynamics have settled: float32 rounding of the activities and of autograd's gradient is
#: ~1e-6 relative, and a wrong fixed point leaves an O(1) error (as the variants show)
CONVERGED = 1e-4
#: P4's number of Euler steps (its Fig. 1); reported beside the settled error
P4_STEPS = 100


def relaxation_errors(cfg: Config, rule_args: dict, batch: int, steps: int) -> list[list[float]]:
    """Relative error ``||x_l(t) - dl_i/dz_l|| / ||dl_i/dz_l||`` per hidden layer (rows) and
    relaxation step t = 0..steps (columns) of AR's Euler dynamics (P4 Eq. 5, step by step),
    on the first ``batch`` training samples and the model initialised with ``cfg.seed``."""
    data = load_data(cfg)
    x, y = data.train_x[:batch], data.train_y[:batch]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.model_args)
    # AR's Euler steps themselves (solver="euler"): the closed form's fixed point is the
    # backprop recursion, so measuring it would be true by construction
    rule = create_rule(AR, model, loss=cfg.loss,
                       **{**rule_args, "tol": None, "steps": steps, "solver": "euler"})
    zs, z = [], x
    for block in rule.blocks:
        z = block(z)
        zs.append(z)
    grads = torch.autograd.grad(rule.loss_fn(zs[-1], y), zs[:-1])
    targets = [g.detach() * len(x) for g in grads]  # per-sample gradients dl_i/dz_l
    errors: list[list[float]] = [[] for _ in targets]

    def record(_: int, acts: list[Tensor]) -> None:
        for i, (a, g) in enumerate(zip(acts, targets, strict=True)):
            errors[i].append(float((a - g).norm() / g.norm()))

    record(0, [zz.detach() for zz in zs[:-1]])  # the relaxation starts at the forward pass
    # traced through the shared relaxation loop's callback; the rule's own module is left as it
    # is (editing it would change the code fingerprint of every stored AR run)
    with mock.patch.object(ar_module, "relax", functools.partial(relax, callback=record)):
        rule.relax_activities(x, y)
    if len(errors[0]) != steps + 1:
        raise RuntimeError(f"the relaxation trace holds {len(errors[0]) - 1} of {steps} Euler "
                           "steps: activation_relaxation no longer calls core.relax.relax")
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


def min_seeds(ctx: Context) -> int:
    """Seeds a claim needs per arm: 3 at the standard and full budgets (mean ± std), else 1."""
    return 1 if ctx.plan.budget == "quick" else 3


def ar_arms(ctx: Context, arms: list[str]) -> list[str]:
    """The arms of ``arms`` that train activation relaxation (any variant)."""
    arm_cfg = ctx.plan.preset.get("arms") or {}
    return [a for a in arms if a in arm_cfg and arm_cfg[a]["rule"] == AR]


def standard_ar(ctx: Context, arms: list[str]) -> str | None:
    """The arm training P4's AR itself (the rule's defaults: no variant rule_args)."""
    arm_cfg = ctx.plan.preset.get("arms") or {}
    return next((a for a in ar_arms(ctx, arms) if not arm_cfg[a].get("rule_args")), None)


def relaxation(ctx: Context, arms: list[str]) -> tuple[dict[str, list[list[list[float]]]] | None,
                                                        int, int]:
    """Relative error of the relaxation per AR arm, seed, hidden layer and relaxation step
    (:func:`relaxation_errors` on the first experiment's model initialised with each seed of
    the budget), stored as the measurement ``relaxation`` (:meth:`Context.measure`: keyed by
    the data, model, seeds, arms' rule_args, batch and steps, with the rule's code); None when
    it is not stored and this invocation measures nothing. Also returns (batch, steps)."""
    st = ctx.plan.settings
    batch, steps = int(st.get("relax_batch", 64)), int(st.get("relax_steps", 100))
    arm_cfg = ctx.plan.preset.get("arms") or {}
    first = ctx.plan.experiments[next(iter(ctx.plan.experiments))]
    ours = ar_arms(ctx, arms)
    key = {"dataset": first.dataset, "dataset_args": first.dataset_args,
           "train_subset": first.train_subset, "model": first.model,
           "model_args": first.model_args, "loss": first.loss, "seeds": ctx.plan.seeds,
           "batch": batch, "steps": steps, "solver": "euler",
           "arms": {a: arm_cfg[a].get("rule_args") or {} for a in ours}}

    def compute() -> dict[str, list[list[list[float]]]]:
        out: dict[str, list[list[list[float]]]] = {}
        for a in ours:
            out[a] = [relaxation_errors(dataclasses.replace(first, seed=seed),
                                        arm_cfg[a].get("rule_args") or {}, batch, steps)
                      for seed in ctx.plan.seeds]
        return out

    got = ctx.measure("relaxation", compute, key=key, rules=[AR])
    return got, batch, steps


def report(ctx: Context) -> Section:
    exps = list(ctx.plan.experiments)
    arms = list(dict.fromkeys(a for e in exps for a in ctx.arms(e)))
    errors, batch, steps = relaxation(ctx, arms)
    first = ctx.plan.experiments[exps[0]]
    lines = ["## Test accuracy", "", "Test accuracy % (mean ± std over seeds) after training.",
             "", "| arm | " + " | ".join(exps) + " |", "| --- |" + " --- |" * len(exps)]
    for a in arms:
        lines.append(f"| {a} | " + " | ".join(acc_cell(ctx.runs(e, a)) for e in exps) + " |")
    lines += ["", "## Learning curves", ""]
    lines += [learning_curves(ctx, e, f"learning_curves_{e}.png") for e in exps]
    marks = sorted({0, 1, 10, 25, 50, P4_STEPS, 200, steps} & set(range(steps + 1)))
    lines += ["## Relaxation convergence to the backprop gradient (P4 Fig. 1)", ""]
    if errors is None:
        lines += ["Not measured: no stored `relaxation` measurement matches this budget's "
                  "settings, and this invocation measures nothing (run `biograd reproduce` "
                  "without report-only mode to measure it).", ""]
    else:
        lines += [f"{first.dataset}, the untrained {first.model} initialised with each seed "
                  f"{ctx.plan.seeds}, first {batch} training samples, Euler step from the "
                  "rule's settings; relative error ||x_l(t) - dl/dz_l|| / ||dl/dz_l|| of each "
                  "hidden layer's activity to autograd's per-sample gradient after t "
                  "relaxation steps (t = 0 is the feed-forward start), mean ± std over seeds "
                  "(stored measurement, `_measurements/relaxation.json`).", "",
                  "| arm | layer | " + " | ".join(f"t={t}" for t in marks) + " |",
                  "| --- | --- |" + " --- |" * len(marks)]
        for a, per_seed in errors.items():
            for i in range(len(per_seed[0])):
                cells = []
                for t in marks:
                    m, s = mean_std([errs[i][t] for errs in per_seed])
                    cells.append(f"{m:.2e} ± {s:.1e}" if len(per_seed) > 1 else f"{m:.2e}")
                lines.append(f"| {a} | {i + 1} | " + " | ".join(cells) + " |")
        lines += ["", "Only standard AR has the backprop gradient as its fixed point; the "
                  "variants relax to another point (with random or learned backward weights, "
                  "which are equal before training, the fixed point of feedback alignment), so "
                  "their error stays O(1) by design.", "",
                  _plot(ctx, {a: per_seed[0] for a, per_seed in errors.items()}), ""]
    lines += [*cost_table(ctx, exps, arms)]
    claims = _claims(ctx, exps, arms, errors)
    std = standard_ar(ctx, arms)
    acc = {(e, a): mean_std(accuracies(ctx.runs(e, a)))[0] for e in exps for a in arms}
    final = _final_errors(errors, std)
    key = (f"AR relax error after {steps} steps: "
           + (f"{mean_std(final)[0]:.1e}" if final else "not measured")
           + ("; acc " + ", ".join(f"{e}: BP {acc[e, ctx.arm(REFERENCE)]:.1f} / AR "
                                   f"{acc[e, std]:.1f}" for e in exps) if std else ""))
    return Section("\n".join(lines), claims, key)


def _final_errors(errors: dict | None, arm: str | None) -> list[float]:
    """Per seed: the largest relative error over hidden layers after the last step."""
    if not errors or arm not in errors:
        return []
    return [max(layer[-1] for layer in errs) for errs in errors[arm]]


def _claims(ctx: Context, exps: list[str], arms: list[str],
            errors: dict | None) -> list[Claim]:
    std = standard_ar(ctx, arms)
    out = []
    if std:
        text = "AR's relaxed activities converge to backprop's gradients."
        final = _final_errors(errors, std)
        if not final:
            out.append(Claim(text, NOT_TESTABLE, "Not testable at this budget: the relaxation "
                             "was not measured (no stored measurement for these settings)."))
        else:
            start = [max(layer[0] for layer in errs) for errs in errors[std]]
            steps = len(errors[std][0][0]) - 1
            at_p4 = ""
            if steps > P4_STEPS:
                mid = [max(layer[P4_STEPS] for layer in errs) for errs in errors[std]]
                at_p4 = (f" After P4's {P4_STEPS} steps it is still {pm(mid, '.1e')}: the "
                         "error of layer l decays as a polynomial in t (degree: the layers "
                         "above it) times (1 - step size)^t, so the lowest layer settles last; "
                         f"the claim is about the fixed point, tested after {steps} steps.")
            m, s = mean_std(final)
            out.append(Claim(
                text, verdict_of(int(m < CONVERGED), 1),
                f"Largest relative error over the hidden layers at the feed-forward start: "
                f"{pm(start)}; the error contracts geometrically with the Euler step, as the "
                "linear dynamics predict; lower layers start later, so they lag by a few steps "
                "per layer." + at_p4,
                statistic=f"largest relative error over hidden layers after the last step "
                          f"{m:.1e}", spread=f"± {s:.1e} over {len(final)} seeds",
                threshold=f"< {CONVERGED:g}"))
        out.append(_accuracy_claim(
            ctx, exps, [std], MATCH_POINTS, "AR's accuracy matches backprop's.",
            f"matching = AR at most {MATCH_POINTS:g} point below backprop"))
    variants = [a for a in ar_arms(ctx, arms) if a != std and (
        (ctx.plan.preset["arms"][a].get("rule_args") or {}).get("backward") != "random")]
    if variants:
        out.append(_accuracy_claim(
            ctx, exps, variants, KEEP_POINTS,
            "The simplifications (learned backward weights, dropped derivatives) keep "
            "performance.", f"kept = at most {KEEP_POINTS:g} points below backprop"))
    return out


def _accuracy_claim(ctx: Context, exps: list[str], arms: list[str], points: float, text: str,
                    rule: str) -> Claim:
    """Held where every arm of ``arms`` is at most ``points`` below backprop's mean test
    accuracy, on each experiment the budget can test."""
    bp = ctx.arm(REFERENCE)
    why = {e: ctx.untestable(e, arms, min_seeds=min_seeds(ctx)) for e in exps}
    testable = [e for e in exps if not why[e]]
    if not testable:
        return Claim(text, NOT_TESTABLE, "Not testable at this budget: "
                     + "; ".join(w for w in why.values() if w) + ".")

    def mean(e: str, a: str) -> float:
        vals = accuracies(ctx.runs(e, a))
        return mean_std(vals)[0] if vals else float("-inf")

    gaps = {(e, a): mean(e, bp) - mean(e, a) for e in testable for a in arms}
    # a seed that diverged (or failed) did not keep performance, whatever the others reached
    lost_runs = {(e, a): sum(lost(s) for s in ctx.runs(e, a))
            for e in testable for a in arms}
    kept = sum(g <= points and not lost_runs[k] for k, g in gaps.items())
    stat = "; ".join(f"{e}: BP {pm(accuracies(ctx.runs(e, bp)))}, " + ", ".join(
        f"{a} {pm(accuracies(ctx.runs(e, a)))} (BP - {a} {gaps[e, a]:+.2f})" for a in arms)
        for e in testable)
    note = "".join(f" Not testable on {w}." for w in why.values() if w)
    note += "".join(f" {e} {a}: {n} of {len(ctx.runs(e, a))} seeds diverged (mean over the "
                    "others; the cell counts as not kept)." for (e, a), n in lost_runs.items() if n)
    return Claim(text, verdict_of(kept, len(gaps)),
                 f"{kept}/{len(gaps)} (experiment, arm) cells within {points:g} points of "
                 "backprop on every seed." + note, statistic="test accuracy %: " + stat,
                 spread="mean ± std over seeds", threshold=rule)
