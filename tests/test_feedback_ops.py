"""biograd.ops feedback machinery: every expectation comes from autograd or a closed form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biograd
from biograd.metrics.alignment import angle
from biograd.ops.convert import check_allow_backprop, feedback_layers, swapped_forwards
from biograd.ops.feedback import FeedbackHandler, handler_for, register_feedback_handler


def _grads(fn, *tensors):
    """Autograd grads of sum(fn(...) * R) for a fixed random R."""
    out = fn(*tensors)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return torch.autograd.grad((out * r).sum(), tensors)


def test_linear_with_transposed_weight_is_backprop_on_3d_input() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    x = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)
    h = handler_for(layer)
    params = (x, layer.weight, layer.bias)
    fa = _grads(lambda *_: h.forward(layer, x, layer.weight.t().detach()), *params)
    bp = _grads(lambda *_: layer(x), *params)
    for a, b in zip(fa, bp, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape", [(4, 5), (4, 2, 5)])
def test_bound_linear_forward_with_transposed_weight_is_backprop(shape: tuple[int, ...]) -> None:
    """The per-step closure (LinearHandler.bind: the C++ apply fast path for 2-D inputs, the
    generic Function otherwise) with B = W^T reproduces autograd's gradients."""
    torch.manual_seed(1)
    layer = nn.Linear(5, 3).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    fwd = handler_for(layer).bind(layer, layer.weight.t().detach())
    params = (x, layer.weight, layer.bias)
    fa = _grads(lambda *_: fwd(x), *params)
    bp = _grads(lambda *_: layer(x), *params)
    for a, b in zip(fa, bp, strict=True):
        torch.testing.assert_close(a, b)


CONVS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(2, 0)),
    dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, padding=2, groups=2),
    dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, groups=4, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", dilation=2),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=3, padding=1),  # uneven cover
]


@pytest.mark.parametrize("cfg", CONVS, ids=range(len(CONVS)))
def test_conv_with_its_own_kernel_is_backprop(cfg: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**cfg).double()
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    h = handler_for(conv)
    params = tuple(p for p in (x, conv.weight, conv.bias) if p is not None)
    fa = _grads(lambda *_: h.forward(conv, x, conv.weight.detach()), *params)
    bp = _grads(lambda *_: conv(x), *params)
    for a, b in zip(fa, bp, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cfg", CONVS[:5], ids=range(5))
def test_conv_input_grad_is_transposed_conv_with_feedback_kernel(cfg: dict) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(**cfg).double()
    b = torch.randn_like(conv.weight)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    out = handler_for(conv).forward(conv, x, b)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, conv.weight), g)
    expected_gx = torch.nn.grad.conv2d_input(
        x.shape, b, g, conv.stride, conv.padding, conv.dilation, conv.groups
    )
    expected_gw = torch.nn.grad.conv2d_weight(
        x.detach(), conv.weight.shape, g, conv.stride, conv.padding, conv.dilation, conv.groups
    )
    torch.testing.assert_close(gx, expected_gx)
    torch.testing.assert_close(gw, expected_gw)


def test_trainable_feedback_gets_the_transposed_weight_grad_exactly() -> None:
    """... when the input needs a gradient (B carries error); otherwise B gets none."""
    torch.manual_seed(2)
    layer = nn.Linear(5, 3)
    b = nn.Parameter(torch.randn(5, 3))
    x = torch.randn(4, 5)
    handler_for(layer).forward(layer, x.requires_grad_(), b).pow(2).sum().backward()
    assert torch.equal(b.grad, layer.weight.grad.t())
    conv = nn.Conv2d(2, 3, 3)
    k = nn.Parameter(torch.randn_like(conv.weight))
    xc = torch.randn(2, 2, 6, 6, requires_grad=True)
    handler_for(conv).forward(conv, xc, k).pow(2).sum().backward()
    assert torch.equal(k.grad, conv.weight.grad)
    for mod, fb, inp in ((layer, b, x), (conv, k, xc)):
        mod.zero_grad(set_to_none=True)
        fb.grad = None
        handler_for(mod).forward(mod, inp.detach(), fb).pow(2).sum().backward()
        assert fb.grad is None and mod.weight.grad is not None


@pytest.mark.parametrize(
    "layer", [nn.Linear(20, 7), nn.Conv2d(3, 5, 3, stride=2, dilation=2, groups=1)]
)
def test_mirror_correlation_estimates_sigma2_times_w_transpose(layer: nn.Module) -> None:
    h = handler_for(layer)
    g = torch.Generator().manual_seed(0)
    corr = sum(h.mirror_correlation(layer, 500, 0.5, g) for _ in range(20)) / 20
    target = 0.25 * h.transposed_weight(layer).detach()
    assert corr.shape == target.shape
    assert angle(corr, target) < 5.0
    assert abs(float(corr.norm() / target.norm()) - 1.0) < 0.05


def test_default_feedback_init_has_the_default_weight_bound() -> None:
    layer = nn.Linear(64, 10)
    b = handler_for(layer).init_feedback(layer, torch.Generator().manual_seed(0))
    assert b.shape == (64, 10)
    assert float(b.abs().max()) <= 1 / 8 and float(b.abs().max()) > 0.9 / 8


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def test_unsupported_layer_error_names_path_type_rule_and_fixes() -> None:
    model = nn.Sequential(nn.Linear(3, 4), Scale(), nn.Linear(4, 2))
    with pytest.raises(biograd.UnsupportedModelError) as err:
        feedback_layers(model, "feedback_alignment")
    msg = str(err.value)
    for part in ("'1'", "Scale", "feedback_alignment", "register_feedback_handler(Scale",
                 "allow_backprop=(Scale,)", "allow_backprop=('1',)"):
        assert part in msg


def test_model_level_parameters_and_embedding_are_unsupported() -> None:
    class WithParam(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.bias = nn.Parameter(torch.zeros(2))

    with pytest.raises(biograd.UnsupportedModelError, match="the model itself"):
        feedback_layers(WithParam(), "kolen_pollack")
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2))
    with pytest.raises(biograd.UnsupportedModelError, match="'0' of type Embedding"):
        feedback_layers(model, "weight_mirror")
    with pytest.raises(biograd.UnsupportedModelError, match="no layer with a feedback handler"):
        feedback_layers(nn.Sequential(nn.Tanh()), "feedback_alignment")


def test_allow_backprop_by_type_or_path_and_norms_are_local() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), Scale(), nn.BatchNorm1d(4))
    by_type = feedback_layers(model, "fa", check_allow_backprop("fa", model, (Scale,)))
    by_path = feedback_layers(model, "fa", check_allow_backprop("fa", model, ("2",)))
    assert [layer.path for layer in by_type] == [layer.path for layer in by_path] == ["0"]


def test_allow_backprop_covering_every_layer_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(biograd.UnsupportedModelError):
        feedback_layers(model, "fa", ("0",))


@pytest.mark.parametrize("bad", [3, ("nope",), (int,), [1.5]])
def test_bad_allow_backprop_is_a_config_error(bad: object) -> None:
    model = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(biograd.ConfigError, match="allow_backprop"):
        check_allow_backprop("fa", model, bad)


def test_register_feedback_handler_validates_and_dispatches_on_subclasses() -> None:
    with pytest.raises(TypeError):
        register_feedback_handler(int, handler_for(nn.Linear(1, 1)))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        register_feedback_handler(nn.Linear, object())  # type: ignore[arg-type]

    class MyLinear(nn.Linear):
        pass

    assert isinstance(handler_for(MyLinear(2, 2)), FeedbackHandler)
    assert handler_for(nn.Tanh()) is None


def test_swapped_forwards_restore_the_module_even_on_error() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    layers = feedback_layers(model, "fa")

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), swapped_forwards(layers, [boom]):
        model(torch.randn(1, 3))
    assert "forward" not in model[0].__dict__
    x = torch.randn(2, 3)
    torch.testing.assert_close(model(x), F.linear(x, model[0].weight, model[0].bias))


@pytest.mark.parametrize("std", [1.0, 0.3])
def test_fused_linear_mirror_update_equals_the_plain_formula(std: float) -> None:
    layer = nn.Linear(12, 5).double()
    h = handler_for(layer)
    b0 = torch.randn(12, 5, dtype=torch.float64)
    fused, plain = b0.clone(), b0.clone()
    h.mirror_update(layer, fused, 7, std, 0.1, 0.5, torch.Generator().manual_seed(3))
    corr = h.mirror_correlation(layer, 7, std, torch.Generator().manual_seed(3))
    FeedbackHandler.mirror_update(h, layer, plain, 7, std, 0.1, 0.5,
                                  torch.Generator().manual_seed(3))
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused, (1 - 0.1 * 0.5) * b0 + 0.1 * corr)


@pytest.mark.parametrize(
    "layer",
    [nn.Linear(9, 4), nn.Conv2d(4, 6, 3, stride=2, dilation=2, groups=2), nn.Conv2d(2, 3, (3, 2))],
)
def test_mirror_update_from_given_noise_is_the_mirror_formula(layer: nn.Module) -> None:
    """B <- beta B + alpha sum_k x_k y_k^T with y = W x: for a Linear the closed form
    x^T (x W^T); for a conv the correlation over samples and output pixels, which autograd
    gives as the weight gradient of 1/2 ||conv(x, W)||^2 (divided by the pixel count)."""
    layer = layer.double()
    h = handler_for(layer)
    feats = h.mirror_noise_features(layer)
    x = torch.randn(5, feats, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b0 = torch.randn(h.transposed_weight(layer).shape, dtype=torch.float64)
    b = b0.clone()
    h.mirror_update_from(layer, b, x, 0.3, 0.9)
    if isinstance(layer, nn.Linear):
        expected = 0.9 * b0 + 0.3 * x.T @ (x @ layer.weight.detach().T)
    else:
        xs = x.view(5, layer.in_channels, *h._noise_shape(layer)[1:])
        w = layer.weight.detach().clone().requires_grad_(True)
        y = F.conv2d(xs, w, None, layer.stride, 0, layer.dilation, layer.groups)
        (gw,) = torch.autograd.grad(0.5 * (y * y).sum(), w)
        expected = 0.9 * b0 + 0.3 * gw / (y.shape[2] * y.shape[3])
        assert y.shape[2:] == (h.MIRROR_POSITIONS, h.MIRROR_POSITIONS)
    torch.testing.assert_close(b, expected)


def test_handler_without_shared_noise_support_says_so() -> None:
    class Plain(FeedbackHandler):
        op = transposed_weight = fan_in = mirror_correlation = None  # type: ignore[assignment]

    h = Plain.__new__(Plain)
    assert FeedbackHandler.mirror_noise_features(h, nn.Linear(2, 2)) is None
    with pytest.raises(NotImplementedError, match="draws its own"):
        FeedbackHandler.mirror_update_from(h, nn.Linear(2, 2), torch.zeros(2, 2),
                                           torch.zeros(1, 2), 1.0, 1.0)


@pytest.mark.parametrize("shape", [(4, 5), (4, 2, 5)])
def test_scale_multiplies_only_the_input_gradient(shape: tuple[int, ...]) -> None:
    torch.manual_seed(4)
    layer = nn.Linear(5, 3).double()
    b = torch.randn(5, 3, dtype=torch.float64)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    out = handler_for(layer).forward(layer, x, b, None, 0.25)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, layer.weight), g)
    torch.testing.assert_close(gx, 0.25 * g @ b.T)
    torch.testing.assert_close(gw, g.reshape(-1, 3).T @ x.detach().reshape(-1, 5))
