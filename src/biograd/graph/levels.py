"""Distances to the output and levelling with identity vertices (P5, Sec. 4 "levelling").

The level of a vertex is the length of the *longest* path from it to the output vertex (the
output has level 0). Z-IL updates a vertex's parameters at inference step t = level; for the
update to equal backprop's, every error reaching a vertex must arrive in the same step, i.e.
every edge u -> c must span exactly one level (level(u) = level(c) + 1). :func:`level_graph`
makes that true by replacing each longer edge with a chain of identity vertices, one per
skipped level (a skip connection of a ResNet block gets as many as the block's main branch
has vertices, minus one). Chains are shared by all the children of a vertex. Edges leaving the
clamped inputs (and parameter-free functions of them) are never levelled: they do not move.
"""

from __future__ import annotations

import copy

from biograd.graph.vertex import CLAMPED, PCGraph, Vertex


def children_of(graph: PCGraph) -> list[list[int]]:
    """Children lists (vertices that use each vertex's value)."""
    kids: list[list[int]] = [[] for _ in graph.vertices]
    for i, v in enumerate(graph.vertices):
        for p in v.parents:
            kids[p].append(i)
    return kids


def assign_levels(graph: PCGraph) -> None:
    """Set ``graph.level``: longest-path distance to the output, ``None`` if not reaching it."""
    kids = children_of(graph)
    level: list[int | None] = [None] * len(graph.vertices)
    level[graph.output] = 0
    for i in reversed(graph.order):
        if i == graph.output:
            continue
        live = [level[c] for c in kids[i] if level[c] is not None]
        if live:
            level[i] = max(live) + 1  # type: ignore[operator]
    graph.level = level


def level_graph(graph: PCGraph) -> PCGraph:
    """A copy of ``graph`` in which every live edge between value nodes spans one level."""
    g = copy.copy(graph)
    g.vertices = [copy.copy(v) for v in graph.vertices]
    for v in g.vertices:
        v.sources = dict(v.sources)
    g.level = list(graph.level)
    chains: dict[int, dict[int, int]] = {}  # vertex -> {level: identity vertex at that level}

    def chain_at(u: int, lv: int) -> int:
        """The identity vertex carrying u's value at level ``lv`` (created on demand)."""
        top = g.level[u]
        assert top is not None and lv < top
        ch = chains.setdefault(u, {})
        prev = u
        for k in range(top - 1, lv - 1, -1):
            if k not in ch:
                ch[k] = len(g.vertices)
                g.vertices.append(Vertex(f"{g.vertices[u].name}_id{k}", "identity",
                                         parents=[prev]))
                g.level.append(k)
            prev = ch[k]
        return prev

    for c, v in enumerate(list(g.vertices)):
        lc = g.level[c]
        if v.kind != "op" or lc is None:
            continue
        for node, u in v.sources.items():
            lu = g.level[u]
            if g.vertices[u].kind in CLAMPED or lu is None or lu == lc + 1:
                continue
            v.sources[node] = chain_at(u, lc + 1)
        v.parents = sorted(set(v.sources.values()))
    # topological order: each identity chain right after the vertex it copies
    order: list[int] = []
    for i in graph.order:
        order.append(i)
        order.extend(sorted(chains.get(i, {}).values(), key=lambda j: -g.level[j]))  # type: ignore[operator]
    g.order = order
    g.levelled = True
    return g
