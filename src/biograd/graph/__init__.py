"""torch.fx capture of any traceable model as a levelled predictive-coding graph (P5).

``capture(model, x)`` traces the model and returns a :class:`PCGraph` (value nodes with vertex
functions, parameters owned by the vertices that use them, levels = distance to the output);
``level_graph(graph)`` inserts identity vertices so that every edge spans one level.
:class:`PCInference` and :func:`zil_frontier` run inference on such a graph.
"""

from __future__ import annotations

from torch import Tensor, nn

from biograd.graph.capture import PCGraph, Vertex, capture, frozen_buffers
from biograd.graph.evaluate import forward, predict
from biograd.graph.inference import PCInference, levels_of, zil_frontier
from biograd.graph.levels import assign_levels, level_graph


def build_graph(model: nn.Module, x: Tensor, *, rule: str, levelling: bool) -> PCGraph:
    """Capture ``model`` on the example batch ``x``, levelled if ``levelling``."""
    graph = capture(model, x, rule)
    return level_graph(graph) if levelling else graph


__all__ = [
    "PCGraph", "Vertex", "capture", "build_graph", "level_graph", "assign_levels", "forward",
    "predict", "PCInference", "zil_frontier", "levels_of", "frozen_buffers",
]
