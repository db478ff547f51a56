"""Activation relaxation (Millidge, Tschantz, Seth & Buckley 2020, arXiv:2009.05359, P4).

After a feed-forward pass ``z_l = post_l(W_l z_{l-1} + b_l)`` (pre-activations ``h_l``), the
activities ``x_l`` of the hidden blocks relax by Euler steps of (P4 Eq. 5)::

    dx_l/dt = -x_l + J_{l+1}^T x_{l+1},     J_{l+1}^T v = W_{l+1}^T (f'(h_{l+1}) * v)

with the Jacobians frozen at the forward pass and the top held at ``x_L = dl/dz_L``. The fixed
point is ``x_l = dl/dz_l``, backprop's gradient, and the update (P4 Eq. 6) is
``dW_l = (f'(h_l) * x_l) z_{l-1}^T`` (written into ``.grad`` with autograd's sign; every
variant keeps this ``f'``, as the authors' code does). For blocks
with convolutions and pooling, ``J^T`` is the block's vector-Jacobian product at the forward
pass (``torch.func.vjp``). Variants (P4 Sec. 4): see :mod:`biograd.rules._ar_variants`.

Cost (issue 15): the dynamics are linear (Jacobians frozen), so by default
(``solver="closed_form"``) the ``steps`` Euler steps are computed exactly in closed form,
``x(T) = x* + sum_k c_k(T) N^k (x(0) - x*)`` (:mod:`biograd.ops.linear_relax`: a few Jacobian
products instead of ``steps`` of them per layer, the per-step residual energies from a Gram
matrix); ``solver="euler"`` (and any ``tol``, which stops early) runs the steps one by one. Both
give the same activities, energies and updates up to float rounding
(tests/test_iterative_speed_equivalence.py).

Scaling: the activities are per-sample gradients ``dl_i/dz_l`` of the per-sample loss (the
top is ``batch * dloss/dz_L`` for our batch-mean losses), so their size does not shrink with
the batch; the update is their batch mean, the gradient of the batch-mean loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp

from biograd.core import checks
from biograd.core.blocks import as_blocks, forward_trace
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.core.relax import RelaxResult, relax
from biograd.core.rule import LearningRule, StepResult
from biograd.ops.energy import per_sample_output_grad, relaxation_residual
from biograd.ops.linear_relax import relax_linear_chain
from biograd.rules._ar_variants import BACKWARDS, DERIVATIVES, Vjp, input_adjoint

#: How the relaxation is computed: the exact result of the ``steps`` Euler steps in closed form
#: (the dynamics are linear with frozen Jacobians; :func:`relax_linear_chain`), or the Euler
#: steps one by one (also whenever ``tol`` asks for early stopping).
SOLVERS = ("closed_form", "euler")

#: Where the relaxing activities start: the feed-forward values (P4) or zeros.
INITS: dict[str, Callable[[Tensor], Tensor]] = {
    "forward": lambda z: z.detach().clone(),
    "zeros": torch.zeros_like,
}


@register_rule(
    "activation_relaxation",
    family="energy",
    paper="Millidge, Tschantz, Seth & Buckley 2020, arXiv:2009.05359",
    supports=("mlp", "cnn"),
)
class ActivationRelaxation(LearningRule):
    """Activation relaxation: activities relax to backprop's gradients, then local updates."""

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        steps: int = 100,
        step_size: float = 0.1,
        backward: str = "exact",
        derivative: str = "kept",
        init: str = "forward",
        tol: float | None = None,
        solver: str = "closed_form",
    ) -> None:
        super().__init__(model, loss)
        n = self.name
        self.steps = checks.positive_int(n, "steps", steps)
        self.step_size = checks.positive(n, "step_size", step_size)
        self.init = INITS[checks.choice(n, "init", init, list(INITS))]
        self.tol = None if tol is None else checks.positive(n, "tol", tol)
        self.solver = checks.choice(n, "solver", solver, list(SOLVERS))
        self.blocks = as_blocks(model, n)
        kind = BACKWARDS[checks.choice(n, "backward", backward, list(BACKWARDS))]
        self.feedback = kind() if kind is BACKWARDS["exact"] else kind(self.blocks, self.generator)
        self.derivative = DERIVATIVES[
            checks.choice(n, "derivative", derivative, list(DERIVATIVES))
        ]()
        self.variant = f"{backward}/{derivative}"
        #: Per-step residual energy 0.5 * mean_i sum_l ||dx_l/dt||^2 of the last step.
        self.last_trace: list[float] = []

    def feedback_weight_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        return self.feedback.pairs(self.blocks)

    # ------------------------------------------------------------------ relaxation
    def relax_activities(
        self, x: Tensor, y: Tensor
    ) -> tuple[list[Tensor], list[Vjp], list[Tensor], RelaxResult, Tensor]:
        """Forward pass, then relaxation. Returns the activities ``[x_1..x_L]`` (per-sample
        gradients ``dl_i/dz_l`` at the fixed point, ``x_L`` held), the per-block adjoints of
        activation + pooling used by the update (with ``f'``), the block inputs, the
        relaxation result and the output."""
        with torch.no_grad():
            trace = forward_trace(self.blocks, x)
        out = trace.outputs[-1].detach()
        self.check_labels(out, y)
        top = per_sample_output_grad(self.loss_fn, out, y)
        pairs = [self.derivative.adjoints(b, h.detach()) for b, h in zip(self.blocks, trace.pre,
                                                                         strict=True)]
        post, exact = [p[0] for p in pairs], [p[1] for p in pairs]  # relaxation, update
        down = [  # the first block passes nothing down: no relaxing state below it
            input_adjoint(b, self.feedback.weight(i, b), trace.inputs[i]) if i else None
            for i, b in enumerate(self.blocks)
        ]
        n_free = len(self.blocks) - 1
        # J_{l+1}^T: the message from the activity above to activity l (linear, frozen)
        maps: list[Vjp] = [
            lambda a, d=down[i + 1], p=post[i + 1]: d(p(a))  # type: ignore[misc]
            for i in range(n_free)
        ]
        start = [self.init(z) for z in trace.outputs[:n_free]]
        steps = self.steps if n_free else 0
        if self.solver == "closed_form" and self.tol is None:
            res = relax_linear_chain(start, maps, top, steps=steps, step_size=self.step_size)
        else:
            def dynamics(states: list[Tensor]) -> tuple[list[Tensor], float]:
                above = [*states[1:], top]
                deltas = [relaxation_residual(s, maps[i](a))
                          for i, (s, a) in enumerate(zip(states, above, strict=True))]
                energy = sum(0.5 * float(d.pow(2).sum()) for d in deltas) / x.shape[0]
                return deltas, energy

            res = relax(start, dynamics, steps=steps, step_size=self.step_size, tol=self.tol)
        return [*res.states, top], exact, trace.inputs, res, out

    # ------------------------------------------------------------------ the contract
    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self.check_batch(x, y)
        acts, post, inputs, res, out = self.relax_activities(x, y)
        batch = x.shape[0]
        for i, b in enumerate(self.blocks):
            delta = post[i](acts[i]) / batch  # dloss/dh_l at the fixed point (batch mean)
            params = {k: p for k, p in b.layer.named_parameters() if p.requires_grad}
            if not params:
                continue
            z_in = b.pre(inputs[i]).detach()
            if isinstance(b.layer, nn.Linear):  # dW = delta^T z_in, db = sum_b delta
                grads = {k: delta.t() @ z_in if k == "weight" else delta.sum(0) for k in params}
            else:
                frozen = {k: p.detach() for k, p in params.items()}
                _, fn = vjp(lambda p, z=z_in, layer=b.layer: functional_call(layer, p, (z,)),
                            frozen)
                (grads,) = fn(delta)
            for k, p in params.items():
                self.accumulate_grad(p, grads[k])
            if "weight" in grads:
                self.feedback.record_update(i, grads["weight"])
        self.last_trace = res.energies
        nan = float("nan")
        metrics = {
            "energy_first": res.energies[0] if res.energies else nan,
            "energy_last": res.energies[-1] if res.energies else nan,
            "relax_steps": float(res.steps),
        }
        return StepResult(float(self.loss_fn(out, y)), out, metrics)
