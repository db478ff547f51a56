"""Evaluate vertex functions of a :class:`PCGraph` on given value-node states.

``predict(graph, i, values, consts)`` is mu_i = f_i(x_parents): the vertex's fx node run on the
current values of its parents (an identity vertex predicts its parent's value). ``forward``
runs the feed-forward sweep that sets the value nodes to their predictions (P5's C1) and
records the per-batch constants (shapes, sizes) that stay fixed during inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx

from biograd.graph.capture import CONST, INPUT, VERTEX, PCGraph, run_node

Consts = dict[fx.Node, Any]


def predict(graph: PCGraph, i: int, values: Sequence[Tensor | None], consts: Consts) -> Tensor:
    """mu_i computed from the parents' entries of ``values`` (indexed by vertex)."""
    v = graph.vertices[i]
    if v.kind == "identity":
        out = values[v.parents[0]]
        assert out is not None
        return out
    env: dict[fx.Node, Any] = {}
    sources = v.sources

    def lookup(n: fx.Node) -> Any:
        if n in sources:
            return values[sources[n]]
        if n in env:
            return env[n]
        return consts[n]

    for n in v.closure:
        env[n] = run_node(graph.gm, n, fx.node.map_arg(n.args, lookup),
                          fx.node.map_arg(n.kwargs, lookup))
    return env[v.closure[-1]]


def forward(
    graph: PCGraph,
    x: Tensor,
    leaf: Callable[[int, Tensor], Tensor] | None = None,
) -> tuple[list[Tensor | None], list[Tensor | None], Consts]:
    """Feed-forward sweep. Returns ``(values, mus, consts)``.

    ``mus[i]`` is vertex i's prediction as computed (with whatever autograd graph the caller
    enabled); ``values[i]`` is what children see, ``leaf(i, mu)`` if given (e.g. a detached
    copy that requires grad, cutting the autograd graph at every vertex) else ``mu`` itself.
    """
    n = len(graph.vertices)
    values: list[Tensor | None] = [None] * n
    mus: list[Tensor | None] = [None] * n
    consts: Consts = {}
    by_node: dict[fx.Node, int] = {}
    for i, v in enumerate(graph.vertices):
        if v.kind == "input":
            values[i] = x
        if v.node is not None:
            by_node[v.node] = i
    for i in graph.order:
        v = graph.vertices[i]
        if v.kind == "input":
            continue
        for node in v.consts:
            if node not in consts:
                consts[node] = _const_value(graph, node, values, by_node, consts)
        mu = predict(graph, i, values, consts)
        mus[i] = mu
        values[i] = leaf(i, mu) if leaf is not None else mu
    return values, mus, consts


def _const_value(
    graph: PCGraph, node: fx.Node, values: list[Tensor | None], by_node: dict[fx.Node, int],
    consts: Consts,
) -> Any:
    if node.op == "placeholder":
        return node.args[0]

    def resolve(n: fx.Node) -> Any:
        k = graph.kinds[n]
        if k == CONST:
            return consts[n]
        if k in (VERTEX, INPUT):
            val = values[by_node[n]]
            return val.detach() if isinstance(val, Tensor) else val
        return run_node(graph.gm, n, fx.node.map_arg(n.args, resolve),
                        fx.node.map_arg(n.kwargs, resolve))

    with torch.no_grad():
        return run_node(graph.gm, node, fx.node.map_arg(node.args, resolve),
                        fx.node.map_arg(node.kwargs, resolve))
