"""Pure feedback-training losses, their step guard and the top targets of the TP family.

Every feedback loss takes the frozen forward block ``f`` (input -> output, no gradient needed),
the feedback block ``g`` (output -> input, trained), the block's forward input ``x`` and output
``y = f(x)`` (both detached), its :class:`~biograd.ops.inverse.BlockContext`, the noise std
``sigma`` and the generator to draw noise from. Returns a scalar (mean over the batch).

Small-noise expansions (J_f, J_g the block Jacobians at x and y; E over the noise):

- reconstruction (Lee et al. 2015):          ||g(f(x+n)) - (x+n)||^2            -> g ~ f^{-1}
- DRL (Meulemans et al. 2020, layer-wise):   sigma^2 (||J_g J_f - I||_F^2 + lam ||J_g||_F^2)
                                             -> J_g = J_f^T (J_f J_f^T + lam I)^{-1}
- L-DRL (P2, Ernoult et al. 2022, eq. 9):    sigma^2 (||J_g||_F^2 - 2 tr(J_g J_f))
                                             = sigma^2 ||J_g - J_f^T||_F^2 + const -> J_g = J_f^T
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biograd.ops.inverse import BlockContext, FeedbackBlock

Forward = Callable[[Tensor], Tensor]


def gaussian_like(t: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """``sigma * N(0, I)`` shaped like ``t``, drawn from ``generator`` (CPU): reproducible."""
    noise = torch.randn(t.shape, generator=generator, dtype=t.dtype)
    return sigma * noise.to(t.device)


def _sq(t: Tensor) -> Tensor:
    """Per-sample squared norm."""
    return t.pow(2).flatten(1).sum(1)


def noisy_differences(
    f: Forward, g: FeedbackBlock, x: Tensor, y: Tensor, ctx: BlockContext, sigma: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """``(dx, du)``: the noise ``dx`` (then ``dy``, drawn in this order) and the stacked
    differences ``du = [pre(f(x+dx)) - pre(y); pre(y+dy) - pre(y)]`` that ``V`` maps to
    ``[dr_x; dr_y]``. The parameter-free ``pre`` runs once on the three stacked inputs (reusing
    the forward indices), without autograd."""
    dx = gaussian_like(x, sigma, generator)
    dy = gaussian_like(y, sigma, generator)
    with torch.no_grad():
        u_x, u_dy, u = g.pre(torch.cat([f(x + dx), y + dy, y]), ctx.repeat(3)).chunk(3)
        du = torch.cat([u_x, u_dy]) - torch.cat([u, u])
    return dx, du


def _differences(
    f: Forward, g: FeedbackBlock, x: Tensor, y: Tensor, ctx: BlockContext, sigma: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dr_x, dr_y)``: dr_x = g(f(x+dx)) - g(y), dr_y = g(y+dy) - g(y).

    ``g = V pre(.) + c``: ``V`` is applied once to the two stacked differences
    (:func:`noisy_differences`), so the bias cancels exactly (its gradient is zero) and only 2B
    rows go through the trained map instead of 3B."""
    dx, du = noisy_differences(f, g, x, y, ctx, sigma, generator)
    dr = g.linear_part(du, ctx.repeat(2))
    dr_x, dr_y = dr.chunk(2)
    return dx, dr_x, dr_y


@dataclass(frozen=True)
class ReconstructionLoss:
    """Lee et al. 2015 (DTP), sec. 2.3: reconstruct noise-corrupted inputs, g(f(x+n)) ~ x+n."""

    def __call__(self, f: Forward, g: FeedbackBlock, x: Tensor, y: Tensor, ctx: BlockContext,
                 sigma: float, generator: torch.Generator) -> Tensor:
        xn = x + gaussian_like(x, sigma, generator) if sigma > 0 else x
        with torch.no_grad():
            yn = f(xn)
        return _sq(g(yn, ctx) - xn).mean()


@dataclass(frozen=True)
class DifferenceReconstructionLoss:
    """Meulemans et al. 2020 (arXiv:2006.14331) eq. 10, layer-wise (DTPDRL) reading:
    (||g(f(x+dx)) - g(f(x)) - dx||^2 + lam ||g(y+dy) - g(y)||^2) / sigma^2, mean over batch."""

    lam: float

    def __call__(self, f: Forward, g: FeedbackBlock, x: Tensor, y: Tensor, ctx: BlockContext,
                 sigma: float, generator: torch.Generator) -> Tensor:
        dx, dr_x, dr_y = _differences(f, g, x, y, ctx, sigma, generator)
        return (_sq(dr_x - dx) + self.lam * _sq(dr_y)).mean() / sigma**2


@dataclass(frozen=True)
class LocalDifferenceReconstructionLoss:
    """P2 (Ernoult et al. 2022, arXiv:2201.13415) eq. 9, as in its feedback_loss.py:
    -2 mean_b sum(dx * dr_x) + mean_b sum(dr_y^2) (no 1/sigma^2 normalisation)."""

    def __call__(self, f: Forward, g: FeedbackBlock, x: Tensor, y: Tensor, ctx: BlockContext,
                 sigma: float, generator: torch.Generator) -> Tensor:
        dx, dr_x, dr_y = _differences(f, g, x, y, ctx, sigma, generator)
        return (-2.0 * (dx * dr_x).flatten(1).sum(1) + _sq(dr_y)).mean()


FeedbackLoss = ReconstructionLoss | DifferenceReconstructionLoss | LocalDifferenceReconstructionLoss


# ------------------------------------------------------------------ feedback step guard
#: default ``kappa`` of :func:`guard_scale`: ``lr * curvature <= 1``, well inside the heavy-ball
#: stability bound ``2 (1 + momentum)`` (3.8 at momentum 0.9); 0 switches the guard off.
DEFAULT_GUARD = 1.0


def guard_scale(grads: tuple[Tensor | None, ...], params: list[nn.Parameter], lr: float,
                kappa: float) -> float:
    """Step-size guard of the feedback SGD: ``min(1, kappa / (lr * rho))``.

    Every feedback loss is an exact quadratic in the feedback parameters (``g`` is affine in
    ``V, c``), so its curvature along the gradient ``G``, ``rho = G^T H G / ||G||^2`` (a Rayleigh
    quotient of the Hessian, ``<= lambda_max``), is exact; ``H G`` is one double-backward. Heavy
    ball SGD on a quadratic is stable iff ``lr * lambda < 2 (1 + momentum)``; scaling the gradient
    so that ``lr * rho <= kappa`` keeps every step inside that bound whenever the gradient points
    along the sharp directions, which is the case once an instability starts to grow. ``grads``
    must come from ``autograd.grad(..., create_graph=True)``.
    """
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    if not pairs:
        return 1.0
    gs = [g for _, g in pairs]
    hv = torch.autograd.grad(gs, [p for p, _ in pairs], grad_outputs=[g.detach() for g in gs],
                             allow_unused=True)
    ghg = sum(float((g.detach() * h).sum()) for g, h in zip(gs, hv, strict=True) if h is not None)
    return guard_factor([g.detach() for g in gs], ghg, lr, kappa)


def guard_factor(grads: list[Tensor | None], ghg: float, lr: float, kappa: float) -> float:
    """:func:`guard_scale` from the gradient and its curvature ``ghg = G^T H G`` (for losses
    whose ``H G`` is known in closed form: :mod:`biograd.ops.tp_quadratic`)."""
    gg = sum(float(g.pow(2).sum()) for g in grads if g is not None)
    if gg == 0.0 or ghg <= 0.0:
        return 1.0
    return min(1.0, kappa * gg / (lr * ghg))


# ------------------------------------------------------------------ top targets
def gradient_top_nudge(loss_grad: Tensor, output: Tensor, y: Tensor) -> Tensor:
    """DTP (Lee et al. 2015, eq. 13): the per-sample loss gradient dl_b/dz_L.

    ``loss_grad`` is d(mean loss)/dz_L, so the per-sample gradient is ``B * loss_grad``."""
    return loss_grad * output.shape[0]


def error_top_nudge(loss_grad: Tensor, output: Tensor, y: Tensor) -> Tensor:
    """LRA-E-style output error (Ororbia & Mali 2019): e_L = softmax(z_L) - onehot(y) (or
    ``- y`` for float targets), independent of the loss. Equals the per-sample cross-entropy
    gradient; differs from the gradient for the ``mse`` loss."""
    p = torch.softmax(output, dim=-1)
    if y.is_floating_point():
        return p - y.to(p.dtype)
    return p - torch.nn.functional.one_hot(y.long(), output.shape[-1]).to(p.dtype)


TopNudge = Callable[[Tensor, Tensor, Tensor], Tensor]
TOP_TARGETS: dict[str, TopNudge] = {"gradient": gradient_top_nudge, "error": error_top_nudge}
