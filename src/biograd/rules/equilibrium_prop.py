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
from biograd.core.relax import RelaxResult
from biograd.core.rule import LearningRule, StepResult
from biograd.ops.energy import hopfield_param_contrast, output_grad_fn
from biograd.ops.hopfield_dynamics import (
    HopfieldChain,
    HopfieldRelaxResult,
    Nudge,
    Workspace,
    rate,
    relax_hopfield,
    relax_hopfield_inplace,
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


def _zeros(blocks: list[Block], x: Tensor, drive: Tensor | None = None) -> list[Tensor]:
    return [x.new_zeros(x.shape[0], b.layer.out_features) for b in blocks]


def _feed_forward(blocks: list[Block], x: Tensor, drive: Tensor | None = None) -> list[Tensor]:
    """Pre-activations of a forward pass; ``drive``: the first one, if already computed."""
    states, r = [], x
    for i, b in enumerate(blocks):
        s = drive if i == 0 and drive is not None else nn.functional.linear(
            r, b.layer.weight, b.layer.bias)
        states.append(s)
        r = b.activation(s)
    return states


#: How the free phase starts: the feed-forward pre-activations (s_l = W_l rho(s_{l-1}) + b_l,
#: the fixed point without top-down input) or zeros (Scellier & Bengio 2017).
INITS: dict[str, Callable[[list[Block], Tensor, Tensor | None], list[Tensor]]] = {
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
    """Equilibrium propagation on a layered Hopfield energy (symmetric nudging by default).

    Cost (issue 15): :meth:`step` relaxes in place on preallocated buffers with the closed-form
    state gradient (:func:`biograd.ops.hopfield_dynamics.relax_hopfield_inplace`: per Euler
    step two block matrix products and four elementwise kernels), both nudged phases together
    as one batch of twice the rows, and writes the update in closed form; the energies are
    recorded only where the metrics need them unless ``trace=True`` (every step, into
    :attr:`last_trace`). :meth:`predict`, :meth:`reference_output` and ``_relax`` run the
    same Euler steps functionally (autograd-capable); both agree within float rounding
    (tests/test_iterative_speed_equivalence.py).
    """

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
        trace: bool = False,
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
        self.trace = bool(trace)
        self._workspace = Workspace()  # buffers of the in-place relaxations
        self.blocks = as_blocks(model, n)
        for i, b in enumerate(self.blocks):
            if not isinstance(b.layer, nn.Linear) or b.pool is not None or (i and b.flatten):
                raise UnsupportedModelError(
                    f"rule {n!r} needs an MLP (Flatten? then Linear -> activation blocks, no "
                    f"convolution or pooling); block {i} is {b.layer!r} with pool {b.pool!r}. "
                    f"Use biograd.models.mlp."
                )
        #: Energies of the last step's phases ({"free": [...], "nudged_plus": [...], ...}):
        #: at every relaxation step with ``trace=True`` (for plotting), else what the metrics
        #: report: the free phase's first and last, the nudged phases' last (recording costs
        #: reductions per step).
        self.last_trace: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ dynamics
    def _params(self) -> tuple[list[Tensor], list[Tensor | None]]:
        return [b.layer.weight for b in self.blocks], [b.layer.bias for b in self.blocks]

    def _chain(self, x: Tensor) -> HopfieldChain:
        """The network with ``x`` clamped; built with autograd on or off as the caller is, so
        that it is differentiable when asked."""
        weights, biases = self._params()
        drive = nn.functional.linear(x, weights[0], biases[0])
        return HopfieldChain(weights, biases, [b.activation for b in self.blocks], drive)

    def _run(
        self, chain: HopfieldChain, y: Tensor | None, start: list[Tensor], betas: list[float],
        steps: int, record: str, fused: str | None = None, start_residual: bool = False,
    ) -> tuple[HopfieldRelaxResult, list[list[float]]]:
        """Relax ``len(betas)`` phases stacked along the batch (phase ``j``: rows ``j*B`` to
        ``(j+1)*B``, nudging strength ``betas[j]``; the rows do not interact, so this is the
        phases one after the other, in fewer, larger products). ``fused``: the in-place loop
        (:func:`~biograd.ops.hopfield_dynamics.relax_hopfield_inplace`, no autograd) with the
        buffers of that name (its states are views valid until that name's next use), else
        (None) the functional one. Returns the result and, per phase, the recorded
        ``F = mean_i E_i + beta C`` (one float per recorded step)."""
        nudge = None
        k = len(betas)
        if y is not None and any(b != 0.0 for b in betas):
            out_dim = chain.weights[-1].shape[0]
            ys = y if k == 1 else torch.cat([y] * k)
            grad = output_grad_fn(self.loss_fn, ys, out_dim, start[-1].dtype,
                                  feature_major=bool(fused))
            rows = y.shape[0]
            beta: float | Tensor = betas[0] if k == 1 else torch.cat([
                start[-1].new_full((rows, 1), b) for b in betas])
            nudge = Nudge(beta, grad_t=grad) if fused else Nudge(beta, grad=grad)
        if fused:
            res = relax_hopfield_inplace(chain, start, steps=steps, step_size=self.step_size,
                                         nudge=nudge, tol=self.tol, record=record,
                                         start_residual=start_residual,
                                         workspace=self._workspace, tag=fused)
        else:
            res = relax_hopfield(chain, start, steps=steps, step_size=self.step_size,
                                 nudge=nudge, tol=self.tol, record=record)
        values: list[list[Tensor]] = [[] for _ in betas]
        for _, energy, out in res.records:
            for j, (e, o) in enumerate(zip(energy.chunk(k), out.chunk(k), strict=True)):
                f = e.mean()
                if betas[j] != 0.0 and y is not None:
                    f = f + betas[j] * self.loss_fn(o, y)
                values[j].append(f.detach())
        return res, [torch.stack(v).tolist() if v else [] for v in values]

    def _relax(
        self, x: Tensor, y: Tensor | None, start: list[Tensor], beta: float, steps: int,
        differentiable: bool = False, record: str = "all",
    ) -> RelaxResult:
        """One phase of strength ``beta`` from ``start`` (``differentiable``: through autograd)."""
        with torch.set_grad_enabled(differentiable):
            res, (energies,) = self._run(self._chain(x), y, start, [beta], steps, record)
        return RelaxResult(res.states, energies, res.steps, res.converged)

    def free_phase(
        self, x: Tensor, differentiable: bool = False, record: str = "none"
    ) -> RelaxResult:
        """Relax ``E`` (no nudging) from the ``init`` states for ``free_steps`` Euler steps;
        ``differentiable``: through autograd (from the init on), for :meth:`reference_output`;
        ``record``: the steps whose energy is kept (``"all"``, ``"ends"``, ``"last"`` or
        ``"none"``)."""
        x = self.blocks[0].pre(x)
        with torch.set_grad_enabled(differentiable):
            chain = self._chain(x)
            start = self.init(self.blocks, x, chain.input_drive)
            res, (energies,) = self._run(chain, None, start, [0.0], self.free_steps, record)
        return RelaxResult(res.states, energies, res.steps, res.converged)

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
        """``.grad += (dE/dtheta(s_a) - dE/dtheta(s_b)) / scale`` (batch mean), in closed form
        (:func:`biograd.ops.energy.hopfield_param_contrast`)."""
        acts = [blk.activation for blk in self.blocks]
        ra = [rate(a, s) for a, s in zip(acts, s_a, strict=True)]
        rb = [rate(a, s) for a, s in zip(acts, s_b, strict=True)]
        alpha = 1.0 / (x.shape[0] * scale)
        grads = hopfield_param_contrast(ra, rb, x, alpha)
        for blk, (gw, gb) in zip(self.blocks, grads, strict=True):
            for p, g in ((blk.layer.weight, gw), (blk.layer.bias, gb)):
                if p is None or not p.requires_grad:
                    continue
                if p.grad is None:
                    p.grad = g.to(p.dtype)  # a fresh tensor of ours: no copy needed
                else:
                    p.grad.add_(g)

    # ------------------------------------------------------------------ the contract
    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """Free phase, nudged phase(s) (both together when symmetric), update.
        ``StepResult.loss``/``output`` are those of the free fixed point (what :meth:`predict`
        returns)."""
        self.check_batch(x, y)
        record = "all" if self.trace else "ends"
        xf = self.blocks[0].pre(x)
        chain = self._chain(xf)
        free, (free_energy,) = self._run(chain, None, self.init(self.blocks, xf, chain.input_drive),
                                         [0.0], self.free_steps, record, fused="free")
        out = self.blocks[-1].activation(free.states[-1]).clone()  # not a view of a workspace
        self.check_labels(out, y)
        loss = float(self.loss_fn(out, y))
        nan = float("nan")
        metrics = {
            "energy_first": free_energy[0] if free_energy else nan,
            "energy_last": free_energy[-1] if free_energy else nan,
            "relax_steps": float(free.steps),
        }
        self.last_trace = {"free": free_energy}
        a, b = self.estimator.betas(self.beta)
        betas = [beta for beta in (a, b) if beta != 0.0]
        k = len(betas)
        start = [s.repeat(k, 1) for s in free.states] if k > 1 else free.states
        nudged, energies = self._run(chain.stacked(k) if k > 1 else chain, y, start, betas,
                                     self.nudged_steps, "all" if self.trace else "last",
                                     fused="nudged",
                                     start_residual=True)
        # max |dE/ds| at the end of the free phase (where the nudged phases start): ~0 when it
        # reached its fixed point
        metrics["free_residual"] = nudged.start_residual
        fixed: dict[float, list[Tensor]] = {0.0: free.states}
        for j, beta in enumerate(betas):
            fixed[beta] = [s.chunk(k)[j] for s in nudged.states]
            key = f"nudged_{'plus' if beta > 0 else 'minus'}"
            self.last_trace[key] = energies[j]
            metrics[f"{key}_energy_last"] = energies[j][-1]
        self._write_update(xf, fixed[a], fixed[b], a - b)
        return StepResult(loss, out, metrics)
