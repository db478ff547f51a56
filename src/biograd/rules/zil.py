"""Z-IL: zero-divergence inference learning (Salvatori et al., "Reverse Differentiation via
Predictive Coding", AAAI 2022, arXiv:2103.04689; P5).

Predictive coding on the model's computational graph (captured with torch.fx, see
:mod:`biograd.graph`) under three conditions makes every parameter update equal backprop's:

- C1: value nodes start at the feed-forward predictions, so every error is zero except the
  output's, e_out = -dL/dmu_out;
- C2: the parameters of a vertex at distance k from the output are updated only at inference
  step t = k, with dtheta = -J_theta^T e_v(t) (P5 Eq. 4 at t = k);
- C3: the inference step size is gamma = 1 (Eq. 3 with gamma = 1).

On graphs with edges that skip levels (residual connections) the graph is *levelled* with
identity vertices so that errors travel in lock-step (P5 Sec. 4). Then e_v(k) = -dL/dmu_v
(Thm. 1).

Two schedules run the inference phase. :class:`RelaxSchedule` is the PC dynamics themselves:
value nodes, errors x_v - mu_v, the energy F and its gradient, every vertex at every step
(:func:`biograd.core.relax.relax`), with level-t parameters updated at step t. It runs
whenever a condition is broken (``gamma != 1``, ``init_noise > 0``, ``levelling=False``) or
``exact_shortcut=False``, and it is the evidence for P5's claim. :class:`FrontierSchedule`
(the default when C1-C3 and levelling hold) is an event-driven implementation of the same
dynamics: under those conditions only the level-t vertices change in a way that matters at
step t, so it evaluates only them, through the vjps recorded in the forward pass (about one
backprop). It is valid only under C1-C3 on a levelled graph; the tests check it against the
full dynamics (updates and the energy the error wave carries), not only against autograd.

Implementation switches of the fast path (neither changes an update): ``levels_per_call``
(default 8) inference steps per autograd call, 1 being one call per step
(:mod:`biograd.graph.plan` explains why a group of steps is the same dynamics), and
``energy_trace`` (default off: it costs a norm per vertex per step, up to 2x backprop on the
LSTM) reports ``energy_t``, the energy the wave carries at step t. The full dynamics always
report ``energy_t`` and ``free_energy_t``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from biograd.core import checks
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.core.relax import relax
from biograd.core.rule import LearningRule, StepResult
from biograd.graph.cache import GraphCache
from biograd.graph.capture import PCGraph
from biograd.graph.inference import PCInference, levels_of, zil_frontier

Outcome = tuple[Tensor, Tensor, dict[str, list[float]]]  # loss, output, traces
#: steps of the fast path per autograd call, at most (measured on CPU, batch 64: one call per
#: step costs 1.6x / 2.1x backprop on the 28-step RNN / LSTM, 8 steps per call 1.2x / 1.2x,
#: 1.0x-1.1x on the MLP, CNN, ResNets and transformer; docs/algorithms/pc_zil.md, "Cost")
LEVELS_PER_CALL = 8


class Schedule(Protocol):
    """How Z-IL's inference phase is run; writes the updates, returns :data:`Outcome`."""

    def run(self, rule: ZIL, graph: PCGraph, x: Tensor, y: Tensor) -> Outcome: ...


class FrontierSchedule:
    """Event-driven Z-IL, valid only under C1-C3 on a levelled graph: step t evaluates only the
    level-t frontier, through the vjps recorded in the forward pass. Under those conditions
    this is the same computation as :class:`RelaxSchedule` restricted to the vertices whose
    errors change (P5 Thm. 1); it is the backprop recursion run level by level, so comparing
    it with autograd alone proves nothing about predictive coding.

    The schedule is compiled once per graph (:class:`biograd.graph.plan.FrontierPlan`): a
    generated feed-forward sweep, then the loss's vjp (the output error of C1), then
    ``rule.levels_per_call`` steps per autograd call (1: one call per step; more: the
    engine runs the steps of a group back to back, the same local vjps in the same order of
    levels, see the plan's docstring). With ``rule.energy_trace`` the wave energies are
    returned (one norm per vertex per step, and an autograd node per identity vertex)."""

    def run(self, rule: ZIL, graph: PCGraph, x: Tensor, y: Tensor) -> Outcome:
        loss, out, wave = zil_frontier(graph, x, y, rule.loss_fn, _write(rule),
                                       check=lambda o: rule.check_labels(o, y),
                                       levels_per_call=rule.levels_per_call,
                                       trace=rule.energy_trace)
        return loss, out, {"energy": wave} if rule.energy_trace else {}


def _write(rule: ZIL) -> Callable[[nn.Parameter, Tensor, bool], None]:
    """The rule's ``.grad`` accumulation; an update no other tensor shares becomes ``.grad``
    itself when there is none yet (no copy, as autograd's own accumulation does)."""
    def write(p: nn.Parameter, d: Tensor, owned: bool) -> None:
        if owned and p.grad is None and d.dtype == p.dtype and d.shape == p.shape:
            p.grad = d.detach()
        else:
            rule.accumulate_grad(p, d)
    return write


class RelaxSchedule:
    """The full PC dynamics (every vertex, every step) with :func:`biograd.core.relax.relax`;
    level-t parameters are updated from the relax callback after step t (C2).

    Traces: ``energy`` is the energy the error wave carries, 1/2 sum ||e_v(t)||^2 over the
    level-t vertices at step t (what :class:`FrontierSchedule` reports), and ``free_energy``
    is F at the state before step t + 1. With gamma = 1 the dynamics diverge behind the wave
    (an explicit gradient step of size 1 on an energy whose curvature exceeds 2), so F can
    overflow on deep graphs. It never reaches the updates: the level-(t+1) errors at step
    t + 1 depend only on the level-t errors at step t and on values that have not moved."""

    def run(self, rule: ZIL, graph: PCGraph, x: Tensor, y: Tensor) -> Outcome:
        inf = PCInference(graph, x, y, rule.loss_fn, beta=1.0)
        rule.check_labels(inf.output, y)
        states = [s.detach().clone() for s in inf.initial]
        if rule.init_noise > 0:
            states = [s + rule.init_noise * torch.randn(
                s.shape, generator=rule.generator, dtype=s.dtype).to(s.device) for s in states]
        levels = levels_of(graph)
        wave: list[float] = []

        def at_step(t: int, s: list[Tensor]) -> None:
            inf.write_updates(levels[t], s, rule.accumulate_grad)
            wave.append(0.5 * sum(float(e.double().pow(2).sum())
                                  for e in inf.errors(levels[t], s)))

        at_step(0, states)
        res = relax(states, inf.dynamics, steps=graph.depth, step_size=rule.gamma,
                    callback=at_step)
        loss = rule.loss_fn(inf.output, y)
        return loss.detach(), inf.output.detach(), {"energy": wave,
                                                    "free_energy": res.energies}


@register_rule(
    "zil",
    family="energy",
    paper="Salvatori et al. 2022, Reverse Differentiation via Predictive Coding, AAAI, "
    "arXiv:2103.04689",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class ZIL(LearningRule):
    """Predictive coding with Z-IL's schedule on any fx-traceable model: exactly backprop."""

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        gamma: float = 1.0,
        levelling: bool = True,
        init_noise: float = 0.0,
        exact_shortcut: bool = True,
        levels_per_call: int = LEVELS_PER_CALL,
        energy_trace: bool = False,
    ) -> None:
        super().__init__(model, loss)
        self.gamma = checks.positive(self.name, "gamma", gamma)
        self.levelling = checks.flag(self.name, "levelling", levelling)
        self.init_noise = checks.positive(self.name, "init_noise", init_noise, allow_zero=True)
        self.exact_shortcut = checks.flag(self.name, "exact_shortcut", exact_shortcut)
        self.levels_per_call = checks.positive_int(self.name, "levels_per_call", levels_per_call)
        self.energy_trace = checks.flag(self.name, "energy_trace", energy_trace)
        self._cache = GraphCache(self.name, self.levelling)
        self.schedule: Schedule = (
            FrontierSchedule() if exact_shortcut and self.conditions_hold else RelaxSchedule()
        )

    @property
    def conditions_hold(self) -> bool:
        """C1 (no initial perturbation), C3 (gamma = 1) and a levelled graph."""
        return self.init_noise == 0 and self.gamma == 1.0 and self.levelling

    def graph(self, x: Tensor) -> PCGraph:
        """The captured (and, by default, levelled) graph of the model."""
        return self._cache.get(self.model, x)

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self.check_batch(x, y)
        graph = self.graph(x)
        loss, out, traces = self.schedule.run(self, graph, x, y)
        trainable = graph.__dict__.get("_trainable")
        if trainable is None:  # the model's trainable parameters when the graph was captured
            trainable = graph.__dict__["_trainable"] = self.forward_parameters()
        for p in trainable:  # parameters off every path to the output
            if p.grad is None and p.requires_grad:
                self.accumulate_grad(p, torch.zeros_like(p))
        metrics = {f"{name}_{t}": e for name, trace in traces.items()
                   for t, e in enumerate(trace)}
        metrics["inference_steps"] = float(graph.depth)
        return StepResult(float(loss), out, metrics)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, gamma={self.gamma}, levelling={self.levelling}, "
                f"init_noise={self.init_noise}, levels_per_call={self.levels_per_call}")
