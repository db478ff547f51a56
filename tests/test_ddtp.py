"""DDTP-linear (Meulemans et al. 2020, arXiv:2006.14331) as P2's s-DDTP / p-DDTP baselines:
oracles from the mathematics (closed-form DRL minimiser, damped Gauss-Newton targets, autograd's
gradient at the top block) and a bit-exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import biograd
from tests.conftest import make_model

RULES = ["s_ddtp", "p_ddtp"]


def _train_maps(rule, x: torch.Tensor, rounds: int) -> None:
    trace = rule.forward_trace(x)
    rule.ensure_feedback(trace)
    for _ in range(rounds):
        rule.train_feedback(trace)


def _damped_pinv(j: torch.Tensor, lam: float) -> torch.Tensor:
    return j.t() @ torch.linalg.inv(j @ j.t() + lam * torch.eye(j.shape[0], dtype=j.dtype))


def test_direct_drl_converges_to_the_damped_pseudo_inverse_on_a_linear_network() -> None:
    """Linear blocks: E[DRL] = ||Q J - I||_F^2 + lam ||Q||_F^2 with J = d a_L / d z_l the product
    of the later weights, minimised by Q = J^T (J J^T + lam I)^{-1} (4 hidden units, 3 outputs:
    J is not invertible, the case DDTP is built for)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 3))
    lam = 0.3
    rule = biograd.create_rule("p_ddtp", net, feedback_steps=300, feedback_lr=0.05, sigma=0.5,
                               damping=lam, feedback_optimizer="sgd", feedback_momentum=0.5)
    _train_maps(rule, torch.randn(2048, 5), 2)
    w1, w2 = (b.layer.weight.detach() for b in rule.blocks[1:])
    for q, j in zip(rule.feedback, [w2 @ w1, w2], strict=True):
        expected = _damped_pinv(j, lam)
        assert float((q.weight - expected).norm() / expected.norm()) < 0.05


def _jacobian_to_output(rule, l: int, z: torch.Tensor) -> torch.Tensor:
    def tail(t: torch.Tensor) -> torch.Tensor:
        for b in rule.blocks[l + 1:]:
            t = b(t)
        return t

    return torch.autograd.functional.jacobian(tail, z[:1]).reshape(-1, z[0].numel())


def test_trained_direct_feedback_propagates_damped_gauss_newton_targets() -> None:
    """Nonlinear tanh net, one sample (repeated): after DRL training, t_l - z_l equals the damped
    Gauss-Newton target -beta J^T (J J^T + lam I)^{-1} e with J, e from autograd (Meulemans et
    al. 2020, sec. 3: DRL-optimal direct feedback propagates GN targets); untrained maps do not."""
    torch.manual_seed(1)
    net = biograd.models.mlp(5, [6, 5], 3, activation="tanh").double()
    lam, beta = 0.1, 0.01
    rule = biograd.create_rule("p_ddtp", net, beta=beta, feedback_steps=300, feedback_lr=0.05,
                               sigma=1e-3, damping=lam, feedback_optimizer="sgd",
                               feedback_momentum=0.5)
    x = torch.randn(1, 5, dtype=torch.float64).repeat(256, 1)
    y = torch.tensor([2]).repeat(256)
    trace = rule.forward_trace(x)
    rule.ensure_feedback(trace)
    logits = trace.outputs[-1].detach()[:1].requires_grad_(True)
    (e,) = torch.autograd.grad(rule.loss_fn(logits, y[:1]), logits)  # per-sample gradient

    def errors() -> list[float]:
        targets = rule.targets(trace, y)
        out = []
        for l in range(len(rule.feedback)):
            z = trace.outputs[l].detach()
            expected = -beta * _damped_pinv(_jacobian_to_output(rule, l, z), lam) @ e[0]
            got = (targets[l] - z)[0].flatten()
            out.append(float((got - expected).norm() / expected.norm()))
        return out

    assert min(errors()) > 0.3  # random maps: far from the GN targets
    for _ in range(2):
        rule.train_feedback(trace)
    assert max(errors()) < 0.05


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_top_block_update_is_backprop_gradient(name: str, kind: str) -> None:
    """t_L = a_L - beta dl/da_L and the 1/beta layer loss make the output block's update
    autograd's gradient of the batch-mean loss, whatever the feedback."""
    model, x, y = make_model(kind, seed=2)
    rule = biograd.create_rule(name, model)
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)
    top = rule.blocks[-1].layer
    ref = copy.deepcopy(model)
    expected = torch.autograd.grad(rule.loss_fn(ref(x), y), list(ref.parameters())[-2:])
    torch.testing.assert_close(top.weight.grad, expected[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(top.bias.grad, expected[1], rtol=1e-5, atol=1e-7)


def test_conv_maps_reach_the_flattened_pooled_output_and_targets_keep_its_shape() -> None:
    """As Meulemans et al.'s DDTPConvLayer: one linear map per hidden block from the logits to the
    block's pooled activation, C*H*W rows; targets have the block outputs' shapes."""
    model, x, y = make_model("cnn")
    rule = biograd.create_rule("s_ddtp", model)
    trace = rule.forward_trace(x)
    rule.ensure_feedback(trace)
    n_out = trace.outputs[-1].shape[1]
    assert [tuple(q.weight.shape) for q in rule.feedback] == [
        (z[0].numel(), n_out) for z in trace.outputs[:-1]]
    targets = rule.targets(trace, y)
    assert [t.shape for t in targets] == [z.shape for z in trace.outputs]


@pytest.mark.parametrize("name", RULES)
def test_targets_use_the_maps_before_this_batchs_feedback_training(name: str) -> None:
    """The authors' train_parallel: forward targets and updates first, then the feedback step."""
    model, x, y = make_model("mlp", seed=4)
    rule = biograd.create_rule(name, model)
    rule.step(x, y)  # builds and trains the maps once
    before = copy.deepcopy(rule)
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)
    before.zero_grad(set_to_none=True)
    trace = before.forward_trace(x)
    before.write_forward_updates(trace, before.targets(trace, y))
    for p, q in zip(rule.forward_parameters(), before.forward_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    assert any(not torch.equal(a.weight, b.weight)
               for a, b in zip(rule.feedback, before.feedback, strict=True))


def _train(rule, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        rule.step(x, y)
        opt.step()


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_state_dict_round_trip_resumes_bit_exactly(name: str, kind: str) -> None:
    """Save rule + optimizer after 2 steps, reload into a fresh rule on a fresh model: the next 3
    steps give bit-identical weights and direct maps (Adam/SGD state of the maps included)."""
    model, x, y = make_model(kind, seed=0)
    rule = biograd.create_rule(name, model)
    opt = torch.optim.SGD(rule.parameters(), lr=0.05, momentum=0.9)
    _train(rule, opt, x, y, 2)
    saved = copy.deepcopy((rule.state_dict(), opt.state_dict()))
    _train(rule, opt, x, y, 3)
    other = biograd.create_rule(name, make_model(kind, seed=7)[0])
    other_opt = torch.optim.SGD(other.parameters(), lr=0.05, momentum=0.9)
    other.load_state_dict(saved[0])
    other_opt.load_state_dict(saved[1])
    _train(other, other_opt, x, y, 3)
    for (n, a), b in zip(rule.state_dict().items(), other.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), n


def test_a_state_saved_before_the_first_step_drops_built_maps() -> None:
    """A fresh rule holds no maps yet; loading its state into a trained rule makes that rule
    behave as the fresh one (same maps drawn at the next step)."""
    model, x, y = make_model("cnn", seed=0)
    fresh = biograd.create_rule("s_ddtp", model)
    saved = copy.deepcopy(fresh.state_dict())
    trained = biograd.create_rule("s_ddtp", make_model("cnn", seed=3)[0])
    trained.step(x, y)
    trained.load_state_dict(saved)
    assert len(trained.feedback) == 0
    for r in (fresh, trained):
        r.zero_grad(set_to_none=True)
        r.step(x, y)
    for p, q in zip(fresh.parameters(), trained.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("hparams,match", [
    ({"damping": -1.0}, "damping"),
    ({"feedback_optimizer": "rmsprop"}, "feedback_optimizer"),
    ({"feedback_steps": [1, 2, 3]}, "feedback_steps"),
    ({"sigma": 0.0}, "sigma"),
])
def test_bad_hyper_parameters_are_config_errors(hparams: dict, match: str) -> None:
    model, _, _ = make_model("mlp")
    with pytest.raises(biograd.ConfigError, match=match):
        biograd.create_rule("p_ddtp", model, **hparams)


def test_unsupported_model_is_a_clear_error() -> None:
    with pytest.raises(biograd.UnsupportedModelError, match="stack of blocks"):
        biograd.create_rule("s_ddtp", make_model("graph")[0])
