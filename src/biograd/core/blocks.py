"""View a model as a stack of blocks: (Flatten?) -> Linear|Conv2d -> activation -> pooling?.

Target-propagation, LRA and energy-based rules (DESIGN.md) see a network as such a stack, as
produced by :func:`biograd.models.mlp`, :func:`biograd.models.lenet` and
:func:`biograd.models.simple_vgg`. Anything else gets a clear :class:`UnsupportedModelError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biograd.core.errors import UnsupportedModelError

#: Elementwise activations a block may end with (its derivative is taken elementwise).
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Tanh, nn.ReLU, nn.ELU, nn.Sigmoid, nn.LeakyReLU, nn.Identity, nn.GELU, nn.Softplus,
    nn.Hardtanh, nn.SiLU,
)
POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool2d, nn.AvgPool2d)
LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


@dataclass
class Block:
    """One block: ``z = pool(act(layer(flatten(x))))``; ``h`` is ``layer``'s output."""

    layer: nn.Linear | nn.Conv2d
    activation: nn.Module
    pool: nn.Module | None = None
    flatten: bool = False

    def pre(self, x: Tensor) -> Tensor:
        """The block's input as ``layer`` sees it (flattened if the block flattens)."""
        return x.flatten(1) if self.flatten else x

    def linear(self, x: Tensor) -> Tensor:
        """Pre-activation ``h = W pre(x) + b``."""
        return self.layer(self.pre(x))

    def post(self, h: Tensor) -> Tensor:
        """From pre-activation to the block's output: activation then pooling."""
        z = self.activation(h)
        return self.pool(z) if self.pool is not None else z

    def __call__(self, x: Tensor) -> Tensor:
        return self.post(self.linear(x))


def _flatten_modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        out: list[nn.Module] = []
        for m in model:
            out.extend(_flatten_modules(m))
        return out
    return [model]


def as_blocks(model: nn.Module, rule: str = "this rule") -> list[Block]:
    """Parse ``model`` (an ``nn.Sequential``, possibly nested) into blocks, or raise.

    The error names the offending module; :func:`biograd.core.registry.create_rule` adds the
    registered rules that accept arbitrary models.
    """
    hint = (
        f"rule {rule!r} needs a stack of blocks: nn.Sequential of (Flatten?) Linear|Conv2d, an "
        f"elementwise activation, optional MaxPool2d/AvgPool2d (see biograd.models.mlp, lenet, "
        f"simple_vgg)."
    )
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError(f"{hint} Got {type(model).__name__}, not nn.Sequential.")
    mods = _flatten_modules(model)
    blocks: list[Block] = []
    flatten = False
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Flatten):
            flatten, i = True, i + 1
            continue
        if not isinstance(m, LAYERS):
            raise UnsupportedModelError(f"{hint} Unexpected module at position {i}: {m!r}.")
        act: nn.Module = nn.Identity()
        pool: nn.Module | None = None
        j = i + 1
        if j < len(mods) and isinstance(mods[j], ACTIVATIONS):
            act, j = mods[j], j + 1
        if j < len(mods) and isinstance(mods[j], POOLS):
            pool, j = mods[j], j + 1
        blocks.append(Block(m, act, pool, flatten))
        flatten, i = False, j
    if not blocks:
        raise UnsupportedModelError(f"{hint} The model has no Linear or Conv2d layer.")
    if flatten:
        raise UnsupportedModelError(f"{hint} The model ends with a Flatten.")
    return blocks


def activation_derivative(act: nn.Module, h: Tensor) -> Tensor:
    """f'(h) for an elementwise activation, by autograd (exact for every activation above)."""
    if isinstance(act, nn.Identity):
        return torch.ones_like(h)
    hd = h.detach().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(act(hd).sum(), hd)
    return d


@dataclass
class Trace:
    """Activities of a feed-forward sweep: inputs ``x[l]`` and pre-activations ``h[l]``."""

    inputs: list[Tensor]
    pre: list[Tensor]
    outputs: list[Tensor]


def forward_trace(blocks: list[Block], x: Tensor) -> Trace:
    """Run the stack recording each block's input, pre-activation and output."""
    inputs, pre, outputs = [], [], []
    for b in blocks:
        inputs.append(x)
        h = b.linear(x)
        x = b.post(h)
        pre.append(h)
        outputs.append(x)
    return Trace(inputs, pre, outputs)
