"""Pure energy and dynamics functions of the energy/relaxation family (PCX-style one-liners).

Used by ``equilibrium_prop``, ``activation_relaxation`` and ``lra_e``; no state, no classes.

Layered Hopfield energy (Scellier & Bengio 2017, Eq. 1; ALGORITHMS.md), per sample::

    E(s) = 1/2 sum_l ||s_l||^2 - sum_l rho_l(s_l)^T (W_l r_{l-1} + b_l),   r_0 = x,
                                                                          r_l = rho_l(s_l)

The input ``x`` is clamped and enters as it is (no ``rho`` on the input layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from biograd.core import losses
from biograd.core.blocks import activation_derivative


def rate_and_derivative(act: nn.Module, s: Tensor) -> tuple[Tensor, Tensor]:
    """``(rho(s), rho'(s))`` in closed form for the common activations, else by autograd."""
    if isinstance(act, nn.Identity):
        return s, torch.ones_like(s)
    if isinstance(act, nn.Tanh):
        r = torch.tanh(s)
        return r, 1.0 - r * r
    if isinstance(act, nn.Sigmoid):
        r = torch.sigmoid(s)
        return r, r * (1.0 - r)
    if isinstance(act, nn.ReLU):
        return torch.relu(s), (s > 0).to(s.dtype)
    return act(s), activation_derivative(act, s)


def output_grad_fn(
    loss: losses.LossFn, y: Tensor, classes: int, dtype: torch.dtype,
    feature_major: bool = False,
) -> Callable[[Tensor], Tensor]:
    """``out -> dl_i/d out_i`` of the per-sample loss (the batch-mean loss's gradient times the
    batch size) with the labels ``y`` prepared once, for loops that call it every step: closed
    forms for biograd's ``mse`` and ``cross_entropy``, autograd otherwise. ``feature_major``:
    ``out`` and the result are ``classes x batch`` (a softmax over the first dimension is also
    several times faster than over a short last one)."""
    if loss is losses.mse or loss is losses.cross_entropy:
        d = 0 if feature_major else -1
        if y.is_floating_point():
            target = y.to(dtype)
        else:
            target = F.one_hot(y.long(), classes).to(dtype)
        if feature_major:
            target = target.t().contiguous()
        if loss is losses.mse:
            return lambda out: out - target
        if not y.is_floating_point():  # one-hot rows: probability mass 1
            return lambda out: torch.softmax(out, d) - target
        mass = target.sum(d, keepdim=True)
        return lambda out: torch.softmax(out, d) * mass - target
    if feature_major:
        return lambda out: (losses.output_error(loss, out.t(), y) * out.shape[1]).t()
    return lambda out: losses.output_error(loss, out, y) * out.shape[0]


def per_sample_output_grad(loss: losses.LossFn, out: Tensor, y: Tensor) -> Tensor:
    """``dl_i/d out_i`` of the per-sample loss (:func:`output_grad_fn` applied once)."""
    return output_grad_fn(loss, y, out.shape[-1], out.dtype)(out)


def hopfield_energy(
    states: Sequence[Tensor],
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    acts: Sequence[nn.Module],
) -> Tensor:
    """Per-sample layered Hopfield energy ``E(s)`` (shape ``(batch,)``), differentiable in
    the states and the parameters (Scellier & Bengio 2017, Eq. 1)."""
    energy = sum(0.5 * s.pow(2).sum(-1) for s in states)
    prev = x
    for s, w, b, act in zip(states, weights, biases, acts, strict=True):
        r = act(s)
        energy = energy - (r * F.linear(prev, w, b)).sum(-1)
        prev = r
    return energy


def hopfield_state_grad(
    states: Sequence[Tensor],
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    acts: Sequence[nn.Module],
    input_drive: Tensor | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Closed-form ``dE/ds_l = s_l - rho'(s_l) * (W_l r_{l-1} + b_l + W_{l+1}^T r_{l+1})`` and
    the per-sample energy ``E(s)``. ``input_drive`` (= ``W_1 x + b_1``, constant while ``x`` is
    clamped) may be passed to skip the input layer's product at every relaxation step."""
    pairs = [rate_and_derivative(a, s) for s, a in zip(states, acts, strict=True)]
    rates, derivs = [r for r, _ in pairs], [d for _, d in pairs]
    n = len(states)
    grads: list[Tensor] = []
    energy = sum(0.5 * s.pow(2).sum(-1) for s in states)
    for i in range(n):
        if i == 0:
            up = input_drive if input_drive is not None else F.linear(x, weights[0], biases[0])
        else:
            up = F.linear(rates[i - 1], weights[i], biases[i])
        energy = energy - (rates[i] * up).sum(-1)
        drive = up + rates[i + 1] @ weights[i + 1] if i + 1 < n else up
        grads.append(states[i] - derivs[i] * drive)
    return grads, energy


def hopfield_param_contrast(
    rates_a: Sequence[Tensor], rates_b: Sequence[Tensor], x: Tensor, alpha: float = 1.0
) -> list[tuple[Tensor, Tensor]]:
    """``alpha`` times the batch sums of ``dE/dtheta(s_a) - dE/dtheta(s_b)`` per layer,
    ``(weight, bias)``, in closed form from the rates ``r_l = rho_l(s_l)`` (Scellier & Bengio
    2017, Eq. 1): ``dE/dW_l = -r_l r_{l-1}^T`` and ``dE/db_l = -r_l`` with ``r_0 = x`` in both
    states. Fresh tensors, one matrix product per state and layer (one for the first)."""
    out = []
    for i, (ra, rb) in enumerate(zip(rates_a, rates_b, strict=True)):
        diff = ra - rb
        if i == 0:
            gw = _scaled_mm(diff.t(), x, -alpha)
        else:
            gw = _scaled_mm(ra.t(), rates_a[i - 1], -alpha)
            gw.addmm_(rb.t(), rates_b[i - 1], alpha=alpha)
        out.append((gw, diff.sum(0).mul_(-alpha)))
    return out


def _scaled_mm(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """``alpha * a @ b`` in one product (beta = 0: the uninitialised buffer is ignored)."""
    out = a.new_empty(a.shape[0], b.shape[1])
    return torch.addmm(out, a, b, beta=0.0, alpha=alpha, out=out)


def relaxation_residual(state: Tensor, target: Tensor) -> Tensor:
    """Activation relaxation's leaky dynamics ``dx/dt = -x + target`` (P4, Eq. 5), where
    ``target`` is the backward message from the layer above."""
    return target - state


def lra_target(act: nn.Module, h: Tensor, d: Tensor, beta: float) -> Tensor:
    """LRA-E target ``y = f(h - beta d)`` (Ororbia & Mali 2019, Eq. 4)."""
    return act(h - beta * d)
