"""Strategy objects for activation relaxation's variants (Millidge et al. 2020, P4, Sec. 4):

- backward weights: :class:`ExactBackward` (``W^T``), :class:`RandomBackward` (fixed random
  ``B``, feedback-alignment-like), :class:`LearnedBackward` (``psi`` trained with the
  transposed copy of ``W``'s update, P4's Eq. 9);
- nonlinear derivative: :class:`KeptDerivative` (``f'(h)``) or :class:`DroppedDerivative`
  (``f'`` replaced by 1 in the relaxation, P4 Sec. 4.2; the update keeps it).

Backward weights are stored in the layout of ``W^T`` (``weight.transpose(0, 1)``: ``in x out``
for Linear, ``in_ch x out_ch x kh x kw`` for Conv2d); the backward pass uses the adjoint of the
layer with its weight replaced by ``B.transpose(0, 1)`` (for a convolution this is the
transposed convolution with kernel ``B``), so ``B = W^T`` is the exact variant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp

from biograd.core.blocks import Block, activation_derivative

Vjp = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------- backward weights
class ExactBackward(nn.Module):
    """The forward weights' transpose (standard AR: the fixed point is backprop's gradient)."""

    def weight(self, index: int, block: Block) -> Tensor:
        """Weight (forward layout) whose adjoint carries messages down through ``block``."""
        return block.layer.weight.detach()

    def record_update(self, index: int, update: Tensor) -> None:
        """Hook called with the weight update ``dW`` written for block ``index``."""

    def pairs(self, blocks: list[Block]) -> dict[str, tuple[Tensor, Tensor]]:
        return {}


class RandomBackward(ExactBackward):
    """Fixed random backward weights ``B_l`` (feedback alignment inside AR, P4 Sec. 4.1),
    drawn uniform in ``+-1/sqrt(fan_in)`` from the rule's generator; one per block above the
    first (the first block passes nothing down)."""

    trainable = False

    def __init__(self, blocks: list[Block], generator: torch.Generator) -> None:
        super().__init__()
        tensors = []
        for b in blocks[1:]:
            w = b.layer.weight
            bound = 1.0 / w[0].numel() ** 0.5
            t = torch.rand(w.transpose(0, 1).shape, generator=generator, dtype=w.dtype)
            tensors.append(((2 * t - 1) * bound).to(w.device))
        if self.trainable:
            self.psi = nn.ParameterList([nn.Parameter(t) for t in tensors])
        else:
            for i, t in enumerate(tensors):
                self.register_buffer(f"B{i + 1}", t)

    def _b(self, index: int) -> Tensor:
        return self.psi[index - 1] if self.trainable else getattr(self, f"B{index}")

    def weight(self, index: int, block: Block) -> Tensor:
        return self._b(index).detach().transpose(0, 1)

    def pairs(self, blocks: list[Block]) -> dict[str, tuple[Tensor, Tensor]]:
        return {
            f"layer{i}": (self._b(i).detach(), blocks[i].layer.weight.detach().transpose(0, 1))
            for i in range(1, len(blocks))
        }


class LearnedBackward(RandomBackward):
    """Learned backward weights ``psi_l`` (P4 Eq. 9): ``.grad`` of ``psi_l`` is the
    transposed copy of ``W_l``'s update, so ``psi`` tracks ``W^T`` under the user's optimizer
    (like Kolen-Pollack); the first block has no ``psi``."""

    trainable = True

    def record_update(self, index: int, update: Tensor) -> None:
        if index == 0:
            return
        p = self.psi[index - 1]
        g = update.detach().transpose(0, 1).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad.add_(g)


BACKWARDS: dict[str, type[ExactBackward]] = {
    "exact": ExactBackward,
    "random": RandomBackward,
    "learned": LearnedBackward,
}


def input_adjoint(block: Block, weight: Tensor, z_in: Tensor) -> Vjp:
    """``delta -> (d layer / d input)^T delta`` with the layer's weight replaced by ``weight``,
    reshaped to ``z_in``'s shape (undoing the block's flatten). Linear: ``delta @ weight``."""
    shape = z_in.shape
    if isinstance(block.layer, nn.Linear):
        return lambda delta: (delta @ weight).reshape(shape)
    params = {"weight": weight}
    if block.layer.bias is not None:
        params["bias"] = block.layer.bias.detach()
    _, fn = vjp(lambda z: functional_call(block.layer, params, (z,)), block.pre(z_in).detach())
    return lambda delta: fn(delta)[0].reshape(shape)


# ---------------------------------------------------------------------- derivatives
def _pool_adjoint(block: Block, h: Tensor) -> Vjp | None:
    if block.pool is None:
        return None
    _, fn = vjp(block.pool, block.activation(h).detach())
    return lambda v: fn(v)[0]


class KeptDerivative:
    """``v -> f'(h) * pool^T v``: the exact adjoint of activation + pooling at the forward
    pass (Jacobians frozen there, P4 Sec. 3)."""

    def adjoint(self, block: Block, h: Tensor) -> Vjp:
        d = activation_derivative(block.activation, h)
        pool = _pool_adjoint(block, h)
        if pool is None:
            return lambda v: d * v
        return lambda v: d * pool(v)

    def adjoints(self, block: Block, h: Tensor) -> tuple[Vjp, Vjp]:
        """(adjoint used by the relaxation, adjoint used by the weight update)."""
        a = self.adjoint(block, h)
        return a, a


class DroppedDerivative(KeptDerivative):
    """``v -> pool^T v``: ``f'`` replaced by 1 in the relaxation dynamics (P4 Sec. 4.2); a
    max-pool still routes to its forward argmax. As in the authors' code
    (BerenMillidge/ActivationRelaxation, ``use_backward_nonlinearity=False``), the weight
    update keeps ``f'(h_l)`` (the second adjoint of :meth:`adjoints`)."""

    def adjoint(self, block: Block, h: Tensor) -> Vjp:
        pool = _pool_adjoint(block, h)
        return pool if pool is not None else (lambda v: v)

    def adjoints(self, block: Block, h: Tensor) -> tuple[Vjp, Vjp]:
        return self.adjoint(block, h), super().adjoint(block, h)


DERIVATIVES: dict[str, type[KeptDerivative]] = {
    "kept": KeptDerivative,
    "dropped": DroppedDerivative,
}
