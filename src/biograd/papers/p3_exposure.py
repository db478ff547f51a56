"""Kolen-Pollack's alignment at P3's decay exposure, where a budget cannot give it to every arm
(P3: Akrout et al. 2019, arXiv:1904.05391; the check is this library's, not P3's).

Kolen-Pollack aligns ``B`` with ``W^T`` through its decay: ``W - B^T`` shrinks by
``(1 - lr_t lambda)`` per step, so the final angle depends on the decay exposure
``lambda sum_t lr_t`` (:func:`biograd.papers.p3_decay.decay_exposure`). On an
experiment where P3's exposure would hold backprop below its convergence level, the budget runs
every arm at a lower exposure (the accuracy claims need a converged backprop) and names an
*exposure-check experiment*: the same model, data and schedule with only the decay raised to
P3's exposure, trained as ordinary stored runs. Its runs are not part of the accuracy claims;
the alignment claim reads them as the evidence for Kolen-Pollack's angle at P3's exposure.

Settings (``settings.exposure_check`` of the preset's budget): a mapping from a claim
experiment to its exposure-check experiment, e.g. ``{mnist-lenet: mnist-lenet-decay}``.
"""

from __future__ import annotations

from typing import Any

from biograd.core.errors import ConfigError
from biograd.experiments.paper_report import Context, accuracies, mean_std, pm
from biograd.papers.p3_decay import (
    P3_EXPOSURE,
    decay_exposure,
    first_angle,
    kp_config,
    kp_weight_decay,
    run_angles,
)


def checks(ctx: Context) -> dict[str, str]:
    """``settings.exposure_check`` validated: claim experiment -> exposure-check experiment,
    both in the plan, the check experiment not itself a claim experiment of another check."""
    st = ctx.plan.settings.get("exposure_check") or {}
    if not isinstance(st, dict):
        raise ConfigError("settings.exposure_check must map a claim experiment to its "
                          f"exposure-check experiment, e.g. {{mnist-lenet: mnist-lenet-decay}}; "
                          f"got {st!r}")
    exps = set(ctx.plan.experiments)
    for claim_exp, check_exp in st.items():
        for role, name in (("claim experiment", claim_exp), ("check experiment", check_exp)):
            if name not in exps:
                raise ConfigError(f"settings.exposure_check: {role} {name!r} is not one of this "
                                  f"budget's experiments: {', '.join(ctx.plan.experiments)}")
        if claim_exp == check_exp or check_exp in st:
            raise ConfigError(f"settings.exposure_check: {check_exp!r} cannot be both a claim "
                              "experiment and an exposure check")
    return {str(k): str(v) for k, v in st.items()}


def claim_experiments(ctx: Context) -> list[str]:
    """The plan's experiments without the exposure-check ones (those the claims test)."""
    skip = set(checks(ctx).values())
    return [e for e in ctx.plan.experiments if e not in skip]


def evidence(ctx: Context, exp: str) -> dict[str, Any] | None:
    """What the exposure check of ``exp`` measured: ``{"experiment", "exposure", "lambda",
    "angles" (final mean-over-layers angle per completed run), "first" (first logged angle),
    "accuracies", "runs" (how many exist), "diverged"}``; None when ``exp`` has no check."""
    check = checks(ctx).get(exp)
    if check is None:
        return None
    kp = ctx.arm("kolen_pollack")
    runs = ctx.runs(check, kp)
    cfg = kp_config(ctx, check)
    return {"experiment": check, "exposure": decay_exposure(ctx, check),
            "lambda": kp_weight_decay(cfg) if cfg is not None else float("nan"),
            "angles": run_angles(ctx, check, kp), "first": first_angle(ctx, check, kp),
            "accuracies": accuracies(runs),
            "runs": len(runs), "diverged": sum(r.get("status") == "diverged" for r in runs)}


def sentence(ctx: Context, exp: str, threshold: float) -> str | None:
    """One sentence for the alignment claim: Kolen-Pollack's final angle on ``exp``'s exposure
    check against ``threshold`` (degrees), or that no run of the check finished yet; None when
    ``exp`` has no check. A check whose exposure is outside P3's range says so."""
    ev = evidence(ctx, exp)
    if ev is None:
        return None
    if not ev["angles"]:
        return (f"The exposure check of {exp} ({ev['experiment']}) has no finished run yet "
                f"({ev['runs']} stored, {ev['diverged']} diverged).")
    mean = mean_std(ev["angles"])[0]
    first = f"first logged {ev['first']:.1f}°" if ev["first"] == ev["first"] else "no angle log"
    acc = f", test accuracy {pm(ev['accuracies'])} %" if ev["accuracies"] else ""
    lo, hi = P3_EXPOSURE
    if not lo <= ev["exposure"] <= hi:
        return (f"The exposure check of {exp} ({ev['experiment']}) runs at exposure "
                f"{ev['exposure']:.2f}, outside P3's {lo:g}-{hi:g}: it cannot stand for P3's "
                "exposure; set its weight decay so that λ Σ_t lr_t falls in that range.")
    text = (f"At P3's decay exposure on {exp} (experiment {ev['experiment']}: the same runs "
            f"with λ {ev['lambda']:g}, exposure {ev['exposure']:.2f}), Kolen-Pollack's final "
            f"feedback angle is {pm(ev['angles'], '.2g', '°')} over {len(ev['angles'])} "
            f"seeds ({first}{acc})")
    if mean < threshold:
        return (f"{text}, below the {threshold:g}° threshold: Kolen-Pollack's angle on {exp} "
                "is set by the exposure its budget allows, not by the rule.")
    return f"{text}, not below the {threshold:g}° threshold even there."
