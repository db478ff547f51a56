"""The closed-form chain path of predictive coding (biograd.ops.pc_chain) against autograd on
the energy F, against the general graph implementation, and SGD + momentum inference against
torch.optim.SGD (the optimiser PCX relaxes its value nodes with)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biograd
from biograd.core import losses
from biograd.core.errors import ConfigError, UnsupportedModelError
from biograd.core.relax import relax
from biograd.ops.pc_chain import ChainInference, activation_fns, chain_stages
from tests.conftest import assert_same_step

ACTS = [nn.Tanh(), nn.Sigmoid(), nn.ReLU(), nn.LeakyReLU(0.1), nn.GELU(),
        nn.GELU(approximate="tanh")]


def _mlp(act: str = "tanh") -> nn.Sequential:
    torch.manual_seed(0)
    return biograd.models.mlp(7, [6, 5, 4], 3, activation=act).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 7, generator=g, dtype=torch.float64), torch.tensor([0, 2, 1, 2, 0])


@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
def test_activation_vjps_equal_autograd(act: nn.Module) -> None:
    """vjp(e, pre, f(pre)) = f'(pre) * e, as autograd differentiates the module itself."""
    g = torch.Generator().manual_seed(4)
    a = torch.linspace(-4, 4, 101, dtype=torch.float64).requires_grad_(True)
    e = torch.randn(101, generator=g, dtype=torch.float64)
    fns = activation_fns(act)
    assert fns is not None
    f, vjp = fns
    (ref,) = torch.autograd.grad(act(a), a, e)
    mu = f(a.detach())
    torch.testing.assert_close(mu, act(a).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vjp(e, a.detach(), mu), ref, rtol=1e-10, atol=1e-12)
    assert activation_fns(nn.ELU()) is None  # unknown activations take the graph path


def _energy(model: nn.Sequential, layout: str, x, states, y, loss, beta) -> torch.Tensor:
    """F written from its definition with torch.nn modules (no pc_chain code):
    one value node per module ('graph') or per Linear -> activation block ('blocks')."""
    mods = [m for m in model if not isinstance(m, nn.Flatten)]
    fns: list = []
    for m in mods:
        if layout == "blocks" and not isinstance(m, nn.Linear) and fns:
            prev = fns.pop()
            fns.append(lambda u, p=prev, a=m: a(p(u)))
        else:
            fns.append(m)
    vals = [x, *states]
    total = sum(0.5 * (s - f(u)).pow(2).sum() for s, f, u in zip(states, fns, vals, strict=False))
    return total + beta * loss(fns[-1](vals[-1]), y)


@pytest.mark.parametrize("layout", ["graph", "blocks"])
@pytest.mark.parametrize("loss", [losses.cross_entropy, losses.mse])
def test_closed_form_gradients_equal_autograd_on_the_energy(layout: str, loss) -> None:
    """At random (off-equilibrium) value nodes, -dF/dx and dF/dtheta from the closed forms
    equal autograd on F."""
    model, (x, y) = _mlp("gelu"), _batch()
    stages = chain_stages(model, layout)
    assert stages is not None
    inf = ChainInference(stages, x, y, loss, beta=0.7)
    g = torch.Generator().manual_seed(2)
    states = [s + torch.randn(s.shape, generator=g, dtype=s.dtype) for s in inf.initial]
    leaves = [s.clone().requires_grad_(True) for s in states]
    params = list(model.parameters())
    energy = _energy(model, layout, x, leaves, y, loss, 0.7)
    grads = torch.autograd.grad(energy, leaves + params)
    deltas, f = inf.dynamics(states)
    torch.testing.assert_close(f, energy.detach(), rtol=1e-12, atol=1e-12)
    for d, ref in zip(deltas, grads[: len(states)], strict=True):
        torch.testing.assert_close(d, -ref, rtol=1e-10, atol=1e-12)
    written: dict[int, torch.Tensor] = {}
    inf.write_updates(states, lambda p, u: written.__setitem__(id(p), u))
    for p, ref in zip(params, grads[len(states):], strict=True):
        torch.testing.assert_close(written[id(p)], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.65])
@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_fast_path_equals_the_graph_implementation(momentum: float, act: str) -> None:
    """Default node layout: the chain path is the same algorithm as the general graph path
    (autograd through the captured graph at every step): same updates and energy trace."""
    x, y = _batch()
    kw = dict(T=6, gamma=0.3, beta=0.5, init_noise=0.1, momentum=momentum)
    fast = biograd.create_rule("predictive_coding", _mlp(act), **kw)
    slow = biograd.create_rule("predictive_coding", _mlp(act), fast_path=False, **kw)
    assert fast._stages is not None and slow._stages is None
    assert_same_step(fast, fast.step(x, y), slow, slow.step(x, y), grad_rtol=1e-10)


def test_blocks_layout_step_equals_sgd_momentum_on_the_energy() -> None:
    """nodes='blocks', momentum: the value nodes follow torch.optim.SGD(lr=gamma, momentum)
    on F (a fresh optimiser, as PCX resets its state every batch), and the weights receive
    dF/dtheta / beta at the relaxed state, all from autograd on F."""
    model, (x, y) = _mlp("gelu"), _batch()
    ref_model = copy.deepcopy(model)
    T, gamma, mom, beta = 5, 0.2, 0.65, 2.0
    rule = biograd.create_rule("predictive_coding", model, T=T, gamma=gamma, beta=beta,
                               momentum=mom, nodes="blocks", loss="mse")
    rule.step(x, y)
    mods = list(ref_model)[1:]
    with torch.no_grad():
        states, u = [], x
        for lin, act in zip(mods[0:-1:2], mods[1::2], strict=True):
            u = act(lin(u))
            states.append(u.clone())
    leaves = [s.requires_grad_(True) for s in states]
    opt = torch.optim.SGD(leaves, lr=gamma, momentum=mom)
    for _ in range(T):
        opt.zero_grad()
        _energy(ref_model, "blocks", x, leaves, y, losses.mse, beta).backward()
        opt.step()
    ref_model.zero_grad()
    (_energy(ref_model, "blocks", x, leaves, y, losses.mse, beta) / beta).backward()
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12)


def test_relax_momentum_is_heavy_ball_sgd() -> None:
    """relax(momentum=m) on F(s) = 1/2 ||A s - b||^2 follows torch.optim.SGD(momentum=m)."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    s0 = torch.randn(4, generator=g, dtype=torch.float64)

    def dyn(states):
        return [-(A.T @ (A @ states[0] - b))], None

    res = relax([s0], dyn, steps=9, step_size=0.05, momentum=0.8)
    s = s0.clone().requires_grad_(True)
    opt = torch.optim.SGD([s], lr=0.05, momentum=0.8)
    for _ in range(9):
        opt.zero_grad()
        (0.5 * (A @ s - b).pow(2).sum()).backward()
        opt.step()
    torch.testing.assert_close(res.states[0], s.detach(), rtol=1e-12, atol=1e-12)
    plain = relax([s0], dyn, steps=9, step_size=0.05)
    assert not torch.allclose(plain.states[0], res.states[0])


def test_non_chain_models_use_the_graph_path_and_blocks_needs_a_chain() -> None:
    cnn = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6)
    assert biograd.create_rule("predictive_coding", cnn)._stages is None
    with pytest.raises(UnsupportedModelError, match="nodes='blocks'"):
        biograd.create_rule("predictive_coding", cnn, nodes="blocks")
    with pytest.raises(ConfigError, match="momentum"):
        biograd.create_rule("predictive_coding", _mlp(), momentum=1.0)
    with pytest.raises(ConfigError, match="nodes"):
        biograd.create_rule("predictive_coding", _mlp(), nodes="layers")


def test_output_error_closed_forms_equal_autograd() -> None:
    from biograd.ops.pc_chain import output_error
    mu = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 2, 0])
    for loss in (losses.cross_entropy, losses.mse):
        (ref,) = torch.autograd.grad(0.7 * loss(mu, y), mu)
        torch.testing.assert_close(output_error(loss, mu.detach(), y, 0.7), -ref)
    soft = F.softmax(torch.randn(5, 3, dtype=torch.float64), -1)
    # float targets: one-hot, soft, and with a mass other than 1 per row (the closed form's
    # softmax(mu) sum(t) term)
    for t in (F.one_hot(y, 3).double(), soft, 2.5 * soft):
        (ref,) = torch.autograd.grad(0.7 * losses.cross_entropy(mu, t), mu)
        torch.testing.assert_close(output_error(losses.cross_entropy, mu.detach(), t, 0.7), -ref)
