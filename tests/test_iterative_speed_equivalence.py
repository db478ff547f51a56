"""The iterative rules' fast paths compute the same updates as a reference written out here.

Each speed change of issue 15 (item 3) keeps the rule's update identical up to float rounding;
these tests compare the fast step with a reference step on a fixed batch. The references are
first-principles computations (autograd on the energy or the loss, Euler steps one by one),
written independently of the code under test. No timing is asserted here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import biograd
from biograd.ops.energy import hopfield_energy, hopfield_param_contrast
from biograd.ops.hopfield_dynamics import (
    HopfieldChain,
    Nudge,
    Workspace,
    relax_hopfield,
    relax_hopfield_inplace,
)

F64 = {"rtol": 1e-9, "atol": 1e-11}


def _mlp(sizes, act=nn.Tanh, dtype=torch.float64, bias=True, seed=0):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)


def _batch(n_in, n_out, batch=7, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n_in, generator=g, dtype=dtype),
            torch.randint(0, n_out, (batch,), generator=g))


# ---------------------------------------------------------------------- equilibrium propagation
def _acts(model):
    lins = [m for m in model if isinstance(m, nn.Linear)]
    acts = [m for m in model if not isinstance(m, nn.Linear)] + [nn.Identity()]
    return lins, acts


def _energy_sum(states, x, model):
    """sum_b E_b(s), Scellier & Bengio 2017 Eq. 1, written out (no biograd code)."""
    lins, acts = _acts(model)
    e = sum(0.5 * (s**2).sum() for s in states)
    prev = x
    for s, lin, act in zip(states, lins, acts, strict=True):
        r = act(s)
        drive = prev @ lin.weight.T + (lin.bias if lin.bias is not None else 0.0)
        e = e - (r * drive).sum()
        prev = r
    return e


def _euler(states, x, model, steps, eps, beta=0.0, y=None, loss=None):
    """``steps`` Euler steps of -dF/ds, F = sum_b (E_b + beta C_b), by autograd."""
    s = [t.detach().clone() for t in states]
    lins, acts = _acts(model)
    for _ in range(steps):
        with torch.enable_grad():
            v = [t.requires_grad_(True) for t in s]
            total = _energy_sum(v, x, model)
            if beta:
                total = total + beta * x.shape[0] * loss(acts[-1](v[-1]), y)
            grads = torch.autograd.grad(total, v)
        s = [t.detach() - eps * g for t, g in zip(v, grads, strict=True)]
    return s


def _eqprop_reference(model, x, y, loss, *, beta, free_steps, nudged_steps, eps, symmetric):
    """The rule's update from first principles: forward init, free phase, nudged phase(s)
    from the free fixed point, contrast of dE/dtheta by autograd (batch mean)."""
    lins, acts = _acts(model)
    with torch.no_grad():
        start, prev = [], x
        for lin, act in zip(lins, acts, strict=True):
            start.append(lin(prev))
            prev = act(start[-1])
    free = _euler(start, x, model, free_steps, eps)
    a = _euler(free, x, model, nudged_steps, eps, beta, y, loss)
    b = _euler(free, x, model, nudged_steps, eps, -beta, y, loss) if symmetric else free
    scale = 2 * beta if symmetric else beta
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        contrast = (_energy_sum(a, x, model) - _energy_sum(b, x, model)) / (x.shape[0] * scale)
        grads = torch.autograd.grad(contrast, params)
    return {id(p): g for p, g in zip(params, grads, strict=True)}, free, a, b


@pytest.mark.parametrize("sizes,act", [
    ((9, 8, 6, 4), nn.Tanh),           # the demo's shape: two block products per step
    ((9, 8, 4), nn.Sigmoid),           # one hidden layer
    ((9, 8, 7, 6, 5, 4), nn.Tanh),     # deep: one product per coupling (zero blocks too big)
    ((9, 8, 6, 4), nn.ELU),            # no closed form: autograd's derivative
    ((9, 4), nn.Tanh),                 # output layer only
])
@pytest.mark.parametrize("estimator", ["symmetric", "one_sided"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_eqprop_step_equals_the_first_principles_update(sizes, act, estimator, loss) -> None:
    model = _mlp(sizes, act)
    x, y = _batch(sizes[0], sizes[-1])
    hp = {"beta": 0.3, "free_steps": 12, "nudged_steps": 5, "step_size": 0.4}
    rule = biograd.create_rule("equilibrium_prop", model, loss=loss, estimator=estimator, **hp)
    rule.zero_grad(set_to_none=True)
    result = rule.step(x, y)
    want, free, a, b = _eqprop_reference(
        model, x, y, rule.loss_fn, beta=0.3, free_steps=12, nudged_steps=5, eps=0.4,
        symmetric=estimator == "symmetric")
    for p in model.parameters():
        torch.testing.assert_close(p.grad, want[id(p)], **F64)
    lins, acts = _acts(model)
    torch.testing.assert_close(result.output, acts[-1](free[-1]), **F64)
    # the metrics: energies at the start of the first and the last free step, the residual
    with torch.no_grad():
        start = [lins[0](x)]
        for lin, a_ in zip(lins[1:], acts[:-1], strict=True):
            start.append(lin(a_(start[-1])))
        e_first = float(_energy_sum(start, x, model)) / x.shape[0]
        e_last = float(_energy_sum(_euler(start, x, model, 11, 0.4), x, model)) / x.shape[0]
    assert result.metrics["energy_first"] == pytest.approx(e_first, rel=1e-9, abs=1e-12)
    assert result.metrics["energy_last"] == pytest.approx(e_last, rel=1e-9, abs=1e-12)
    with torch.enable_grad():
        v = [t.clone().requires_grad_(True) for t in free]
        residual = max(float(g.abs().max()) for g in torch.autograd.grad(
            _energy_sum(v, x, model), v))
    assert result.metrics["free_residual"] == pytest.approx(residual, rel=1e-7, abs=1e-12)


def test_eqprop_nudged_energy_metric_is_the_total_energy_at_the_last_step() -> None:
    model = _mlp((9, 8, 6, 4))
    x, y = _batch(9, 4)
    rule = biograd.create_rule("equilibrium_prop", model, beta=0.3, free_steps=12,
                               nudged_steps=5, step_size=0.4, trace=True)
    result = rule.step(x, y)
    _, free, _, _ = _eqprop_reference(model, x, y, rule.loss_fn, beta=0.3, free_steps=12,
                                      nudged_steps=5, eps=0.4, symmetric=True)
    for sign, key in ((1.0, "nudged_plus"), (-1.0, "nudged_minus")):
        trace = []
        for t in range(5):  # F at the start of each nudged step
            s = _euler(free, x, model, t, 0.4, sign * 0.3, y, rule.loss_fn)
            f = _energy_sum(s, x, model) / x.shape[0] + sign * 0.3 * rule.loss_fn(s[-1], y)
            trace.append(float(f.detach()))
        assert rule.last_trace[key] == pytest.approx(trace, rel=1e-9, abs=1e-12)
        assert result.metrics[f"{key}_energy_last"] == pytest.approx(trace[-1], rel=1e-9)
    assert len(rule.last_trace["free"]) == 12


def test_eqprop_float32_step_is_within_rounding_of_float64() -> None:
    """The in-place float32 loop stays within float32 rounding of the float64 reference."""
    model = _mlp((30, 24, 16, 10))
    x, y = _batch(30, 10, batch=16)
    want, *_ = _eqprop_reference(model, x, y, biograd.core.losses.cross_entropy, beta=0.5,
                                 free_steps=40, nudged_steps=20, eps=0.5, symmetric=True)
    model32 = model.float()
    rule = biograd.create_rule("equilibrium_prop", model32)
    rule.zero_grad(set_to_none=True)
    rule.step(x.float(), y)
    for p in model32.parameters():
        ref = want[id(p)].float()
        torch.testing.assert_close(p.grad, ref, rtol=2e-4, atol=2e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("tol", [None, 1e-9])
def test_eqprop_in_place_loop_equals_the_functional_loop(tol) -> None:
    """relax_hopfield_inplace (buffers, block products) against relax_hopfield (per layer),
    nudged with two stacked strengths, early stopping included; a workspace reused across
    calls gives the same result as a fresh one."""
    model = _mlp((9, 8, 6, 5, 4))
    x, y = _batch(9, 4)
    lins, acts = _acts(model)
    with torch.no_grad():
        chain = HopfieldChain([m.weight for m in lins], [m.bias for m in lins], acts,
                              lins[0](x))
        start = [torch.randn(7, m.out_features, dtype=torch.float64) for m in lins]
        ref = relax_hopfield(chain, start, steps=300, step_size=0.3, tol=tol, record="all")
        ws = Workspace()
        for _ in range(2):
            got = relax_hopfield_inplace(chain, start, steps=300, step_size=0.3, tol=tol,
                                         record="all", workspace=ws, tag="t")
        assert (got.steps, got.converged) == (ref.steps, ref.converged)
        for g, r in zip(got.states, ref.states, strict=True):
            torch.testing.assert_close(g, r, **F64)
        for (tg, eg, og), (tr, er, orf) in zip(got.records, ref.records, strict=True):
            assert tg == tr
            torch.testing.assert_close(eg, er, **F64)
            torch.testing.assert_close(og, orf, **F64)
        # two stacked phases (+0.4, -0.4) on the stacked batch
        from biograd.ops.energy import output_grad_fn

        two = chain.stacked(2)
        st = [s.repeat(2, 1) for s in start]
        beta = torch.cat([x.new_full((7, 1), 0.4), x.new_full((7, 1), -0.4)])
        yy = torch.cat([y, y])
        loss = biograd.core.losses.cross_entropy
        ref = relax_hopfield(two, st, steps=9, step_size=0.3,
                             nudge=Nudge(beta, grad=output_grad_fn(loss, yy, 4, x.dtype)))
        got = relax_hopfield_inplace(two, st, steps=9, step_size=0.3, workspace=ws, nudge=Nudge(
            beta, grad_t=output_grad_fn(loss, yy, 4, x.dtype, feature_major=True)))
        for g, r in zip(got.states, ref.states, strict=True):
            torch.testing.assert_close(g, r, **F64)
        for sign, rows in ((0.4, slice(0, 7)), (-0.4, slice(7, 14))):
            one = relax_hopfield(chain, start, steps=9, step_size=0.3, nudge=Nudge(
                sign, grad=output_grad_fn(loss, y, 4, x.dtype)))
            for g, r in zip(got.states, one.states, strict=True):
                torch.testing.assert_close(g[rows], r, **F64)


def test_hopfield_param_contrast_is_autograd_of_the_energy_contrast() -> None:
    model = _mlp((9, 8, 6, 4))
    x, _ = _batch(9, 4)
    lins, acts = _acts(model)
    g = torch.Generator().manual_seed(5)
    sa = [torch.randn(7, m.out_features, generator=g, dtype=torch.float64) for m in lins]
    sb = [torch.randn(7, m.out_features, generator=g, dtype=torch.float64) for m in lins]
    ws, bs = [m.weight for m in lins], [m.bias for m in lins]
    with torch.enable_grad():
        contrast = 0.7 * (hopfield_energy(sa, x, ws, bs, acts).sum()
                          - hopfield_energy(sb, x, ws, bs, acts).sum())
        want = torch.autograd.grad(contrast, [t for pair in zip(ws, bs, strict=True) for t in pair])
    got = hopfield_param_contrast([a(s) for a, s in zip(acts, sa, strict=True)],
                                  [a(s) for a, s in zip(acts, sb, strict=True)], x, 0.7)
    for (gw, gb), ww, wb in zip(got, want[::2], want[1::2], strict=True):
        torch.testing.assert_close(gw, ww, **F64)
        torch.testing.assert_close(gb, wb, **F64)


def test_eqprop_predict_is_the_step_free_phase_and_reference_output_is_predict() -> None:
    model = _mlp((9, 8, 6, 4))
    x, y = _batch(9, 4)
    rule = biograd.create_rule("equilibrium_prop", model, free_steps=15)
    out = rule.step(x, y).output
    torch.testing.assert_close(rule.predict(x), out, **F64)
    torch.testing.assert_close(rule.reference_output(x), rule.predict(x), rtol=0, atol=0)
    _, free, _, _ = _eqprop_reference(model, x, y, rule.loss_fn, beta=0.5, free_steps=15,
                                      nudged_steps=1, eps=0.5, symmetric=True)
    torch.testing.assert_close(out, free[-1], **F64)


def test_eqprop_updates_accumulate_and_leave_frozen_parameters_alone() -> None:
    model = _mlp((9, 8, 6, 4), bias=False)
    model[2].weight.requires_grad_(False)
    x, y = _batch(9, 4)
    rule = biograd.create_rule("equilibrium_prop", model, free_steps=8, nudged_steps=3)
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)
    once = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
    rule.step(x, y)
    assert model[2].weight.grad is None
    for p in model.parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, 2 * once[id(p)], **F64)


# ---------------------------------------------------------------------- activation relaxation
def _ar_rules(model, **hp):
    fast = biograd.create_rule("activation_relaxation", model, **hp)
    slow = biograd.create_rule("activation_relaxation", model, solver="euler", **hp)
    slow.load_state_dict(fast.state_dict())  # the same random / learned backward weights
    return fast, slow


@pytest.mark.parametrize("kind", ["mlp", "deep", "cnn"])
@pytest.mark.parametrize("backward,derivative", [("exact", "kept"), ("random", "dropped"),
                                                 ("learned", "kept")])
@pytest.mark.parametrize("steps,init", [(1, "forward"), (2, "zeros"), (3, "forward"),
                                        (100, "forward")])
def test_ar_closed_form_equals_the_euler_steps(kind, backward, derivative, steps, init) -> None:
    """The closed form (default) returns the Euler loop's activities, residual energies and
    updates, for every variant, model kind and number of steps (fewer than the depth too)."""
    if kind == "cnn":
        torch.manual_seed(0)
        model = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6).double()
        x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])
    else:
        sizes = (9, 8, 7, 6, 5, 4) if kind == "deep" else (9, 8, 6, 4)
        model = _mlp(sizes, nn.Tanh)
        x, y = _batch(9, 4)
    fast, slow = _ar_rules(model, backward=backward, derivative=derivative, steps=steps,
                           init=init, step_size=0.3)
    got = fast.relax_activities(x, y)
    want = slow.relax_activities(x, y)
    for g, w in zip(got[0], want[0], strict=True):
        torch.testing.assert_close(g, w, **F64)
    assert got[3].energies == pytest.approx(want[3].energies, rel=1e-8, abs=1e-14)
    assert got[3].steps == want[3].steps == steps
    for rule in (fast, slow):
        rule.zero_grad(set_to_none=True)
        rule.step(x, y)
    for p, q in zip(fast.parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **F64)


def test_ar_mlp_step_equals_euler_steps_written_out() -> None:
    """P4 Eq. 5-6 by hand for a tanh MLP: x_l <- x_l + eps (W_{l+1}^T (f'(h_{l+1}) x_{l+1})
    - x_l) for ``steps`` steps from the forward values, top x_L = dl_i/dz_L held; then
    dW_l = (f'(h_l) x_l)^T z_{l-1} / B."""
    model = _mlp((9, 8, 6, 4))
    x, y = _batch(9, 4)
    rule = biograd.create_rule("activation_relaxation", model, steps=7, step_size=0.2)
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)
    lins = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        h1 = lins[0](x)
        h2 = lins[1](torch.tanh(h1))
        out = lins[2](torch.tanh(h2))
        zs = [x, torch.tanh(h1), torch.tanh(h2)]
        fp = [1 - torch.tanh(h1) ** 2, 1 - torch.tanh(h2) ** 2, torch.ones_like(out)]
        top = (torch.softmax(out, -1) - nn.functional.one_hot(y, 4).double())
        acts = [zs[1].clone(), zs[2].clone(), top]
        for _ in range(7):
            acts[:2] = [a + 0.2 * ((fp[i + 1] * acts[i + 1]) @ lins[i + 1].weight - a)
                        for i, a in enumerate(acts[:2])]
        for i, lin in enumerate(lins):
            delta = fp[i] * acts[i]
            torch.testing.assert_close(lin.weight.grad, delta.T @ zs[i] / 7, **F64)
            torch.testing.assert_close(lin.bias.grad, delta.mean(0), **F64)


def test_ar_float32_closed_form_is_within_rounding_of_the_euler_steps() -> None:
    model = _mlp((30, 24, 16, 10), dtype=torch.float32)
    x, y = _batch(30, 10, batch=16, dtype=torch.float32)
    fast, slow = _ar_rules(model)
    for g, w in zip(fast.relax_activities(x, y)[0], slow.relax_activities(x, y)[0], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 * float(w.abs().max()))


def test_ar_tol_uses_the_euler_steps() -> None:
    model = _mlp((9, 8, 6, 4))
    x, y = _batch(9, 4)
    rule = biograd.create_rule("activation_relaxation", model, steps=500, tol=1e-8)
    res = rule.relax_activities(x, y)[3]
    assert res.converged and res.steps < 500


def test_ar_solver_is_checked() -> None:
    with pytest.raises(biograd.ConfigError, match="solver must be one of"):
        biograd.create_rule("activation_relaxation", _mlp((9, 8, 4)), solver="rk4")


# ---------------------------------------------------------------------- target propagation
def _tp_pair(name, model, **hp):
    import copy

    other = copy.deepcopy(model)
    torch.manual_seed(3)
    fast = biograd.create_rule(name, model, **hp)
    torch.manual_seed(3)
    slow = biograd.create_rule(name, other, **hp)
    slow.closed_form_feedback = False  # autograd on the loss: the reference
    return fast, slow


@pytest.mark.parametrize("name,hp", [
    ("dtp", {}), ("dtp", {"feedback_guard": 0.0, "feedback_steps": 2}),
    ("dtp_sigma", {}), ("drl", {}), ("drl", {"damping": 0.3, "feedback_activation": "matched"}),
    ("ldrl", {}), ("ldrl", {"feedback_lr": 0.5, "feedback_steps": [3, 2]}),
])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_tp_closed_form_feedback_equals_autograd(name, hp, kind) -> None:
    """Three training steps with closed-form feedback gradients against autograd's: the same
    noise, feedback weights, guard scales, losses and forward updates up to float rounding.
    The CNN mixes both: its Linear feedback blocks use the closed form, the others autograd."""
    if kind == "cnn":
        torch.manual_seed(0)
        model = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6).double()
        x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])
        if isinstance(hp.get("feedback_steps"), list):
            hp = {**hp, "feedback_steps": [3, 2, 2]}
    else:
        model = _mlp((9, 8, 6, 4))
        x, y = _batch(9, 4)
    fast, slow = _tp_pair(name, model, **hp)
    for _ in range(3):
        metrics = []
        for rule in (fast, slow):
            rule.zero_grad(set_to_none=True)
            metrics.append(rule.step(x, y).metrics)
        assert metrics[0].keys() == metrics[1].keys()
        for key in metrics[0]:
            assert metrics[0][key] == pytest.approx(metrics[1][key], rel=1e-9, abs=1e-12), key
        for p, q in zip(fast.forward_parameters(), slow.forward_parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, **F64)
        for p, q in zip(fast.feedback.parameters(), slow.feedback.parameters(), strict=True):
            torch.testing.assert_close(p, q, **F64)
        with torch.no_grad():  # move the forward weights, as training does
            for p in fast.forward_parameters() + slow.forward_parameters():
                p.sub_(0.05 * p.grad)


@pytest.mark.parametrize("loss_name", ["dtp", "drl", "ldrl"])
@pytest.mark.parametrize("flatten", [False, True])
def test_quadratic_step_is_autograd_of_the_loss(loss_name, flatten) -> None:
    """The closed-form gradient, value and curvature d^T H d of each feedback loss against
    autograd (gradient, and the Hessian-vector product by double backward), on one block
    whose feedback reshapes to an image (the first Linear after a flatten) or not."""
    from biograd.core.blocks import as_blocks
    from biograd.ops.inverse import block_forward, make_feedback
    from biograd.ops.tp_losses import (
        DifferenceReconstructionLoss,
        LocalDifferenceReconstructionLoss,
        ReconstructionLoss,
    )
    from biograd.ops.tp_quadratic import quadratic_step

    torch.manual_seed(0)
    if flatten:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 5),
                              nn.Tanh(), nn.Linear(5, 3)).double()
        x0 = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    else:
        model = _mlp((7, 6, 5, 3))
        x0 = torch.randn(6, 7, dtype=torch.float64)
    blocks = as_blocks(model)
    x = blocks[0](x0).detach()
    y, ctx = block_forward(blocks[1], x)
    y = y.detach()
    g = make_feedback(blocks[1], torch.Generator().manual_seed(1))
    with torch.no_grad():
        g.bias.normal_()
    loss = {"dtp": ReconstructionLoss(), "drl": DifferenceReconstructionLoss(0.4),
            "ldrl": LocalDifferenceReconstructionLoss()}[loss_name]

    def f(t):
        return block_forward(blocks[1], t)[0]

    q = quadratic_step(loss, f, g, x, y, ctx, 0.3, torch.Generator().manual_seed(2))
    params = list(g.parameters())
    for p in params:
        p.requires_grad_(True)
    value = loss(f, g, x, y, ctx, 0.3, torch.Generator().manual_seed(2))
    grads = torch.autograd.grad(value, params, allow_unused=True, create_graph=True)
    torch.testing.assert_close(q.value(), value.detach(), **F64)
    for got, want in zip(q.grads, grads, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want.detach(), **F64)
    direction = [torch.randn_like(p) if w is not None else None for p, w in zip(params, grads,
                                                                                 strict=True)]
    used = [(w, d) for w, d in zip(grads, direction, strict=True) if w is not None]
    hv = torch.autograd.grad([w for w, _ in used], [p for p, w in zip(params, grads, strict=True)
                                                    if w is not None],
                             grad_outputs=[d for _, d in used])
    dhd = sum(float((d * h).sum()) for (_, d), h in zip(used, hv, strict=True))
    assert q.curvature(direction) == pytest.approx(dhd, rel=1e-9)


def test_eqprop_copies_and_pickles_of_a_trained_rule_step_alike() -> None:
    """The in-place loop's workspace (buffers and calls bound to them) is not shared by deep
    copies (update_alignment's probe) or pickles: each relaxes on its own buffers."""
    import copy
    import io

    model = _mlp((9, 8, 6, 4))
    x, y = _batch(9, 4)
    rule = biograd.create_rule("equilibrium_prop", model, free_steps=8, nudged_steps=3)
    rule.step(x, y)
    twin = copy.deepcopy(rule)
    buf = io.BytesIO()
    torch.save(rule, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x2, _ = _batch(9, 4, seed=9)
    outs = [r.step(x2, y).output.clone() for r in (rule, twin, loaded)]
    assert [r._workspace is rule._workspace for r in (twin, loaded)] == [False, False]
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=0, atol=0)
