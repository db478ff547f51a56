"""Feedback blocks of target propagation (biograd.ops.inverse): shapes and adjointness.

Oracles: autograd's vector-Jacobian product of the forward block (J_f^T v) and Jacobian-vector
products of the feedback block (J_g v); the derivative identity phi'(f(h)) = f'(h) of matched
feedback activations.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import biograd
from biograd.core.blocks import as_blocks
from biograd.ops.inverse import block_forward, make_feedback
from biograd.ops.tp_activations import MATCHED

GEN = torch.Generator().manual_seed(0)


def _adjoint(block, fb) -> None:
    with torch.no_grad():
        fb.weight.copy_(fb.adjoint_of(block.layer.weight))
        fb.bias.zero_()


@pytest.mark.parametrize(
    "model,x",
    [
        (biograd.models.lenet(1, 10, 28, channels=(4, 6), hidden=12), torch.randn(3, 1, 28, 28)),
        (biograd.models.simple_vgg(3, 10, 32, width=1 / 32), torch.randn(2, 3, 32, 32)),
        (biograd.models.mlp(20, [7, 5], 3), torch.randn(4, 20)),
    ],
)
def test_feedback_round_trips_every_block_shape(model: nn.Module, x: torch.Tensor) -> None:
    z = x
    for block in as_blocks(model):
        fb = make_feedback(block, GEN)
        y, ctx = block_forward(block, z)
        torch.testing.assert_close(y, block(z))  # the recording forward is the block itself
        assert fb(y, ctx).shape == z.shape
        z = y


def _block_pair(kind: str, act: nn.Module) -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "conv_maxpool":
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act, nn.MaxPool2d(2)), torch.randn(
            2, 3, 6, 6)
    if kind == "conv_stride":
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), act), torch.randn(2, 3, 7, 7)
    if kind == "conv_avgpool":
        return nn.Sequential(nn.Conv2d(2, 3, 5, padding=2), act, nn.AvgPool2d(2)), torch.randn(
            2, 2, 8, 8)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), act), torch.randn(3, 3, 2, 2)


@pytest.mark.parametrize("kind", ["conv_maxpool", "conv_stride", "linear_flatten"])
@pytest.mark.parametrize("act", [nn.Identity, nn.Tanh, nn.ELU, nn.Sigmoid, nn.ReLU])
def test_adjoint_feedback_with_matched_activation_is_the_transposed_jacobian(kind, act) -> None:
    """With V = adjoint(W), c = 0 and phi'(f(h)) = f'(h): J_g(y) v == J_f(x)^T v exactly."""
    model, x = _block_pair(kind, act())
    (block,) = as_blocks(model)
    fb = make_feedback(block, GEN, activation="matched")
    _adjoint(block, fb)
    y, ctx = block_forward(block, x)
    v = torch.randn_like(y)
    _, vjp = torch.func.vjp(lambda t: block_forward(block, t)[0], x)
    _, jvp = torch.func.jvp(lambda t: fb(t, ctx), (y.detach(),), (v,))
    torch.testing.assert_close(jvp, vjp(v)[0], rtol=1e-5, atol=1e-5)


def test_linear_adjoint_feedback_equals_vjp_including_unpooling() -> None:
    """Identity activation: g(v) - g(0) = J_f^T v (max-unpooling with the forward indices is the
    adjoint of max-pooling)."""
    model, x = _block_pair("conv_maxpool", nn.Identity())
    (block,) = as_blocks(model)
    fb = make_feedback(block, GEN)
    _adjoint(block, fb)
    y, ctx = block_forward(block, x)
    v = torch.randn_like(y)
    _, vjp = torch.func.vjp(lambda t: block_forward(block, t)[0], x)
    torch.testing.assert_close(fb(v, ctx), vjp(v)[0], rtol=1e-5, atol=1e-5)


def test_avgpool_feedback_upsamples_to_the_input_shape() -> None:
    model, x = _block_pair("conv_avgpool", nn.ELU())
    (block,) = as_blocks(model)
    fb = make_feedback(block, GEN)
    y, ctx = block_forward(block, x)
    assert ctx.indices is None and fb(y, ctx).shape == x.shape


@pytest.mark.parametrize("act_cls", list(MATCHED))
def test_matched_activation_derivative_equals_forward_derivative(act_cls) -> None:
    act = act_cls()
    phi = MATCHED[act_cls](act)
    h = torch.linspace(-3, 3, 61, dtype=torch.float64)
    h = h[h.abs() > 1e-6]  # skip the kink at 0
    hd = h.clone().requires_grad_(True)
    (fprime,) = torch.autograd.grad(act(hd).sum(), hd)
    y = act(h).detach().requires_grad_(True)
    (phiprime,) = torch.autograd.grad(phi(y).sum(), y)
    torch.testing.assert_close(phiprime, fprime)


def test_unsupported_layers_are_clear_errors() -> None:
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU())
    with pytest.raises(biograd.UnsupportedModelError, match="groups=1"):
        make_feedback(as_blocks(grouped)[0], GEN)
    dilated = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, dilation=2))
    with pytest.raises(biograd.UnsupportedModelError, match="dilation=1"):
        make_feedback(as_blocks(dilated)[0], GEN)
