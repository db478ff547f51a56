"""predictive_coding(compile=True): the stacked chain's whole step compiled by torch.compile
(biograd.ops.pc_compiled) against the eager stacked path, whose closed forms
tests/test_pc_stacked.py checks against autograd on the energy. Same batch, same noise draws,
float64: the updates, the energy trace and the loss agree to rounding, at every point of the
event-driven schedule (nodes that have not moved yet) and with noise (every node moves)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import biograd
from biograd.core.errors import ConfigError, UnsupportedModelError
from tests.conftest import assert_same_step


def _mlp(act: str, hidden: list[int]) -> nn.Sequential:
    torch.manual_seed(0)
    model = biograd.models.mlp(7, hidden, 3, activation=act.removesuffix("_tanh"))
    if act == "gelu_tanh":
        for i, m in enumerate(model):
            if isinstance(m, nn.GELU):
                model[i] = nn.GELU(approximate="tanh")
    return model.double()


def _pair(act: str, **kw):
    model = _mlp(act, [5, 5, 5, 5])
    ref = biograd.create_rule("predictive_coding", model, nodes="blocks", **kw)
    fast = biograd.create_rule("predictive_coding", copy.deepcopy(model), nodes="blocks",
                               compile=True, **kw)
    fast.generator.set_state(ref.generator.get_state())  # the same noise draws
    assert ref._stacked and fast._stacked
    return fast, ref


@pytest.mark.parametrize("act,kw", [
    # PCX's setting: SGD + momentum on the value nodes, squared error; T > 4 nodes, so the
    # schedule passes from "only the last node moved" to every node moving
    ("gelu_tanh", dict(loss="mse", T=6, gamma=0.1, momentum=0.65, beta=2.0)),
    # plain gradient steps, cross-entropy, T < 4: the update is taken while the first node
    # still holds its start value (its error and the first layer's update exactly zero)
    ("tanh", dict(loss="cross_entropy", T=3, gamma=0.2, beta=0.5)),
    # noisy start: every node moves from the first step
    ("relu", dict(loss="cross_entropy", T=4, gamma=0.1, beta=1.0, init_noise=0.3)),
])
def test_compiled_step_equals_the_eager_stacked_step(act: str, kw: dict) -> None:
    fast, ref = _pair(act, **kw)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 7, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2, 0, 1])
    for _ in range(2):  # the second call reuses the compiled function
        for rule in (fast, ref):
            rule.model.zero_grad(set_to_none=True)
        r_fast, r_ref = fast.step(x, y), ref.step(x, y)
        assert_same_step(fast, r_fast, ref, r_ref, grad_rtol=1e-10)
        torch.testing.assert_close(r_fast.output, r_ref.output, rtol=1e-12, atol=1e-15)
        if kw["T"] < 4 and not kw.get("init_noise"):
            first = next(m for m in fast.model if isinstance(m, nn.Linear))
            assert float(first.weight.grad.abs().max()) == 0.0


def test_compile_refuses_what_it_does_not_run() -> None:
    """compile=True runs the stacked chain only, with the library's two losses."""
    with pytest.raises(UnsupportedModelError, match="compile=True.*one width"):
        biograd.create_rule("predictive_coding", _mlp("tanh", [5, 6, 5]), nodes="blocks",
                            compile=True)
    with pytest.raises(UnsupportedModelError, match="compile=True"):
        biograd.create_rule("predictive_coding", _mlp("tanh", [5, 5]), compile=True)
    with pytest.raises(ConfigError, match="compile=True supports loss"):
        biograd.create_rule("predictive_coding", _mlp("tanh", [5, 5, 5]), nodes="blocks",
                            compile=True, loss=lambda out, y: out.sum())
