"""Kolen-Pollack's defaults are P3's algorithm: weight decay lambda on W and B, applied by the rule.

P3 (Akrout et al. 2019, section 4): dW = -eta delta z^T - lambda W, dB = -eta z delta^T - lambda B,
so with any plain optimizer of rate eta, W - B^T = (1 - eta lambda)^t (W_0 - B_0^T) exactly.
"""

from __future__ import annotations

import pytest
import torch

import biograd
from biograd.metrics.alignment import feedback_alignment_angles
from biograd.rules.kolen_pollack import P3_WEIGHT_DECAY
from biograd.runner.config import load_config
from biograd.runner.train import make_optimizer, rule_args_of
from tests.conftest import make_model


def _distance(rule: biograd.LearningRule) -> torch.Tensor:
    """sqrt(sum_l ||W_l - B_l^T||^2) over the layers whose B is trained (all but the data layer)."""
    total = torch.zeros((), dtype=torch.float64)
    for layer in rule.layers[1:]:
        b = rule.feedback.get(layer.key).detach()
        wt = layer.handler.transposed_weight(layer.module).detach()
        total = total + (wt - b).double().pow(2).sum()
    return total.sqrt()


def _train(rule: biograd.LearningRule, opt: torch.optim.Optimizer, x: torch.Tensor,
           y: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        rule.step(x, y)
        opt.step()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_default_rule_with_a_plain_optimizer_decays_w_minus_bt_at_p3s_rate(kind: str) -> None:
    model, x, y = make_model(kind)
    model.double()
    rule = biograd.create_rule("kolen_pollack", model)
    assert rule.weight_decay == P3_WEIGHT_DECAY == 1e-4
    lr, steps = 0.5, 4
    opt = torch.optim.SGD(rule.parameters(), lr=lr)  # no optimizer decay at all
    d0 = _distance(rule)
    _train(rule, opt, x.double(), y, steps)
    torch.testing.assert_close(_distance(rule), d0 * (1 - lr * 1e-4) ** steps, rtol=1e-12, atol=0)


def test_param_groups_keep_an_optimizer_decay_from_counting_twice() -> None:
    """``SGD(rule.param_groups(), weight_decay=wd)``: W and B decay at the rule's lambda only,
    the biases (not decayed by the rule) at the optimizer's wd."""
    model, x, y = make_model("mlp")
    model.double()
    rule = biograd.create_rule("kolen_pollack", model, weight_decay=0.01)
    lr, wd = 0.5, 0.2
    opt = torch.optim.SGD(rule.param_groups(), lr=lr, weight_decay=wd)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["forward", "forward/rule_decay", "feedback/rule_decay"]
    d0 = _distance(rule)
    bias = model[-1].bias
    opt.zero_grad()
    rule.step(x.double(), y)
    expected_bias = bias.detach() - lr * (bias.grad + wd * bias.detach())
    opt.step()
    torch.testing.assert_close(_distance(rule), d0 * (1 - lr * 0.01), rtol=1e-12, atol=0)
    torch.testing.assert_close(bias.detach(), expected_bias, rtol=1e-12, atol=1e-14)


def test_default_rule_brings_b_towards_w_transpose_within_a_few_hundred_steps() -> None:
    """The issue's acceptance: create_rule defaults + plain SGD on an MLP. The top feedback
    layer's angle falls from ~90 deg (independent random init) well below it in 300 steps."""
    torch.manual_seed(0)
    data = biograd.data.synthetic(n=256, input_shape=(32,), num_classes=4, seed=3)
    x, y = data.tensors
    model = biograd.models.mlp(32, [32, 32], 4, activation="tanh")
    rule = biograd.create_rule("kolen_pollack", model)
    opt = torch.optim.SGD(rule.parameters(), lr=0.1)
    _train(rule, opt, x[:64], y[:64], 1)
    start = feedback_alignment_angles(rule)
    _train(rule, opt, x[:64], y[:64], 299)
    end = feedback_alignment_angles(rule)
    top = list(start)[-1]
    assert start[top] > 75, start
    assert end[top] < start[top] - 30, (start, end)
    assert all(end[k] < start[k] for k in start), (start, end)


def test_zero_decay_must_be_asked_for_and_warns() -> None:
    model, _, _ = make_model("mlp")
    with pytest.warns(UserWarning, match="feedback alignment whose B gets W's transposed"):
        rule = biograd.create_rule("kolen_pollack", model, weight_decay=0.0)
    assert rule.rule_decayed_parameters() == []
    assert [g["name"] for g in rule.param_groups()] == ["forward", "feedback"]


def test_the_runner_hands_its_weight_decay_to_kolen_pollack(tmp_path) -> None:
    base = ["--rule=kolen_pollack", "--dataset=synthetic", "--model=mlp"]
    cfg = load_config(None, [*base, "--weight_decay=0.003"])
    assert rule_args_of(cfg) == {"weight_decay": pytest.approx(0.003)}
    cfg = load_config(None, [*base, "--weight_decay=0.003", "--rule_args.weight_decay=0.02"])
    assert rule_args_of(cfg) == {"weight_decay": pytest.approx(0.02)}  # explicit wins
    assert rule_args_of(load_config(None, base)) == {}  # weight_decay 0: the rule's default
    cfg = load_config(None, [*base, "--feedback_weight_decay=0.1"])
    model, _, _ = make_model("mlp")
    rule = biograd.create_rule("kolen_pollack", model)
    with pytest.raises(biograd.ConfigError, match="feedback_weight_decay would not reach"):
        make_optimizer(cfg, rule)
