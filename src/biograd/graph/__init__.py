"""biograd.graph."""
