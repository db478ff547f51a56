"""Predictive coding on a chain of layers in closed form (no autograd per inference step).

A chain is ``[Flatten ->] stage_1 -> ... -> stage_k`` where each stage's vertex function is
``g_j(u) = f_j(W_j u + b_j)``, ``W_j u + b_j`` or ``f_j(u)`` (an elementwise activation).
With value nodes ``x_1 .. x_{k-1}``, the clamped input ``x_0`` and the output node equal to its
prediction, the energy of :mod:`biograd.graph.inference` (P5 Eq. 2) is

    F = sum_{j<k} 1/2 ||x_j - g_j(x_{j-1})||^2 + beta * L(g_k(x_{k-1}), y).

With errors ``e_j = x_j - mu_j`` (``e_k = -beta dL/dmu_k``) and ``d_j = f_j'(pre_j) * e_j``
(``d_j = e_j`` when the stage has no activation), the exact gradients are (P5 Eqs. 3-4;
Whittington & Bogacz 2017, Eqs. 12-13 for the layered case)

    dF/dx_j   = e_j - d_{j+1} W_{j+1}          (``- d_{j+1}`` for an activation-only stage)
    dF/dW_j   = -d_j^T x_{j-1},   dF/db_j = -sum_batch d_j.

Two node layouts: ``graph`` gives every ``torch.nn`` module its own value node (a Linear's
output and an activation's output are separate nodes: what :func:`biograd.graph.capture`
builds from the same ``nn.Sequential``, so results equal the general graph implementation);
``blocks`` gives one value node per ``Linear -> activation`` block, ``mu_l = f(W_l x_{l-1} +
b_l)``, the layering of PCX's MLPs (Pinchetti et al. 2024, arXiv:2407.01163).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biograd.core import losses
from biograd.core.losses import LossFn

Write = Callable[[nn.Parameter, Tensor], None]
LAYOUTS = ("graph", "blocks")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def act_and_derivative(act: nn.Module, a: Tensor) -> tuple[Tensor, Tensor]:
    """``(f(a), f'(a))`` in closed form for the activations the fast path accepts."""
    if isinstance(act, nn.Tanh):
        r = torch.tanh(a)
        return r, 1.0 - r * r
    if isinstance(act, nn.Sigmoid):
        r = torch.sigmoid(a)
        return r, r * (1.0 - r)
    if isinstance(act, nn.ReLU):
        pos = (a > 0).to(a.dtype)
        return a * pos, pos
    if isinstance(act, nn.LeakyReLU):
        slope = torch.where(a > 0, torch.ones_like(a), torch.full_like(a, act.negative_slope))
        return a * slope, slope
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        # f = a/2 (1 + tanh u), u = c (a + 0.044715 a^3);  f' = (1 + t)/2 + a/2 (1 - t^2) u'
        t = torch.tanh(_SQRT_2_OVER_PI * (a + 0.044715 * a * a * a))
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * a * a)
        return 0.5 * a * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du
    if isinstance(act, nn.GELU):
        # f = a Phi(a);  f' = Phi(a) + a phi(a)
        cdf = 0.5 * (1.0 + torch.erf(a * _INV_SQRT_2))
        return a * cdf, cdf + a * torch.exp(-0.5 * a * a) * _INV_SQRT_2PI
    raise TypeError(f"no closed-form derivative for {type(act).__name__}")


def output_error(loss: LossFn, mu: Tensor, y: Tensor, beta: float) -> Tensor:
    """``e_out = -beta dL/dmu`` for the batch-mean loss ``L``: closed forms for biograd's
    ``cross_entropy`` (``(softmax(mu) - onehot(y)) beta / B``, evaluated in the order autograd
    evaluates it, so both agree to the last bit) and ``mse`` (``(mu - onehot(y)) beta / B``);
    autograd on the loss alone for any other loss."""
    if loss is losses.cross_entropy and not y.is_floating_point():
        s = torch.full((), -beta, dtype=mu.dtype, device=mu.device) / mu.shape[0]
        g = torch.nn.functional.one_hot(y.long(), mu.shape[-1]).to(mu.dtype) * s
        return torch.log_softmax(mu, -1).exp() * s - g
    if loss is losses.mse:
        return (losses._targets(mu, y) - mu) * (beta / mu.shape[0])
    m = mu.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(beta * loss(m, y), m)
    return -g


def _has_closed_form(m: nn.Module) -> bool:
    if isinstance(m, nn.GELU):
        return m.approximate in ("none", "tanh")
    return isinstance(m, (nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU))


@dataclass
class Stage:
    """One value node's vertex function: ``act(layer(u))``, ``layer(u)`` or ``act(u)``."""

    layer: nn.Linear | None
    act: nn.Module | None


def chain_stages(model: nn.Module, layout: str) -> list[Stage] | None:
    """The model as a chain of stages, or ``None`` when the fast path does not apply (not an
    ``nn.Sequential`` of an optional leading Flatten, Linear layers and activations with a
    closed-form derivative, ending with a Linear)."""
    if not isinstance(model, nn.Sequential):
        return None
    mods: list[nn.Module] = []
    stack = list(model)
    while stack:
        m = stack.pop(0)
        if isinstance(m, nn.Sequential):
            stack = list(m) + stack
        else:
            mods.append(m)
    if mods and isinstance(mods[0], nn.Flatten) and mods[0].start_dim == 1:
        mods = mods[1:]
    if not mods or not isinstance(mods[-1], nn.Linear):
        return None
    stages: list[Stage] = []
    for m in mods:
        if isinstance(m, nn.Linear):
            stages.append(Stage(m, None))
        elif _has_closed_form(m):
            if layout == "blocks" and stages and stages[-1].act is None \
                    and stages[-1].layer is not None:
                stages[-1].act = m
            else:
                stages.append(Stage(None, m))
        else:
            return None
    return stages


class ChainInference:
    """The energy F of a chain on one batch, its closed-form state gradient and weight updates
    (the same interface as :class:`biograd.graph.inference.PCInference`)."""

    def __init__(
        self, stages: Sequence[Stage], x: Tensor, y: Tensor, loss_fn: LossFn, beta: float = 1.0
    ) -> None:
        self.stages, self.y, self.loss_fn, self.beta = list(stages), y, loss_fn, beta
        with torch.no_grad():
            self.x0 = x.flatten(1) if x.dim() > 2 else x
            self._first = self._predict(0, self.x0)  # x_0 is clamped: mu_1 is fixed
            values, u = [], self._first[0]
            for j in range(1, len(self.stages)):
                values.append(u)
                u = self._predict(j, u)[0]
        self.output = u
        self.initial = values

    def _predict(self, j: int, u: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(mu_j, f_j'(pre_j))`` from the stage's input ``u``."""
        st = self.stages[j]
        pre = u if st.layer is None else nn.functional.linear(u, st.layer.weight, st.layer.bias)
        if st.act is None:
            return pre, None
        return act_and_derivative(st.act, pre)

    def _errors(self, states: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Errors ``e_j`` of the value nodes, scaled errors ``d_j = f'(pre_j) * e_j`` of every
        stage (the output's last, from ``e_k = -beta dL/dmu_k``) and F."""
        k = len(self.stages)
        es: list[Tensor] = []
        ds: list[Tensor] = []
        energy = torch.zeros((), dtype=self.x0.dtype, device=self.x0.device)
        for j in range(k):
            mu, deriv = self._first if j == 0 else self._predict(j, states[j - 1])
            if j < k - 1:
                e = states[j] - mu
                es.append(e)
                energy = energy + 0.5 * e.pow(2).sum()
            else:
                energy = energy + self.beta * self.loss_fn(mu, self.y)
                e = output_error(self.loss_fn, mu, self.y, self.beta)
            ds.append(e if deriv is None else deriv * e)
        return es, ds, energy

    def dynamics(self, states: list[Tensor]) -> tuple[list[Tensor | None], Tensor]:
        """-dF/dx_j for every value node, and F (for :func:`biograd.core.relax.relax`)."""
        es, ds, energy = self._errors(states)
        deltas: list[Tensor | None] = []
        for j, e in enumerate(es):
            nxt = self.stages[j + 1]
            back = ds[j + 1] if nxt.layer is None else ds[j + 1] @ nxt.layer.weight
            deltas.append(back - e)
        return deltas, energy

    def energy(self, states: Sequence[Tensor]) -> float:
        with torch.no_grad():
            return float(self._errors(states)[2])

    def write_updates(self, states: Sequence[Tensor], write: Write, scale: float = 1.0) -> None:
        """Write ``scale * dF/dtheta_j`` for every Linear: ``-d_j^T x_{j-1}``, ``-sum d_j``."""
        with torch.no_grad():
            _, ds, _ = self._errors(states)
            for j, st in enumerate(self.stages):
                if st.layer is None:
                    continue
                d = ds[j]
                u = self.x0 if j == 0 else states[j - 1]
                write(st.layer.weight, (d.T @ u) * -scale)
                if st.layer.bias is not None:
                    write(st.layer.bias, d.sum(0) * -scale)
