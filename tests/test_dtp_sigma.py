"""dtp_sigma (P1's DTP-sigma, linear-inverse reading; docs/algorithms/target_prop.md).

Expectations come from the mathematics: with affine inverses g_l(y) = V_l y + c_l the
difference-corrected targets are exactly t_{l-1} - z_{l-1} = V_l (t_l - z_l) (the bias cancels),
so t_l - z_l = -beta V_{l+1} ... V_L e with e = softmax(z_L) - onehot(y), and each block's update
of sum_l mean_b ||z_l - t_l||^2 / (2 beta) is (1/B) sum_b [(V_{l+1} ... V_L e_b) * f_l'] x_b^T,
independent of beta. The top block's update is backprop's gradient (autograd)."""

from __future__ import annotations

import copy

import torch

import biograd
from biograd.core.blocks import as_blocks
from biograd.ops.inverse import block_forward, make_feedback

B, N_IN, HIDDEN, N_OUT = 50, 20, [16, 16, 16], 10  # P1's protocol in miniature: batch 50, tanh


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = biograd.models.mlp(N_IN, HIDDEN, N_OUT, activation="tanh")
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, N_IN, generator=g)
    y = torch.randint(0, N_OUT, (B,), generator=g)
    return model, x, y


def _grads(name: str, model, x, y, **hparams) -> tuple[object, list[torch.Tensor]]:
    """One ``step`` of a fresh copy of ``model``; the rule (after the step) and its updates."""
    torch.manual_seed(123)  # the rule's generator: same feedback init and noise for every rule
    rule = biograd.create_rule(name, copy.deepcopy(model), **hparams)
    rule.step(x, y)
    return rule, [p.grad.clone() for p in rule.model.parameters()]


def _layer_grads(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return grads[0::2]  # weights of the 4 Linear layers (biases in between)


def test_defaults_differ_from_dtp_on_p1s_protocol() -> None:
    """Same seed, model and batch: DTP-sigma's hidden updates are not DTP's; the two blocks whose
    inverse is affine in both rules (the top block and the one below it, inverted through the
    linear top block) get identical updates, and the top one is backprop's gradient."""
    model, x, y = _setup()
    _, dtp = _grads("dtp", model, x, y)
    _, sig = _grads("dtp_sigma", model, x, y)
    dtp_w, sig_w = _layer_grads(dtp), _layer_grads(sig)
    for l in (0, 1):  # below a tanh block: inverse V tanh(y) + c (dtp) vs V y + c (dtp_sigma)
        rel = float((dtp_w[l] - sig_w[l]).norm() / dtp_w[l].norm())
        assert rel > 1e-2, f"layer {l}: relative difference {rel:.2e}"
    torch.testing.assert_close(sig_w[2], dtp_w[2])
    torch.testing.assert_close(sig[-2:], dtp[-2:])
    ref = copy.deepcopy(model)
    bp = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(x), y),
                             [ref[-1].weight, ref[-1].bias])
    torch.testing.assert_close(sig[-2:], list(bp), rtol=1e-5, atol=1e-7)


def test_same_feedback_activation_gives_dtp_back_under_cross_entropy() -> None:
    """The inverse's nonlinearity is the only difference from DTP under cross-entropy: LRA-E's
    output error softmax(z) - onehot(y) is the per-sample cross-entropy gradient."""
    model, x, y = _setup(1)
    _, dtp = _grads("dtp", model, x, y)
    _, same = _grads("dtp_sigma", model, x, y, feedback_activation="same")
    for a, b in zip(dtp, same, strict=True):
        torch.testing.assert_close(a, b)


def test_identity_inverse_is_the_affine_map_v_y_plus_c() -> None:
    """feedback_activation="identity" on a tanh block: g(y) = y V^T + c (no tanh), whereas
    "same" gives tanh(y) V^T + c."""
    model, x, _ = _setup(2)
    block = as_blocks(model)[1]
    gen = torch.Generator().manual_seed(0)
    ident = make_feedback(block, gen, "identity")
    same = make_feedback(block, torch.Generator().manual_seed(0), "same")
    with torch.no_grad():
        ident.bias.normal_(generator=gen)
        same.bias.copy_(ident.bias)
    z = torch.tanh(model[1](x))  # block 0's output = block 1's input
    yb, ctx = block_forward(block, z)
    v, c = ident.weight.detach(), ident.bias.detach()
    torch.testing.assert_close(ident(yb, ctx), yb @ v.t() + c)
    torch.testing.assert_close(same(yb, ctx), torch.tanh(yb) @ v.t() + c)


def test_identity_inverse_of_a_pooled_conv_block_is_affine() -> None:
    """With max-unpooling at the forward indices and no nonlinearity, g is affine in y:
    g(a y1 + (1 - a) y2) = a g(y1) + (1 - a) g(y2)."""
    model, _, _ = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6), None, None
    block = as_blocks(model)[1]
    fb = make_feedback(block, torch.Generator().manual_seed(0), "identity")
    with torch.no_grad():
        fb.bias.fill_(0.3)
    xin = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y1, ctx = block_forward(block, xin)
    y2 = torch.randn(y1.shape, generator=torch.Generator().manual_seed(2))
    a = 0.3
    with torch.no_grad():
        mixed = fb(a * y1 + (1 - a) * y2, ctx)
        torch.testing.assert_close(mixed, a * fb(y1, ctx) + (1 - a) * fb(y2, ctx))


def test_targets_are_the_output_error_carried_down_by_the_inverse_weights() -> None:
    """t_L = z_L - beta e, t_{l-1} = z_{l-1} + V_l (t_l - z_l): affine inverses carry the output
    error linearly (hand computation from the rule's V_l)."""
    model, x, y = _setup(3)
    beta = 0.37
    rule = biograd.create_rule("dtp_sigma", model, beta=beta)
    trace = rule.forward_trace(x)
    targets = rule.targets(trace, y)
    z = [o.detach() for o in trace.outputs]
    e = torch.softmax(z[-1], -1) - torch.nn.functional.one_hot(y, N_OUT).float()
    d = -beta * e
    torch.testing.assert_close(targets[-1], z[-1] + d)
    for l in range(len(z) - 1, 0, -1):
        d = d @ rule.feedback[l - 1].weight.detach().t()
        torch.testing.assert_close(targets[l - 1], z[l - 1] + d, rtol=1e-5, atol=1e-6)


def test_step_update_is_the_hand_formula_and_independent_of_beta() -> None:
    """After a full step (inverse training, then targets from the trained V_l): block l's
    update is (1/B) sum_b [(V_{l+1} ... V_L e_b) * (1 - z_l^2)] x_b^T (top block: no tanh), so
    the same for any beta; DTP's tanh inverses make its update depend on beta."""
    model, x, y = _setup(4)
    rule, grads = _grads("dtp_sigma", model, x, y, beta=0.05)
    with torch.no_grad():
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        acts = [x]
        for i, layer in enumerate(linears):  # tanh hidden blocks; the last gives the logits
            h = layer(acts[-1])
            acts.append(torch.tanh(h) if i + 1 < len(linears) else h)
        e = torch.softmax(acts[-1], -1) - torch.nn.functional.one_hot(y, N_OUT).float()
        d, want = e, []
        n_blocks = len(acts) - 1
        for l in range(n_blocks - 1, -1, -1):
            z = acts[l + 1]
            delta = d if l == n_blocks - 1 else d * (1 - z * z)
            want = [delta.t() @ acts[l] / B, delta.mean(0), *want]
            if l > 0:
                d = d @ rule.feedback[l - 1].weight.t()
    for got, w in zip(grads, want, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-6)
    _, other_beta = _grads("dtp_sigma", model, x, y, beta=3.0)
    for a, b in zip(grads, other_beta, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    _, dtp_small = _grads("dtp", model, x, y, beta=0.05)
    _, dtp_large = _grads("dtp", model, x, y, beta=3.0)
    assert not torch.allclose(dtp_small[0], dtp_large[0], rtol=1e-3, atol=1e-5)


def test_inverse_training_step_is_least_squares_gradient_descent() -> None:
    """sigma = 0, momentum 0, no guard: one step on mean_b ||V y_b + c - x_b||^2 moves
    V by -lr (2/B) r^T y and c by -lr (2/B) sum_b r_b, r = y V^T + c - x (hand gradient)."""
    model, x, _ = _setup(5)
    lr = 0.05
    rule = biograd.create_rule("dtp_sigma", model, sigma=0.0, feedback_momentum=0.0,
                               feedback_guard=0.0, feedback_lr=lr)
    trace = rule.forward_trace(x)
    before = [(fb.weight.clone(), fb.bias.clone()) for fb in rule.feedback]
    rule.train_feedback(trace)
    for l, (fb, (v, c)) in enumerate(zip(rule.feedback, before, strict=True), start=1):
        xin, yout = trace.inputs[l], trace.outputs[l].detach()
        r = yout @ v.t() + c - xin
        torch.testing.assert_close(fb.weight, v - lr * 2 / B * r.t() @ yout)
        torch.testing.assert_close(fb.bias, c - lr * 2 / B * r.sum(0))
