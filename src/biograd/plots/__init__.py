"""Plots that read run directories only (``metrics.csv``), never a live rule."""

from biograd.plots.runs import angle_curves, learning_curves, mean_curve

__all__ = ["angle_curves", "learning_curves", "mean_curve"]
