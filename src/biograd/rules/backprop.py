"""Backpropagation: the reference every other rule is compared with (Rumelhart et al. 1986)."""

from __future__ import annotations

from torch import Tensor, nn

from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.core.rule import LearningRule, StepResult


@register_rule(
    "backprop",
    family="reference",
    paper="Rumelhart, Hinton & Williams 1986, Nature 323:533",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class Backprop(LearningRule):
    """Exact gradients by autograd; accepts any differentiable module."""

    def __init__(self, model: nn.Module, loss: str | LossFn = "cross_entropy") -> None:
        super().__init__(model, loss)

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self.check_batch(x, y)
        out = self.model(x)
        self.check_labels(out, y)
        loss = self.loss_fn(out, y)
        loss.backward()
        return StepResult(float(loss.detach()), out.detach())
