"""Shared machinery of the target-propagation family (DTP, DTP-sigma, DRL, L-DRL).

One batch (``step``), for blocks ``l = 0..L-1`` with outputs ``z_l`` and feedback blocks ``g_l``
(``l >= 1``, :mod:`biograd.ops.inverse`):

1. forward sweep, each block on its *detached* input (so layer losses stay local);
2. feedback training: for l = 1..L-1 in turn, ``K_l`` SGD(momentum) steps of the rule's feedback
   loss (:mod:`biograd.ops.tp_losses`) with noise ``sigma_l`` and rate ``lr_l``; forward weights
   frozen (P2's schedule); the step is capped by the loss's exact curvature along the gradient
   (``feedback_guard``, :func:`biograd.ops.tp_losses.guard_scale`). The feedback weights are
   ``requires_grad=False`` parameters trained only here by the rule's own optimizers: they are
   *not* in ``rule.parameters()``, the user's optimizer never sees them, and they plus the
   optimizers' state are in ``state_dict``;
3. targets: ``t_{L-1} = z_{L-1} - beta * e`` with ``e`` the per-sample top nudge (loss gradient
   or output error), then the difference correction (Lee et al. 2015, eq. 15)
   ``t_{l-1} = z_{l-1} + g_l(t_l) - g_l(z_l)``;
4. forward updates: the gradient of ``sum_l mean_b ||z_l - t_l||^2 / (2 beta)`` w.r.t. each
   block's weights (input detached) goes into ``.grad``. Dividing by ``beta`` (P2's forward loss)
   gives the updates a gradient's scale: the top layer's update is exactly backprop's.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from biograd.core import checks
from biograd.core.blocks import Block, as_blocks
from biograd.core.errors import ConfigError, UnsupportedModelError
from biograd.core.losses import LossFn, output_error
from biograd.core.rule import LearningRule, StepResult
from biograd.ops.inverse import (
    FEEDBACK_ACTIVATIONS,
    BlockContext,
    FeedbackBlock,
    block_forward,
    make_feedback,
)
from biograd.ops.tp_losses import (
    DEFAULT_GUARD,
    FeedbackLoss,
    TopNudge,
    gradient_top_nudge,
    guard_factor,
    guard_scale,
)
from biograd.ops.tp_quadratic import quadratic_step

#: beta used by :meth:`TargetPropagationRule.alignment_probe` (update-vs-backprop angle, P2).
PROBE_BETA = 1e-3


@dataclass
class TPTrace:
    """Forward sweep: detached block inputs, block outputs (with local graphs), contexts."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    contexts: list[BlockContext]


def per_layer_int(rule: str, name: str, value: Any, n: int) -> list[int]:
    """A positive integer broadcast to ``n`` layers, or a list of exactly ``n`` of them."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ConfigError(
            f"rule {rule!r}: {name} has {len(values)} entries but the model has {n} feedback "
            f"layers; give one value per layer or a single scalar"
        )
    return [checks.positive_int(rule, f"{name}[{i}]", v) for i, v in enumerate(values)]


@contextlib.contextmanager
def _trainable(params: list[nn.Parameter]) -> Iterator[None]:
    """Temporarily let autograd differentiate w.r.t. ``requires_grad=False`` feedback weights."""
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in params:
            p.requires_grad_(False)


class TargetPropagationRule(LearningRule):
    """Base of the target-propagation rules; subclasses pick the feedback loss and top nudge."""

    #: whether ``sigma = 0`` (no noise in feedback training) is a valid setting.
    ALLOW_ZERO_SIGMA: ClassVar[bool] = False

    def __init__(
        self, model: nn.Module, loss: str | LossFn, *, beta: float,
        feedback_steps: int | list[int], feedback_lr: float | list[float],
        sigma: float | list[float], feedback_momentum: float, feedback_loss: FeedbackLoss,
        top_nudge: TopNudge = gradient_top_nudge, difference_correction: bool = True,
        feedback_activation: str = "same", feedback_guard: float = DEFAULT_GUARD,
    ) -> None:
        super().__init__(model, loss)
        self.blocks: list[Block] = as_blocks(model, self.name)
        n = len(self.blocks) - 1
        if n < 1:
            raise UnsupportedModelError(
                f"rule {self.name!r} needs at least two blocks (Linear/Conv2d layers) to "
                f"propagate targets; the model has one"
            )
        self.beta = checks.positive(self.name, "beta", beta)
        self.feedback_steps = per_layer_int(self.name, "feedback_steps", feedback_steps, n)
        self.feedback_lr = checks.per_layer(self.name, "feedback_lr", feedback_lr, n)
        self.sigma = checks.per_layer(
            self.name, "sigma", sigma, n, allow_zero=self.ALLOW_ZERO_SIGMA
        )
        m = checks.positive(self.name, "feedback_momentum", feedback_momentum, allow_zero=True)
        if m >= 1:
            raise ConfigError(f"rule {self.name!r}: feedback_momentum must be < 1, got {m!r}")
        self.feedback_loss = feedback_loss
        self.feedback_guard = checks.positive(
            self.name, "feedback_guard", feedback_guard, allow_zero=True
        )
        self.top_nudge = top_nudge
        self.difference_correction = bool(difference_correction)
        checks.choice(self.name, "feedback_activation", feedback_activation,
                      tuple(FEEDBACK_ACTIVATIONS))
        self.feedback_momentum = m
        #: feedback gradients in closed form where there is one (Linear feedback blocks,
        #: :mod:`biograd.ops.tp_quadratic`); False: autograd on the loss (the same step up to
        #: float rounding, the same noise)
        self.closed_form_feedback = True
        self.feedback = self.build_feedback(feedback_activation)
        self._optims = self.build_optimizers()
        names = {id(mod): name for name, mod in model.named_modules()}
        self.layer_names = [names.get(id(b.layer), f"block{i}") for i, b in enumerate(self.blocks)]

    def build_feedback(self, feedback_activation: str) -> nn.ModuleList:
        """Layer-wise feedback blocks ``g_l`` for blocks ``1..L-1`` (subclasses with another
        feedback pathway, e.g. DDTP's direct maps in ``rules/_ddtp.py``, override this)."""
        return nn.ModuleList(
            make_feedback(b, self.generator, feedback_activation) for b in self.blocks[1:]
        )

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        """One SGD(momentum) optimizer per feedback block, with that layer's rate."""
        return [
            torch.optim.SGD(list(fb.parameters()), lr=lr, momentum=self.feedback_momentum)
            for fb, lr in zip(self.feedback, self.feedback_lr, strict=True)
        ]

    # ----------------------------------------------------------------- phases
    def forward_trace(self, x: Tensor) -> TPTrace:
        """Forward sweep with each block on its detached input (local graphs only)."""
        inputs, outputs, ctxs = [], [], []
        z = x
        with torch.enable_grad():
            for b in self.blocks:
                inputs.append(z.detach())
                z, ctx = block_forward(b, inputs[-1])
                outputs.append(z)
                ctxs.append(ctx)
        return TPTrace(inputs, outputs, ctxs)

    def train_feedback(self, trace: TPTrace) -> dict[str, float]:
        """Train every feedback block in turn, K_l steps each; returns the last losses."""
        losses: dict[str, float] = {}
        for l, (fb, opt) in enumerate(zip(self.feedback, self._optims, strict=True), start=1):
            block = self.blocks[l]
            x, y, ctx = trace.inputs[l], trace.outputs[l].detach(), trace.contexts[l]

            def f(t: Tensor, block: Block = block) -> Tensor:
                return block_forward(block, t)[0]

            params = list(fb.parameters())
            lr, scale = self.feedback_lr[l - 1], 1.0
            sigma, steps = self.sigma[l - 1], self.feedback_steps[l - 1]
            for k in range(steps):
                guard = k == 0 and self.feedback_guard > 0  # the batch's curvature, once
                q = quadratic_step(self.feedback_loss, f, fb, x, y, ctx, sigma, self.generator
                                   ) if self.closed_form_feedback else None
                if q is not None:  # closed form (Linear blocks), no autograd
                    grads = q.grads
                    if guard:
                        scale = guard_factor(grads, q.curvature(grads), lr, self.feedback_guard)
                    value = q.value() if k == steps - 1 else None
                else:
                    with _trainable(params):
                        value = self.feedback_loss(f, fb, x, y, ctx, sigma, self.generator)
                        # allow_unused: difference losses do not depend on the bias (it cancels)
                        grads = torch.autograd.grad(value, params, allow_unused=True,
                                                    create_graph=guard)
                        if guard:
                            scale = guard_scale(grads, params, lr, self.feedback_guard)
                for p, g in zip(params, grads, strict=True):
                    p.grad = None if g is None else g.detach() * scale  # None: p is unchanged
                opt.step()
                for p in params:
                    p.grad = None
            name = self.layer_names[l]
            assert value is not None
            losses[f"feedback_loss/{name}"] = float(value.detach())
            if self.feedback_guard > 0:
                losses[f"feedback_step_scale/{name}"] = scale
        return losses

    @torch.no_grad()
    def targets(self, trace: TPTrace, y: Tensor, beta: float | None = None) -> list[Tensor]:
        """Top target ``z - beta * nudge`` propagated down by (difference-corrected) ``g``."""
        beta = self.beta if beta is None else beta
        top = trace.outputs[-1].detach()
        nudge = self.top_nudge(output_error(self.loss_fn, top, y), top, y)
        targets = [top - beta * nudge]
        for l in range(len(self.blocks) - 1, 0, -1):
            fb, ctx, t = self.feedback[l - 1], trace.contexts[l], targets[0]
            if self.difference_correction:
                g_t, g_z = fb(torch.cat([t, trace.outputs[l].detach()]), ctx.repeat(2)).chunk(2)
                targets.insert(0, trace.inputs[l] + g_t - g_z)
            else:
                targets.insert(0, fb(t, ctx))
        return targets

    def write_forward_updates(self, trace: TPTrace, targets: list[Tensor]) -> None:
        """``.grad += d/dW sum_l mean_b ||z_l - t_l||^2 / (2 beta)`` (inputs detached)."""
        with torch.enable_grad():
            total = sum(
                (z - t).pow(2).flatten(1).sum(1).mean()
                for z, t in zip(trace.outputs, targets, strict=True)
            ) / (2 * self.beta)
            params = self.forward_parameters()
            grads = torch.autograd.grad(total, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            self.accumulate_grad(p, torch.zeros_like(p) if g is None else g)

    # ----------------------------------------------------------------- the contract
    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """Feedback training, then targets and forward updates (module docstring)."""
        self.check_batch(x, y)
        trace = self.forward_trace(x)
        out = trace.outputs[-1].detach()
        self.check_labels(out, y)
        loss = float(self.loss_fn(out, y))
        metrics = self.train_feedback(trace)
        self.write_forward_updates(trace, self.targets(trace, y))
        return StepResult(loss, out, metrics)

    def feedback_only_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Feedback training alone on ``x`` (phases 1-2 of ``step``): the feedback-only epochs
        of schedules that train the feedback apart from the forward weights."""
        self.check_batch(x, y)
        trace = self.forward_trace(x)
        self.prepare_feedback(trace)
        return self.train_feedback(trace)

    def prepare_feedback(self, trace: TPTrace) -> None:
        """Called with the first forward trace before feedback training (DDTP builds its
        direct maps from the batch's shapes); nothing by default."""

    # ----------------------------------------------------------------- diagnostics
    def feedback_blocks(self) -> list[tuple[str, Block, FeedbackBlock]]:
        """``(layer name, forward block, feedback block)`` for every block with feedback."""
        return list(zip(self.layer_names[1:], self.blocks[1:], self.feedback, strict=True))

    def alignment_probe(self) -> LearningRule:
        """A copy with ``beta = PROBE_BETA``: TP updates tend to gradients as beta -> 0 (P2); the
        1/beta of the layer loss already scales them, so no further rescaling is needed."""
        probe = copy.deepcopy(self)
        probe.beta = PROBE_BETA
        return probe

    def feedback_weight_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{layer: (V, adjoint of W)}``: feedback weight vs the forward weight's transpose."""
        return {
            name: (fb.weight.detach(), fb.adjoint_of(b.layer.weight))
            for name, b, fb in self.feedback_blocks()
        }

    def jacobian_alignment(self, x: Tensor, probes: int | None = None) -> dict[str, float]:
        """Per layer, angle between J_g and J_f^T (see :mod:`biograd.metrics.jacobian`)."""
        from biograd.metrics.jacobian import jacobian_alignment

        return jacobian_alignment(self, x, probes=probes)

    # ----------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        state = super().get_extra_state()
        state["feedback_optimizers"] = [copy.deepcopy(o.state_dict()) for o in self._optims]
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        for opt, sd in zip(self._optims, state["feedback_optimizers"], strict=True):
            opt.load_state_dict(copy.deepcopy(sd))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, feedback_steps={self.feedback_steps}"
