"""Predictive coding, inference learning (Whittington & Bogacz 2017) on the captured graph:
the layered equations by hand, the no-inference limit, and convergence towards backprop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import biograd
from biograd.metrics.alignment import angle, backprop_gradients
from tests.conftest import make_model


def _hand_pc(model: torch.nn.Sequential, x, y, T: int, gamma: float, beta: float):
    """Whittington & Bogacz's equations for Linear -> tanh -> Linear, written out by hand:
    value nodes h (Linear output) and a (tanh output), errors e_h = h - (W1 x + b1),
    e_a = a - tanh(h), e_out = -beta dL/dmu_out with mu_out = W2 a + b2."""
    lin1, lin2 = model[1], model[3]
    W1, b1, W2, b2 = (t.detach() for t in (lin1.weight, lin1.bias, lin2.weight, lin2.bias))
    x = x.flatten(1)
    h = x @ W1.T + b1
    a = torch.tanh(h)

    def e_out(a: torch.Tensor) -> torch.Tensor:
        mu = (a @ W2.T + b2).requires_grad_(True)
        (g,) = torch.autograd.grad(beta * F.cross_entropy(mu, y), mu)
        return -g

    for _ in range(T):
        e_h = h - (x @ W1.T + b1)
        e_a = a - torch.tanh(h)
        d_h = e_h - (1 - torch.tanh(h) ** 2) * e_a
        d_a = e_a - e_out(a) @ W2
        h, a = h - gamma * d_h, a - gamma * d_a
    e_h, eo = h - (x @ W1.T + b1), e_out(a)
    return {"1.weight": -e_h.T @ x / beta, "1.bias": -e_h.sum(0) / beta,
            "3.weight": -eo.T @ a / beta, "3.bias": -eo.sum(0) / beta}


def test_graph_pc_on_an_mlp_follows_the_layered_equations() -> None:
    torch.manual_seed(0)
    model = biograd.models.mlp(6, [5], 3, activation="tanh").double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    expected = _hand_pc(model, x, y, T=7, gamma=0.3, beta=0.5)
    rule = biograd.create_rule("predictive_coding", model, T=7, gamma=0.3, beta=0.5)
    rule.step(x, y)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12)


def test_without_inference_only_the_output_layer_learns() -> None:
    """T = 0: value nodes stay at the feed-forward values, so every hidden error is zero and
    the output layer's update is exactly backprop's (its error is -dL/dmu_out)."""
    model, x, y = make_model("mlp")
    bp = backprop_gradients(biograd.create_rule("backprop", copy.deepcopy(model)), x, y)
    rule = biograd.create_rule("predictive_coding", model, T=0)
    rule.step(x, y)
    last = max(int(n.split(".")[0]) for n in bp)
    for n, p in model.named_parameters():
        if int(n.split(".")[0]) == last:
            torch.testing.assert_close(p.grad, bp[n], rtol=1e-6, atol=1e-9)
        else:
            assert float(p.grad.abs().max()) == 0.0


@pytest.mark.parametrize(
    "kind,T,gamma",
    [("mlp", 300, 0.3), pytest.param("graph", 6000, 0.1, marks=pytest.mark.slow)],
)
def test_many_steps_and_weak_nudging_approach_backprop(kind: str, T: int, gamma: float) -> None:
    """At the fixed point e_v = sum_c J_c^T e_c with e_out = -beta dL/dmu, the Jacobians taken
    at values that differ from the feed-forward ones by O(beta); so the errors / beta are
    -dL/dmu_v + O(beta) and the updates backprop's gradients up to a relative O(beta)
    (W&B 2017, Sec. 3): once relaxed to the fixed point, halving beta halves the distance.
    A relaxation stopped short leaves a distance that does not scale with beta (its rate is
    set by gamma and the graph), so the ratio test also checks that T steps converged. The
    graph's stiff modes allow gamma = 0.1 only (0.2 diverges), hence its 6000 steps (slow)."""
    rel = {}
    for beta in (1e-3, 5e-4):
        model, x, y = make_model(kind)
        model, x = model.double(), x.double()
        rule = biograd.create_rule("predictive_coding", model, T=T, gamma=gamma, beta=beta)
        bp = backprop_gradients(rule, x, y)
        res = rule.step(x, y)
        last, before = res.metrics[f"energy_{T - 1}"], res.metrics[f"energy_{T - 2}"]
        assert abs(last - before) <= 1e-12 * last, "the energy is still falling"
        rel[beta] = max(float((p.grad - bp[n]).norm() / bp[n].norm())
                        for n, p in model.named_parameters())
        for n, p in model.named_parameters():
            assert angle(p.grad, bp[n]) < 1.0, n
    assert rel[1e-3] < 10 * 1e-3, rel
    assert 1.9 < rel[1e-3] / rel[5e-4] < 2.1, rel


def test_inference_lowers_the_energy() -> None:
    model, x, y = make_model("cnn")
    result = biograd.create_rule("predictive_coding", model, T=10).step(x, y)
    energies = [result.metrics[f"energy_{t}"] for t in range(10)]
    assert result.metrics["energy_final"] < energies[0]
    assert all(b <= a + 1e-9 for a, b in zip(energies, energies[1:], strict=False))


def test_levelled_pc_adds_identity_value_nodes_and_still_trains() -> None:
    model, x, y = make_model("resnet")
    rule = biograd.create_rule("predictive_coding", model, levelling=True, T=3)
    rule.step(x, y)
    assert any(v.kind == "identity" for v in rule.graph(x).vertices)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "hp,match",
    [
        ({"T": -1}, "T must be >= 0"),
        ({"T": 2.5}, "T must be an integer"),
        ({"gamma": 0}, "gamma must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        ({"init_noise": -1.0}, "init_noise must be >= 0"),
        ({"levelling": None}, "levelling must be True or False"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(hp: dict, match: str) -> None:
    model, _, _ = make_model("mlp")
    with pytest.raises(biograd.ConfigError, match=match):
        biograd.create_rule("predictive_coding", model, **hp)


def test_bad_labels_are_input_errors() -> None:
    model, x, _ = make_model("graph")
    rule = biograd.create_rule("predictive_coding", model)
    with pytest.raises(biograd.InputError, match="labels must lie"):
        rule.step(x, torch.full((x.shape[0],), -1))
