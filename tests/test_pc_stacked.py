"""The stacked uniform-width chain path of predictive coding (biograd.ops.pc_stacked) against
autograd on the energy F (at random states, and at states where only the last value nodes
moved, which exercises the reuse of the start's predictions), against the per-layer chain path
(biograd.ops.pc_chain) over whole relaxations, and its GELU against autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import biograd
from biograd.core import losses
from biograd.ops.pc_chain import chain_stages
from biograd.ops.pc_stacked import StackedChain, saved_activation, stackable
from tests.conftest import assert_same_step

ACTS = ["tanh", "relu", "gelu", "gelu_tanh"]


def _mlp(act: str, hidden: tuple[int, ...] = (5, 5, 5, 5)) -> nn.Sequential:
    torch.manual_seed(0)
    model = biograd.models.mlp(7, list(hidden), 3, activation=act.removesuffix("_tanh"))
    if act == "gelu_tanh":
        for i, m in enumerate(model):
            if isinstance(m, nn.GELU):
                model[i] = nn.GELU(approximate="tanh")
    return model.double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 7, generator=g, dtype=torch.float64), torch.tensor([0, 2, 1, 2, 0, 1])


def _energy(model: nn.Sequential, x, nodes: list[torch.Tensor], y, loss, beta) -> torch.Tensor:
    """F of the blocks layout from its definition with the torch.nn modules themselves."""
    mods = [m for m in model if not isinstance(m, nn.Flatten)]
    blocks = [nn.Sequential(mods[i], mods[i + 1]) for i in range(0, len(mods) - 1, 2)]
    inputs = [x, *nodes]
    total = sum(0.5 * (s - f(u)).pow(2).sum() for s, f, u in zip(nodes, blocks, inputs,
                                                                   strict=False))
    return total + beta * loss(mods[-1](nodes[-1]), y)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("moved", ["all", "last", "last_two", "none"])
@pytest.mark.parametrize("loss", [losses.mse, losses.cross_entropy])
def test_stacked_gradients_equal_autograd_on_the_energy(act: str, moved: str, loss) -> None:
    """-dF/dx and dF/dtheta from the stacked closed forms equal autograd on F, at random
    states and at states where only the last nodes left the feed-forward start (there the
    start's predictions are reused and products with zero errors skipped)."""
    model, (x, y) = _mlp(act), _batch()
    stages = chain_stages(model, "blocks")
    assert stages is not None and stackable(stages)
    inf = StackedChain(stages, x, y, loss, beta=0.7)
    (start,) = inf.initial
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(start.shape, generator=g, dtype=start.dtype)
    keep = {"all": 0, "last": 3, "last_two": 2, "none": 4}[moved]
    noise[:keep] = 0
    state = start + noise
    assert inf._unmoved(state) == keep
    leaves = [s.clone().requires_grad_(True) for s in state]
    params = list(model.parameters())
    energy = _energy(model, x, leaves, y, loss, 0.7)
    grads = torch.autograd.grad(energy, leaves + params)
    (delta,), f = inf.dynamics([state])
    torch.testing.assert_close(f, energy.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(delta, -torch.stack(grads[:4]), rtol=1e-10, atol=1e-12)
    written: dict[int, torch.Tensor] = {}
    inf.write_updates([state], lambda p, u: written.__setitem__(id(p), u))
    for p, ref in zip(params, grads[4:], strict=True):
        torch.testing.assert_close(written[id(p)], ref, rtol=1e-10, atol=1e-12)


def test_feed_forward_start_moves_only_the_last_node() -> None:
    """At the start every hidden error is exactly zero: only the last value node moves."""
    model, (x, y) = _mlp("tanh"), _batch()
    inf = StackedChain(chain_stages(model, "blocks"), x, y, losses.cross_entropy)  # type: ignore
    (delta,), _ = inf.dynamics(inf.initial)
    assert torch.count_nonzero(delta[:-1]) == 0
    assert torch.count_nonzero(delta[-1]) > 0


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("T", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("init_noise", [0.0, 0.1])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_stacked_rule_step_equals_the_per_layer_chain(act: str, T: int, init_noise: float,
                                                      loss: str) -> None:
    """A whole predictive_coding step (relaxation with momentum, then the weight updates) on
    the stacked path equals the per-layer chain path: same updates, energy trace and loss."""
    x, y = _batch()
    kw = dict(T=T, gamma=0.2, beta=0.7, momentum=0.5, nodes="blocks", loss=loss,
              init_noise=init_noise)
    model = _mlp(act)
    torch.manual_seed(5)
    fast = biograd.create_rule("predictive_coding", model, **kw)
    torch.manual_seed(5)
    ref = biograd.create_rule("predictive_coding", copy.deepcopy(model), **kw)
    ref._stacked = False
    assert fast._stacked
    assert_same_step(fast, fast.step(x, y), ref, ref.step(x, y), grad_rtol=1e-9)


@pytest.mark.parametrize("act", [nn.GELU(approximate="tanh"), nn.GELU(), nn.Tanh(), nn.ReLU()],
                         ids=repr)
def test_saved_activations_equal_autograd(act: nn.Module) -> None:
    """forward(a)[0] = act(a) and vjp(e, a, saved) = f'(a) * e from autograd on the module,
    over a range reaching the tails (|a| = 12)."""
    a = torch.linspace(-12, 12, 241, dtype=torch.float64).requires_grad_(True)
    e = torch.randn(241, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    stage = chain_stages(nn.Sequential(nn.Linear(2, 2), act, nn.Linear(2, 2)), "blocks")[0]  # type: ignore
    fwd, vjp = saved_activation(stage)
    (ref,) = torch.autograd.grad(act(a), a, e)
    saved = fwd(a.detach())
    torch.testing.assert_close(saved[0], act(a).detach(), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(vjp(e, a.detach(), saved), ref, rtol=1e-12, atol=1e-14)


def test_which_chains_are_stacked() -> None:
    """Uniform hidden widths and one activation: stacked; otherwise the per-layer path."""
    def rule(model: nn.Module, **kw):
        return biograd.create_rule("predictive_coding", model, **kw)

    assert rule(_mlp("tanh"), nodes="blocks")._stacked
    assert not rule(_mlp("tanh"))._stacked  # the graph layout: one node per module
    assert not rule(_mlp("tanh", (5, 4, 5)), nodes="blocks")._stacked
    assert not rule(_mlp("tanh", (5,)), nodes="blocks")._stacked  # no middle stage
    mixed = _mlp("tanh", (5, 5, 5))
    mixed[4] = nn.ReLU()
    assert not rule(mixed, nodes="blocks")._stacked
    slope = biograd.models.mlp(7, [5, 5, 5], 3, activation="tanh")
    slope[2], slope[4], slope[6] = nn.LeakyReLU(0.1), nn.LeakyReLU(0.1), nn.LeakyReLU(0.2)
    assert not rule(slope, nodes="blocks")._stacked


def test_stacked_updates_accumulate_over_micro_batches() -> None:
    """The updates handed to .grad without a copy (views of one stacked tensor for the middle
    layers) accumulate like autograd's: two steps without zeroing give the sum of each step's
    update taken alone."""
    x, y = _batch()
    kw = dict(T=4, gamma=0.2, beta=0.7, momentum=0.5, nodes="blocks", loss="mse")
    model = _mlp("gelu_tanh")
    rule = biograd.create_rule("predictive_coding", model, **kw)
    halves = [(x[:3], y[:3]), (x[3:], y[3:])]
    alone = []
    for xb, yb in halves:
        model.zero_grad(set_to_none=True)
        rule.step(xb, yb)
        alone.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    for xb, yb in halves:
        rule.step(xb, yb)
    for p, a, b in zip(model.parameters(), *alone, strict=True):
        torch.testing.assert_close(p.grad, a + b, rtol=1e-12, atol=1e-15)
