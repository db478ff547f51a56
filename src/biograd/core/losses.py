"""Output losses shared by every rule.

All losses are means over the batch, so every rule's update is an estimate of the gradient of
the same scalar that ``backprop`` differentiates. ``y`` holds integer class labels; MSE compares
the output with the one-hot code of ``y`` (as in Millidge et al. 2020, P4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from biograd.core.errors import unknown_name

LossFn = Callable[[Tensor, Tensor], Tensor]


def _targets(output: Tensor, y: Tensor) -> Tensor:
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return F.one_hot(y.long(), output.shape[-1]).to(output.dtype)
    return y.to(output.dtype)


def cross_entropy(output: Tensor, y: Tensor) -> Tensor:
    """Softmax + negative log-likelihood, mean over the batch (P1's softmax + NLL)."""
    if y.dtype.is_floating_point:
        return -(y * F.log_softmax(output, dim=-1)).sum(-1).mean()
    return F.cross_entropy(output, y.long())


def mse(output: Tensor, y: Tensor) -> Tensor:
    """0.5 * ||output - onehot(y)||^2, summed over units, mean over the batch (P4)."""
    return 0.5 * (output - _targets(output, y)).pow(2).sum(-1).mean()


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def get_loss(loss: str | LossFn) -> LossFn:
    """Resolve a loss name (``"cross_entropy"`` or ``"mse"``) or pass a callable through."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise unknown_name("loss", str(loss), LOSSES)
    return LOSSES[loss]


def output_error(loss: LossFn, output: Tensor, y: Tensor) -> Tensor:
    """dloss/doutput (e_L in ALGORITHMS.md), computed by autograd on a detached output."""
    out = output.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(out, y), out)
    return grad
