"""Feedback nonlinearities of target-propagation feedback blocks (biograd.ops.inverse).

- ``"same"``: the forward block's own activation, as P2's code inverts a block (ELU by ELU);
- ``"matched"``: ``phi`` with ``phi'(f(h)) = f'(h)``, i.e. the antiderivative of the forward
  activation's derivative written as a function of its output (tanh: 1 - y^2; sigmoid:
  y(1 - y); ELU: 1 or y + alpha). With ``V = W^T`` the feedback Jacobian then equals the forward
  Jacobian's transpose exactly, so the L-DRL optimum is reachable (our option, not P2's);
- ``"identity"``: no feedback nonlinearity, so the inverse is affine in its input,
  ``g(y) = V unpool(y) + c`` (``g(y) = V y + c`` for an MLP block): the linear-inverse reading
  of P1's DTP-sigma (docs/algorithms/target_prop.md, "Readings and choices").
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn


class MatchedActivation(nn.Module):
    """phi with phi'(f(h)) = f'(h): the feedback nonlinearity whose derivative at the forward
    output equals the forward activation's derivative, so that ``V = W^T`` gives J_g = J_f^T
    exactly (our option; P2's code uses the forward activation itself)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], label: str) -> None:
        super().__init__()
        self.fn, self.label = fn, label

    def forward(self, y: Tensor) -> Tensor:
        return self.fn(y)

    def extra_repr(self) -> str:
        return self.label


def _matched_elu(act: nn.ELU) -> MatchedActivation:
    a = act.alpha
    return MatchedActivation(
        lambda y: torch.where(y > 0, y, 0.5 * y * y + a * y), f"y>0: y, else y^2/2 + {a}y"
    )


MATCHED: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    nn.Tanh: lambda a: MatchedActivation(lambda y: y - y.pow(3) / 3, "y - y^3/3"),
    nn.Sigmoid: lambda a: MatchedActivation(lambda y: y * y / 2 - y.pow(3) / 3, "y^2/2 - y^3/3"),
    nn.ELU: _matched_elu,
    nn.ReLU: lambda a: nn.ReLU(),
    nn.LeakyReLU: lambda a: copy.deepcopy(a),
    nn.Identity: lambda a: nn.Identity(),
    nn.Hardtanh: lambda a: copy.deepcopy(a),
}


def same_activation(act: nn.Module) -> nn.Module:
    """P2's choice: the feedback block applies the forward block's own activation."""
    return copy.deepcopy(act)


def matched_activation(act: nn.Module) -> nn.Module:
    """The derivative-matched feedback nonlinearity (falls back to the same activation for
    activations whose derivative is not a function of their output, e.g. GELU, SiLU)."""
    for cls, make in MATCHED.items():
        if type(act) is cls:
            return make(act)
    return same_activation(act)


def identity_activation(act: nn.Module) -> nn.Module:
    """No feedback nonlinearity whatever the forward activation: the inverse is affine in its
    input (the linear-inverse reading of P1's DTP-sigma)."""
    return nn.Identity()


FEEDBACK_ACTIVATIONS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "same": same_activation,
    "matched": matched_activation,
    "identity": identity_activation,
}
