"""biograd.core."""
