"""Activation relaxation (P4): the activities' fixed point is backprop's gradient dl/dz_l, so
the exact/kept update equals autograd's gradient; the variants' fixed points are the closed
forms the maths gives (W^T or B without f')."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import biograd
from biograd.metrics import angle, feedback_alignment_angles
from biograd.metrics.alignment import backprop_gradients


def _mlp(act="tanh", seed=0):
    torch.manual_seed(seed)
    model = biograd.models.mlp(12, [10, 8], 4, activation=act).double()
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(6, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=g)
    return model, x, y


def _hidden_grads(model, x, y, loss_fn):
    """Autograd's dl_i/dz_l (per-sample loss = batch * mean loss) at every hidden output."""
    zs, h = [], x
    for m in model:
        h = m(h)
        if isinstance(m, (nn.Tanh, nn.ReLU, nn.ELU)):
            h.retain_grad()
            zs.append(h)
    (loss_fn(h, y) * x.shape[0]).backward()
    return [z.grad for z in zs]


def _rule(model, loss="mse", **hp):
    rule = biograd.create_rule("activation_relaxation", model, loss=loss, **hp)
    rule.zero_grad(set_to_none=True)
    return rule


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("init,steps", [("zeros", 100), ("forward", 150)])
def test_activities_relax_to_autograd_gradients(act, loss, init, steps) -> None:
    """From zeros the error after P4's 100 steps of 0.1 is a fixed fraction (~3e-4) of the
    gradient; from the feed-forward values it is a fraction of |z_l - dl/dz_l|, which can be
    larger than the gradient, so that start gets 150 steps for the same tolerance."""
    model, x, y = _mlp(act)
    rule = _rule(model, loss, init=init, steps=steps, step_size=0.1)
    acts, *_ = rule.relax_activities(x, y)
    ref = _hidden_grads(model, x, y, rule.loss_fn)
    for a, r in zip(acts[:-1], ref, strict=True):
        assert float((a - r).abs().max() / r.abs().max()) < 1e-3


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_exact_kept_update_equals_backprop_after_convergence(kind) -> None:
    if kind == "mlp":
        model, x, y = _mlp("relu")
    else:
        torch.manual_seed(0)
        model = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6).double()
        x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])
    rule = _rule(model, "cross_entropy", steps=600)
    bp = backprop_gradients(rule, x, y)
    result = rule.step(x, y)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, bp[n], rtol=1e-9, atol=1e-12)
    assert result.metrics["energy_last"] < 1e-12 * max(result.metrics["energy_first"], 1.0)


def test_dropped_derivative_relaxes_without_f_prime_and_updates_with_it() -> None:
    model, x, y = _mlp("tanh")
    rule = _rule(model, "mse", derivative="dropped", steps=600)
    rule.step(x, y)
    lins = [m for m in model if isinstance(m, nn.Linear)]
    zs = [x, torch.tanh(lins[0](x))]
    zs.append(torch.tanh(lins[1](zs[1])))
    out = lins[2](zs[2])
    e = out - nn.functional.one_hot(y, 4).double()  # per-sample dl/dz_L for 0.5 ||.||^2
    xs = [None, None, None, e]
    xs[2] = xs[3] @ lins[2].weight  # fixed point x_l = W_{l+1}^T x_{l+1} (no f')
    xs[1] = xs[2] @ lins[1].weight
    fprime = [1 - zs[1] ** 2, 1 - zs[2] ** 2, torch.ones_like(out)]  # the update keeps f'
    for i, lin in enumerate(lins):
        delta = fprime[i] * xs[i + 1]
        torch.testing.assert_close(lin.weight.grad, delta.T @ zs[i] / 6)
        torch.testing.assert_close(lin.bias.grad, delta.mean(0))
    bp = backprop_gradients(rule, x, y)
    assert angle(lins[0].weight.grad, bp["1.weight"]) > 1.0


def test_random_backward_weights_fixed_point_uses_b() -> None:
    model, x, y = _mlp("tanh")
    rule = _rule(model, "mse", backward="random", steps=600)
    rule.step(x, y)
    lins = [m for m in model if isinstance(m, nn.Linear)]
    h1 = lins[0](x)
    h2 = lins[1](torch.tanh(h1))
    out = lins[2](torch.tanh(h2))
    x3 = out - nn.functional.one_hot(y, 4).double()
    b2, b1 = rule.feedback.B2, rule.feedback.B1  # layout of W^T
    x2 = x3 @ b2.T
    x1 = ((1 - torch.tanh(h2) ** 2) * x2) @ b1.T
    delta1 = (1 - torch.tanh(h1) ** 2) * x1
    torch.testing.assert_close(lins[0].weight.grad, delta1.T @ x / 6)
    torch.testing.assert_close(lins[2].weight.grad, x3.T @ torch.tanh(h2) / 6)  # top is exact
    assert rule.feedback_parameters() == []
    assert set(feedback_alignment_angles(rule)) == {"layer1", "layer2"}


def test_learned_backward_weights_get_the_transposed_update_and_align() -> None:
    model, x, y = _mlp("tanh")
    rule = _rule(model, "cross_entropy", backward="learned")
    psi = rule.feedback_parameters()
    assert [tuple(p.shape) for p in psi] == [(10, 8), (8, 4)]
    lins = [m for m in model if isinstance(m, nn.Linear)]
    for _ in range(2):  # the second step accumulates into .grad, as W's update does
        rule.step(x, y)
        for p, lin in zip(psi, lins[1:], strict=True):
            torch.testing.assert_close(p.grad, lin.weight.grad.T)
    rule.zero_grad(set_to_none=True)
    # psi - W^T stays constant (both get the same updates) while W grows on a learnable task
    # (a linear teacher), so the angle between psi and W^T falls (P4 Fig. 4)
    opt = torch.optim.SGD(rule.parameters(), lr=0.2)
    before = feedback_alignment_angles(rule)
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(12, 4, generator=g, dtype=torch.float64)
    for _ in range(100):
        xb = torch.randn(16, 12, generator=g, dtype=torch.float64)
        opt.zero_grad(set_to_none=True)
        rule.step(xb, (xb @ teacher).argmax(1))
        opt.step()
    after = feedback_alignment_angles(rule)
    for k in before:
        assert after[k] < before[k] - 30.0, (k, before[k], after[k])


@pytest.mark.parametrize("backward", ["random", "learned"])
def test_variants_round_trip_through_state_dict(backward) -> None:
    model, x, y = _mlp("relu")
    rule = _rule(model, backward=backward, derivative="dropped")
    other_model, _, _ = _mlp("relu", seed=5)
    other = _rule(other_model, backward=backward, derivative="dropped")
    other.load_state_dict(rule.state_dict())
    rule.step(x, y)
    other.step(x, y)
    for p, q in zip(rule.parameters(), other.parameters(), strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def _through_b(layer: nn.Module, z: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``layer(z)`` whose input gradient goes through weight ``b`` (forward layout) instead of
    the layer's own: the value is the layer's, the weight and bias gradients use the true
    input, and ``op(z, b) - op(z, b).detach()`` (zero) carries the input gradient."""
    out = layer(z.detach()) if b is not None else layer(z)
    if b is None:
        return out
    if isinstance(layer, nn.Conv2d):
        fb = nn.functional.conv2d(z, b, None, layer.stride, layer.padding)
    else:
        fb = z @ b.T
    return out + fb - fb.detach()


def test_cnn_random_backward_fixed_point_is_backprop_through_b() -> None:
    """Fixed random B (P4 Sec. 4.1): the activities relax to x_l = J_{l+1}(B)^T x_{l+1}, the
    Jacobian of block l+1 (activation and pooling at the forward pass) with its weight
    replaced by B_{l+1} in the input gradient only, so the update is autograd's gradient of a
    network whose layers pass input gradients through B (feedback alignment's deltas)."""
    torch.manual_seed(0)
    model = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    rule = _rule(model, "cross_entropy", backward="random", steps=600)
    assert rule.feedback_parameters() == []
    bp = backprop_gradients(rule, x, y)
    rule.step(x, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    bs = [None] + [getattr(rule.feedback, f"B{i}").transpose(0, 1) for i in range(1, 4)]
    feedback = dict(zip(map(id, layers), bs, strict=True))
    model.zero_grad(set_to_none=True)
    h = x
    for m in model:
        h = _through_b(m, h, feedback[id(m)]) if id(m) in feedback else m(h)
    rule.loss_fn(h, y).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)
    torch.testing.assert_close(got["9.weight"], bp["9.weight"])  # the top layer is exact
    assert angle(got["0.weight"], bp["0.weight"]) > 1.0  # B is not W^T


@pytest.mark.parametrize(
    "hp,match",
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"step_size": 0}, "step_size must be > 0"),
        ({"backward": "transpose"}, "backward must be one of"),
        ({"derivative": "none"}, "derivative must be one of"),
        ({"init": "ones"}, "init must be one of"),
        ({"tol": 0}, "tol must be > 0"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(hp, match) -> None:
    model, _, _ = _mlp()
    with pytest.raises(biograd.ConfigError, match=match):
        biograd.create_rule("activation_relaxation", model, **hp)


def test_non_block_models_and_bad_inputs_are_rejected() -> None:
    with pytest.raises(biograd.UnsupportedModelError, match="stack of blocks"):
        biograd.create_rule("activation_relaxation", nn.LSTM(3, 4))
    model, x, y = _mlp()
    rule = _rule(model)
    with pytest.raises(biograd.InputError, match="labels must lie in"):
        rule.step(x, y + 10)
    with pytest.raises(biograd.InputError, match="floating-point"):
        rule.step(x.long(), y)


def _mnist_accuracy(name, model, loss, opt_fn, n_train, batch, **hp):
    data = pytest.importorskip("biograd.data")
    try:
        tr, te = data.load("mnist", "train", flatten=True), data.load("mnist", "test", flatten=True)
    except biograd.DataError as err:  # no network / no cache
        pytest.skip(str(err))
    (x, y), (xt, yt) = tr.tensors, te.tensors
    rule = biograd.create_rule(name, model, loss=loss, **hp)
    opt = opt_fn(rule.parameters())
    for i in range(0, n_train, batch):
        opt.zero_grad(set_to_none=True)
        rule.step(x[i:i + batch], y[i:i + batch])
        opt.step()
    return 100.0 * float((rule.predict(xt[:2000]).argmax(1) == yt[:2000]).float().mean())


@pytest.mark.slow
def test_mnist_standard_ar_trains_like_backprop() -> None:
    accs = {}
    for name in ("backprop", "activation_relaxation"):
        torch.manual_seed(0)
        model = biograd.models.mlp(784, [300, 300, 100], 10, activation="relu")
        accs[name] = _mnist_accuracy(name, model, "mse", lambda p: torch.optim.SGD(p, lr=0.05),
                                     12800, 64)
    assert abs(accs["activation_relaxation"] - accs["backprop"]) < 1.5, accs
