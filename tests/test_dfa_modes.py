"""Direct feedback alignment's two readings of skip connections (``skips="pure"``, the default,
and ``"propagate"``), each checked against Nokland's formula computed by hand:
delta_l = (B e_L) * (local derivative), dW_l = delta_l^T z_{l-1}."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biograd
from biograd.core.errors import ConfigError

DFA = "direct_feedback_alignment"
N = 6


def _error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """e_L = dloss/dout for the mean cross-entropy."""
    return (torch.softmax(out, 1) - F.one_hot(y, out.shape[1])) / out.shape[0]


def _b(rule: biograd.LearningRule, key: str) -> torch.Tensor:
    return rule.feedback.get(key).double()


def _second_step(rule: biograd.LearningRule, x: torch.Tensor, y: torch.Tensor) -> None:
    """Two steps, the gradients of the second kept (no optimizer: the weights do not move).
    The first step inspects the graph and finds the inputs that need no cut; the second uses
    that."""
    rule.step(x, y)
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)


@pytest.mark.parametrize("skips", ["pure", "propagate"])
def test_mlp_hidden_updates_are_nokland_formula_in_both_modes(skips: str) -> None:
    """On a chain both modes are Nokland's DFA: dW_l = ((B e) * f'(h_l))^T z_{l-1}."""
    torch.manual_seed(0)
    model = biograd.models.mlp(5, [4, 3], 2, activation="tanh").double()
    x, y = torch.randn(N, 5, dtype=torch.float64), torch.randint(0, 2, (N,))
    rule = biograd.create_rule(DFA, model, skips=skips)
    _second_step(rule, x, y)
    fc1, fc2, fc3 = model[1], model[3], model[5]
    with torch.no_grad():
        z1 = torch.tanh(fc1(x))
        z2 = torch.tanh(fc2(z1))
        e = _error(fc3(z2), y)
    d2 = (e @ _b(rule, "5").T) * (1 - z2**2)
    d1 = (e @ _b(rule, "3").T) * (1 - z1**2)
    torch.testing.assert_close(fc3.weight.grad, e.T @ z2)
    torch.testing.assert_close(fc2.weight.grad, d2.T @ z1)
    torch.testing.assert_close(fc2.bias.grad, d2.sum(0))
    torch.testing.assert_close(fc1.weight.grad, d1.T @ x)
    torch.testing.assert_close(fc1.bias.grad, d1.sum(0))


class SkipNet(nn.Module):
    """a = tanh(fc0 x); z1 = tanh(fc1 a); o = tanh(fc2 z1 + a) (identity skip from a); fc3 o."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc1 = nn.Linear(5, 4), nn.Linear(4, 4)
        self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.fc0(x))
        z1 = torch.tanh(self.fc1(a))
        return self.fc3(torch.tanh(self.fc2(z1) + a))


def test_identity_skip_pure_and_propagate_match_their_hand_formulas_and_differ() -> None:
    """Pure: a (fc1's input, a cut point) gets B1 e only, so fc0's delta is (B1 e) * f'(h0).
    Propagate: a also gets, through the identity skip, fc2's delta (B3 e) * f'(s)."""
    grads = {}
    for skips in ("pure", "propagate"):
        torch.manual_seed(0)
        model = SkipNet().double()
        x = torch.randn(N, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        y = torch.tensor([0, 1, 2, 0, 1, 2])
        rule = biograd.create_rule(DFA, model, skips=skips)
        rule.generator.manual_seed(3)  # the same B in both modes
        _second_step(rule, x, y)
        if skips == "pure":  # a is read by fc1 and by the skip: the one cut kept
            assert rule._signal.uncut_keys == {"fc0", "fc2", "fc3"}
        with torch.no_grad():
            a = torch.tanh(model.fc0(x))
            z1 = torch.tanh(model.fc1(a))
            o = torch.tanh(model.fc2(z1) + a)
            e = _error(model.fc3(o), y)
        d2 = (e @ _b(rule, "fc3").T) * (1 - o**2)
        d1 = (e @ _b(rule, "fc2").T) * (1 - z1**2)
        g_a = e @ _b(rule, "fc1").T
        if skips == "propagate":
            g_a = g_a + d2  # what the identity skip carries back from the add
        d0 = g_a * (1 - a**2)
        torch.testing.assert_close(model.fc3.weight.grad, e.T @ o)
        torch.testing.assert_close(model.fc2.weight.grad, d2.T @ z1)
        torch.testing.assert_close(model.fc1.weight.grad, d1.T @ a)
        torch.testing.assert_close(model.fc0.weight.grad, d0.T @ x)
        torch.testing.assert_close(model.fc0.bias.grad, d0.sum(0))
        grads[skips] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n in ("fc1.weight", "fc2.weight", "fc3.weight"):
        torch.testing.assert_close(grads["pure"][n], grads["propagate"][n])
    assert not torch.allclose(grads["pure"]["fc0.weight"], grads["propagate"]["fc0.weight"])


def test_local_derivative_includes_batchnorm_and_relu() -> None:
    """Linear -> BatchNorm1d -> ReLU -> Linear: fc0's delta is the vjp of relu(bn(.)) (batch
    statistics) at h0 applied to B e, and BN's parameters get their own local gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    ref_bn = nn.BatchNorm1d(6).double()
    ref_bn.load_state_dict(model[1].state_dict())
    x, y = torch.randn(N, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    rule = biograd.create_rule(DFA, model)
    _second_step(rule, x, y)
    h0 = model[0](x).detach().requires_grad_()
    z = torch.relu(ref_bn(h0))
    e = _error(model[3](z).detach(), y)
    g = e @ _b(rule, "3").T
    d0, g_gamma, g_beta = torch.autograd.grad(z, (h0, ref_bn.weight, ref_bn.bias), g)
    torch.testing.assert_close(model[0].weight.grad, d0.T @ x)
    torch.testing.assert_close(model[1].weight.grad, g_gamma)
    torch.testing.assert_close(model[1].bias.grad, g_beta)


@pytest.mark.parametrize("skips", ["pure", "propagate"])
def test_conv_with_explicit_padding_gets_b_e_at_its_own_input(skips: str) -> None:
    """Reflect padding is applied to the input before the op: B e belongs to the layer's input
    (before padding). conv0's delta: the vjp of maxpool(tanh(.)) at h0 applied to B e."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.Tanh(), nn.Flatten(),
        nn.Linear(18, 3),
    ).double()
    x, y = torch.randn(N, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    rule = biograd.create_rule(DFA, model, skips=skips)
    _second_step(rule, x, y)
    conv0, conv3, fc = model[0], model[3], model[6]
    h0 = conv0(x).detach().requires_grad_()
    p = F.max_pool2d(torch.tanh(h0), 2)
    h3 = conv3(p.detach())
    e = _error(fc(torch.tanh(h3).flatten(1)).detach(), y)
    d3 = (e @ _b(rule, "6").T).reshape(h3.shape) * (1 - torch.tanh(h3.detach()) ** 2)
    (gw3,) = torch.autograd.grad(h3, conv3.weight, d3)
    (d0,) = torch.autograd.grad(p, h0, (e @ _b(rule, "3").T).reshape(p.shape))
    (gw0,) = torch.autograd.grad(conv0(x), conv0.weight, d0)
    torch.testing.assert_close(conv3.weight.grad, gw3)
    torch.testing.assert_close(conv0.weight.grad, gw0)
    assert not rule._signal._points  # the step's layer inputs are released after it


def test_resnet_identity_skip_changes_only_the_layers_before_it() -> None:
    """ResNet((1, 1)): stem -> block 0 (identity skip) -> block 1 (projection skip, a converted
    conv) -> pool -> fc. Only the stem's output is read by a skip that is no converted layer,
    so the modes differ for the stem alone."""
    grads = {}
    for skips in ("pure", "propagate"):
        torch.manual_seed(0)
        model = biograd.models.ResNet((1, 1), in_channels=3, num_classes=4, width=4).double()
        x = torch.randn(N, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        rule = biograd.create_rule(DFA, model, skips=skips)
        rule.generator.manual_seed(3)
        _second_step(rule, x, torch.tensor([0, 1, 2, 3, 0, 1]))
        grads[skips] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n, g in grads["pure"].items():
        if n.startswith("stem."):
            assert not torch.allclose(g, grads["propagate"][n]), n
        else:
            torch.testing.assert_close(g, grads["propagate"][n], msg=n)


class PreNorm(nn.Module):
    """A residual stream that reaches converted layers only through a LayerNorm (pre-norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(5, 4), nn.Linear(4, 3)
        self.n1, self.fc1 = nn.LayerNorm(4), nn.Linear(4, 4)
        self.n2, self.fc2 = nn.LayerNorm(4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.fc1(torch.tanh(self.n1(h)))
        h = h + self.fc2(torch.tanh(self.n2(h)))
        return self.out(h)


@pytest.mark.parametrize("kind", ["prenorm", "lstm"])
def test_pure_refuses_a_stream_its_cuts_cannot_separate(kind: str) -> None:
    if kind == "prenorm":
        model, x = PreNorm(), torch.randn(N, 5)
    else:
        model, x = biograd.models.lstm_classifier(5, 4, 3, seq_len=3), torch.randn(N, 3, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(biograd.UnsupportedModelError, match="skips='propagate'"):
        biograd.create_rule(DFA, model).step(x, y)
    biograd.create_rule(DFA, model, skips="propagate").step(x, y)


def test_skips_must_be_a_known_choice() -> None:
    with pytest.raises(ConfigError, match="skips must be one of 'pure', 'propagate'"):
        biograd.create_rule(DFA, biograd.models.mlp(4, [3], 2), skips="backprop")
    assert biograd.rule_info(DFA).hparams["skips"] == "pure"
