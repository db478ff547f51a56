"""LRA-E (P1): targets, errors and updates against a two-layer example computed here from the
paper's equations with plain tensor ops, and the error weights' update rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import biograd
from biograd.metrics import feedback_alignment_angles


def _net(seed=0, hidden=(5,)):
    torch.manual_seed(seed)
    model = biograd.models.mlp(4, list(hidden), 3, activation="tanh").double()
    g = torch.Generator().manual_seed(seed + 11)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    return model, x, y


def test_two_layer_example_matches_hand_computation() -> None:
    model, x, y = _net()
    rule = biograd.create_rule("lra_e", model, beta=0.3, gamma=0.5)
    rule.zero_grad(set_to_none=True)
    w1, b1, w2, b2 = model[1].weight, model[1].bias, model[3].weight, model[3].bias
    (e2_w,) = rule.error_weights  # E_2: n_1 x n_2 = 5 x 3
    assert e2_w.shape == (5, 3)
    with torch.no_grad():
        h1 = x @ w1.T + b1
        z1 = torch.tanh(h1)
        h2 = z1 @ w2.T + b2
        z2 = torch.exp(h2) / torch.exp(h2).sum(1, keepdim=True)  # softmax output
        onehot = torch.zeros(6, 3, dtype=torch.float64)
        onehot[torch.arange(6), y] = 1.0
        e2 = z2 - onehot  # e_L = z_L - y
        d1 = e2 @ e2_w.T  # d_1 = E_2 e_2, per sample
        y1 = torch.tanh(h1 - 0.3 * d1)  # target
        e1 = z1 - y1
        dw2, db2 = e2.T @ z1 / 6, e2.mean(0)  # dW_l = e_l z_{l-1}^T, batch mean
        dw1, db1 = e1.T @ x / 6, e1.mean(0)
    errors, targets, _, _ = rule.targets(x, y)
    torch.testing.assert_close(targets[0], y1)
    torch.testing.assert_close(errors[0], e1)
    torch.testing.assert_close(errors[1], e2)
    result = rule.step(x, y)
    torch.testing.assert_close(w2.grad, dw2)
    torch.testing.assert_close(b2.grad, db2)
    torch.testing.assert_close(w1.grad, dw1)
    torch.testing.assert_close(b1.grad, db1)
    torch.testing.assert_close(e2_w.grad, 0.5 * dw2.T)  # dE = gamma dW^T
    assert result.metrics["error_norm_0"] == pytest.approx(float(e1.norm(dim=1).mean()))
    ce = -torch.log(z2[torch.arange(6), y]).mean()
    assert result.loss == pytest.approx(float(ce))


def test_error_weights_follow_the_paper_rule_under_sgd() -> None:
    """One SGD step: W <- W - lr dW and E <- E - lr gamma dW^T (P1; authors' code), so
    E - gamma W^T is unchanged by the step."""
    model, x, y = _net(hidden=(5, 4))
    rule = biograd.create_rule("lra_e", model, gamma=1.0)
    opt = torch.optim.SGD(rule.parameters(), lr=0.1)
    before = [(e.detach().clone(), b.layer.weight.detach().clone())
              for e, b in zip(rule.error_weights, rule.blocks[1:], strict=True)]
    opt.zero_grad(set_to_none=True)
    rule.step(x, y)
    grads = [b.layer.weight.grad.clone() for b in rule.blocks[1:]]
    opt.step()
    for (e0, w0), e, b, g in zip(before, rule.error_weights, rule.blocks[1:], grads, strict=True):
        torch.testing.assert_close(e.detach(), e0 - 0.1 * g.T)
        torch.testing.assert_close(e.detach() - b.layer.weight.detach().T, e0 - w0.T)


def test_small_beta_hidden_update_points_along_e_times_error() -> None:
    """As beta -> 0, e_{l-1} = z - f(h - beta d) ~ beta f'(h) * d: with E = W^T this is beta
    times backprop's dl/dh_{l-1}, so dW_1 / beta tends to backprop's gradient."""
    model, x, y = _net()
    rule = biograd.create_rule("lra_e", model, beta=1e-6)
    with torch.no_grad():
        rule.error_weights[0].copy_(model[3].weight.T)
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)
    model2 = biograd.models.mlp(4, [5], 3, activation="tanh").double()
    model2.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(model2(x), y).backward()
    torch.testing.assert_close(model[1].weight.grad / 1e-6, model2[1].weight.grad, rtol=1e-4,
                               atol=1e-8)
    torch.testing.assert_close(model[3].weight.grad, model2[3].weight.grad)


def test_init_model_option_and_default_leaves_the_model_alone() -> None:
    model, _, _ = _net()
    w = model[1].weight.detach().clone()
    biograd.create_rule("lra_e", model)
    assert torch.equal(model[1].weight, w)
    rule = biograd.create_rule("lra_e", model, init_model=True, init_std=0.05)
    assert not torch.equal(model[1].weight, w)
    assert float(model[1].bias.detach().abs().max()) == 0.0
    assert 0.02 < float(model[1].weight.detach().std()) < 0.09
    assert set(feedback_alignment_angles(rule)) == {"layer1"}


@pytest.mark.parametrize("std", [0.05, 0.3])
def test_error_weights_are_drawn_with_the_given_std(std) -> None:
    """E_l ~ N(0, init_std^2) (P1: 0.05): 50 x 40 = 2000 draws give a sample std within a few
    percent of init_std (relative standard error 1/sqrt(2 n) = 1.6%)."""
    torch.manual_seed(0)
    model = biograd.models.mlp(4, [50], 40, activation="tanh")
    (e,) = biograd.create_rule("lra_e", model, init_std=std).error_weights
    assert e.shape == (50, 40)
    assert abs(float(e.detach().std()) / std - 1) < 0.08
    assert abs(float(e.detach().mean())) < 4 * std / 2000**0.5


@pytest.mark.parametrize(
    "hp,match",
    [
        ({"beta": 0}, "beta must be > 0"),
        ({"gamma": -1.0}, "gamma must be >= 0"),
        ({"init_std": 0.0}, "init_std must be > 0"),
        ({"init_model": "yes"}, "init_model must be True or False"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(hp, match) -> None:
    model, _, _ = _net()
    with pytest.raises(biograd.ConfigError, match=match):
        biograd.create_rule("lra_e", model, **hp)


def test_cnn_is_rejected_and_bad_labels_are_input_errors() -> None:
    cnn = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6)
    with pytest.raises(biograd.UnsupportedModelError, match="MLPs only"):
        biograd.create_rule("lra_e", cnn)
    model, x, y = _net()
    with pytest.raises(biograd.InputError, match="labels must lie in"):
        biograd.create_rule("lra_e", model).step(x, y + 3)


@pytest.mark.slow
def test_mnist_lra_e_trains_close_to_backprop() -> None:
    from tests.test_activation_relaxation import _mnist_accuracy

    accs = {}
    for name in ("backprop", "lra_e"):
        torch.manual_seed(0)
        model = biograd.models.mlp(784, [256, 256, 256], 10, activation="tanh")
        accs[name] = _mnist_accuracy(name, model, "cross_entropy",
                                     lambda p: torch.optim.Adam(p, lr=1e-3), 20000, 50)
    assert accs["lra_e"] > accs["backprop"] - 3.0, accs
