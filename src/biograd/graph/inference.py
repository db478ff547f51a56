"""Predictive-coding inference on a :class:`PCGraph` (Whittington & Bogacz 2017; P5).

Energy (P5 Eq. 2, with the output term written as a loss so any loss can be used)::

    F(x) = sum_{v hidden} 1/2 ||x_v - mu_v(x_parents)||^2  +  beta * L(mu_out(x_parents), y)

Errors e_v = x_v - mu_v for hidden vertices and e_out = -beta dL/dmu_out. Inference descends F
over the hidden value nodes (inputs are clamped; the output node is its prediction):
``x_v <- x_v - gamma * dF/dx_v`` with dF/dx_v = e_v - sum_{c child} J_{c,v}^T e_c (Eq. 3).
Weights descend F too: dF/dtheta_v = -J_{theta_v}^T e_v (Eq. 4), written into ``.grad`` scaled
by 1/beta so that it estimates dL/dtheta.

:class:`PCInference` is the PC dynamics: it evaluates the whole graph at every step (standard
inference learning; Z-IL's full dynamics, the evidence for P5's claim). :func:`zil_frontier`
is an event-driven implementation of Z-IL's dynamics, valid only when C1-C3 hold on a
levelled graph: then only the vertices at level t have errors that matter at step t, and
e_v(t = level v) = -dL/dmu_v exactly (P5 Thm. 1), so each step is one vector-Jacobian product
per frontier vertex through the autograd graph recorded in the forward pass (autograd's own
backward operations, level by level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from biograd.graph.capture import CLAMPED, PCGraph
from biograd.graph.evaluate import Consts, forward, predict
from biograd.graph.guards import frozen_buffers
from biograd.graph.plan import FrontierPlan, levels_of  # noqa: F401 (re-exported)
from biograd.graph.plan import Write as OwnedWrite

Write = Callable[[nn.Parameter, Tensor], None]
LossFn = Callable[[Tensor, Tensor], Tensor]


def zil_frontier(
    graph: PCGraph, x: Tensor, y: Tensor, loss_fn: LossFn, write: OwnedWrite,
    check: Callable[[Tensor], None] | None = None, levels_per_call: int = 1,
    trace: bool = True,
) -> tuple[Tensor, Tensor, list[float]]:
    """Z-IL under C1-C3 on a levelled graph: returns (loss, output, frontier energies).

    Runs the graph's :class:`~biograd.graph.plan.FrontierPlan` (compiled on first use, kept
    on the graph): the feed-forward sweep sets every value node to its prediction (C1: all
    errors zero but the output's), then step t propagates the level-t errors to level t + 1
    through each vertex's local vjp and writes the level-t parameter updates (C2), with
    gamma = 1 (C3); ``levels_per_call`` steps per autograd call. With ``trace``,
    ``energies[t]`` is 1/2 sum ||e_v(t)||^2 over the level-t vertices, the energy the wave
    carries at step t (one norm per vertex); without it the list is empty.
    ``check(output)`` runs before any update is written (label validation).
    """
    plans = graph.__dict__.setdefault("_plans", {})
    plan = plans.get((levels_per_call, trace))
    if plan is None:
        plan = plans[levels_per_call, trace] = FrontierPlan(graph, levels_per_call, trace)
    loss, out, carried = plan.run(x, y, loss_fn, write, check)
    return loss, out, _half_squared_norms(carried)


def _half_squared_norms(groups: list[list[Tensor]]) -> list[float]:
    """1/2 sum ||g||^2 per group, with one fused norm call over the distinct tensors (an
    identity vertex passes its error on unchanged, so on levelled graphs the same tensor is
    carried by several levels: 688 entries but 390 tensors per LSTM step)."""
    index: dict[int, int] = {}
    distinct: list[Tensor] = []
    for grp in groups:
        for g in grp:
            if id(g) not in index:
                index[id(g)] = len(distinct)
                distinct.append(g)
    sq = torch.stack(torch._foreach_norm(distinct)).double().pow(2).tolist() if distinct else []
    return [0.5 * sum(sq[index[id(g)]] for g in grp) for grp in groups]


def _canonical(graph: PCGraph) -> Callable[[int, Tensor], Tensor]:
    """Free value nodes are held contiguous, in the feed-forward sweep as during inference.

    C1 asks for e_v = x_v - mu_v = 0 *exactly* at the start. A vertex's prediction computed
    from a strided view (a ``chunk`` of the LSTM gates) and from a contiguous copy of the same
    values can differ in the last bit (vectorised vs strided kernels); with gamma = 1 the PC
    dynamics amplify such 1e-16 errors ahead of the error wave until they overflow. Evaluating
    every prediction from contiguous parents, both here and in :meth:`PCInference.dynamics`,
    makes the initial errors exactly zero."""
    def leaf(i: int, mu: Tensor) -> Tensor:
        return mu if graph.vertices[i].kind in CLAMPED else mu.contiguous()
    return leaf


class PCInference:
    """The energy F of a captured graph on one batch, its state gradient and weight updates."""

    def __init__(
        self, graph: PCGraph, x: Tensor, y: Tensor, loss_fn: LossFn, beta: float = 1.0
    ) -> None:
        self.graph, self.x, self.y, self.loss_fn, self.beta = graph, x, y, loss_fn, beta
        with torch.no_grad():  # the one pass that may move buffers
            values, mus, self.consts = forward(graph, x, _canonical(graph))
        out = mus[graph.output]
        assert out is not None
        self.output = out
        self.ops = [i for i in graph.order if graph.level[i] is not None
                    and graph.vertices[i].kind not in CLAMPED]
        self.free = [i for i in self.ops if i != graph.output]
        self.clamped = {i: values[i] for i, v in enumerate(graph.vertices) if v.kind in CLAMPED}
        self.initial = [values[i] for i in self.free]

    def _values(self, states: Sequence[Tensor]) -> list[Tensor | None]:
        vals: list[Tensor | None] = [None] * len(self.graph.vertices)
        for i, c in self.clamped.items():
            vals[i] = c
        for i, s in zip(self.free, states, strict=True):
            vals[i] = s
        return vals

    def _energy(self, states: Sequence[Tensor], consts: Consts) -> Tensor:
        vals = self._values(states)
        total = torch.zeros((), dtype=self.x.dtype, device=self.x.device)
        for i in self.ops:
            mu = predict(self.graph, i, vals, consts)
            if i == self.graph.output:
                total = total + self.beta * self.loss_fn(mu, self.y)
            else:
                total = total + 0.5 * (vals[i] - mu).pow(2).sum()  # type: ignore[operator]
        return total

    def dynamics(self, states: list[Tensor]) -> tuple[list[Tensor | None], float]:
        """-dF/dx for every hidden value node, and F (for :func:`biograd.core.relax.relax`)."""
        with torch.enable_grad(), frozen_buffers(self.graph.gm):
            leaves = [s.detach().contiguous().requires_grad_(True) for s in states]
            energy = self._energy(leaves, self.consts)
            grads = torch.autograd.grad(energy, leaves, allow_unused=True)
        deltas: list[Tensor | None] = [
            None if g is None else -g for g in grads
        ]
        return deltas, float(energy.detach())

    def energy(self, states: Sequence[Tensor]) -> float:
        with torch.no_grad(), frozen_buffers(self.graph.gm):
            return float(self._energy(states, self.consts))

    def errors(self, vertices: Sequence[int], states: Sequence[Tensor]) -> list[Tensor]:
        """e_v = x_v - mu_v(x_parents) for each vertex in ``vertices`` (every kind, identity
        and parameter-free vertices included); the output's is e_out = -beta dL/dmu_out."""
        vals = self._values([s.detach().contiguous() for s in states])
        out: list[Tensor] = []
        with torch.no_grad(), frozen_buffers(self.graph.gm):
            for i in vertices:
                mu = predict(self.graph, i, vals, self.consts)
                if i == self.graph.output:
                    with torch.enable_grad():
                        m = mu.detach().requires_grad_(True)
                        (g,) = torch.autograd.grad(self.beta * self.loss_fn(m, self.y), m)
                    out.append(-g)
                else:
                    out.append(vals[i] - mu)  # type: ignore[operator]
        return out

    def write_updates(
        self, vertices: Sequence[int], states: Sequence[Tensor], write: Write, scale: float = 1.0
    ) -> None:
        """Write scale * dF/dtheta_v (only vertex v's own term) for each vertex in ``vertices``."""
        vals = self._values([s.detach().contiguous() for s in states])
        outs, gouts, params = [], [], {}
        with torch.enable_grad(), frozen_buffers(self.graph.gm):
            for i in vertices:
                v = self.graph.vertices[i]
                if v.kind != "op" or not v.params:
                    continue
                mu = predict(self.graph, i, vals, self.consts)
                if not mu.requires_grad:
                    continue
                if i == self.graph.output:
                    m = mu.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(self.beta * self.loss_fn(m, self.y), m)
                else:
                    g = mu.detach() - vals[i]  # type: ignore[operator]
                outs.append(mu)
                gouts.append(g)
                params.update({id(p): p for p in v.params})
            if not outs:
                return
            plist = list(params.values())
            res = torch.autograd.grad(outs, plist, gouts, allow_unused=True)
        for p, g in zip(plist, res, strict=True):
            if g is not None:
                write(p, g * scale)
