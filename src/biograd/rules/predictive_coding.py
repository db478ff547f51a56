"""Predictive coding, standard inference learning (Whittington & Bogacz 2017, Neural
Computation 29(5):1229; on arbitrary graphs as in Salvatori et al. 2022, P5).

Value nodes start at the feed-forward predictions (plus optional noise), relax for ``T``
steps ``x <- x - gamma dF/dx`` on the energy of :mod:`biograd.graph.inference`,

    F = sum_v 1/2 ||x_v - mu_v||^2 + beta * L(mu_out, y),

and the weights then receive the local update dF/dtheta_v = -J_theta^T e_v at the relaxed
state, divided by ``beta`` so that it estimates dL/dtheta (for small ``beta`` and enough steps
it tends to backprop's gradient, Whittington & Bogacz 2017, Sec. 3). A block stack is a chain
graph, so MLPs, CNNs, ResNets and any fx-traceable module share this one implementation.

Switches (defaults = the papers' algorithm): ``momentum`` > 0 relaxes with SGD + momentum
(velocity reset every batch) instead of plain gradient steps, as PCX does (Pinchetti et al.
2024, arXiv:2407.01163: lr 0.01, momentum 0.65 on MNIST MLPs). ``nodes="blocks"`` gives a
``Linear -> activation`` block one value node (PCX's layering) instead of one per module.
``fast_path`` runs a Linear/activation chain with the closed-form updates of
:mod:`biograd.ops.pc_chain` (no autograd per step; same energy and the same dynamics as the
graph implementation, which ``fast_path=False`` forces); a ``blocks`` chain whose hidden layers
share one width runs every layer of a step in one batched call (:mod:`biograd.ops.pc_stacked`).
``compile=True`` runs that stacked path's whole step (relaxation and updates) as one function
compiled by ``torch.compile`` (:mod:`biograd.ops.pc_compiled`: the same algorithm, its
elementwise work fused; the first batch of each shape compiles, seconds to tens of seconds).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from biograd.core import checks, losses
from biograd.core.errors import ConfigError, UnsupportedModelError, unknown_name
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.core.relax import relax
from biograd.core.rule import LearningRule, StepResult
from biograd.graph.cache import GraphCache
from biograd.graph.capture import PCGraph
from biograd.graph.inference import PCInference
from biograd.ops.pc_chain import LAYOUTS, ChainInference, chain_stages
from biograd.ops.pc_compiled import StepFn, compiled_step
from biograd.ops.pc_stacked import StackedChain, saved_activation, stackable


@register_rule(
    "predictive_coding",
    family="energy",
    paper="Whittington & Bogacz 2017, Neural Computation 29(5):1229; graphs: Salvatori et al. "
    "2022, arXiv:2103.04689",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class PredictiveCoding(LearningRule):
    """Inference learning: T relaxation steps of the value nodes, then local weight updates."""

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        T: int = 20,
        gamma: float = 0.1,
        beta: float = 1.0,
        init_noise: float = 0.0,
        levelling: bool = False,
        momentum: float = 0.0,
        nodes: str = "graph",
        fast_path: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(model, loss)
        self.T = checks.positive_int(self.name, "T", T, allow_zero=True)
        self.gamma = checks.positive(self.name, "gamma", gamma)
        self.beta = checks.positive(self.name, "beta", beta)
        self.init_noise = checks.positive(self.name, "init_noise", init_noise, allow_zero=True)
        self.levelling = checks.flag(self.name, "levelling", levelling)
        self._cache = GraphCache(self.name, levelling)
        self.momentum = checks.positive(self.name, "momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ConfigError(f"rule {self.name!r}: momentum must be < 1 (0 = plain gradient "
                              f"steps; PCX uses 0.65), got {momentum!r}")
        if nodes not in LAYOUTS:
            raise unknown_name("nodes", str(nodes), LAYOUTS)
        self.nodes = nodes
        self.fast_path = checks.flag(self.name, "fast_path", fast_path)
        self._stages = chain_stages(model, nodes) if fast_path else None
        self._stacked = nodes == "blocks" and self._stages is not None \
            and stackable(self._stages)
        if nodes == "blocks" and self._stages is None:
            raise UnsupportedModelError(
                f"rule {self.name!r}: nodes='blocks' needs an nn.Sequential of (Flatten) Linear "
                "layers and tanh/sigmoid/relu/leaky_relu/gelu activations with fast_path=True; use "
                "nodes='graph' for other models.")
        self.compile = checks.flag(self.name, "compile", compile)
        self._compiled: tuple[tuple[float, ...], StepFn] | None = None
        if self.compile:
            self._check_compilable()

    def _check_compilable(self) -> None:
        if not self._stacked:
            raise UnsupportedModelError(
                f"rule {self.name!r}: compile=True runs the stacked chain path only: "
                "nodes='blocks' (with fast_path=True) on an nn.Sequential of Linear -> "
                "activation blocks whose hidden layers share one width (at least two), ending "
                "with a Linear; use compile=False for other models.")
        if self.loss_fn not in (losses.mse, losses.cross_entropy):
            raise ConfigError(f"rule {self.name!r}: compile=True supports loss='mse' or "
                              "'cross_entropy'; use compile=False for a custom loss.")

    def graph(self, x: Tensor) -> PCGraph:
        """The captured graph (levelled with identity vertices if ``levelling``)."""
        return self._cache.get(self.model, x)

    def _write(self, p: nn.Parameter, g: Tensor) -> None:
        self.accumulate_grad(p, g)

    def _write_owned(self, p: nn.Parameter, g: Tensor) -> None:
        """Accumulate ``g``, a tensor computed for this step only (the chain paths' updates),
        into ``p.grad`` without copying it first (the copy of a first-layer gradient costs
        as much as a product here)."""
        if p.grad is None and g.dtype == p.dtype and g.shape == p.shape \
                and g.device == p.device and not g.requires_grad:
            p.grad = g
        else:
            self.accumulate_grad(p, g)

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self.check_batch(x, y)
        if self._stages is not None:
            return self._chain_step(x, y)
        graph = self.graph(x)
        inf = PCInference(graph, x, y, self.loss_fn, beta=self.beta)
        self.check_labels(inf.output, y)
        states = [s.detach().clone() for s in inf.initial]
        if self.init_noise > 0:
            states = [s + self.init_noise * torch.randn(
                s.shape, generator=self.generator, dtype=s.dtype).to(s.device) for s in states]
        res = relax(states, inf.dynamics, steps=self.T, step_size=self.gamma,
                    momentum=self.momentum)
        ops = [i for i in graph.order if graph.level[i] is not None]
        inf.write_updates(ops, res.states, self._write, scale=1.0 / self.beta)
        for p in self.forward_parameters():  # parameters off every path to the output
            if p.grad is None:
                self.accumulate_grad(p, torch.zeros_like(p))
        metrics = {f"energy_{t}": e for t, e in enumerate(res.energies)}
        metrics["energy_final"] = inf.energy(res.states)
        loss = self.loss_fn(inf.output, y)
        return StepResult(float(loss.detach()), inf.output.detach(), metrics)

    def _initial(self, initial: list[Tensor]) -> list[Tensor]:
        states = [s.detach().clone() for s in initial]
        if self.init_noise > 0:  # one draw per value node (a stacked state holds several)
            states = [s + self.init_noise * self._noise(s) for s in states]
        return states

    def _noise(self, s: Tensor) -> Tensor:
        if s.dim() == 3:
            return torch.stack([self._noise(node) for node in s])
        return torch.randn(s.shape, generator=self.generator, dtype=s.dtype).to(s.device)

    def _chain_step(self, x: Tensor, y: Tensor) -> StepResult:
        """The same step on a chain, in closed form (:mod:`biograd.ops.pc_chain`)."""
        assert self._stages is not None
        if self.compile:
            return self._compiled_step(x, y)
        chain = StackedChain if self._stacked else ChainInference
        inf = chain(self._stages, x, y, self.loss_fn, beta=self.beta)
        self.check_labels(inf.output, y)
        res = relax(self._initial(inf.initial), inf.dynamics, steps=self.T,
                    step_size=self.gamma, momentum=self.momentum)
        final = inf.write_updates(res.states, self._write_owned, scale=1.0 / self.beta)
        metrics = {f"energy_{t}": e for t, e in enumerate(res.energies)}
        metrics["energy_final"] = final
        loss = self.loss_fn(inf.output, y)
        return StepResult(float(loss), inf.output, metrics)

    def _compiled_step(self, x: Tensor, y: Tensor) -> StepResult:
        """The stacked chain's step as one compiled function (:mod:`biograd.ops.pc_compiled`)."""
        assert self._stages is not None
        first, mids, last = self._stages[0], self._stages[1:-1], self._stages[-1]
        assert first.layer is not None and last.layer is not None
        key = (self.T, self.gamma, self.momentum, self.beta)
        if self._compiled is None or self._compiled[0] != key:  # hyper-parameters are baked in
            self._compiled = key, compiled_step(
                saved_activation(first), saved_activation(mids[0]), self.loss_fn, T=self.T,
                gamma=self.gamma, momentum=self.momentum, beta=self.beta)
        with torch.no_grad():
            x0 = x.flatten(1) if x.dim() > 2 else x
            shape = (x0.shape[0], last.layer.out_features)
            self.check_labels(x0.new_empty(shape), y)
            noise = None
            if self.init_noise > 0:
                noise = self.init_noise * self._noise(x0.new_empty((len(mids) + 1, shape[0],
                                                                     first.layer.out_features)))
            out, trace, *grads = self._compiled[1](
                x0, y, first.layer.weight, first.layer.bias,
                [m.layer.weight for m in mids],  # type: ignore[union-attr]
                [m.layer.bias for m in mids],  # type: ignore[union-attr]
                last.layer.weight, last.layer.bias, noise)
        gw1, gb1, gw, gb, gwo, gbo = grads
        params = [(first.layer.weight, gw1), (first.layer.bias, gb1)]
        for j, m in enumerate(mids):
            assert m.layer is not None
            params += [(m.layer.weight, gw[j]), (m.layer.bias, gb[j])]
        params += [(last.layer.weight, gwo), (last.layer.bias, gbo)]
        for p, g in params:
            if p is not None and g is not None:
                self._write_owned(p, g)
        *energies, final, loss = trace.tolist()
        metrics = {f"energy_{t}": e for t, e in enumerate(energies)}
        metrics["energy_final"] = final
        return StepResult(loss, out, metrics)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, T={self.T}, gamma={self.gamma}, beta={self.beta}, "
                f"init_noise={self.init_noise}, levelling={self.levelling}, "
                f"momentum={self.momentum}, nodes={self.nodes!r}, fast_path={self.fast_path}, "
                f"compile={self.compile}")
