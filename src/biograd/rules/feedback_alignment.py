"""Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276)."""

from __future__ import annotations

from torch import nn

from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.rules._backward import BackwardReplacementRule


@register_rule(
    "feedback_alignment",
    family="backward_replacement",
    paper="Lillicrap et al. 2016, Nat. Commun. 7:13276 (arXiv:1411.0247)",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class FeedbackAlignment(BackwardReplacementRule):
    """Backprop with W^T replaced by a fixed random matrix B in the backward pass.

    delta_l = (B_{l+1} delta_{l+1}) * f'(h_l), dW_l = delta_l z_{l-1}^T (as in BP). Every
    ``nn.Linear`` / ``nn.Conv2d`` (or registered layer type) is converted; for a conv layer B is
    a kernel of W's shape used in the transposed convolution. B is a buffer (not trained),
    drawn once from the rule's generator with the distribution of PyTorch's default init of W,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        allow_backprop: tuple[type[nn.Module] | str, ...] = (),
    ) -> None:
        super().__init__(model, loss, allow_backprop)
        self.init_random_feedback()

