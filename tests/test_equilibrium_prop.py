"""Equilibrium propagation: its update tends to the gradient of the loss at the free fixed
point as beta -> 0 (Scellier & Bengio 2017, Theorem 1); the oracle differentiates through the
converged free dynamics (fixed-point / implicit differentiation by unrolled Euler steps)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import biograd
from biograd.metrics import angle
from biograd.ops.energy import hopfield_energy, hopfield_state_grad


def _energy(states, x, model):
    """E(s) written out independently of biograd.ops (Scellier & Bengio 2017, Eq. 1)."""
    lins = [m for m in model if isinstance(m, nn.Linear)]
    e = sum(0.5 * (s**2).sum(-1) for s in states)
    prev = x
    for i, (s, lin) in enumerate(zip(states, lins, strict=True)):
        r = torch.tanh(s) if i < len(lins) - 1 else s
        e = e - (r * (prev @ lin.weight.T + lin.bias)).sum(-1)
        prev = r
    return e


def _setup(hidden, loss="mse", seed=0):
    torch.manual_seed(seed)
    model = biograd.models.mlp(5, hidden, 3, activation="tanh").double()
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    return model, x, y


def _oracle(model, x, y, loss_fn, fixed, unroll=300, eps=0.5):
    """Gradient of C(s*(theta)): unroll Euler steps of -dE/ds from the (detached) fixed
    point; their derivative converges to the implicit-function gradient."""
    s = [t.detach() for t in fixed]
    with torch.enable_grad():
        for _ in range(unroll):
            s = [t.detach().requires_grad_(True) if not t.requires_grad else t for t in s]
            g = torch.autograd.grad(_energy(s, x, model).sum(), s, create_graph=True)
            s = [t - eps * gi for t, gi in zip(s, g, strict=True)]
        model.zero_grad(set_to_none=True)
        loss_fn(s[-1], y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _update(model, x, y, loss, **hp):
    rule = biograd.create_rule(
        "equilibrium_prop", model, loss=loss, free_steps=400, nudged_steps=400, **hp
    )
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)
    upd = {n: p.grad.clone() for n, p in model.named_parameters()}
    return rule, upd


def test_state_gradient_matches_autograd_of_the_energy() -> None:
    model, x, _ = _setup([6, 4])
    lins = [m for m in model if isinstance(m, nn.Linear)]
    acts = [nn.Tanh(), nn.Tanh(), nn.Identity()]
    states = [torch.randn(4, n, dtype=torch.float64, requires_grad=True) for n in (6, 4, 3)]
    ws, bs = [lin.weight for lin in lins], [lin.bias for lin in lins]
    ref = torch.autograd.grad(_energy(states, x, model).sum(), states)
    got, energy = hopfield_state_grad(states, x, ws, bs, acts)
    torch.testing.assert_close(energy, _energy(states, x, model))
    torch.testing.assert_close(hopfield_energy(states, x, ws, bs, acts), energy)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("hidden", [[6], [6, 4]])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_update_tends_to_the_gradient_at_the_free_fixed_point(hidden, loss) -> None:
    model, x, y = _setup(hidden, loss)
    rule, upd = _update(model, x, y, loss, beta=0.01)
    free = rule.free_phase(x).states
    grad_s = [float(g.detach().abs().max()) for g in hopfield_state_grad(
        free, x, [m.weight for m in model if isinstance(m, nn.Linear)],
        [m.bias for m in model if isinstance(m, nn.Linear)], [b.activation for b in rule.blocks],
    )[0]]
    assert max(grad_s) < 1e-8, "the free phase did not reach its fixed point"
    ref = _oracle(model, x, y, rule.loss_fn, free)
    for n in ref:
        assert angle(upd[n], ref[n]) < 5.0, n
        torch.testing.assert_close(upd[n], ref[n], rtol=2e-2, atol=2e-4)


def test_symmetric_estimator_is_closer_than_one_sided_at_the_same_beta() -> None:
    model, x, y = _setup([6, 4])
    rule, sym = _update(model, x, y, "mse", beta=0.1, estimator="symmetric")
    _, one = _update(model, x, y, "mse", beta=0.1, estimator="one_sided")
    ref = _oracle(model, x, y, rule.loss_fn, rule.free_phase(x).states)
    err_sym = sum(float((sym[n] - ref[n]).norm()) for n in ref)
    err_one = sum(float((one[n] - ref[n]).norm()) for n in ref)
    assert err_sym < 0.5 * err_one
    # one-sided bias is O(beta), symmetric O(beta^2): halving beta halves / quarters them
    _, one_half = _update(model, x, y, "mse", beta=0.05, estimator="one_sided")
    _, sym_half = _update(model, x, y, "mse", beta=0.05, estimator="symmetric")
    err_one_half = sum(float((one_half[n] - ref[n]).norm()) for n in ref)
    err_sym_half = sum(float((sym_half[n] - ref[n]).norm()) for n in ref)
    assert 0.4 < err_one_half / err_one < 0.7
    assert 0.15 < err_sym_half / err_sym < 0.4


def test_predict_is_the_free_phase_output_and_step_reports_energies() -> None:
    model, x, y = _setup([6])
    rule = biograd.create_rule("equilibrium_prop", model, loss="mse", free_steps=200)
    out = rule.predict(x)
    result = rule.step(x, y)
    torch.testing.assert_close(out, result.output)
    # the free phase lowers the energy from the feed-forward start, and is not the same output
    assert result.metrics["energy_last"] <= result.metrics["energy_first"]
    assert result.metrics["relax_steps"] == 200.0
    assert result.metrics["free_residual"] < 1e-6  # max |dE/ds| at the free fixed point
    assert all(isinstance(v, float) for v in result.metrics.values())
    # the per-step trace is opt-in (trace=True); by default the first and last energies only
    assert rule.last_trace["free"] == [result.metrics["energy_first"],
                                       result.metrics["energy_last"]]
    traced = biograd.create_rule("equilibrium_prop", model, loss="mse", free_steps=200,
                                 trace=True)
    traced.step(x, y)
    assert len(traced.last_trace["free"]) == 200 and "nudged_minus" in traced.last_trace
    assert not torch.allclose(out, model(x))


def test_zero_init_reaches_the_same_fixed_point() -> None:
    model, x, _ = _setup([6, 4])
    a = biograd.create_rule("equilibrium_prop", model, loss="mse", free_steps=400)
    b = biograd.create_rule("equilibrium_prop", model, loss="mse", free_steps=400, init="zeros")
    torch.testing.assert_close(a.predict(x), b.predict(x))


@pytest.mark.parametrize(
    "hp,match",
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"free_steps": 0}, "free_steps must be >= 1"),
        ({"nudged_steps": 2.5}, "nudged_steps must be an integer"),
        ({"step_size": -1}, "step_size must be > 0"),
        ({"estimator": "two_sided"}, "estimator must be one of"),
        ({"init": "random"}, "init must be one of"),
        ({"tol": -1e-3}, "tol must be > 0"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(hp, match) -> None:
    model, _, _ = _setup([6])
    with pytest.raises(biograd.ConfigError, match=match):
        biograd.create_rule("equilibrium_prop", model, **hp)


def test_non_mlp_models_are_rejected() -> None:
    cnn = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6)
    with pytest.raises(biograd.UnsupportedModelError, match="needs an MLP"):
        biograd.create_rule("equilibrium_prop", cnn)


def test_bad_labels_are_input_errors() -> None:
    model, x, _ = _setup([6])
    rule = biograd.create_rule("equilibrium_prop", model)
    with pytest.raises(biograd.InputError, match="labels must lie in"):
        rule.step(x, torch.tensor([0, 1, 2, 7]))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("float_targets", [False, True])
def test_per_sample_output_grad_is_batch_times_autograd(loss, float_targets) -> None:
    from biograd.core.losses import get_loss
    from biograd.ops.energy import per_sample_output_grad

    out = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1, 0])
    if float_targets:
        y = torch.softmax(torch.randn(5, 3, dtype=torch.float64), -1)
    fn = get_loss(loss)
    (ref,) = torch.autograd.grad(fn(out, y) * 5, out)
    torch.testing.assert_close(per_sample_output_grad(fn, out.detach(), y), ref)
    torch.testing.assert_close(per_sample_output_grad(lambda o, t: fn(o, t), out.detach(), y), ref)


@pytest.mark.slow
def test_mnist_one_hidden_layer_learns() -> None:
    from tests.test_activation_relaxation import _mnist_accuracy

    torch.manual_seed(0)
    model = biograd.models.mlp(784, [256], 10, activation="tanh")
    acc = _mnist_accuracy("equilibrium_prop", model, "mse",
                          lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9), 19200, 64)
    assert acc > 90.0


def test_tol_stops_the_free_phase_at_the_fixed_point() -> None:
    model, x, _ = _setup([6, 4])
    full = biograd.create_rule("equilibrium_prop", model, loss="mse", free_steps=600)
    early = biograd.create_rule("equilibrium_prop", model, loss="mse", free_steps=600, tol=1e-9)
    res = early.free_phase(x)
    assert res.converged and res.steps < 600
    torch.testing.assert_close(res.states[-1], full.free_phase(x).states[-1])


def test_layers_without_bias_get_weight_updates_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6, bias=False), nn.Tanh(), nn.Linear(6, 3, bias=False))
    rule = biograd.create_rule("equilibrium_prop", model, loss="mse", estimator="one_sided")
    rule.step(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rule.parameters())


def test_frozen_parameters_are_left_without_update() -> None:
    model, x, y = _setup([6])
    model[1].bias.requires_grad_(False)
    rule = biograd.create_rule("equilibrium_prop", model, loss="mse")
    rule.step(x, y)
    assert model[1].bias.grad is None and model[1].weight.grad is not None


def _bptt(model, x, y, loss_fn, steps, eps=0.5):
    """Autograd through ``steps`` Euler steps of -dE/ds from the feed-forward states (the
    free phase as predict runs it), written out independently of the rule."""
    lins = [m for m in model if isinstance(m, nn.Linear)]
    with torch.enable_grad():
        s, prev = [], x
        for i, lin in enumerate(lins):
            s.append(prev @ lin.weight.T + lin.bias)
            prev = torch.tanh(s[-1]) if i < len(lins) - 1 else s[-1]
        # partial derivatives dE/ds_l at the current states (torch.func.grad treats the list
        # as independent inputs), themselves differentiable in the parameters and the history
        grad_e = torch.func.grad(lambda states: _energy(states, x, model).sum())
        for _ in range(steps):
            s = [t - eps * gi for t, gi in zip(s, grad_e(s), strict=True)]
        model.zero_grad(set_to_none=True)
        loss_fn(s[-1], y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("steps", [3, 40])
def test_reference_gradient_is_backprop_through_the_free_phase(steps: int) -> None:
    """update_alignment's reference for EqProp: autograd's gradient of the loss of what
    predict returns (the free phase from the feed-forward init), not of the feed-forward net."""
    from biograd.metrics import backprop_gradients

    model, x, y = _setup([6, 4])
    rule = biograd.create_rule("equilibrium_prop", model, loss="mse", free_steps=steps)
    torch.testing.assert_close(rule.reference_output(x), rule.predict(x), rtol=0, atol=0)
    ref = backprop_gradients(rule, x, y)
    want = _bptt(model, x, y, rule.loss_fn, steps)
    for n in want:
        torch.testing.assert_close(ref[n], want[n], rtol=1e-9, atol=1e-12)
    model.zero_grad(set_to_none=True)
    rule.loss_fn(model(x), y).backward()
    ff = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert any(not torch.allclose(ref[n], ff[n]) for n in ff)  # top-down feedback matters


def test_update_alignment_is_small_when_the_estimate_is_exact() -> None:
    """At a converged free phase and small beta the EqProp update is the gradient at the fixed
    point (EqProp's theorem), so its angle to the reference gradient is small."""
    model, x, y = _setup([6, 4])
    rule = biograd.create_rule("equilibrium_prop", model, loss="mse", beta=0.01,
                               free_steps=400, nudged_steps=400)
    angles = biograd.metrics.update_alignment(rule, x, y)
    assert max(angles.values()) < 5.0, angles


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_nudged_dynamics_descend_the_total_energy_with_a_nonlinear_output(loss) -> None:
    """One Euler step of the nudged phase is s <- s - eps dF/ds with F = sum_i (E_i + beta C_i)
    (Scellier & Bengio 2017, Eq. 2-3), so the nudge on s_L is beta rho_L'(s_L) dC_i/drho_L.
    A sigmoid output (rho' != 1) and sigmoid hidden units check the rho' factors; the oracle is
    autograd of F written out here."""
    from biograd.core.losses import get_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Sigmoid(), nn.Linear(6, 3), nn.Sigmoid()).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    beta, eps = 0.7, 0.1
    rule = biograd.create_rule("equilibrium_prop", model, loss=loss, step_size=eps)
    g = torch.Generator().manual_seed(3)
    start = [torch.randn(4, n, generator=g, dtype=torch.float64) for n in (6, 3)]
    lins = [model[0], model[2]]
    with torch.enable_grad():
        s = [t.clone().requires_grad_(True) for t in start]
        r1, r2 = torch.sigmoid(s[0]), torch.sigmoid(s[1])
        energy = 0.5 * (s[0] ** 2).sum() + 0.5 * (s[1] ** 2).sum()
        energy = energy - (r1 * lins[0](x)).sum() - (r2 * lins[1](r1)).sum()
        total = energy + beta * x.shape[0] * get_loss(loss)(r2, y)  # C: a batch mean
        grads = torch.autograd.grad(total, s)
    res = rule._relax(x, y, start, beta, steps=1)
    for got, s0, gr in zip(res.states, start, grads, strict=True):
        torch.testing.assert_close(got, s0 - eps * gr)


def test_nudged_phase_starts_at_the_free_fixed_point() -> None:
    """The nudged phase relaxes from the free fixed point s^0 (Scellier & Bengio 2017, Sec. 3):
    with one nudged Euler step, s^beta = s^0 - eps (dE/ds(s^0) + beta dC/ds(s^0)), and the
    one-sided update is (dE/dtheta(s^beta) - dE/dtheta(s^0)) / beta (batch mean), computed
    here with autograd on the energy written out in this file."""
    model, x, y = _setup([6, 4])
    beta, eps = 0.3, 0.5
    rule = biograd.create_rule("equilibrium_prop", model, loss="mse", beta=beta, step_size=eps,
                               free_steps=300, nudged_steps=1, estimator="one_sided")
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    free = [s.detach() for s in rule.free_phase(x).states]
    with torch.enable_grad():
        s = [t.clone().requires_grad_(True) for t in free]
        total = _energy(s, x, model).sum() + beta * x.shape[0] * rule.loss_fn(s[-1], y)
        grads = torch.autograd.grad(total, s)
        nudged = [t - eps * g for t, g in zip(free, grads, strict=True)]
        model.zero_grad(set_to_none=True)
        ((_energy(nudged, x, model).mean() - _energy(free, x, model).mean()) / beta).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)
