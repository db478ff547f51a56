"""Equilibrium propagation (Scellier & Bengio 2017) with symmetric nudging (Laborieux et al.
2021) on a layered Hopfield energy over an MLP's Linear layers.

States ``s_1..s_L`` (one per Linear layer; ``s_L`` the output units) minimise
``F = E(s) + beta * C(s)`` (``E``: :func:`biograd.ops.energy.hopfield_energy`; ``C``: the rule's
loss applied to ``rho_L(s_L)``, i.e. MSE on the output units or cross-entropy through a softmax
readout of them) by Euler steps of ``ds/dt = -dF/ds`` (Eq. 2). The update of a parameter
``theta`` is the EqProp estimate of ``dC(s^0)/dtheta`` (Eq. 10, batch mean)::

    one-sided: (dE/dtheta(s^beta) - dE/dtheta(s^0)) / beta
    symmetric: (dE/dtheta(s^+beta) - dE/dtheta(s^-beta)) / (2 beta)   (Laborieux et al., Eq. 6)

with ``dE/dW_l = -rho(s_l) rho(s_{l-1})^T`` and ``dE/db_l = -rho(s_l)``. It tends to the
gradient of the loss at the free fixed point as ``beta -> 0``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import Tensor, nn

from biograd.core import checks
from biograd.core.blocks import Block, as_blocks
from biograd.core.errors import UnsupportedModelError
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.core.relax import RelaxResult, relax
from biograd.core.rule import LearningRule, StepResult
from biograd.ops.energy import (
    hopfield_energy,
    hopfield_state_grad,
    per_sample_output_grad,
    rate_and_derivative,
)


class Estimator(abc.ABC):
    """Which two nudged (or free and nudged) fixed points the update contrasts."""

    @abc.abstractmethod
    def betas(self, beta: float) -> tuple[float, float]:
        """Nudging strengths ``(a, b)``; the update is ``(dE/dtheta(s^a) - dE/dtheta(s^b))
        / (a - b)``. A strength of 0 means the free fixed point itself."""


class Symmetric(Estimator):
    """``+beta`` and ``-beta`` phases: O(beta^2) bias (Laborieux et al. 2021)."""

    def betas(self, beta: float) -> tuple[float, float]:
        return beta, -beta


class OneSided(Estimator):
    """Free and ``+beta`` phases: O(beta) bias (Scellier & Bengio 2017)."""

    def betas(self, beta: float) -> tuple[float, float]:
        return beta, 0.0


ESTIMATORS: dict[str, type[Estimator]] = {"symmetric": Symmetric, "one_sided": OneSided}


def _zeros(blocks: list[Block], x: Tensor) -> list[Tensor]:
    return [x.new_zeros(x.shape[0], b.layer.out_features) for b in blocks]


def _feed_forward(blocks: list[Block], x: Tensor) -> list[Tensor]:
    states, r = [], x
    for b in blocks:
        s = b.layer(r)
        states.append(s)
        r = b.activation(s)
    return states


#: How the free phase starts: the feed-forward pre-activations (s_l = W_l rho(s_{l-1}) + b_l,
#: the fixed point without top-down input) or zeros (Scellier & Bengio 2017).
INITS: dict[str, Callable[[list[Block], Tensor], list[Tensor]]] = {
    "forward": _feed_forward,
    "zeros": _zeros,
}


@register_rule(
    "equilibrium_prop",
    family="energy",
    paper="Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24; Laborieux et al. 2021, "
    "Front. Neurosci. 15:633674",
    supports=("mlp",),
)
class EquilibriumProp(LearningRule):
    """Equilibrium propagation on a layered Hopfield energy (symmetric nudging by default)."""

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        beta: float = 0.5,
        free_steps: int = 40,
        nudged_steps: int = 20,
        step_size: float = 0.5,
        estimator: str = "symmetric",
        init: str = "forward",
        tol: float | None = None,
    ) -> None:
        super().__init__(model, loss)
        n = self.name
        self.beta = checks.positive(n, "beta", beta)
        self.free_steps = checks.positive_int(n, "free_steps", free_steps)
        self.nudged_steps = checks.positive_int(n, "nudged_steps", nudged_steps)
        self.step_size = checks.positive(n, "step_size", step_size)
        self.estimator = ESTIMATORS[checks.choice(n, "estimator", estimator, list(ESTIMATORS))]()
        self.init = INITS[checks.choice(n, "init", init, list(INITS))]
        self.tol = None if tol is None else checks.positive(n, "tol", tol)
        self.blocks = as_blocks(model, n)
        for i, b in enumerate(self.blocks):
            if not isinstance(b.layer, nn.Linear) or b.pool is not None or (i and b.flatten):
                raise UnsupportedModelError(
                    f"rule {n!r} needs an MLP (Flatten? then Linear -> activation blocks, no "
                    f"convolution or pooling); block {i} is {b.layer!r} with pool {b.pool!r}. "
                    f"Use biograd.models.mlp."
                )
        #: Per-step energies of the last step's phases, for plotting ({"free": [...], ...}).
        self.last_trace: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ dynamics
    def _params(self) -> tuple[list[Tensor], list[Tensor | None]]:
        return [b.layer.weight for b in self.blocks], [b.layer.bias for b in self.blocks]

    def _relax(
        self, x: Tensor, y: Tensor | None, start: list[Tensor], beta: float, steps: int,
        differentiable: bool = False,
    ) -> RelaxResult:
        weights, biases = self._params()
        acts = [b.activation for b in self.blocks]
        with torch.set_grad_enabled(differentiable):
            drive = nn.functional.linear(x, weights[0], biases[0])
        last = acts[-1]

        def dynamics(states: list[Tensor]) -> tuple[list[Tensor], Tensor]:
            grads, energy = hopfield_state_grad(states, x, weights, biases, acts, drive)
            total = energy.mean()
            if beta != 0.0 and y is not None:
                out, d_out = rate_and_derivative(last, states[-1])
                # per-sample dC_i/ds_L (our losses are batch means)
                g = per_sample_output_grad(self.loss_fn, out, y)
                grads[-1] = grads[-1] + beta * d_out * g
                total = total + beta * self.loss_fn(out, y)
            return [-g for g in grads], total

        return relax(start, dynamics, steps=steps, step_size=self.step_size, tol=self.tol,
                     differentiable=differentiable)

    def free_phase(self, x: Tensor, differentiable: bool = False) -> RelaxResult:
        """Relax ``E`` (no nudging) from the ``init`` states for ``free_steps`` Euler steps;
        ``differentiable``: through autograd (from the init on), for :meth:`reference_output`."""
        x = self.blocks[0].pre(x)
        with torch.set_grad_enabled(differentiable):
            start = self.init(self.blocks, x)
        return self._relax(x, None, start, 0.0, self.free_steps, differentiable)

    def reference_output(self, x: Tensor) -> Tensor:
        """:meth:`predict`'s output, differentiable through the whole free phase: the update
        estimates the gradient of this output's loss, so the update-vs-backprop angle compares
        it with backprop through time over the relaxation (Ernoult et al. 2019), not with the
        feed-forward network's gradient (the free fixed point includes top-down feedback)."""
        return self.blocks[-1].activation(self.free_phase(x, differentiable=True).states[-1])

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """A free phase: ``rho_L(s_L)`` after ``free_steps`` Euler steps of ``-dE/ds`` from the
        ``init`` states (with ``init="forward"`` the top-down feedback then moves the states
        away from the feed-forward pass). This is the output the update is a gradient of."""
        states = self.free_phase(x).states
        return self.blocks[-1].activation(states[-1])

    def _write_update(
        self, x: Tensor, s_a: list[Tensor], s_b: list[Tensor], scale: float
    ) -> None:
        """``.grad += (dE/dtheta(s_a) - dE/dtheta(s_b)) / scale`` (batch mean), by autograd."""
        params = [p for blk in self.blocks for p in (blk.layer.weight, blk.layer.bias)
                  if p is not None and p.requires_grad]
        if not params:
            return
        weights, biases = self._params()
        acts = [blk.activation for blk in self.blocks]
        with torch.enable_grad():
            contrast = (
                hopfield_energy(s_a, x.detach(), weights, biases, acts).mean()
                - hopfield_energy(s_b, x.detach(), weights, biases, acts).mean()
            ) / scale
            grads = torch.autograd.grad(contrast, params)
        for p, g in zip(params, grads, strict=True):
            self.accumulate_grad(p, g)

    # ------------------------------------------------------------------ the contract
    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """Free phase, nudged phase(s), update. ``StepResult.loss``/``output`` are those of
        the free fixed point (what :meth:`predict` returns)."""
        self.check_batch(x, y)
        free = self.free_phase(x)
        out = self.blocks[-1].activation(free.states[-1]).detach()
        self.check_labels(out, y)
        loss = float(self.loss_fn(out, y))
        xf = self.blocks[0].pre(x)
        a, b = self.estimator.betas(self.beta)
        fixed: dict[float, list[Tensor]] = {0.0: free.states}
        self.last_trace = {"free": free.energies}
        weights, biases = self._params()
        acts = [blk.activation for blk in self.blocks]
        with torch.no_grad():
            residual = hopfield_state_grad(free.states, xf, weights, biases, acts)[0]
        metrics = {
            "energy_first": free.energies[0] if free.energies else float("nan"),
            "energy_last": free.energies[-1] if free.energies else float("nan"),
            "relax_steps": float(free.steps),
            # max |dE/ds| at the end of the free phase: ~0 when it reached its fixed point
            "free_residual": max(float(r.abs().max()) for r in residual),
        }
        for beta in (a, b):
            if beta != 0.0:
                res = self._relax(xf, y, free.states, beta, self.nudged_steps)
                fixed[beta] = res.states
                key = f"nudged_{'plus' if beta > 0 else 'minus'}"
                self.last_trace[key] = res.energies
                metrics[f"{key}_energy_last"] = res.energies[-1]
        self._write_update(xf, fixed[a], fixed[b], a - b)
        return StepResult(loss, out, metrics)
