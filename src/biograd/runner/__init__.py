"""biograd.runner."""
