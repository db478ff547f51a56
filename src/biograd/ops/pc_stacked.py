"""Predictive coding on a uniform-width chain, all layers of a relaxation step in one call each.

The ``blocks`` node layout of :mod:`biograd.ops.pc_chain` on an MLP whose hidden layers share
one width ``h`` (PCX's MNIST MLPs, Pinchetti et al. 2024, arXiv:2407.01163; the layered networks
of Whittington & Bogacz 2017): value nodes ``x_1 .. x_n`` (``n`` hidden layers) all have shape
``(batch, h)`` and the middle stages ``x_j = f(W_j x_{j-1} + b_j)``, ``j = 2 .. n``, all map
``h -> h`` with one activation. Stacking the value nodes into one ``(n, batch, h)`` tensor and
the middle weights into one ``(n - 1, h, h)`` tensor, one relaxation step is

    pre = b + x_{1..n-1} W^T          (one batched product for every middle stage)
    e   = x - [mu_1, f(pre)]          (mu_1 = f(W_1 x_0 + b_1) is fixed: x_0 is clamped)
    d   = f'(pre) * e_{2..n}
    -dF/dx_{1..n-1} = d W - e_{1..n-1},   -dF/dx_n = e_out W_out - e_n

with the output error ``e_out = -beta dL/dmu_out`` (P5 Eqs. 3-4 on this chain). These are the
formulas of :class:`biograd.ops.pc_chain.ChainInference` evaluated for all layers at once (the
same energy, the same dynamics; ``tests/test_pc_stacked.py`` checks both against autograd on
F and against each other): a handful of calls per step instead of a few per layer, and
products and elementwise work large enough to use every thread.

Two exact savings. (1) From the feed-forward start every hidden error is zero, and a value
node keeps its start value exactly until an error reaches it (one layer per step, from the
output down): the leading nodes still equal to their start values keep their cached
predictions, their errors stay exactly zero, and the products that would multiply those zeros
are skipped (each step compares the nodes with the start, so this holds for any state).
(2) The tanh-approximate GELU (PCX's and JAX's default) is evaluated as ``a sigmoid(z)``,
``z = 2 sqrt(2/pi) (a + 0.044715 a^3)`` (the same function: ``(1 + tanh(z/2)) / 2 =
sigmoid(z)``), keeping ``sigmoid(z)`` for the derivative ``s + a s (1 - s) z'(a)``: ATen's
tanh costs about three times a sigmoid on this CPU. Results equal the per-layer path to float
rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from biograd.core.losses import LossFn
from biograd.ops.pc_chain import OutputNode, Stage, Write

_K = 2.0 * math.sqrt(2.0 / math.pi)  # z = _K (a + _C a^3): tanh-GELU(a) = a sigmoid(z)
_C = 0.044715

Saved = tuple[Tensor, ...]  # (mu, what the derivative reuses)
Forward = Callable[[Tensor], Saved]
Backward = Callable[[Tensor, Tensor, Saved], Tensor]


def _gelu_tanh(a: Tensor) -> Saved:
    sq = a * a
    s = torch.sigmoid(torch.addcmul(a, sq, a, value=_C).mul_(_K))
    return a * s, s, sq


def _gelu_tanh_vjp(e: Tensor, a: Tensor, saved: Saved) -> Tensor:
    _, s, sq = saved
    slope = sq.mul(3 * _C * _K).add_(_K).mul_(a)  # a z'(a)
    return torch.ops.aten.sigmoid_backward(slope, s).add_(s).mul_(e)


def saved_activation(stage: Stage) -> tuple[Forward, Backward]:
    """``(forward, vjp)`` of a stage's activation keeping what its derivative reuses:
    ``forward(pre) -> (mu, ...)``, ``vjp(e, pre, saved) = f'(pre) * e``."""
    act = stage.act
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return _gelu_tanh, _gelu_tanh_vjp
    fwd, vjp = stage.fwd, stage.vjp
    assert fwd is not None and vjp is not None
    return (lambda a: (fwd(a),)), (lambda e, a, saved: vjp(e, a, saved[0]))


def stackable(stages: Sequence[Stage]) -> bool:
    """Whether a ``blocks`` chain has the shape :class:`StackedChain` runs: a first stage
    ``Linear(in, h) -> act``, at least one middle stage ``Linear(h, h) -> act`` (one activation,
    with bias), and a last plain ``Linear(h, out)``."""
    if len(stages) < 3:
        return False
    first, mid, last = stages[0], stages[1:-1], stages[-1]
    if first.layer is None or first.fwd is None or last.layer is None or last.fwd is not None:
        return False
    h = first.layer.out_features
    act = mid[0].act
    for st in mid:
        if st.layer is None or st.fwd is None or st.layer.bias is None \
                or st.layer.weight.shape != (h, h) or type(st.act) is not type(act) \
                or st.act.extra_repr() != act.extra_repr():  # type: ignore[union-attr]
            return False
    return last.layer.in_features == h


class StackedChain:
    """The energy F of a uniform-width ``blocks`` chain on one batch, its state gradient and
    weight updates, with the value nodes stacked into one ``(n, batch, h)`` state (the
    interface of :class:`biograd.ops.pc_chain.ChainInference`)."""

    def __init__(
        self, stages: Sequence[Stage], x: Tensor, y: Tensor, loss_fn: LossFn, beta: float = 1.0
    ) -> None:
        assert stackable(stages)
        self.first, self.mids, self.last = stages[0], list(stages[1:-1]), stages[-1]
        self._first_fns = saved_activation(self.first)
        self._fwd, self._vjp = saved_activation(self.mids[0])
        first, last = self.first.layer, self.last.layer
        assert first is not None and last is not None
        with torch.no_grad():
            self.x0 = x.flatten(1) if x.dim() > 2 else x
            pre1 = F.linear(self.x0, first.weight, first.bias)  # x_0 is clamped: fixed
            self._first = (pre1, self._first_fns[0](pre1))
            self.w = torch.stack([st.layer.weight for st in self.mids])  # type: ignore[union-attr]
            self.wt = self.w.transpose(1, 2)
            self.b = torch.stack([st.layer.bias for st in self.mids]).unsqueeze(1)  # type: ignore
            n, (batch, h) = len(self.mids) + 1, pre1.shape
            start = pre1.new_empty((n, batch, h))
            start[0] = self._first[1][0]
            pre = pre1.new_empty((n - 1, batch, h))
            saved: list[Saved] = []
            for j in range(n - 1):  # the feed-forward pass, one middle stage at a time
                torch.baddbmm(self.b[j: j + 1], start[j: j + 1], self.wt[j: j + 1],
                              out=pre[j: j + 1])
                saved.append(self._fwd(pre[j: j + 1]))
                start[j + 1] = saved[-1][0][0]
            self.output = F.linear(start[-1], last.weight, last.bias)
        self.initial = [start]
        self._start = (start, pre, tuple(torch.cat(parts) for parts in zip(*saved, strict=True)))
        self._out = OutputNode(loss_fn, y, beta, self.output)

    def _unmoved(self, state: Tensor) -> int:
        """How many leading value nodes still hold exactly their feed-forward start values."""
        start = self._start[0]
        k = 0
        while k < len(start) and torch.equal(state[k], start[k]):
            k += 1
        return k

    def _predict(self, state: Tensor, k: int) -> tuple[Tensor, Saved]:
        """The middle stages' ``pre`` and saved activations at ``state``, reusing the start's
        for the stages whose input (one of the ``k`` unmoved leading nodes) has not moved."""
        _, start_pre, start_saved = self._start
        lo = min(k, len(state) - 1)
        if lo == 0:
            pre = torch.baddbmm(self.b, state[:-1], self.wt)
            return pre, self._fwd(pre)
        pre, saved = start_pre.clone(), tuple(t.clone() for t in start_saved)
        if lo < len(state) - 1:
            torch.baddbmm(self.b[lo:], state[lo:-1], self.wt[lo:], out=pre[lo:])
            for buf, new in zip(saved, self._fwd(pre[lo:]), strict=True):
                buf[lo:] = new
        return pre, saved

    def _errors(self, state: Tensor) -> tuple[Tensor, Tensor, int, Tensor, Tensor]:
        """``(e, d, lo, e_out, F)``: the value nodes' errors, the scaled errors
        ``d = f'(pre) * e`` of the middle stages ``lo..`` (those before ``lo`` are exactly
        zero: their output nodes and inputs have not moved), the output error and F."""
        k = self._unmoved(state)
        pre, saved = self._predict(state, k)
        e = torch.empty_like(state)
        torch.sub(state[0], self._first[1][0], out=e[0])
        torch.sub(state[1:], saved[0], out=e[1:])
        e_out, out_term = self._out.error(self.last.predict(state[-1])[1])
        flat = e.reshape(-1)
        energy = torch.dot(flat, flat) * 0.5 + out_term
        lo = max(k - 1, 0)
        d = self._vjp(e[1 + lo:], pre[lo:], tuple(t[lo:] for t in saved))
        return e, d, lo, e_out, energy

    @torch.no_grad()
    def dynamics(self, states: list[Tensor]) -> tuple[list[Tensor | None], Tensor]:
        """-dF/dx for the stacked value nodes, and F (for :func:`biograd.core.relax.relax`;
        computed without autograd: results are written into preallocated slices)."""
        (state,) = states
        e, d, lo, e_out, energy = self._errors(state)
        delta = torch.empty_like(state)
        delta[:lo].zero_()  # -e = 0 and no error below: these nodes do not move
        torch.baddbmm(e[lo:-1], d, self.w[lo:], beta=-1, out=delta[lo:-1])
        torch.addmm(e[-1], e_out, self.last.layer.weight, beta=-1,  # type: ignore[union-attr]
                    out=delta[-1])
        return [delta], energy

    def energy(self, states: Sequence[Tensor]) -> float:
        with torch.no_grad():
            return float(self._errors(states[0])[4])

    def write_updates(self, states: Sequence[Tensor], write: Write, scale: float = 1.0) -> float:
        """Write ``scale * dF/dtheta`` for every Linear (``-d_j^T x_{j-1}``, ``-sum d_j``)
        and return F at ``states``."""
        (state,) = states
        with torch.no_grad():
            e, d, lo, e_out, energy = self._errors(state)
            if lo:
                d = torch.cat([d.new_zeros((lo, *d.shape[1:])), d])
            pre1, saved1 = self._first
            d1 = self._first_fns[1](e[0], pre1, saved1)
            first, last = self.first.layer, self.last.layer
            assert first is not None and last is not None
            write(first.weight, (d1.T @ self.x0) * -scale)
            if first.bias is not None:
                write(first.bias, d1.sum(0) * -scale)
            gw = torch.bmm(d.transpose(1, 2), state[:-1]).mul_(-scale)
            gb = d.sum(1).mul_(-scale)
            for j, st in enumerate(self.mids):
                assert st.layer is not None and st.layer.bias is not None
                write(st.layer.weight, gw[j])
                write(st.layer.bias, gb[j])
            write(last.weight, (e_out.T @ state[-1]) * -scale)
            if last.bias is not None:
                write(last.bias, e_out.sum(0) * -scale)
        return float(energy)
