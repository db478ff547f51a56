"""Plots of run directories (they read ``metrics.csv`` only, never a live rule).

``groups`` maps a label (a rule name) to the run directories to average (one per seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from biograd.rundir import ALIGNMENT, METRICS, read_rows  # noqa: E402

Groups = dict[str, Sequence[Path]]
STEPWISE_PREFIXES = ("angle", "train_loss")


def mean_curve(
    runs: Sequence[Path], column: str, table: str = METRICS, x: str = "epoch"
) -> tuple[list[float], list[float]]:
    """(x values, mean of ``column`` over the runs that reached each x), blanks skipped.

    ``table`` is ``metrics.csv`` (x = ``epoch``) or ``alignment.csv`` (x = ``step``)."""
    per_x: dict[float, list[float]] = {}
    for run in runs:
        for row in read_rows(Path(run) / table):
            value = row.get(column)
            if isinstance(value, float) and value == value:
                per_x.setdefault(row[x], []).append(value)
    xs = sorted(per_x)
    return xs, [sum(per_x[e]) / len(per_x[e]) for e in xs]


def _panel(ax: plt.Axes, groups: Groups, column: str, ylabel: str, marker: str = "o") -> bool:
    """One line per group; angles and the train loss come from the finer alignment.csv (per
    step) when the runs have one, else from metrics.csv (per epoch)."""
    stepwise = column.startswith(STEPWISE_PREFIXES)
    stepwise = stepwise and any(
        (Path(r) / ALIGNMENT).is_file() for runs in groups.values() for r in runs)
    table, x = (ALIGNMENT, "step") if stepwise else (METRICS, "epoch")
    drawn = False
    colors = plt.get_cmap("tab20")
    for i, (label, runs) in enumerate(groups.items()):
        xs, values = mean_curve(runs, column, table, x)
        if xs:
            ax.plot(xs, values, marker=marker or None, label=label, markersize=3,
                    color=colors(i % 20),
                    linestyle=("-", "--", ":")[i // 20 % 3])
            drawn = True
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return drawn


def _legend(fig: plt.Figure, ax: plt.Axes) -> None:
    """One legend for the figure, right of the panels (all panels share the labels)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="center right")


def learning_curves(groups: Groups, path: str | Path, title: str = "") -> Path:
    """Train loss and test accuracy per epoch (mean over seeds), one line per label."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.5))
    _panel(ax_loss, groups, "train_loss", "train loss", marker="")
    _panel(ax_acc, groups, "test_acc", "test accuracy")
    ax_loss.set_yscale("log")
    _legend(fig, ax_acc)
    fig.suptitle(title or "learning curves")
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def angle_curves(groups: Groups, path: str | Path, title: str = "") -> Path:
    """Update-vs-backprop angle and feedback-vs-forward angle (degrees) per epoch."""
    fig, (ax_u, ax_f) = plt.subplots(1, 2, figsize=(13, 4.5))
    _panel(ax_u, groups, "angle_update", "update vs backprop angle (deg)")
    if not _panel(ax_f, groups, "angle_feedback", "feedback B vs W^T angle (deg)"):
        ax_f.text(0.5, 0.5, "no rule with feedback weights", ha="center", va="center",
                  transform=ax_f.transAxes)
    for ax in (ax_u, ax_f):
        ax.set_ylim(bottom=0)
    _legend(fig, ax_u)
    fig.suptitle(title or "alignment with backprop")
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
