"""Kolen-Pollack learning (Kolen & Pollack 1994; Akrout et al. 2019, P3, arXiv:1904.05391)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from biograd.core.checks import flag, positive
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.ops.convert import FeedbackLayer
from biograd.rules._backward import BackwardReplacementRule


@register_rule(
    "kolen_pollack",
    family="backward_replacement",
    paper="Akrout et al. 2019, NeurIPS, arXiv:1904.05391 (Kolen & Pollack 1994)",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class KolenPollack(BackwardReplacementRule):
    """FA-style backward through learned B that receives the transposed update of W.

    P3: dW = -eta delta z^T - lambda W, dB = -eta z delta^T - lambda B, so W - B^T decays as
    (1 - eta lambda)^t and B aligns with W^T from a random start (needs lambda > 0). Here
    ``step`` writes B.grad = (W.grad)^T exactly (B is an ``nn.Parameter`` in
    ``feedback_parameters()``), and the decay comes EITHER from the user's optimizer
    (``weight_decay`` applied to both groups, the usual way) OR from this rule's
    ``weight_decay`` hparam, which adds lambda W to W.grad and lambda B to B.grad of every
    converted layer (then leave the optimizer's decay at 0). B starts as FA's random init.

    A ``B`` that carries no error (its layer's input needs no gradient: the first layer of a
    network fed with data) takes no part in learning, so by default it gets no update (its
    ``.grad`` stays None, the optimizer skips it) and the feedback angles leave it out; the
    forward weights train exactly as if it were trained. ``train_unused_feedback=True``
    trains it too (to study that layer's alignment) at the cost of its update and optimizer
    step: on an MLP 784-256-256-256-10 that B holds 60% of all feedback entries.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        weight_decay: float = 0.0,
        train_unused_feedback: bool = False,
        allow_backprop: tuple[type[nn.Module] | str, ...] = (),
    ) -> None:
        super().__init__(model, loss, allow_backprop)
        self.weight_decay = positive(self.name, "weight_decay", weight_decay, allow_zero=True)
        self.train_unused_feedback = flag(self.name, "train_unused_feedback", train_unused_feedback)
        self.init_random_feedback(as_parameter=True)

    def layer_feedback(self, layer: FeedbackLayer) -> Tensor:
        return self.feedback.get(layer.key)

    def after_backward(self) -> None:
        if self.weight_decay != 0:  # (checked first: no no_grad context when there is no decay)
            self._add_decay()

    @torch.no_grad()
    def _add_decay(self) -> None:
        for layer in self.layers:
            for p in (layer.module.weight, self.feedback.get(layer.key)):
                if p.grad is not None:
                    p.grad.add_(p, alpha=self.weight_decay)
