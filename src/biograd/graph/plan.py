"""A compiled plan for Z-IL's event-driven schedule on one levelled graph (P5, Thm. 1).

Under C1-C3 on a levelled graph, step t of the PC dynamics changes only the errors of the
level-t vertices: e_v(t) = sum_{c in children(v)} J_{c,v}^T e_c(t - 1), every Jacobian taken
at the feed-forward point (nothing at level >= t has moved), and the level-t parameters get
-J_theta^T e_v(t) (C2). :class:`FrontierPlan` runs exactly these local vector-Jacobian
products, once per vertex, in the order of the steps.

What is compiled, once per graph:

- the feed-forward sweep (C1: x_v = mu_v) as generated Python code (``torch.fx`` codegen of
  every vertex function, in topological order, inline nodes shared within a group of levels),
  instead of interpreting the vertex closures node by node on every batch. It returns only
  the predictions the calls start from and the cut copies, so every other activation lives
  only as long as autograd needs it;
- the level groups, at most ``levels_per_call`` levels each, ending at the narrowest level
  of the second half of their window (:func:`_group_tops`). The value nodes at the top level
  of each group are cut from their parents' autograd graph (a detached copy that requires
  grad), the others are not.

A step then makes one call of autograd's engine for the output error, the one non-zero error
of C1 (the loss's own vjp, with the prediction mu_out as its only input), and one per group:
from the errors e(a) of the group's top level a (its roots) the call computes the errors of
levels a + 1, ..., a + k (the last ones are the gradients at the next group's cut copies)
and the updates of the levels a, ..., a + k - 1, i.e. it runs the steps a, ..., a + k - 1.
No call but the first starts from the loss.

Why a group is the same dynamics as k separate steps: every vertex is one elementary operation
whose recorded backward function is its local vjp; autograd's engine runs a vertex's backward
once, after all its children have delivered their J^T e_c (dependency counting), on their sum.
On a levelled graph the children of a level-l vertex are exactly the level-(l - 1) vertices
that read it, so the engine computes e_v = sum_c J_{c,v}^T e_c(l - 1) = e_v(l), the error
the dynamics give it at step l, from the same local vjps in the same order of levels; only
the bookkeeping between steps (which Python sums the children's terms) moves into the engine.
``levels_per_call=1`` cuts every value node and makes one call per step, the literal
schedule; the tests check every grouping against the full dynamics.

With ``trace`` the errors between the cut levels are read too (the engine returns the total
gradient reaching a non-leaf input: read, not recomputed), for the energy the wave carries;
an identity vertex of levelling then predicts its parent's value through a ``view_as`` node,
so that it has an error of its own (the part of its parent's error that has arrived by its
level). Without it an identity vertex is its parent's tensor and nothing in between is read.

Updates: a parameter used at several levels (an unrolled RNN's cell) gets the sum of its
per-step updates; an update that shares storage with no other tensor of the step becomes
``.grad`` without a copy (see :data:`Write`), as autograd's own accumulation does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from biograd.graph.capture import CLAMPED, CONST, INLINE, INPUT, VERTEX, PCGraph

#: ``write(param, update, owned)``: add ``update`` into ``param.grad``; ``owned`` says that no
#: other tensor of this step shares the update's storage, so it may become ``.grad`` itself
#: without a copy (as autograd's own accumulation does).
Write = Callable[[nn.Parameter, Tensor, bool], None]
LossFn = Callable[[Tensor, Tensor], Tensor]


def levels_of(graph: PCGraph) -> list[list[int]]:
    """Live non-clamped vertices grouped by level (index = level); cached on the graph."""
    cached = getattr(graph, "_levels", None)
    if cached is not None:
        return cached
    out: list[list[int]] = [[] for _ in range(graph.depth + 1)]
    for i in graph.order:
        lv = graph.level[i]
        if lv is not None and graph.vertices[i].kind not in CLAMPED:
            out[lv].append(i)
    graph._levels = out  # type: ignore[attr-defined]
    return out


@dataclass
class _Group:
    """Levels [top, top + k) propagated by one autograd call (filled on the first batch)."""

    top: int
    roots: list[int]  # vertices at level ``top``, whose errors the call starts from
    inner: list[int]  # vertices below them whose errors the call returns (``trace``)
    leaves: list[int]  # cut vertices at level top + k (the next group's roots)
    params: tuple[nn.Parameter, ...] = ()
    root_at: tuple[tuple[int, int], ...] = ()  # (vertex, position of its prediction)
    input_at: tuple[int, ...] = ()  # positions of the inner predictions and the leaves
    receivers: tuple[int, ...] = ()  # the vertices of ``input_at``


def _emit_sweep(
    graph: PCGraph, cut: list[int], group_of: Callable[[int], int | None], views: set[int],
    keep: list[int],
) -> tuple[fx.GraphModule, dict[int, int], dict[int, int]]:
    """Generate the feed-forward sweep: returns (module, position of mu_v for v in ``keep``,
    position of the cut copy of v) in the tuple the module returns; nothing else is returned,
    so the other predictions live only as long as autograd needs them (holding every
    activation to the end of the step cost 20 % on the small ResNet: fresh allocations in
    the backward pass fault their pages in). Vertex functions run once each; an inline node
    (a parameter, ``W.t()``, a ``chunk``) is shared by the vertices of one level group that
    read it through the same value nodes (groups never share autograd nodes, so each call
    frees its own part of the graph)."""
    gm, kinds = graph.gm, graph.kinds
    new = fx.Graph()
    seen: dict[int, fx.Node] = {}  # what children read: the cut copy, or mu itself
    mus: dict[int, fx.Node] = {}
    consts: dict[fx.Node, fx.Node] = {}
    memo: dict[tuple, fx.Node] = {}
    by_node = {v.node: i for i, v in enumerate(graph.vertices) if v.node is not None}
    is_cut = set(cut)
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            copy = new.node_copy(n)
            if kinds[n] == INPUT:
                seen[by_node[n]] = copy
            else:
                consts[n] = copy

    def emit(n: fx.Node, source: Callable[[fx.Node], fx.Node], grp: int | None) -> fx.Node:
        def arg(a: fx.Node) -> fx.Node:
            kind = kinds[a]
            if kind in (VERTEX, INPUT):
                return source(a)
            if kind == CONST:
                return const(a)
            ins = tuple(arg(b) for b in a.all_input_nodes)
            key = (grp, a, ins)
            if key not in memo:
                memo[key] = new.node_copy(a, arg)
            return memo[key]
        return new.node_copy(n, arg)

    def const(a: fx.Node) -> fx.Node:
        """Per-batch constants (shapes, integer tensors), computed once from the sweep."""
        if a not in consts:
            assert kinds[a] == CONST
            consts[a] = emit(a, lambda b: seen[by_node[b]], None)
        return consts[a]

    for i in graph.order:
        v = graph.vertices[i]
        if v.kind == "input":
            continue
        if v.kind == "identity":
            node = seen[v.parents[0]]
        else:
            assert v.node is not None and v.closure[-1] is v.node
            node = emit(v.node, lambda a, v=v: seen[v.sources[a]], group_of(i))
            assert kinds.get(v.node) == VERTEX and all(kinds[c] == INLINE for c in v.closure[:-1])
        if i in views:
            node = new.call_method("view_as", (node, node))
        mus[i] = node
        if i in is_cut:
            node = new.call_method("requires_grad_", (new.call_method("detach", (node,)),))
        seen[i] = node
    new.output(tuple([mus[i] for i in keep] + [seen[i] for i in cut]))
    mod = fx.GraphModule(gm, new, "ZILSweep")
    mu_at = {i: k for k, i in enumerate(keep)}
    cut_at = {i: len(keep) + k for k, i in enumerate(cut)}
    return mod, mu_at, cut_at


def _group_tops(sizes: list[int], k: int) -> list[int]:
    """The top level of each group of at most ``k`` levels: each group ends at the narrowest
    level of the second half of its window (fewest value nodes to cut; the farthest on ties),
    so that cuts fall on a chain's single value node where there is one (a block output, an
    RNN's hidden state), not across a fan-out such as an LSTM's four gates."""
    tops, depth = [0], len(sizes) - 1
    while tops[-1] + k <= depth:
        a = tops[-1]
        tops.append(min(range(a + (k + 1) // 2, a + k + 1), key=lambda t: (sizes[t], -t)))
    return tops


class FrontierPlan:
    """Z-IL's event-driven schedule compiled for one levelled graph (see the module doc).

    ``trace=True`` also returns every vertex's error e_v(t) (for the wave energy): each
    vertex then needs an autograd node of its own, so identity vertices (and any vertex
    whose function returns its input tensor unchanged) predict through a ``view_as``, and the
    errors between the cut levels are read from the group's call."""

    def __init__(self, graph: PCGraph, levels_per_call: int = 1, trace: bool = False) -> None:
        if not graph.levelled:
            raise ValueError("FrontierPlan needs a levelled graph (biograd.graph.level_graph)")
        self.graph, self.k, self.trace = graph, max(1, int(levels_per_call)), trace
        self.levels = levels = levels_of(graph)
        depth = len(levels) - 1
        tops = _group_tops([len(vs) for vs in levels], self.k)
        self.cut = [i for t in tops[1:] for i in levels[t]]
        ends = tops[1:] + [depth + 1]
        self.group_at = {i: j for j, (a, b) in enumerate(zip(tops, ends, strict=True))
                         for t in range(a, b) for i in levels[t]}
        self.groups: list[_Group] = []
        for a, b in zip(tops, ends, strict=True):
            params = {id(p): p for t in range(a, b) for i in levels[t]
                      for p in graph.vertices[i].params}
            self.groups.append(_Group(
                a, list(levels[a]), [i for t in range(a + 1, b) for i in levels[t]] if trace
                else [], list(levels[b]) if b <= depth else [], tuple(params.values())))
        self._compile({i for vs in levels for i in vs
                       if graph.vertices[i].kind == "identity"} if trace else set())
        self._checked = False

    def _compile(self, views: set[int]) -> None:
        self.views = views
        keep = list(dict.fromkeys(i for g in self.groups for i in g.roots + g.inner))
        self.sweep, self.mu_at, self.cut_at = _emit_sweep(
            self.graph, self.cut, lambda i: self.group_at.get(i), views, keep)

    def _first_batch(self, outs: Sequence[Tensor]) -> bool:
        """On the first batch: drop the vertices whose prediction carries no autograd graph
        (no parameter and no free parent upstream: they never receive an error) and, when
        tracing, give a view to every vertex whose prediction is another value node's tensor
        (``x.contiguous()`` of a contiguous x), so that its error is its own. Returns whether
        the sweep was recompiled (the caller runs it again)."""
        if self.trace:
            owner: dict[int, int] = {}
            shared = set()
            for i, at in self.mu_at.items():
                if owner.setdefault(id(outs[at]), i) != i:
                    shared.add(i)
            shared |= {owner[id(outs[at])] for at in self.cut_at.values()
                       if id(outs[at]) in owner}
            if shared - self.views:
                self._compile(self.views | shared)
                return True
        mu_at, cut_at = self.mu_at, self.cut_at
        for g in self.groups:
            g.roots = [i for i in g.roots if outs[mu_at[i]].requires_grad]
            g.inner = [i for i in g.inner if outs[mu_at[i]].requires_grad]
            g.leaves = [i for i in g.leaves if outs[cut_at[i]].requires_grad]
            g.root_at = tuple((i, mu_at[i]) for i in g.roots)
            g.input_at = tuple(mu_at[i] for i in g.inner) + tuple(cut_at[i] for i in g.leaves)
            g.receivers = tuple(g.inner + g.leaves)
        self._checked = True
        return False

    def run(
        self, x: Tensor, y: Tensor, loss_fn: LossFn, write: Write,
        check: Callable[[Tensor], None] | None = None,
    ) -> tuple[Tensor, Tensor, list[list[Tensor]]]:
        """One Z-IL step: (loss, output, the errors of each level: empty lists unless
        ``trace``). ``check(output)`` runs before any update is written (label validation).

        The first call is the loss's own vjp, which gives the one non-zero error of C1,
        e_out = -dL/dmu_out (stored with the sign of a gradient, dL/dmu_out, as every error
        here: the update is then J_theta^T e = dL/dtheta); every later call starts from the
        errors of a level of value nodes, never from the loss."""
        graph, trace = self.graph, self.trace
        with torch.enable_grad():
            outs: list[Tensor | None] = list(self.sweep(x))
            while not self._checked:
                if self._first_batch(outs):  # type: ignore[arg-type]
                    outs = list(self.sweep(x))
            out = outs[self.mu_at[graph.output]]
            assert out is not None
            if check is not None:
                check(out)
            loss = loss_fn(out, y)
        (e_out,) = _vjp((loss,), (torch.ones_like(loss),), (out,))
        err: dict[int, Tensor] = {} if e_out is None else {graph.output: e_out}
        updates: dict[int, list] = {}  # id(param) -> [param, update, owned]
        for g in self.groups:  # references are dropped as soon as a call has used them
            have = [(outs[at], err[i] if trace else err.pop(i)) for i, at in g.root_at
                    if i in err]
            inputs = tuple(outs[at] for at in g.input_at) + g.params
            for _, at in g.root_at:
                outs[at] = None
            for at in g.input_at:
                outs[at] = None
            if not have or not inputs:
                continue
            roots, grads = zip(*have, strict=True)
            del have
            res = _vjp(roots, grads, inputs)  # type: ignore[arg-type]
            del roots, inputs
            for i, e in zip(g.receivers, res, strict=False):
                if e is not None:
                    err[i] = e
            if g.params:
                shared = _storages(grads, res)
                for p, d in zip(g.params, res[len(g.receivers):], strict=True):
                    if d is None:
                        continue
                    u = updates.get(id(p))
                    if u is None:
                        updates[id(p)] = [p, d, shared[_storage(d)] == 1]
                    elif u[2]:
                        u[1].add_(d)
                    else:
                        u[1], u[2] = u[1] + d, True
        for p, d, owned in updates.values():
            write(p, d, owned)
        carried = [[err[i] for i in vs if i in err] for vs in self.levels] if self.trace else []
        return loss.detach(), out.detach(), carried


_ENGINE = getattr(torch.autograd.Variable, "_execution_engine", None)


def _vjp(
    roots: Sequence[Tensor], grads: Sequence[Tensor], inputs: tuple[Tensor, ...],
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(roots, inputs, grads, allow_unused=True)``, calling autograd's
    engine directly: the Python wrapper's argument checks cost about as much as a small
    group's backward, and the plan's tensors are fixed by construction (every root has a
    gradient of its own shape; every input requires grad, checked on the first batch)."""
    if _ENGINE is None:  # pragma: no cover - a torch without the engine handle
        return torch.autograd.grad(roots, inputs, grads, allow_unused=True)
    return _ENGINE.run_backward(roots, grads, False, False, inputs, True, False)


def _storage(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _storages(*groups: Sequence[Tensor | None]) -> dict[int, int]:
    """How many of the given tensors use each storage (autograd passes a gradient through
    an addition or a view unchanged, so results can alias each other or the roots' errors)."""
    count: dict[int, int] = {}
    for grp in groups:
        for t in grp:
            if t is not None:
                k = _storage(t)
                count[k] = count.get(k, 0) + 1
    return count
