"""Closed-form gradients of the target-propagation feedback losses (:mod:`biograd.ops.tp_losses`).

For a ``Linear`` block the feedback block is affine in its parameters,
``g(y) = V u + c`` with ``u = pre(y)`` parameter-free (``V``: in x out), so every feedback loss
is an exact quadratic in ``(V, c)`` and its gradient and its curvature along a direction are
matrix products of the batch's ``u``'s (``B``: batch size; rows are samples)::

    reconstruction (DTP):  L = |r|^2 / B,  r = u_n V^T + c - x_n
                           dL/dV = 2 r^T u_n / B,  dL/dc = 2 sum_b r / B,
                           d^T H d = 2 |u_n D_V^T + D_c|^2 / B
    DRL:                   L = (|e|^2 + lam |dr_y|^2) / (B sigma^2),  e = du_x V^T - dx
                           dL/dV = 2 (e^T du_x + lam dr_y^T du_y) / (B sigma^2),  dL/dc = 0,
                           d^T H d = 2 (|du_x D^T|^2 + lam |du_y D^T|^2) / (B sigma^2)
    L-DRL:                 L = (-2 <dx, dr_x> + |dr_y|^2) / B
                           dL/dV = 2 (dr_y^T du_y - dx^T du_x) / B,  dL/dc = 0,
                           d^T H d = 2 |du_y D^T|^2 / B

with ``dr_x = du_x V^T``, ``dr_y = du_y V^T``. The noise is drawn exactly as the autograd path
draws it (same generator calls, same order), so both give the same step up to float rounding;
:class:`QuadraticStep` replaces one ``autograd.grad`` (and, for the step guard, one double
backward) of :mod:`biograd.rules._target_prop`'s feedback training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from biograd.ops.inverse import BlockContext, FeedbackBlock, LinearFeedback
from biograd.ops.tp_losses import (
    DifferenceReconstructionLoss,
    FeedbackLoss,
    Forward,
    LocalDifferenceReconstructionLoss,
    ReconstructionLoss,
    gaussian_like,
    noisy_differences,
)


@dataclass
class QuadraticStep:
    """One noise draw of a feedback loss: ``grads`` in ``g.parameters()`` order (``V``, ``c``;
    None where a parameter does not enter, as ``c`` in the difference losses), ``value()``
    the loss, ``curvature(d)`` = ``d^T H d`` along a direction ``d`` (same layout as grads)."""

    grads: list[Tensor | None]
    value: Callable[[], Tensor]
    curvature: Callable[[list[Tensor | None]], float]


def _sum_sq(t: Tensor) -> Tensor:
    return t.pow(2).sum()


def _reconstruction(loss: ReconstructionLoss, f: Forward, g: LinearFeedback, x: Tensor,
                    y: Tensor, ctx: BlockContext, sigma: float,
                    generator: torch.Generator) -> QuadraticStep:
    xn = x + gaussian_like(x, sigma, generator) if sigma > 0 else x
    with torch.no_grad():
        u = g.pre(f(xn), ctx)
    r = torch.addmm(g.bias, u, g.weight.t()) - xn.flatten(1)
    k = 2.0 / x.shape[0]
    grads: list[Tensor | None] = [torch.mm(r.t(), u).mul_(k), r.sum(0).mul_(k)]

    def curvature(d: list[Tensor | None]) -> float:
        dv, dc = d
        q = torch.mm(u, dv.t()) if dv is not None else u.new_zeros(u.shape[0], x[0].numel())
        if dc is not None:
            q = q + dc
        return k * float(_sum_sq(q))

    return QuadraticStep(grads, lambda: r.pow(2).sum(1).mean(), curvature)


def _drl(loss: DifferenceReconstructionLoss, f: Forward, g: LinearFeedback, x: Tensor,
         y: Tensor, ctx: BlockContext, sigma: float,
         generator: torch.Generator) -> QuadraticStep:
    dx, du = noisy_differences(f, g, x, y, ctx, sigma, generator)
    du_x, du_y = du.chunk(2)
    dr_x, dr_y = torch.mm(du, g.weight.t()).chunk(2)
    e = dr_x - dx.flatten(1)
    k = 2.0 / (x.shape[0] * sigma**2)
    gv = torch.mm(e.t(), du_x).addmm_(dr_y.t(), du_y, alpha=loss.lam).mul_(k)

    def value() -> Tensor:
        return (e.pow(2).sum(1) + loss.lam * dr_y.pow(2).sum(1)).mean() / sigma**2

    def curvature(d: list[Tensor | None]) -> float:
        if d[0] is None:
            return 0.0
        qx, qy = torch.mm(du, d[0].t()).chunk(2)
        return k * (float(_sum_sq(qx)) + loss.lam * float(_sum_sq(qy)))

    return QuadraticStep([gv, None], value, curvature)


def _ldrl(loss: LocalDifferenceReconstructionLoss, f: Forward, g: LinearFeedback, x: Tensor,
          y: Tensor, ctx: BlockContext, sigma: float,
          generator: torch.Generator) -> QuadraticStep:
    dx, du = noisy_differences(f, g, x, y, ctx, sigma, generator)
    du_x, du_y = du.chunk(2)
    dxf = dx.flatten(1)
    dr_x, dr_y = torch.mm(du, g.weight.t()).chunk(2)
    k = 2.0 / x.shape[0]
    gv = torch.mm(dr_y.t(), du_y).addmm_(dxf.t(), du_x, alpha=-1.0).mul_(k)

    def value() -> Tensor:
        return (-2.0 * (dxf * dr_x).sum(1) + dr_y.pow(2).sum(1)).mean()

    def curvature(d: list[Tensor | None]) -> float:
        if d[0] is None:
            return 0.0
        return k * float(_sum_sq(torch.mm(du_y, d[0].t())))

    return QuadraticStep([gv, None], value, curvature)


_CLOSED_FORMS: dict[type, Callable[..., QuadraticStep]] = {
    ReconstructionLoss: _reconstruction,
    DifferenceReconstructionLoss: _drl,
    LocalDifferenceReconstructionLoss: _ldrl,
}


def quadratic_step(
    loss: FeedbackLoss, f: Forward, g: FeedbackBlock, x: Tensor, y: Tensor, ctx: BlockContext,
    sigma: float, generator: torch.Generator,
) -> QuadraticStep | None:
    """The closed-form step of ``loss`` on one noise draw, or None (drawing nothing) when
    there is none: feedback blocks other than ``Linear`` ones, or other losses."""
    fn = _CLOSED_FORMS.get(type(loss))
    if fn is None or type(g) is not LinearFeedback:
        return None
    with torch.no_grad():
        return fn(loss, f, g, x, y, ctx, sigma, generator)
