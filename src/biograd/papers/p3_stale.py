"""Why weight mirror can diverge where Kolen-Pollack and sign symmetry train: a probe of
stale feedback (P3: Akrout et al. 2019, arXiv:1904.05391; the probe and its finding are this
library's, not P3's).

Weight mirror's ``B`` is a running average of ``W^T``: each mirror step moves it by
``eta (x y^T / n - lambda B)``, so ``B`` follows ``W^T`` with a time constant of
``1 / (eta lambda)`` steps (500 at the rule's defaults) and always describes an earlier ``W``.
Kolen-Pollack's ``B`` receives ``W``'s own update (transposed) at the same step, sign symmetry
reads the current ``W`` and feedback alignment's ``B`` never changes, so none of them lags.

The probe isolates the lag from the mirror's noise: feedback alignment whose ``B`` is set
before every step to the exact ``W^T`` of ``lag`` steps earlier (``W^T`` of step
``max(0, t - lag)``; lag 0 is backprop itself), trained from the run's initialisation with its
data order, optimizer, rate and weight decay (the first epoch's rate throughout) for ``steps``
steps. Per probe it records the step at which the loss passed the run's ``max_loss`` or stopped
being finite (the runner's divergence test), else the mean loss of the last 50 steps. A probe
may set its own ``lr`` and ``momentum``, to tell the delay from the effective step
``lr / (1 - momentum)``.

Settings (``settings.stale_feedback`` of the preset's budget): ``experiment``, ``arm`` (whose
run config the probe takes; default the weight-mirror arm), ``seeds`` (list), ``steps`` and
``probes``, a list of ``{lag, lr, momentum}`` (``lr`` and ``momentum`` default to the run's).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any

import torch

from biograd.core.errors import ConfigError
from biograd.core.registry import create_rule
from biograd.experiments.paper_report import Context
from biograd.runner.config import Config
from biograd.runner.train import epoch_batches, make_optimizer, seeded_data_and_model

#: the rule whose machinery the probe uses (its B is overwritten before every step)
PROBE_RULE = "feedback_alignment"
#: steps at the end of a probe whose mean loss is reported when it did not diverge
TAIL = 50


def probe_losses(cfg: Config, lag: int, steps: int) -> tuple[list[float], int | None]:
    """Train the probe (see the module docstring) with ``cfg``'s model, data, seed and
    optimizer; returns the loss of every step it completed and the step (1-based, as the
    runner counts) at which the loss passed ``cfg.max_loss`` or was not finite, else None."""
    if lag < 0 or steps < 1:
        raise ConfigError(f"stale_feedback: lag must be >= 0 and steps >= 1, got lag {lag}, "
                          f"steps {steps}")
    data, model = seeded_data_and_model(cfg)  # the run's start, as biograd.runner.train
    rule = create_rule(PROBE_RULE, model, loss=cfg.loss)
    opt = make_optimizer(cfg, rule)
    past: deque[list[torch.Tensor]] = deque(maxlen=lag + 1)
    losses: list[float] = []
    n, epoch, order = len(data.train_x), 0, []
    for step in range(steps):
        if not order:
            order = list(epoch_batches(cfg.seed, epoch, n, cfg.batch_size))
            epoch += 1
        idx = order.pop(0)
        with torch.no_grad():
            past.append([lay.handler.transposed_weight(lay.module).detach().clone()
                         for lay in rule.layers])
            for lay, wt in zip(rule.layers, past[0], strict=True):  # W^T of max(0, t - lag)
                rule.feedback.get(lay.key).copy_(wt)
        opt.zero_grad(set_to_none=True)
        loss = rule.step(data.train_x[idx], data.train_y[idx]).loss
        if not math.isfinite(loss) or loss > cfg.max_loss:
            return losses, step + 1
        losses.append(loss)
        opt.step()
    return losses, None


def probe(cfg: Config, lag: int, steps: int) -> dict[str, Any]:
    """:func:`probe_losses` summarised: ``{"diverged_at": step or None, "loss": mean of the
    last TAIL losses, or None when it diverged}``."""
    losses, diverged_at = probe_losses(cfg, lag, steps)
    if diverged_at is not None:
        return {"diverged_at": diverged_at, "loss": None}
    return {"diverged_at": None, "loss": sum(losses[-TAIL:]) / len(losses[-TAIL:])}


def _settings(ctx: Context) -> dict[str, Any] | None:
    st = ctx.plan.settings.get("stale_feedback")
    if not st:
        return None
    if not isinstance(st, dict) or not isinstance(st.get("probes"), list) or not st["probes"]:
        raise ConfigError("settings.stale_feedback needs experiment, seeds, steps and a "
                          "non-empty list of probes ({lag, lr, momentum})")
    if st.get("experiment") not in ctx.plan.experiments:
        raise ConfigError(f"settings.stale_feedback.experiment {st.get('experiment')!r} is not "
                          f"one of this plan's experiments: {', '.join(ctx.plan.experiments)}")
    for p in st["probes"]:
        if not isinstance(p, dict) or set(p) - {"lag", "lr", "momentum"} or "lag" not in p:
            raise ConfigError(f"settings.stale_feedback: probe {p!r} must be a mapping with "
                              "'lag' and optionally 'lr' and 'momentum'")
    return st


def stale_feedback(ctx: Context) -> tuple[dict[str, Any], list[dict[str, Any]] | None] | None:
    """The probes of ``settings.stale_feedback`` on its experiment's run config, stored as the
    measurement ``stale-feedback-EXPERIMENT`` (keyed by the config, steps and probes, with
    the probe rule's code): ``(settings, results)``, results None when the measurement is not
    stored and this invocation measures nothing; None when the budget has no such setting."""
    st = _settings(ctx)
    if st is None:
        return None
    exp, arm = st["experiment"], st.get("arm") or ctx.arm("weight_mirror")
    seeds, steps = [int(s) for s in st.get("seeds", [0])], int(st.get("steps", 1000))
    cfg = next((s.config for s in ctx.plan.runs if s.experiment == exp and s.arm == arm), None)
    if cfg is None:
        raise ConfigError(f"settings.stale_feedback: experiment {exp!r} has no arm {arm!r}")
    probes = [{"lag": int(p["lag"]), "lr": float(p.get("lr", cfg.lr)),
               "momentum": float(p.get("momentum", cfg.momentum))} for p in st["probes"]]
    keep = ("dataset", "dataset_args", "train_subset", "model", "model_args", "loss",
            "batch_size", "optimizer", "weight_decay", "max_loss")
    key = {"config": {k: getattr(cfg, k) for k in keep}, "seeds": seeds, "steps": steps,
           "probes": probes}

    def compute() -> dict[str, Any]:
        return {"probes": [{**p, "runs": [
            {"seed": seed, **probe(dataclasses.replace(cfg, seed=seed, lr=p["lr"],
                                                       momentum=p["momentum"]),
                                   p["lag"], steps)} for seed in seeds]} for p in probes]}

    got = ctx.measure(f"stale-feedback-{exp}", compute, key=key, rules=[PROBE_RULE])
    return {"experiment": exp, "arm": arm, "seeds": seeds, "steps": steps, "lr": cfg.lr,
            "momentum": cfg.momentum}, got.get("probes") if got else None


def _outcome(r: dict[str, Any]) -> str:
    if r.get("diverged_at") is not None:
        return f"diverged at step {r['diverged_at']}"
    return f"trained (loss {r['loss']:.3f})"


def _lags(results: list[dict[str, Any]], diverged: bool) -> list[int]:
    """Lags of the probes whose every seed diverged (``diverged``) or none did."""
    return sorted(r["lag"] for r in results
                  if all((x["diverged_at"] is not None) == diverged for x in r["runs"]))


def section(ctx: Context) -> tuple[list[str], str | None]:
    """The report's stale-feedback section and a one-line finding for the claims (None when
    the budget has no probe, it is not measured, or no probe at the run's own rate diverged
    while lag 0 trained)."""
    got = stale_feedback(ctx)
    if got is None:
        return [], None
    st, results = got
    exp, steps = st["experiment"], st["steps"]
    lines = [f"## Stale feedback: why weight mirror diverges on {exp} (a finding, not the "
             "budget)", "",
             "Weight mirror's B is a running average of W^T (time constant 1 / (η λ) mirror "
             "steps, 500 at the defaults), so it always describes an earlier W; Kolen-Pollack's "
             "B gets W's own update at the same step and sign symmetry reads the current W. "
             "Probe (biograd.papers.p3_stale): feedback alignment whose B is set before every "
             f"step to the exact W^T of `lag` steps earlier (no mirror noise; lag 0 is "
             f"backprop), from the {st['arm']} run's initialisation, data order, optimizer and "
             f"weight decay, seeds {', '.join(map(str, st['seeds']))}, {steps} steps at a "
             f"constant rate; a probe that did not diverge shows the mean loss of its last "
             f"{TAIL} steps.", ""]
    if results is None:
        return lines + ["Not measured: no stored `stale-feedback` measurement matches this "
                        "budget (`biograd reproduce` without --no-train measures it).", ""], None
    lines += ["| B at step t | lr | momentum | effective step lr / (1 - m) | "
              + " | ".join(f"seed {s}" for s in st["seeds"]) + " |",
              "| --- | ---: | ---: | ---: |" + " --- |" * len(st["seeds"])]
    for r in results:
        b = "W^T of step t (backprop)" if r["lag"] == 0 else f"W^T of step t - {r['lag']}"
        lines.append(f"| {b} | {r['lr']:g} | {r['momentum']:g} | "
                     f"{r['lr'] / (1 - r['momentum']):g} | "
                     + " | ".join(_outcome(x) for x in r["runs"]) + " |")
    found = finding(st, results)
    if found:
        lines += ["", "Finding: " + found]
    return lines + [""], found


def finding(st: dict[str, Any], results: list[dict[str, Any]]) -> str | None:
    """What the probes at the runs' own rate and momentum show, in one sentence: None unless
    lag 0 (backprop) trained in every seed and some lag diverged in every seed."""
    own = [r for r in results if r["lr"] == st["lr"] and r["momentum"] == st["momentum"]]
    bad, good = _lags(own, True), _lags(own, False)
    if not bad or 0 not in good:
        return None
    return (f"On {st['experiment']} at the runs' rate (lr {st['lr']:g}, momentum "
            f"{st['momentum']:g}), exact W^T feedback that is {', '.join(map(str, bad))} "
            f"steps stale diverged in every probed seed while lag "
            f"{', '.join(map(str, good))} trained in every seed: a mirror that lags W, as "
            "weight mirror's does by design, is enough to diverge there, so its divergence is "
            "a finding about the rule at this rate, not about the budget (section 'Stale "
            "feedback').")
