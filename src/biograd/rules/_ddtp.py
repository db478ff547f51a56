"""Shared machinery of the DDTP-linear rules (``s_ddtp``, ``p_ddtp``): direct difference target
propagation with linear direct feedback maps trained by the difference reconstruction loss
(Meulemans et al. 2020, arXiv:2006.14331; :mod:`biograd.ops.direct_feedback_tp`).

One batch (``step``), as the authors' ``train_parallel`` (``lib/train.py``: forward targets and
updates first, then the feedback training on the same batch, then the optimizer step):

1. forward sweep, each block on its detached input (:meth:`TargetPropagationRule.forward_trace`);
2. targets: ``t_L = a_L - beta * e`` (``e`` the per-sample loss gradient at the output ``a_L``,
   the last block's output), ``t_l = z_l + Q_l (t_L - a_L)`` for every hidden block ``l``
   (the first one included: every hidden block hears from the output directly);
3. forward updates: the gradient of ``sum_l mean_b ||z_l - t_l||^2 / (2 beta)`` w.r.t. each
   block's weights (input detached) goes into ``.grad``; the top block's update is backprop's;
4. feedback training, forward weights frozen: for each hidden block in turn, ``K_l`` steps
   (``feedback_steps``) of the rule's own optimizer (Adam as the authors, or SGD) on the direct
   DRL of ``Q_l`` with noise ``sigma_l``.

The maps ``Q_l`` have ``n_l = numel(z_l)`` rows, which for conv blocks depends on the image size:
they are built at the first ``step`` (from the batch) or by ``load_state_dict`` (from the saved
shapes), and until then the rule holds none. Like the other TP rules' feedback, they are
``requires_grad=False`` parameters under ``rule.feedback``, outside ``rule.parameters()``, saved
with their optimizers' state.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from biograd.core import checks
from biograd.core.blocks import Block
from biograd.core.errors import ConfigError
from biograd.core.losses import LossFn, output_error
from biograd.core.rule import StepResult
from biograd.ops.direct_feedback_tp import DirectFeedback, direct_drl_loss, direct_targets
from biograd.ops.inverse import FeedbackBlock
from biograd.ops.tp_losses import DEFAULT_GUARD, DifferenceReconstructionLoss
from biograd.rules._target_prop import TargetPropagationRule, TPTrace, _trainable

OPTIMIZERS = ("adam", "sgd")


def _run_tail(blocks: list[Block], z: Tensor) -> Tensor:
    """The frozen forward blocks after a layer, from its output to the network's output."""
    for b in blocks:
        z = b(z)
    return z


class DirectDTPRule(TargetPropagationRule):
    """Base of the DDTP-linear rules; subclasses differ in their schedule defaults only."""

    def __init__(
        self, model: nn.Module, loss: str | LossFn, *, beta: float,
        feedback_steps: int | list[int], feedback_lr: float | list[float],
        sigma: float | list[float], feedback_momentum: float, damping: float,
        feedback_optimizer: str,
    ) -> None:
        self.damping = checks.positive(type(self).name, "damping", damping, allow_zero=True)
        self.feedback_optimizer = checks.choice(
            type(self).name, "feedback_optimizer", feedback_optimizer, OPTIMIZERS)
        super().__init__(
            model, loss, beta=beta, feedback_steps=feedback_steps, feedback_lr=feedback_lr,
            sigma=sigma, feedback_momentum=feedback_momentum,
            feedback_loss=DifferenceReconstructionLoss(self.damping), feedback_guard=DEFAULT_GUARD,
        )

    # ----------------------------------------------------------------- direct maps
    def build_feedback(self, feedback_activation: str) -> nn.ModuleList:
        """None yet: the maps' sizes are known at the first batch (module docstring)."""
        return nn.ModuleList()

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer per direct map: Adam (betas ``(feedback_momentum, 0.999)``, the
        authors' choice) or SGD with momentum ``feedback_momentum``."""
        out: list[torch.optim.Optimizer] = []
        if not len(self.feedback):  # not built yet
            return out
        for q, lr in zip(self.feedback, self.feedback_lr, strict=True):
            if self.feedback_optimizer == "adam":
                out.append(torch.optim.Adam([q.weight], lr=lr,
                                            betas=(self.feedback_momentum, 0.999)))
            else:
                out.append(torch.optim.SGD([q.weight], lr=lr, momentum=self.feedback_momentum))
        return out

    def _set_maps(self, maps: list[DirectFeedback]) -> None:
        self.feedback = nn.ModuleList(maps)
        self._optims = self.build_optimizers()

    def prepare_feedback(self, trace: TPTrace) -> None:
        self.ensure_feedback(trace)

    def ensure_feedback(self, trace: TPTrace) -> None:
        """Build the direct maps (Xavier-normal) from the batch's block outputs, once."""
        if len(self.feedback):
            return
        a = trace.outputs[-1]
        self._set_maps([
            DirectFeedback.xavier(a[0].numel(), z[0].numel(), self.generator, a)
            for z in trace.outputs[:-1]
        ])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        """Rebuild the maps with the saved shapes (or drop them, for a state saved before the
        first step) before torch copies the tensors and the optimizers' state in."""
        keys = [f"{prefix}feedback.{i}.weight" for i in range(len(self.blocks) - 1)]
        if all(k in state_dict for k in keys):
            ref = next(iter(self.model.parameters()))
            shapes = [tuple(state_dict[k].shape) for k in keys]
            if shapes != [tuple(q.weight.shape) for q in self.feedback]:
                self._set_maps([DirectFeedback(ref.new_zeros(s)) for s in shapes])
        elif not any(k in state_dict for k in keys):
            self._set_maps([])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------- phases
    @torch.no_grad()
    def targets(self, trace: TPTrace, y: Tensor, beta: float | None = None) -> list[Tensor]:
        """``t_L = a_L - beta e``, ``t_l = z_l + Q_l (t_L - a_L)`` (module docstring)."""
        beta = self.beta if beta is None else beta
        top = trace.outputs[-1].detach()
        nudge = self.top_nudge(output_error(self.loss_fn, top, y), top, y)
        return direct_targets(self.feedback, [z.detach() for z in trace.outputs],
                              top - beta * nudge)

    def train_feedback(self, trace: TPTrace) -> dict[str, float]:
        """``K_l`` optimizer steps on each direct map's DRL in turn; returns the last losses."""
        losses: dict[str, float] = {}
        for l, (q, opt) in enumerate(zip(self.feedback, self._optims, strict=True)):
            tail = partial(_run_tail, self.blocks[l + 1:])
            z = trace.outputs[l].detach()
            with torch.no_grad():
                a = tail(z)
            for _ in range(self.feedback_steps[l]):
                with _trainable([q.weight]):
                    value = direct_drl_loss(tail, q, z, a, self.sigma[l], self.generator,
                                            self.damping)
                    (grad,) = torch.autograd.grad(value, [q.weight])
                q.weight.grad = grad
                opt.step()
                q.weight.grad = None
            losses[f"feedback_loss/{self.layer_names[l]}"] = float(value.detach())
        return losses

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """Targets and forward updates, then feedback training (module docstring)."""
        self.check_batch(x, y)
        trace = self.forward_trace(x)
        out = trace.outputs[-1].detach()
        self.check_labels(out, y)
        loss = float(self.loss_fn(out, y))
        self.ensure_feedback(trace)
        self.write_forward_updates(trace, self.targets(trace, y))
        metrics = self.train_feedback(trace)
        return StepResult(loss, out, metrics)

    # ----------------------------------------------------------------- diagnostics
    def feedback_blocks(self) -> list[tuple[str, Block, FeedbackBlock]]:
        """None: direct maps are not layer-wise inverses (no per-block Jacobian to compare)."""
        return []

    def feedback_weight_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """None: ``Q_l`` has no forward weight of its shape to align with."""
        return {}

    def jacobian_alignment(self, x: Tensor, probes: int | None = None) -> dict[str, float]:
        """None (see :meth:`feedback_blocks`)."""
        return {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if len(state["feedback_optimizers"]) != len(self._optims):
            raise ConfigError(
                f"rule {self.name!r}: the saved state has {len(state['feedback_optimizers'])} "
                f"feedback optimizers but the rule has {len(self._optims)} direct maps; load a "
                f"state saved by {self.name!r} on the same model"
            )
        super().set_extra_state(state)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, damping={self.damping}, "
                f"feedback_optimizer={self.feedback_optimizer!r}")
