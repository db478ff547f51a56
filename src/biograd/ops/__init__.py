"""biograd.ops."""
