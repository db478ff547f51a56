"""Target-propagation rules (dtp, dtp_sigma, drl, ldrl): exact limits, feedback-loss minimisers,
the Jacobian metric and error paths. Expectations come from the mathematics (module docstrings
of biograd.ops.tp_losses and biograd.rules._target_prop), with autograd as the oracle."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import biograd
from biograd.metrics import update_alignment
from biograd.metrics.jacobian import jacobian_alignment
from tests.conftest import make_model

TP_RULES = ["dtp", "dtp_sigma", "drl", "ldrl"]


def _set_adjoint_feedback(rule) -> None:
    with torch.no_grad():
        for _, block, fb in rule.feedback_blocks():
            fb.weight.copy_(fb.adjoint_of(block.layer.weight))
            fb.bias.zero_()


@pytest.mark.parametrize("name", TP_RULES)
def test_linear_network_with_transposed_feedback_gives_backprop(name: str) -> None:
    """Identity activations, g_l(y) = W_l^T y: the difference targets are t_{l-1} - z_{l-1} =
    W_l^T (t_l - z_l) = -beta * dl/dz_{l-1} exactly (no Taylor remainder), so each layer's update
    (z_l - t_l) x^T / beta is backprop's gradient for any beta. A tiny feedback rate keeps the
    inner loop from moving g off W^T; float64 because the probe's beta (1e-3) makes float32
    differences round off at ~1e-2 degrees."""
    torch.manual_seed(0)
    model = biograd.models.mlp(12, [10, 8], 4, activation="identity").double()
    x, y = torch.randn(16, 12, dtype=torch.float64), torch.randint(0, 4, (16,))
    rule = biograd.create_rule(name, model, beta=0.5, feedback_lr=1e-12)
    _set_adjoint_feedback(rule)
    for pname, deg in update_alignment(rule, x, y).items():
        assert deg < 1e-4, f"{name}: {pname} at {deg:.4f} degrees from backprop"


@pytest.mark.parametrize("name", ["dtp", "ldrl"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_nonlinear_updates_tend_to_backprop_as_beta_vanishes(name: str, kind: str) -> None:
    """With matched feedback nonlinearities and V = adjoint(W), J_g(z_l) = J_f^T exactly, so
    g(t) - g(z) = J_f^T (t - z) + O(beta^2): the update tends to the gradient as beta -> 0
    (alignment_probe uses beta = 1e-3); with a large beta it does not."""
    model, x, y = make_model(kind, seed=2)
    x = x.double()
    model.double()
    rule = biograd.create_rule(
        name, model, feedback_lr=1e-12, feedback_activation="matched", beta=2.0
    )
    _set_adjoint_feedback(rule)
    small = update_alignment(rule, x, y)
    assert max(small.values()) < 1.0, small
    large = biograd.metrics.rule_updates(rule, x, y)  # probe copy, beta = 1e-3
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)  # beta = 2
    bp = biograd.metrics.backprop_gradients(rule, x, y)
    first = next(iter(bp))
    big = biograd.metrics.angle(dict(rule.model.named_parameters())[first].grad, bp[first])
    assert big > biograd.metrics.angle(large[first], bp[first])


def _two_layer_linear(n_in: int = 6, n_mid: int = 5, n_out: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, n_mid), nn.Linear(n_mid, n_out))


def _train_feedback(rule, x: torch.Tensor, rounds: int) -> None:
    trace = rule.forward_trace(x)
    for _ in range(rounds):
        rule.train_feedback(trace)


def test_ldrl_feedback_converges_to_the_forward_transpose() -> None:
    """Linear block: L-DRL = sigma^2 ||V - W^T||_F^2 + const in expectation, minimiser V = W^T."""
    rule = biograd.create_rule("ldrl", _two_layer_linear(), feedback_steps=200,
                               feedback_lr=0.02, sigma=0.5, feedback_momentum=0.5)
    _train_feedback(rule, torch.randn(256, 6), 3)
    ((v, wt),) = rule.feedback_weight_pairs().values()
    assert float((v - wt).norm() / wt.norm()) < 0.1


def test_drl_feedback_converges_to_the_damped_pseudo_inverse() -> None:
    """Linear block: DRL's minimiser is V = W^T (W W^T + lam I)^{-1} (Meulemans et al. 2020)."""
    lam = 0.5
    rule = biograd.create_rule("drl", _two_layer_linear(5, 4, 6), feedback_steps=200,
                               feedback_lr=2e-3, sigma=0.5, feedback_momentum=0.5, damping=lam)
    _train_feedback(rule, torch.randn(256, 5), 3)
    w = rule.blocks[1].layer.weight.detach()
    expected = w.t() @ torch.linalg.inv(w @ w.t() + lam * torch.eye(w.shape[0]))
    v = rule.feedback[0].weight.detach()
    assert float((v - expected).norm() / expected.norm()) < 0.1


def test_dtp_inverse_converges_to_the_inverse_of_an_invertible_layer() -> None:
    """Square linear layer: reconstruction ||V(W(x+n)+b) + c - (x+n)||^2 is minimised by
    V = W^{-1}, c = -V b (Lee et al. 2015's inverse)."""
    model = _two_layer_linear(5, 4, 4)
    with torch.no_grad():  # a well-conditioned square layer, so 600 SGD steps converge
        model[1].weight.copy_(torch.eye(4) + 0.2 * torch.randn(4, 4))
    rule = biograd.create_rule("dtp", model, feedback_steps=200,
                               feedback_lr=0.02, sigma=0.5, feedback_momentum=0.5)
    _train_feedback(rule, torch.randn(256, 5), 3)
    layer = rule.blocks[1].layer
    v, c = rule.feedback[0].weight.detach(), rule.feedback[0].bias.detach()
    inv = torch.linalg.inv(layer.weight.detach())
    assert float((v - inv).norm() / inv.norm()) < 0.05
    torch.testing.assert_close(c, -inv @ layer.bias.detach(), atol=0.05, rtol=0.05)


def test_ldrl_training_lowers_the_jacobian_angle_on_a_fixed_network() -> None:
    """P2's claim: minimising L-DRL aligns J_g with J_f^T (forward weights frozen)."""
    torch.manual_seed(0)
    model = biograd.models.mlp(12, [10, 8], 4, activation="tanh")
    x = torch.randn(64, 12)
    rule = biograd.create_rule("ldrl", model, feedback_steps=100, feedback_lr=0.05,
                               feedback_activation="matched")
    before = jacobian_alignment(rule, x)
    history = [before]
    for _ in range(3):
        _train_feedback(rule, x, 1)
        history.append(jacobian_alignment(rule, x))
    for layer in before:
        assert history[-1][layer] < before[layer] - 20, history
        assert history[-1][layer] < 20, history


def test_jacobian_metric_matches_full_autograd_jacobians() -> None:
    """Exact mode equals the angle between stacked per-sample Jacobians from autograd; the
    Rademacher estimate is close to it."""
    model, x, _ = make_model("mlp", seed=4)
    rule = biograd.create_rule("ldrl", model)
    trace = rule.forward_trace(x)
    exact = jacobian_alignment(rule, x)
    est = jacobian_alignment(rule, x, probes=2000)
    for l, (name, block, fb) in enumerate(rule.feedback_blocks(), start=1):
        xin, ctx = trace.inputs[l], trace.contexts[l]
        y = trace.outputs[l].detach()
        jf = torch.stack([torch.autograd.functional.jacobian(block, xin[b:b + 1])[0, :, 0]
                          for b in range(len(x))])  # (B, out, in)
        jg_all = torch.autograd.functional.jacobian(lambda t, fb=fb, ctx=ctx: fb(t, ctx), y)
        jg = torch.stack([jg_all[b, :, b] for b in range(len(x))])  # (B, in, out)
        want = biograd.metrics.angle(jg, jf.transpose(1, 2))
        assert abs(exact[name] - want) < 1e-3
        assert abs(est[name] - want) < 3.0
    _set_adjoint_feedback(rule)
    assert all(math.isfinite(v) for v in jacobian_alignment(rule, x).values())


def test_probe_and_state_leave_the_rule_untouched() -> None:
    model, x, y = make_model("cnn")
    rule = biograd.create_rule("ldrl", model)
    before = {k: v.clone() for k, v in rule.state_dict().items() if torch.is_tensor(v)}
    probe = rule.alignment_probe()
    probe_params = {id(p) for p in probe.feedback.parameters()}
    assert all(id(p) in probe_params for o in probe._optims for g in o.param_groups
               for p in g["params"])
    update_alignment(rule, x, y)
    for k, v in rule.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad for p in rule.feedback.parameters())
    assert all(p.grad is None for p in rule.feedback.parameters())


def test_error_top_target_equals_gradient_target_for_cross_entropy_only() -> None:
    """e_L = softmax(z) - onehot(y) is the per-sample cross-entropy gradient, not MSE's."""
    for loss, same in (("cross_entropy", True), ("mse", False)):
        model, x, y = make_model("mlp")
        grads = []
        for top in ("error", "gradient"):
            torch.manual_seed(0)
            rule = biograd.create_rule("dtp_sigma", model, loss, top_target=top)
            rule.step(x, y)
            grads.append(rule.model[-1].weight.grad.clone())
            rule.zero_grad(set_to_none=True)
        assert torch.allclose(grads[0], grads[1], atol=1e-6) is same


def test_plain_tp_targets_without_difference_correction() -> None:
    """difference_correction=False: t_{l-1} = g_l(t_l) (plain target propagation)."""
    model, x, y = make_model("mlp")
    rule = biograd.create_rule("dtp_sigma", model, difference_correction=False)
    trace = rule.forward_trace(x)
    targets = rule.targets(trace, y)
    for l in range(1, len(targets)):
        fb, ctx = rule.feedback[l - 1], trace.contexts[l]
        torch.testing.assert_close(targets[l - 1], fb(targets[l], ctx))


@pytest.mark.parametrize(
    "name,hparams,match",
    [
        ("dtp", {"beta": 0.0}, "beta must be > 0"),
        ("ldrl", {"beta": -1.0}, "beta must be > 0"),
        ("ldrl", {"feedback_steps": 0}, r"feedback_steps\[0\] must be >= 1"),
        ("ldrl", {"feedback_steps": [5, 5, 5]}, "feedback_steps has 3 entries"),
        ("ldrl", {"sigma": [0.1, 0.2, 0.3]}, "sigma has 3 entries"),
        ("drl", {"feedback_lr": [1e-3, -1.0]}, r"feedback_lr\[1\] must be > 0"),
        ("ldrl", {"sigma": 0.0}, r"sigma\[0\] must be > 0"),
        ("dtp", {"feedback_momentum": 1.0}, "feedback_momentum must be < 1"),
        ("drl", {"damping": 0.0}, "damping must be > 0"),
        ("dtp_sigma", {"top_target": "label"}, "top_target must be one of"),
        ("dtp_sigma", {"difference_correction": "yes"}, "difference_correction must be"),
        ("dtp", {"feedback_activation": "inverse"}, "feedback_activation must be one of"),
        ("ldrl", {"feedback_guard": -1.0}, "feedback_guard must be >= 0"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(name: str, hparams: dict, match: str) -> None:
    model, _, _ = make_model("mlp")
    with pytest.raises(biograd.ConfigError, match=match):
        biograd.create_rule(name, model, **hparams)


def test_dtp_sigma_accepts_zero_noise() -> None:
    model, x, y = make_model("mlp")
    rule = biograd.create_rule("dtp_sigma", model, sigma=0.0)
    assert math.isfinite(rule.step(x, y).loss)


@pytest.mark.parametrize("name", TP_RULES)
def test_unsupported_models_are_clear_errors(name: str) -> None:
    for kind in ("resnet", "graph"):
        model, _, _ = make_model(kind)
        with pytest.raises(biograd.UnsupportedModelError, match="stack of blocks"):
            biograd.create_rule(name, model)
    with pytest.raises(biograd.UnsupportedModelError, match="at least two blocks"):
        biograd.create_rule(name, nn.Sequential(nn.Linear(3, 2)))


def test_bad_inputs_are_input_errors() -> None:
    model, x, y = make_model("mlp")
    rule = biograd.create_rule("ldrl", model)
    with pytest.raises(biograd.InputError, match="labels must lie"):
        rule.step(x, y + 10)
    with pytest.raises(biograd.InputError, match="floating-point"):
        rule.step(x.long(), y)


@pytest.mark.slow
@pytest.mark.parametrize("name", TP_RULES)
def test_mnist_mlp_learns_in_one_epoch(name: str) -> None:
    """Real MNIST, 3x256 tanh MLP, one epoch on 20k samples: every TP rule beats 88%."""
    import biograd.data

    train = biograd.data.load("mnist", "train", flatten=True)
    test = biograd.data.load("mnist", "test", flatten=True)
    torch.manual_seed(0)
    rule = biograd.create_rule(name, biograd.models.mlp(784, [256, 256, 256], 10))
    opt = torch.optim.SGD(rule.parameters(), lr=0.05, momentum=0.9)
    x, y = train.tensors[0][:20000], train.tensors[1][:20000]
    for i in range(0, len(y), 64):
        opt.zero_grad(set_to_none=True)
        rule.step(x[i:i + 64], y[i:i + 64])
        opt.step()
    acc = (rule.predict(test.tensors[0]).argmax(-1) == test.tensors[1]).float().mean()
    assert float(acc) > 0.88, f"{name}: {float(acc):.4f}"


# ------------------------------------------------------------------ feedback step guard
def test_guard_scale_is_the_exact_curvature_cap_along_the_gradient() -> None:
    """Every feedback loss is quadratic in (V, c): guard_scale = min(1, kappa ||G||^2 /
    (lr G^T H G)) with H the exact Hessian (autograd.functional.hessian as the oracle)."""
    from biograd.ops.tp_losses import guard_scale

    gen = torch.Generator().manual_seed(0)
    u, r = 3 * torch.randn(16, 4, generator=gen), torch.randn(16, 5, generator=gen)
    v0, c0 = torch.randn(5, 4, generator=gen), torch.randn(5, generator=gen)

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        v, c = flat[:20].reshape(5, 4), flat[20:]
        return (u @ v.t() + c - r).pow(2).sum(1).mean()

    params = [nn.Parameter(v0.clone()), nn.Parameter(c0.clone())]
    h = torch.autograd.functional.hessian(loss_of, torch.cat([v0.flatten(), c0]))
    for lr, kappa in [(0.5, 1.0), (1e-4, 1.0), (0.5, 0.25)]:
        value = (u @ params[0].t() + params[1] - r).pow(2).sum(1).mean()
        grads = torch.autograd.grad(value, params, create_graph=True)
        g = torch.cat([gr.detach().flatten() for gr in grads])
        expected = min(1.0, kappa * float(g @ g) / (lr * float(g @ h @ g)))
        assert guard_scale(grads, params, lr, kappa) == pytest.approx(expected, rel=1e-4)
    assert guard_scale((None, None), params, 0.5, 1.0) == 1.0


def _large_output_dtp(guard: float):
    """Two linear blocks whose outputs are large, so the inverse's least squares problem has
    curvature 2 lambda_max(E[u u^T]) (u = (y, 1)) far beyond the heavy-ball bound."""
    model = _two_layer_linear(6, 5, 4)
    with torch.no_grad():
        model[1].weight.mul_(40.0)
    rule = biograd.create_rule("dtp", model, feedback_steps=30, feedback_lr=0.01, sigma=0.01,
                               feedback_momentum=0.9, feedback_guard=guard)
    return rule


def test_guard_keeps_inverse_training_stable_beyond_the_heavy_ball_bound() -> None:
    """Heavy-ball SGD on a quadratic diverges iff lr * lambda_max > 2 (1 + momentum); this was
    how dtp/dtp_sigma diverged on Fashion-MNIST (the top inverse's inputs are the growing
    logits). With the guard the same inverse training converges."""
    x = torch.randn(128, 6, generator=torch.Generator().manual_seed(1))
    rule = _large_output_dtp(0.0)
    trace = rule.forward_trace(x)
    u = torch.cat([trace.outputs[1].detach(), torch.ones(128, 1)], 1)
    lam = 2 * float(torch.linalg.eigvalsh(u.t() @ u / 128)[-1])
    assert 0.01 * lam > 2 * (1 + 0.9)  # the setup is beyond the stability bound
    first = rule.train_feedback(trace)["feedback_loss/1"]
    unguarded = rule.train_feedback(trace)["feedback_loss/1"]
    assert not math.isfinite(unguarded) or unguarded > 1e3 * first
    rule = _large_output_dtp(1.0)
    trace = rule.forward_trace(x)
    first = rule.train_feedback(trace)["feedback_loss/1"]
    for _ in range(3):
        metrics = rule.train_feedback(trace)
    assert metrics["feedback_loss/1"] < first
    assert metrics["feedback_step_scale/1"] < 1.0


def _train_on(rule, dataset: str, batches: int, lr: float, flatten: bool) -> float:
    """SGD(lr, momentum 0.9) over ``batches`` shuffled batches of 64; test accuracy on 5000
    test images (nan if the run diverged)."""
    import biograd.data

    train = biograd.data.load(dataset, "train", flatten=flatten)
    test = biograd.data.load(dataset, "test", flatten=flatten)
    opt = torch.optim.SGD(rule.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=gen)
    for i, (x, y) in enumerate(loader):
        if i == batches:
            break
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(rule.step(x, y).loss):
            return math.nan
        opt.step()
    with torch.no_grad():
        out = rule.predict(test.tensors[0][:5000]).argmax(-1)
    return float((out == test.tensors[1][:5000]).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dtp", "dtp_sigma"])
def test_guarded_dtp_trains_on_fashion_mnist(name: str) -> None:
    """Fashion-MNIST, 3x256 tanh, lr 0.05: without the guard the top inverse's SGD crosses
    lr * lambda_max = 2 (1 + momentum) as the logits grow and the run diverges within
    200 batches (docs/algorithms/target_prop.md); with it the run trains."""
    torch.manual_seed(0)
    model = biograd.models.mlp(784, [256, 256, 256], 10, activation="tanh")
    acc = _train_on(biograd.create_rule(name, model), "fashion_mnist", 400, 0.05, True)
    assert acc > 0.72, acc


@pytest.mark.slow
def test_ldrl_trains_lenet_with_more_fully_connected_feedback_steps() -> None:
    """LeNet on MNIST with the benchmark's settings (K = 5 for the conv feedback, 20 for the
    fully connected ones, forward lr 0.005): 300 batches reach > 90% test accuracy."""
    torch.manual_seed(0)
    rule = biograd.create_rule("ldrl", biograd.models.lenet(1, 10, 28),
                               feedback_steps=[5, 20, 20])
    acc = _train_on(rule, "mnist", 300, 0.005, False)
    assert acc > 0.90, acc


def test_each_layer_trains_its_feedback_with_its_own_noise() -> None:
    """Per-layer sigma: for a linear block with V = W^T the L-DRL loss -2 mean(dx . V W dx) +
    mean(||V dy||^2) has expectation sigma_l^2 (-2 ||W_l||_F^2 + ||W_l||_F^2) = -sigma_l^2
    ||W_l||_F^2 (tp_losses docstring); 4096 noise samples estimate it within a few percent."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3))
    sigma = [0.1, 1.0]
    rule = biograd.create_rule("ldrl", model, sigma=sigma, feedback_steps=1, feedback_lr=1e-12)
    _set_adjoint_feedback(rule)
    metrics = rule.train_feedback(rule.forward_trace(torch.randn(4096, 6)))
    for layer, s in zip((1, 2), sigma, strict=True):
        want = -(s**2) * float(model[layer].weight.detach().pow(2).sum())
        got = metrics[f"feedback_loss/{layer}"]
        assert abs(got / want - 1) < 0.15, (layer, got, want)
