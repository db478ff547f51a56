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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from biograd.core import losses
from biograd.core.losses import LossFn

Write = Callable[[nn.Parameter, Tensor], None]
LAYOUTS = ("graph", "blocks")


Act = Callable[[Tensor], Tensor]
Vjp = Callable[[Tensor, Tensor, Tensor], Tensor]


def activation_fns(act: nn.Module) -> tuple[Act, Vjp] | None:
    """``(f, vjp)`` for an elementwise activation, ``vjp(e, pre, mu) = f'(pre) * e``, or
    ``None`` when the fast path does not know ``act``. The derivative is evaluated by ATen's
    derivative kernel for ``f`` (the formula autograd uses, called directly: nothing is
    recorded), e.g. ``1 - tanh^2`` for tanh, ``Phi(a) + a phi(a)`` for exact GELU."""
    aten = torch.ops.aten
    if isinstance(act, nn.Tanh):
        return torch.tanh, lambda e, pre, mu: aten.tanh_backward(e, mu)
    if isinstance(act, nn.Sigmoid):
        return torch.sigmoid, lambda e, pre, mu: aten.sigmoid_backward(e, mu)
    if isinstance(act, nn.ReLU):
        return torch.relu, lambda e, pre, mu: aten.threshold_backward(e, pre, 0)
    if isinstance(act, nn.LeakyReLU):
        slope = act.negative_slope
        return (lambda a: F.leaky_relu(a, slope),
                lambda e, pre, mu: aten.leaky_relu_backward(e, pre, slope, False))
    if isinstance(act, nn.GELU) and act.approximate in ("none", "tanh"):
        approx = act.approximate
        return (lambda a: F.gelu(a, approximate=approx),
                lambda e, pre, mu: aten.gelu_backward(e, pre, approximate=approx))
    return None


def output_error(loss: LossFn, mu: Tensor, y: Tensor, beta: float) -> Tensor:
    """``e_out = -beta dL/dmu`` for the batch-mean loss ``L``: closed forms for biograd's
    ``cross_entropy`` (labels: ``(softmax(mu) - onehot(y)) beta / B``, evaluated in the order
    autograd evaluates it, so both agree to the last bit; float targets ``t``, one-hot or soft:
    ``(softmax(mu) sum(t) - t) beta / B``) and ``mse`` (``(mu - t) beta / B``); autograd on the
    loss alone for any other loss. The closed forms have no data-dependent branch, so a
    ``torch.compile``'d step traces them (:mod:`biograd.ops.pc_compiled`)."""
    if loss is losses.cross_entropy:
        s = torch.full((), -beta, dtype=mu.dtype, device=mu.device) / mu.shape[0]
        if y.is_floating_point():
            t = y.to(mu.dtype)
            return torch.log_softmax(mu, -1).exp() * (t.sum(-1, keepdim=True) * s) - t * s
        g = torch.nn.functional.one_hot(y.long(), mu.shape[-1]).to(mu.dtype) * s
        return torch.log_softmax(mu, -1).exp() * s - g
    if loss is losses.mse:
        return (losses._targets(mu, y) - mu) * (beta / mu.shape[0])
    m = mu.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(beta * loss(m, y), m)
    return -g


class OutputNode:
    """The output vertex's error ``e_out = -beta dL/dmu`` and its energy term ``beta L``
    (closed form for ``mse``, :func:`output_error` otherwise); used by the eager chains and the
    compiled step alike."""

    def __init__(self, loss_fn: LossFn, y: Tensor, beta: float, output: Tensor) -> None:
        self.loss_fn, self.y, self.beta = loss_fn, y, beta
        self._target = losses._targets(output, y) if loss_fn is losses.mse else None

    def error(self, mu: Tensor) -> tuple[Tensor, Tensor]:
        """``(e_out, beta L)`` at the output's prediction ``mu``."""
        if self._target is not None:
            diff = self._target - mu
            scale = self.beta / mu.shape[0]
            flat = diff.reshape(-1)
            return diff * scale, torch.dot(flat, flat) * (0.5 * scale)
        return output_error(self.loss_fn, mu, self.y, self.beta), \
            self.beta * self.loss_fn(mu, self.y)


@dataclass
class Stage:
    """One value node's vertex function: ``act(layer(u))``, ``layer(u)`` or ``act(u)``."""

    layer: nn.Linear | None
    act: nn.Module | None = None
    fwd: Act | None = None
    vjp: Vjp | None = None

    def predict(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(pre, mu)``: the layer's output (``u`` itself without a layer) and ``mu``."""
        pre = u if self.layer is None else F.linear(u, self.layer.weight, self.layer.bias)
        return pre, (pre if self.fwd is None else self.fwd(pre))

    def scaled(self, e: Tensor, pre: Tensor, mu: Tensor) -> Tensor:
        """``d = f'(pre) * e`` (``e`` without an activation)."""
        return e if self.vjp is None else self.vjp(e, pre, mu)


def chain_stages(model: nn.Module, layout: str) -> list[Stage] | None:
    """The model as a chain of stages, or ``None`` when the fast path does not apply (not an
    ``nn.Sequential`` of an optional leading Flatten, Linear layers and activations known to
    :func:`activation_fns`, ending with a Linear)."""
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
            stages.append(Stage(m))
            continue
        fns = activation_fns(m)
        if fns is None:
            return None
        last = stages[-1] if stages else None
        if layout == "blocks" and last is not None and last.layer is not None \
                and last.act is None:
            last.act, (last.fwd, last.vjp) = m, fns
        else:
            stages.append(Stage(None, m, *fns))
    return stages


class ChainInference:
    """The energy F of a chain on one batch, its closed-form state gradient and weight updates
    (the interface of :class:`biograd.graph.inference.PCInference`)."""

    def __init__(
        self, stages: Sequence[Stage], x: Tensor, y: Tensor, loss_fn: LossFn, beta: float = 1.0
    ) -> None:
        self.stages, self.y, self.loss_fn, self.beta = list(stages), y, loss_fn, beta
        with torch.no_grad():
            self.x0 = x.flatten(1) if x.dim() > 2 else x
            self._first = self.stages[0].predict(self.x0)  # x_0 is clamped: mu_1 is fixed
            values, u = [], self._first[1]
            for st in self.stages[1:]:
                values.append(u)
                u = st.predict(u)[1]
        self.output = u
        self.initial = values
        self._out = OutputNode(loss_fn, y, beta, u)

    def _errors(
        self, states: Sequence[Tensor], first: bool = False
    ) -> tuple[list[Tensor], list[Tensor | None], Tensor]:
        """Errors ``e_j`` of the value nodes, scaled errors ``d_j = f'(pre_j) * e_j`` of the
        stages (the output's last; the first stage's only if ``first``: the state gradients
        do not need it) and F."""
        k = len(self.stages)
        es: list[Tensor] = []
        ds: list[Tensor | None] = []
        terms: list[Tensor] = []
        for j, st in enumerate(self.stages):
            pre, mu = self._first if j == 0 else st.predict(states[j - 1])
            if j < k - 1:
                e = states[j] - mu
                flat = e.reshape(-1)
                terms.append(torch.dot(flat, flat))
                es.append(e)
            else:
                e, out_term = self._out.error(mu)
            ds.append(st.scaled(e, pre, mu) if j > 0 or first else None)
        energy = torch.stack(terms).sum() * 0.5 + out_term if terms else out_term
        return es, ds, energy

    def dynamics(self, states: list[Tensor]) -> tuple[list[Tensor | None], Tensor]:
        """-dF/dx_j for every value node, and F (for :func:`biograd.core.relax.relax`)."""
        es, ds, energy = self._errors(states)
        deltas: list[Tensor | None] = []
        for j, e in enumerate(es):
            layer, d = self.stages[j + 1].layer, ds[j + 1]
            assert d is not None
            deltas.append(d - e if layer is None else torch.addmm(e, d, layer.weight, beta=-1))
        return deltas, energy

    def energy(self, states: Sequence[Tensor]) -> float:
        with torch.no_grad():
            return float(self._errors(states)[2])

    def write_updates(self, states: Sequence[Tensor], write: Write, scale: float = 1.0) -> float:
        """Write ``scale * dF/dtheta_j`` for every Linear (``-d_j^T x_{j-1}``, ``-sum d_j``)
        and return F at ``states``."""
        with torch.no_grad():
            _, ds, energy = self._errors(states, first=True)
            for j, st in enumerate(self.stages):
                d = ds[j]
                if st.layer is None or d is None:
                    continue
                u = self.x0 if j == 0 else states[j - 1]
                write(st.layer.weight, (d.T @ u) * -scale)
                if st.layer.bias is not None:
                    write(st.layer.bias, d.sum(0) * -scale)
        return float(energy)
