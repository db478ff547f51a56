"""Feedback ("inverse") blocks for target propagation (Lee et al. 2015; P2, Ernoult et al. 2022).

A forward block (:class:`biograd.core.blocks.Block`) computes ``z = pool(act(W flatten(x) + b))``.
Its feedback block ``g`` maps the block's output space back to its input space by undoing each
stage in reverse order, as P2's code inverts a ``Sequential`` (its ``invert`` dispatch):

    g(y) = reshape( V act(unpool(y)) + c )

- ``unpool``: max-unpooling with the *forward pass's* argmax indices for ``MaxPool2d``, nearest
  upsampling for ``AvgPool2d``, nothing without pooling;
- ``act``: the forward block's own activation (P2 inverts ELU by ELU: ``"same"``), the
  derivative-matched ``phi`` with ``phi'(f(h)) = f'(h)`` (``"matched"``, our option), or none
  (``"identity"``: ``g`` is affine, the linear-inverse reading of P1's DTP-sigma);
- ``V``: a ``Linear`` (out -> in) for ``Linear`` blocks, a transposed convolution for ``Conv2d``
  blocks; ``V`` is stored with the *forward weight's shape*, so ``V = W`` (conv) or ``V = W^T``
  (linear) makes ``V`` the exact adjoint of the forward layer;
- ``reshape``: back to the unflattened input shape for blocks that flatten.

With identity activations and ``V`` the adjoint of ``W``, ``g``'s Jacobian is exactly the forward
block's Jacobian transposed (max-unpooling with the forward indices is the adjoint of max-pooling).
Feedback weights are ``nn.Parameter`` with ``requires_grad=False``: rules train them inside
``step`` with their own optimizer (see ``rules/_target_prop.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biograd.core.blocks import Block
from biograd.core.errors import UnsupportedModelError
from biograd.ops.tp_activations import FEEDBACK_ACTIVATIONS


@dataclass
class BlockContext:
    """What a feedback block needs from the forward pass of its block on a batch."""

    input_shape: tuple[int, ...]  # per-sample shape of the block's input (before flatten)
    pre_pool_shape: tuple[int, ...]  # per-sample shape of act(h), before pooling
    indices: Tensor | None = None  # MaxPool2d argmax indices, (B, C, H', W')

    def repeat(self, n: int) -> BlockContext:
        """The context of ``n`` stacked copies of the batch (for one batched feedback call)."""
        idx = None if self.indices is None else self.indices.repeat(n, 1, 1, 1)
        return BlockContext(self.input_shape, self.pre_pool_shape, idx)


def block_forward(block: Block, x: Tensor) -> tuple[Tensor, BlockContext]:
    """Run ``block`` on ``x`` and record the context its feedback block needs."""
    a = block.activation(block.linear(x))
    pool = block.pool
    idx = None
    if isinstance(pool, nn.MaxPool2d):
        z, idx = F.max_pool2d(
            a, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
            ceil_mode=pool.ceil_mode, return_indices=True,
        )
    elif pool is not None:
        z = pool(a)
    else:
        z = a
    return z, BlockContext(tuple(x.shape[1:]), tuple(a.shape[1:]), idx)


# ------------------------------------------------------------------ unpooling strategies
def _no_unpool(y: Tensor, ctx: BlockContext) -> Tensor:
    return y


def _max_unpool(pool: nn.MaxPool2d) -> Callable[[Tensor, BlockContext], Tensor]:
    if pool.dilation not in (1, (1, 1)):
        raise UnsupportedModelError(
            f"target propagation cannot invert {pool!r}: max-unpooling needs dilation=1"
        )

    def unpool(y: Tensor, ctx: BlockContext) -> Tensor:
        if ctx.indices is None:
            raise RuntimeError("max-unpooling needs the forward pass's indices")
        return F.max_unpool2d(
            y, ctx.indices, pool.kernel_size, pool.stride, pool.padding,
            output_size=ctx.pre_pool_shape[-2:],
        )

    return unpool


def _upsample(y: Tensor, ctx: BlockContext) -> Tensor:
    return F.interpolate(y, size=ctx.pre_pool_shape[-2:], mode="nearest")


def _unpool_for(pool: nn.Module | None) -> Callable[[Tensor, BlockContext], Tensor]:
    if pool is None:
        return _no_unpool
    if isinstance(pool, nn.MaxPool2d):
        return _max_unpool(pool)
    if isinstance(pool, nn.AvgPool2d):
        return _upsample
    raise UnsupportedModelError(f"target propagation has no feedback for pooling {pool!r}")


# ------------------------------------------------------------------ feedback blocks
class FeedbackBlock(nn.Module):
    """``g(y) = reshape(V act(unpool(y)) + c)`` for one forward block (abstract over ``V``)."""

    def __init__(self, block: Block, weight_shape: tuple[int, ...], n_in: int,
                 generator: torch.Generator, activation: str = "same") -> None:
        super().__init__()
        self.flatten = block.flatten
        self.activation = FEEDBACK_ACTIVATIONS[activation](block.activation)
        self._unpool = _unpool_for(block.pool)
        # V is drawn like the forward weight it mirrors (U(+-1/sqrt(forward fan-in)), PyTorch's
        # default bound for W), so that |V e| ~ |W^T e| before any feedback training; a bound
        # from V's own fan-in (P2's nn.Linear(out, in)) is ~sqrt(in/out) times larger and made
        # LeNet's 3136->512 block diverge at the first batches. The bias starts at zero.
        p = block.layer.weight
        bound = 1.0 / math.sqrt(p[0].numel())
        w = (torch.rand(weight_shape, generator=generator) * 2 - 1) * bound
        b = torch.zeros(n_in)
        self.weight = nn.Parameter(w.to(device=p.device, dtype=p.dtype), requires_grad=False)
        self.bias = nn.Parameter(b.to(device=p.device, dtype=p.dtype), requires_grad=False)

    def transpose_layer(self, u: Tensor, ctx: BlockContext, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def pre(self, y: Tensor, ctx: BlockContext) -> Tensor:
        """The parameter-free part ``act(unpool(y))``."""
        return self.activation(self._unpool(y, ctx))

    def _shape(self, v: Tensor, ctx: BlockContext) -> Tensor:
        return v.reshape(v.shape[0], *ctx.input_shape) if self.flatten else v

    def forward(self, y: Tensor, ctx: BlockContext) -> Tensor:
        return self._shape(self.transpose_layer(self.pre(y, ctx), ctx, self.bias), ctx)

    def difference(self, u: Tensor, u_ref: Tensor, ctx: BlockContext) -> Tensor:
        """``g(y) - g(y_ref)`` from ``u = pre(y)``, ``u_ref = pre(y_ref)``: ``V (u - u_ref)``,
        one linear map of the difference (the bias cancels exactly)."""
        return self.linear_part(u - u_ref, ctx)

    def linear_part(self, du: Tensor, ctx: BlockContext) -> Tensor:
        """``V du`` (no bias), reshaped to the block's input shape."""
        return self._shape(self.transpose_layer(du, ctx, None), ctx)


class LinearFeedback(FeedbackBlock):
    """Feedback of a ``Linear`` block: ``V`` has shape (in, out), ``V = W^T`` is the adjoint."""

    def __init__(self, block: Block, generator: torch.Generator, activation: str = "same") -> None:
        layer = block.layer
        shape = (layer.in_features, layer.out_features)
        super().__init__(block, shape, layer.in_features, generator, activation)

    def transpose_layer(self, u: Tensor, ctx: BlockContext, bias: Tensor | None) -> Tensor:
        return F.linear(u, self.weight, bias)

    def adjoint_of(self, weight: Tensor) -> Tensor:
        """The feedback weight equal to the forward layer's adjoint."""
        return weight.detach().t()


class ConvTransposeFeedback(FeedbackBlock):
    """Feedback of a ``Conv2d`` block: a transposed convolution with the forward weight's shape
    (C_out, C_in, kh, kw), so ``V = W`` makes it the exact adjoint of the convolution."""

    def __init__(self, block: Block, generator: torch.Generator, activation: str = "same") -> None:
        conv = block.layer
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnsupportedModelError(
                f"target propagation inverts Conv2d with groups=1, numeric padding and "
                f"padding_mode='zeros'; got {conv!r}"
            )
        super().__init__(block, tuple(conv.weight.shape), conv.in_channels, generator, activation)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def transpose_layer(self, u: Tensor, ctx: BlockContext, bias: Tensor | None) -> Tensor:
        k = self.weight.shape[-2:]
        out_pad = tuple(
            ctx.input_shape[1 + i]
            - ((u.shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i]
               + self.dilation[i] * (k[i] - 1) + 1)
            for i in range(2)
        )
        return F.conv_transpose2d(
            u, self.weight, bias, self.stride, self.padding, out_pad, 1, self.dilation
        )

    def adjoint_of(self, weight: Tensor) -> Tensor:
        """The feedback weight equal to the forward layer's adjoint."""
        return weight.detach().clone()


FEEDBACK_FOR_LAYER: dict[type[nn.Module], type[FeedbackBlock]] = {
    nn.Linear: LinearFeedback,
    nn.Conv2d: ConvTransposeFeedback,
}


def make_feedback(block: Block, generator: torch.Generator,
                  activation: str = "same") -> FeedbackBlock:
    """The feedback block of ``block`` (dispatch on the layer type); ``activation`` names the
    feedback nonlinearity (a key of :data:`FEEDBACK_ACTIVATIONS`)."""
    for cls, fb in FEEDBACK_FOR_LAYER.items():
        if isinstance(block.layer, cls):
            return fb(block, generator, activation)
    raise UnsupportedModelError(f"target propagation has no feedback for {block.layer!r}")
