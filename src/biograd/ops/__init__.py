"""biograd.ops."""

from biograd.ops.convert import FeedbackLayer, feedback_layers, swapped_forwards
from biograd.ops.feedback import (
    DirectSignal,
    FeedbackFunction,
    FeedbackHandler,
    LayerOp,
    handler_for,
    register_feedback_handler,
)

__all__ = [
    "DirectSignal",
    "FeedbackFunction",
    "FeedbackHandler",
    "FeedbackLayer",
    "LayerOp",
    "feedback_layers",
    "handler_for",
    "register_feedback_handler",
    "swapped_forwards",
]
