"""Accuracy, alignment and exactness metrics."""

from biograd.metrics.alignment import (
    angle,
    backprop_gradients,
    feedback_alignment_angles,
    max_relative_difference,
    rule_updates,
    update_alignment,
)

__all__ = [
    "angle",
    "backprop_gradients",
    "feedback_alignment_angles",
    "max_relative_difference",
    "rule_updates",
    "update_alignment",
]
