"""Predictive coding's whole step on a uniform-width chain as one compiled, fixed-shape function.

The algorithm of :class:`biograd.ops.pc_stacked.StackedChain` (Whittington & Bogacz 2017; PCX's
layering, Pinchetti et al. 2024, arXiv:2407.01163) written as a pure function of tensors: the
feed-forward start, ``T`` relaxation steps of the stacked value nodes (plain gradient steps or
SGD + momentum with a fresh velocity), the energy before every step and at the end, and the
weight updates ``dF/dtheta / beta`` at the relaxed state. With no data-dependent Python in it,
``torch.compile`` (inductor) traces it into one graph and fuses the elementwise work of a step
(errors, the activation and its derivative, the momentum update) into a few loops around the
products, which is what the eager path cannot do (PCX gets the same from XLA).

The eager path's event-driven saving is kept: from the feed-forward start an error reaches one
value node further down per step, so before step ``t`` the first ``n - t`` nodes still hold
their start values, their errors are exactly zero and the products with them are skipped (the
eager path finds that count by comparing the nodes with the start; here it is known in advance,
which a compiled graph needs; with ``init_noise`` every node moves from the first step). The
compiled kernels may round differently from the eager ones (fused elementwise loops):
``tests/test_pc_compiled.py`` compares the compiled step with the eager one (float64: updates,
energy trace and loss equal to 1e-10).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor
from torch.nn import functional as F

from biograd.core import losses
from biograd.core.losses import LossFn
from biograd.ops.pc_chain import OutputNode
from biograd.ops.pc_stacked import Backward, Forward

StepFn = Callable[..., tuple[Tensor, ...]]


def _step(
    x0: Tensor, y: Tensor, w1: Tensor, b1: Tensor | None, ws: list[Tensor], bs: list[Tensor],
    wo: Tensor, bo: Tensor | None, noise: Tensor | None, *, first: tuple[Forward, Backward],
    mid: tuple[Forward, Backward], loss_fn: LossFn, T: int, gamma: float, momentum: float,
    beta: float,
) -> tuple[Tensor, ...]:
    """One PC step: ``(output, trace, dW_1, db_1, dW_mid, db_mid, dW_out, db_out)``: the
    feed-forward output; ``F`` before each of the ``T`` steps and at the end, then the loss
    at the output (``T + 2`` values); ``dF/dtheta / beta`` (``None`` for an absent bias)."""
    fwd1, vjp1 = first
    fwd, vjp = mid
    w, b = torch.stack(ws), torch.stack(bs)
    n = w.shape[0] + 1  # value nodes; middle stages n - 1
    pre1 = F.linear(x0, w1, b1)
    saved1 = fwd1(pre1)
    mu1 = saved1[0]
    nodes, pres, saves = [mu1], [], []
    for j in range(n - 1):  # the feed-forward start
        pres.append(F.linear(nodes[-1], w[j], b[j]))
        saves.append(fwd(pres[-1]))
        nodes.append(saves[-1][0])
    output = F.linear(nodes[-1], wo, bo)
    out_node = OutputNode(loss_fn, y, beta, output)
    pre0, saved0 = torch.stack(pres), tuple(torch.stack(t) for t in zip(*saves, strict=True))
    state = torch.stack(nodes)
    if noise is not None:
        state = state + noise
    wt, bias = w.transpose(1, 2), b.unsqueeze(1)

    def errors(s: Tensor, k: int) -> tuple[Tensor, Tensor, int, Tensor, Tensor]:
        """``(e, d, lo, e_out, F)`` at ``s`` whose first ``k`` nodes hold their start values
        (their predictions are the start's, their errors exactly zero, ``d`` is for the
        middle stages ``lo..`` only): the event-driven saving of the eager path, with ``k``
        known in advance (an error reaches one node further down per step)."""
        lo = min(k, n - 1)
        if lo == n - 1:
            pre, saved = pre0, saved0
        else:
            pre = torch.baddbmm(bias[lo:], s[lo:-1], wt[lo:])
            saved = fwd(pre)
            if lo:
                pre = torch.cat([pre0[:lo], pre])
                saved = tuple(torch.cat([a[:lo], b]) for a, b in zip(saved0, saved, strict=True))
        e = s - torch.cat([mu1.unsqueeze(0), saved[0]])
        e_out, out_term = out_node.error(F.linear(s[-1], wo, bo))
        lo = max(k - 1, 0)
        d = vjp(e[1 + lo:], pre[lo:], tuple(t[lo:] for t in saved))
        return e, d, lo, e_out, (e * e).sum() * 0.5 + out_term

    def unmoved(t: int) -> int:  # leading nodes still at their start before step t
        return 0 if noise is not None else max(n - t, 0)

    energies = []
    vel: Tensor | None = None
    for t in range(T):
        e, d, lo, e_out, energy = errors(state, unmoved(t))
        energies.append(energy)
        parts = [torch.bmm(d, w[lo:]) - e[lo:-1], (e_out @ wo - e[-1]).unsqueeze(0)]
        if lo:
            parts.insert(0, state.new_zeros((lo, *state.shape[1:])))
        delta = torch.cat(parts)
        if momentum:
            vel = delta if vel is None else delta + momentum * vel
            state = state + gamma * vel
        else:
            state = state + gamma * delta
    e, d, lo, e_out, energy = errors(state, unmoved(T))
    energies.append(energy)
    if lo:
        d = torch.cat([d.new_zeros((lo, *d.shape[1:])), d])
    d1 = vjp1(e[0], pre1, saved1)
    s = -1.0 / beta
    energies.append(loss_fn(output, y))
    return (output, torch.stack(energies), (d1.T @ x0) * s,
            None if b1 is None else d1.sum(0) * s,
            torch.bmm(d.transpose(1, 2), state[:-1]) * s, d.sum(1) * s,
            (e_out.T @ state[-1]) * s, None if bo is None else e_out.sum(0) * s)


def compiled_step(first: tuple[Forward, Backward], mid: tuple[Forward, Backward],
                  loss_fn: LossFn, *, T: int, gamma: float, momentum: float,
                  beta: float) -> StepFn:
    """The step of :func:`_step` for fixed hyper-parameters, compiled with ``torch.compile``
    (inductor, static shapes: the first call for each batch shape and dtype compiles, a few
    seconds to tens of seconds on a CPU). Call it under ``torch.no_grad()``."""
    if loss_fn not in (losses.mse, losses.cross_entropy):
        raise ValueError("the compiled step knows loss 'mse' and 'cross_entropy' only")
    fn = partial(_step, first=first, mid=mid, loss_fn=loss_fn, T=T, gamma=gamma,
                 momentum=momentum, beta=beta)
    return torch.compile(fn, dynamic=False, fullgraph=True)
