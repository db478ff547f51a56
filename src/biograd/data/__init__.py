"""biograd.data."""
