"""Per-rule cache of a captured graph, rebuilt when the rule's model object changes."""

from __future__ import annotations

from torch import Tensor, nn

from biograd.graph.capture import PCGraph, capture
from biograd.graph.levels import level_graph


class GraphCache:
    """Holds the :class:`PCGraph` of one model; capture happens on the first batch seen.

    The graph references the model's own modules, so it is dropped (not copied) when the
    owning rule is deep-copied or pickled: the copy captures its own model on first use.
    """

    def __init__(self, rule: str, levelling: bool) -> None:
        self.rule, self.levelling = rule, levelling
        self._model: nn.Module | None = None
        self._graph: PCGraph | None = None

    def get(self, model: nn.Module, x: Tensor) -> PCGraph:
        if self._graph is None or self._model is not model:
            graph = capture(model, x, self.rule)
            self._graph = level_graph(graph) if self.levelling else graph
            self._model = model
        return self._graph

    def __deepcopy__(self, memo: dict) -> GraphCache:
        return GraphCache(self.rule, self.levelling)

    def __getstate__(self) -> dict:
        return {"rule": self.rule, "levelling": self.levelling, "_model": None, "_graph": None}
