"""The comparison table (Markdown) built from sub-run summaries."""

from __future__ import annotations

import math
from typing import Any

from biograd.core.registry import rule_info
from biograd.experiments.grid import Grid


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _fmt(values: list[Any], spec: str = ".1f") -> str:
    values = [v for v in values if _num(v)]
    return format(sum(values) / len(values), spec) if values else "-"


def table(
    grid: Grid, results: dict[str, list[dict[str, Any]]], costs: dict[str, float] | None = None,
) -> str:
    """Markdown, one row per arm of ``grid`` (``results``: label -> run summaries): test
    accuracy mean +- std (%), seconds per epoch, the cost ratio to backprop (``costs``: paired
    step timings; without them, the ratio of seconds per epoch), final update-vs-backprop and
    feedback-vs-forward angles, diverged and failed counts."""
    cfg = grid.base_config()
    bp = [s["seconds_per_epoch"] for s in results.get(grid.reference() or "", [])
          if _num(s.get("seconds_per_epoch"))]
    bp_sec = sum(bp) / len(bp) if bp else None
    lines = [
        f"# Comparison: {cfg.model} on {cfg.dataset}",
        "",
        f"epochs {cfg.epochs}, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g}, "
        f"train_subset {cfg.train_subset}, seeds {grid.seeds}",
        "",
        "| arm | family | runs | test acc % (mean ± std) | s/epoch | × backprop | "
        "update angle ° | feedback angle ° | diverged | failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = False
    for name, runs in results.items():
        ok = [s for s in runs if s.get("status") == "completed" and _num(s.get("test_acc"))]
        accs = [100 * s["test_acc"] for s in ok]
        if accs:
            mean, std = _mean_std(accs)
            acc = f"{mean:.2f} ± {std:.2f}"
        else:
            acc = "-"
        if any(s.get("truncated") for s in ok):
            acc += " *"
            notes = True
        secs = [s["seconds_per_epoch"] for s in runs if _num(s.get("seconds_per_epoch"))]
        sec, ratio = "-", "-"
        if secs:
            sec = f"{sum(secs) / len(secs):.3g}"
            if bp_sec and not costs:
                ratio = f"{sum(secs) / len(secs) / bp_sec:.2f}"
        if costs and _num(costs.get(name)):
            ratio = f"{costs[name]:.2f}"
        lines.append(
            f"| {name} | {_rule(grid, name)} | {len(runs)} | {acc} | {sec} | {ratio} | "
            f"{_fmt([s.get('angle_update') for s in ok])} | "
            f"{_fmt([s.get('angle_feedback') for s in ok])} | "
            f"{sum(s.get('status') == 'diverged' for s in runs)} | "
            f"{sum(s.get('status') == 'failed' for s in runs)} |"
        )
    lines.append("")
    if costs:
        lines.append(
            f"× backprop: the training step (rule.step + optimizer step) against backprop's on "
            f"the same model, batch and optimizer, median of {grid.cost_repeats} interleaved "
            f"block pairs timed after training in this process; s/epoch: wall time of the "
            f"training loop (shared-machine noise included)."
        )
    else:
        lines.append("× backprop: ratio of seconds per epoch (wall time, runs trained one "
                     "after another; `cost_repeats: 0`).")
    if notes:
        lines.append("\\* stopped early by `time_limit`: fewer training steps than the others.")
    for name, why in grid.skipped.items():
        lines.append(f"- skipped {name}: {why}")
    for name, runs in results.items():
        for s in runs:
            if s.get("status") == "diverged":
                d = s.get("diverged", {})
                lines.append(f"- {name} seed {s.get('seed')} diverged at step {d.get('step')}: "
                             f"{d.get('reason')}")
            if s.get("status") == "failed":
                lines.append(f"- {name} seed {s.get('seed')} failed: {s.get('error')}")
    return "\n".join(lines).rstrip() + "\n"


def _rule(grid: Grid, label: str) -> str:
    """The arm's rule family, with the rule's name when the label is not the rule's."""
    rule = grid.arms[label].rule
    family = rule_info(rule).family
    return family if rule == label else f"{family} ({rule})"
