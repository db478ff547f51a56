"""Accuracy, alignment and exactness metrics."""

from biograd.metrics.alignment import (
    angle,
    backprop_gradients,
    feedback_alignment_angles,
    max_relative_difference,
    rule_updates,
    update_alignment,
)
from biograd.metrics.jacobian import jacobian_alignment

__all__ = [
    "angle",
    "backprop_gradients",
    "feedback_alignment_angles",
    "jacobian_alignment",
    "max_relative_difference",
    "rule_updates",
    "update_alignment",
]
