"""Closed form of the Euler steps of a linear chain of leaky units (activation relaxation, P4).

Activities ``x_0..x_{n-1}`` relax with the top ``x_n = top`` held (Millidge et al. 2020, Eq. 5)::

    dx_i/dt = -x_i + J_i(x_{i+1}),     J_i linear (Jacobians frozen at the forward pass)

``T`` Euler steps of size ``eps`` are ``x(t+1) = M x(t) + eps d`` with ``M = (1 - eps) I + eps N``,
``(N x)_i = J_i(x_{i+1})`` (``i < n - 1``; 0 for the last, whose input is the constant
``d = J_{n-1}(top)``). The fixed point ``x* = N x* + d`` is backprop's chain,
``x*_{n-1} = J_{n-1}(top)``, ``x*_i = J_i(x*_{i+1})``; the error ``e = x - x*`` obeys
``e(t+1) = M e(t)``, and ``N`` is nilpotent (``N^n = 0``) and commutes with ``I``, so::

    x(T) = x* + sum_{k<n} c_k(T) N^k e(0),     c_k(T) = C(T, k) (1 - eps)^(T-k) eps^k,

the coefficients following the scalar recursion ``c_k(t+1) = (1 - eps) c_k(t) + eps c_{k-1}(t)``
from ``c(0) = (1, 0, ...)``. The residual of step ``t`` is ``(N - I) e(t) = sum_k (c_{k-1}(t) -
c_k(t)) N^k e(0)``, so the residual energy of every step is a quadratic form in the Gram matrix of
the vectors ``N^k e(0)``. Cost: ``n`` applications of the ``J_i`` for ``x*`` and ``n(n-1)/2`` for
the ``N^k e(0)``, against ``n`` per Euler step; the result is the Euler steps' up to float
rounding (an exact identity, not an approximation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from biograd.core.relax import RelaxResult

LinearMap = Callable[[Tensor], Tensor]


def chain_coefficients(steps: int, step_size: float, terms: int) -> list[list[float]]:
    """``[c(0), ..., c(steps)]``, each ``c(t) = [c_0(t), ..., c_{terms-1}(t)]`` (float64)."""
    keep, eps = 1.0 - step_size, step_size
    c = [1.0] + [0.0] * (terms - 1)
    history = [c]
    for _ in range(steps):
        c = [keep * c[0]] + [keep * c[k] + eps * c[k - 1] for k in range(1, terms)]
        history.append(c)
    return history


def relax_linear_chain(
    start: Sequence[Tensor], maps: Sequence[LinearMap], top: Tensor, *, steps: int,
    step_size: float,
) -> RelaxResult:
    """The states after ``steps`` Euler steps of ``dx_i/dt = -x_i + maps[i](x_{i+1})``
    (``x_n = top`` held) from ``start``, in closed form, with the per-step residual energy
    ``1/2 sum_i ||dx_i/dt||^2 / batch`` at the start of every step (as the Euler loop records
    it; ``batch = top.shape[0]``)."""
    n = len(start)
    if n == 0 or steps == 0:
        return RelaxResult([s.clone() for s in start])
    fixed: list[Tensor] = [top] * n
    above = top
    for i in reversed(range(n)):
        above = fixed[i] = maps[i](above)
    terms = min(n - 1, steps) + 1
    # vecs[k][i] = (N^k e(0))_i, nonzero for i < n - k only
    vecs = [[s - f for s, f in zip(start, fixed, strict=True)]]
    for k in range(1, terms):
        prev = vecs[-1]
        vecs.append([maps[i](prev[i + 1]) for i in range(n - k)])
    history = chain_coefficients(steps, step_size, terms)
    final = history[-1]
    states = []
    for i, f in enumerate(fixed):
        x = f.clone()
        for k in range(min(terms, n - i)):
            x.add_(vecs[k][i], alpha=final[k])
        states.append(x)
    gram = torch.zeros(terms, terms, dtype=torch.float64)
    for j in range(terms):
        for k in range(j, terms):
            value = sum(float((a.double() * b.double()).sum())
                        for a, b in zip(vecs[j], vecs[k], strict=False))
            gram[j, k] = gram[k, j] = value
    c = torch.tensor(history[:steps], dtype=torch.float64)  # c(t) at the start of step t + 1
    a = torch.empty_like(c)
    a[:, 0] = -c[:, 0]
    a[:, 1:] = c[:, :-1] - c[:, 1:]
    energies = (0.5 * ((a @ gram) * a).sum(1) / top.shape[0]).tolist()
    return RelaxResult(states, energies, steps, False)
