"""biograd.plots."""
