"""Z-IL (P5): parameter updates equal autograd's gradients on every architecture, and each of
the conditions C1 (start at the feed-forward values), C3 (gamma = 1) and levelling matters."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import Tensor, nn

import biograd
from biograd.core.losses import output_error
from biograd.core.relax import relax
from biograd.graph import PCInference, forward
from biograd.graph import plan as plan_module
from biograd.metrics.alignment import max_relative_difference
from biograd.models.sequence import (
    lstm_classifier,
    rnn_classifier,
    transformer_block_classifier,
)
from biograd.rules.zil import LEVELS_PER_CALL, FrontierSchedule, RelaxSchedule
from tests.conftest import make_model

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


class _Odd(nn.Module):
    """Exercises capture: a raw parameter transformed outside the input path (inlined), a
    tuple-returning split (inlined into getitem), cat over several vertices, a view sized by
    x.size(0) (a per-batch constant), a parameter reused by two vertices, a dead branch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 6) * 0.4)
        self.lin = nn.Linear(6, 8)
        self.scale = nn.Parameter(torch.rand(4) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        b = x.size(0)
        h = torch.tanh(nn.functional.linear(x, self.w.t()))
        a, c = torch.split(self.lin(h), 4, dim=1)
        dead = torch.sigmoid(c) * 3  # noqa: F841 (not used by the output)
        z = torch.cat([torch.tanh(a) * self.scale, torch.relu(c) * self.scale], dim=1)
        return z.view(b, 2, 4).sum(1) + h[:, :4]


def _model(kind: str) -> tuple[nn.Module, Tensor, Tensor]:
    if kind in ("mlp", "cnn", "resnet", "graph"):
        return make_model(kind)
    if kind == "odd":
        torch.manual_seed(0)
        return _Odd(), torch.randn(7, 5), torch.randint(0, 4, (7,))
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    build = {"rnn": rnn_classifier, "lstm": lstm_classifier}.get(kind)
    model = (build(5, 8, 4, 6) if build is not None
             else transformer_block_classifier(5, 8, 2, 4, 6))
    return model, torch.randn(7, 6, 5, generator=g), torch.randint(0, 4, (7,), generator=g)


def _updates_vs_backprop(kind: str, dtype: torch.dtype = torch.float64, **hp):
    model, x, y = _model(kind)
    model, x = model.to(dtype), x.to(dtype)
    ref = copy.deepcopy(model)
    biograd.create_rule("backprop", ref).step(x, y)
    rule = biograd.create_rule("zil", model, **hp)
    result = rule.step(x, y)
    diffs = {n: max_relative_difference(p.grad, q.grad)
             for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True)}
    return diffs, rule, result, model, ref


#: the architectures of the P5 report (docs/results/p5-zil.md), plus two capture exercises
ARCHS = ["mlp", "cnn", "rnn", "lstm", "resnet", "transformer", "graph", "odd"]


@functools.cache
def _zil(kind: str, dtype: torch.dtype, exact_shortcut: bool):
    """(rule, parameter updates, metrics) of one Z-IL step on ``kind``'s model and batch."""
    model, x, y = _model(kind)
    model, x = model.to(dtype), x.to(dtype)
    rule = biograd.create_rule("zil", model, exact_shortcut=exact_shortcut, energy_trace=True)
    metrics = rule.step(x, y).metrics
    return rule, {n: p.grad for n, p in model.named_parameters()}, metrics


def _traces(metrics: dict[str, float], name: str) -> list[float]:
    return [metrics[f"{name}_{t}"] for t in range(int(metrics["inference_steps"]) + 1)]


@pytest.mark.parametrize("kind", ARCHS)
def test_full_pc_dynamics_under_c1_c3_equal_backprop(kind: str) -> None:
    """P5 Thm. 1 on the PC dynamics themselves: value nodes, errors x_v - mu_v, gradient
    steps on the energy for every vertex at every step (core.relax, gamma = 1), the level-k
    parameters updated at step k. Their updates equal autograd's gradients."""
    rule, grads, _ = _zil(kind, torch.float64, False)
    assert isinstance(rule.schedule, RelaxSchedule)
    model, x, y = _model(kind)
    model, x = model.double(), x.double()
    biograd.create_rule("backprop", model).step(x, y)
    diffs = {n: max_relative_difference(grads[n], p.grad) for n, p in model.named_parameters()}
    assert max(diffs.values()) <= 1e-10, diffs


#: float32: the PC error x_v - mu_v is a difference of two nearly equal values, which costs
#: about |x_v| / |e_v| ulps (up to ~1e-4 relative on the ResNet), so the bound is looser.
FULL_TOL = {torch.float32: 1e-3, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ARCHS)
def test_fast_path_equals_the_full_dynamics(kind: str, dtype: torch.dtype) -> None:
    """The default schedule is an event-driven implementation of the PC dynamics under C1-C3
    on a levelled graph: its updates and the energy its error wave carries at each step are
    those of the full dynamics (and, as the full dynamics are, autograd's gradients)."""
    fast, fast_grads, fast_m = _zil(kind, dtype, True)
    full, full_grads, full_m = _zil(kind, dtype, False)
    assert isinstance(fast.schedule, FrontierSchedule)
    assert isinstance(full.schedule, RelaxSchedule)
    diffs = {n: max_relative_difference(g, full_grads[n]) for n, g in fast_grads.items()}
    assert max(diffs.values()) <= FULL_TOL[dtype], diffs
    wave, full_wave = _traces(fast_m, "energy"), _traces(full_m, "energy")
    assert wave == pytest.approx(full_wave, rel=FULL_TOL[dtype], abs=0)
    assert full_wave[0] > 0 and "free_energy_0" in full_m and "free_energy_0" not in fast_m
    model, x, y = _model(kind)
    model, x = model.to(dtype), x.to(dtype)
    biograd.create_rule("backprop", model).step(x, y)
    to_bp = {n: max_relative_difference(fast_grads[n], p.grad)
             for n, p in model.named_parameters()}
    assert max(to_bp.values()) <= TOL[dtype], to_bp


@pytest.mark.parametrize("grouping", [(1, True), (3, False), (LEVELS_PER_CALL, False)])
@pytest.mark.parametrize("kind", ARCHS)
def test_every_grouping_of_steps_is_the_same_dynamics(kind: str, grouping) -> None:
    """One autograd call per inference step (levels_per_call=1, every value node cut), or
    several steps per call (the engine runs the same local vjps level after level), with or
    without the energy trace: the updates are those of the full PC dynamics, and so is the
    energy the wave carries at every step."""
    k, trace = grouping
    _, full_grads, full_m = _zil(kind, torch.float64, False)
    model, x, y = _model(kind)
    model, x = model.double(), x.double()
    rule = biograd.create_rule("zil", model, levels_per_call=k, energy_trace=trace)
    metrics = rule.step(x, y).metrics
    assert isinstance(rule.schedule, FrontierSchedule)
    diffs = {n: max_relative_difference(p.grad, full_grads[n])
             for n, p in model.named_parameters()}
    assert max(diffs.values()) <= FULL_TOL[torch.float64], diffs
    if trace:
        assert _traces(metrics, "energy") == pytest.approx(_traces(full_m, "energy"),
                                                           rel=1e-10, abs=0)
    else:
        assert set(metrics) == {"inference_steps"}


@pytest.mark.parametrize("kind", ARCHS)
def test_the_compiled_sweep_sets_every_value_node_to_its_prediction(kind: str) -> None:
    """C1 through the generated code: the fast path's feed-forward sweep gives every vertex
    the value the vertex-by-vertex interpreter (biograd.graph.forward) gives it."""
    model, x, _ = _model(kind)
    model, x = model.double().eval(), x.double()
    rule = biograd.create_rule("zil", model, levels_per_call=2)
    graph = rule.graph(x)
    plan = plan_module.FrontierPlan(graph, levels_per_call=2, trace=True)
    with torch.no_grad():
        _, mus, _ = forward(graph, x)
        outs = plan.sweep(x)
    assert set(plan.mu_at) == {i for i, v in enumerate(graph.vertices)
                               if v.kind in ("op", "identity") and graph.level[i] is not None}
    for i, at in plan.mu_at.items():
        assert torch.equal(outs[at], mus[i]), graph.vertices[i].name


def test_the_wave_starts_from_the_output_error_never_from_the_loss(monkeypatch) -> None:
    """The loss enters once, through its own vjp, which returns only e_out (C1's one non-zero
    error); every later call starts from the errors of a level of value nodes. With one step
    per call there is one call per level."""
    calls: list[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = []
    vjp = plan_module._vjp

    def spy(roots, grads, inputs):  # type: ignore[no-untyped-def]
        calls.append((tuple(roots), tuple(inputs)))
        return vjp(roots, grads, inputs)

    monkeypatch.setattr(plan_module, "_vjp", spy)
    model, x, y = _model("mlp")
    rule = biograd.create_rule("zil", model, levels_per_call=1)
    rule.step(x, y)
    graph = rule.graph(x)
    assert len(calls) == 1 + graph.depth + 1
    (loss,), first_inputs = calls[0]
    assert loss.dim() == 0 and len(first_inputs) == 1
    assert first_inputs[0].shape == model(x).shape
    assert all(r.dim() == 2 and r.shape[0] == x.shape[0] for roots, _ in calls[1:] for r in roots)


def test_groups_hold_at_most_k_levels_and_end_at_the_narrowest_level() -> None:
    """Group boundaries: at most k levels per call, at least k/2 (rounded up), ending where the
    fewest value nodes must be cut (the farthest such level on ties); one level per call
    when k = 1. Level sizes 1 1 2 3 1 2 2 1 3 3 with k = 4: from 0 the window is levels 2-4
    (sizes 2 3 1) -> 4; from 4 it is 6-8 (sizes 2 1 3) -> 7; 7 + 4 passes the last level."""
    sizes = [1, 1, 2, 3, 1, 2, 2, 1, 3, 3]
    assert plan_module._group_tops(sizes, 4) == [0, 4, 7]
    assert plan_module._group_tops(sizes, 1) == list(range(10))
    assert plan_module._group_tops(sizes, 10) == [0]
    assert plan_module._group_tops([2, 1, 1, 2], 2) == [0, 2]


class _SharedBias(nn.Module):
    """Batch-shaped biases: autograd hands the same gradient tensor to both addends of a sum
    (no broadcast to undo), so R's and S's updates and the errors of lin1 and of the sums
    can all be one tensor; P is added at two levels, so its updates come from two steps."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2, self.out = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.P, self.R, self.S = (nn.Parameter(torch.randn(7, 6) * 0.3) for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.lin1(x) + self.P)
        h = torch.tanh(self.lin2(h) + self.R + self.S)
        return self.out(h + self.P)


@pytest.mark.parametrize("k", [1, 2, LEVELS_PER_CALL])
def test_an_update_aliasing_an_error_is_copied_not_stolen(k: int) -> None:
    """An update that shares its storage with an error still in use must not become .grad
    (a later step adds into .grad in place): the updates, and the errors the wave carries,
    stay those of the full dynamics; two steps accumulate like autograd."""
    torch.manual_seed(0)
    model = _SharedBias().double()
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    full_model = copy.deepcopy(model)
    full = biograd.create_rule("zil", full_model, exact_shortcut=False)
    full_m = full.step(x, y).metrics
    rule = biograd.create_rule("zil", model, levels_per_call=k, energy_trace=True)
    metrics = rule.step(x, y).metrics
    assert _traces(metrics, "energy") == pytest.approx(_traces(full_m, "energy"),
                                                       rel=1e-10, abs=0)
    for p, q in zip(model.parameters(), full_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=0)
    ptrs = [p.grad.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == len(ptrs)
    rule.step(x, y)  # accumulates, as autograd does
    for p, q in zip(model.parameters(), full_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, 2 * q.grad, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_c1_holds_exactly_so_nothing_ahead_of_the_wave_moves(kind: str) -> None:
    """C1 makes every error but the output's exactly zero, so under the dynamics a vertex at
    level k > t has not moved after t steps (dF/dx_v = e_v - sum_c J^T e_c = 0). A prediction
    recomputed from a contiguous copy of a strided parent (an LSTM's chunked gates) can
    differ in the last bit; the gamma = 1 dynamics amplified such 1e-16 errors until the
    test-size LSTM overflowed to nan before the wave arrived."""
    model, x, y = _model(kind)
    model, x = model.double(), x.double()
    rule = biograd.create_rule("zil", model, exact_shortcut=False)
    graph = rule.graph(x)
    inf = PCInference(graph, x, y, rule.loss_fn)
    start = [s.clone() for s in inf.initial]
    assert all(float(e.abs().max()) == 0 for e in inf.errors(inf.free, start))
    moved: list[tuple[int, str]] = []

    def check(t: int, states: list[Tensor]) -> None:
        moved.extend((t, graph.vertices[i].name) for i, s, s0 in zip(
            inf.free, states, start, strict=True)
            if graph.level[i] > t and not torch.equal(s, s0))  # type: ignore[operator]

    relax(start, inf.dynamics, steps=graph.depth, step_size=1.0, callback=check)
    assert not moved, moved[:5]


def test_without_levelling_skip_connections_break_exactness() -> None:
    diffs, *_ = _updates_vs_backprop("resnet", levelling=False)
    assert max(diffs.values()) > 1e-2
    # the chain MLP has no edge to level, so there it stays exact
    diffs, *_ = _updates_vs_backprop("mlp", levelling=False)
    assert max(diffs.values()) <= 1e-10


def test_gamma_not_one_scales_level_k_updates_by_gamma_to_the_k() -> None:
    """Breaking C3 on a chain: with step size gamma the error reaching level k at step k is
    gamma^k times backprop's (Eq. 3 unrolled), so the update is off by that factor."""
    gamma = 0.5
    _, _, _, model, ref = _updates_vs_backprop("mlp", gamma=gamma)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    ref_linears = [m for m in ref if isinstance(m, nn.Linear)]
    levels = [4, 2, 0]  # Linear, tanh, Linear, tanh, Linear: levels 4..0
    for m, r, k in zip(linears, ref_linears, levels, strict=True):
        torch.testing.assert_close(m.weight.grad, gamma**k * r.weight.grad, rtol=1e-9, atol=0)
    assert not torch.allclose(linears[0].weight.grad, ref_linears[0].weight.grad)


def test_perturbed_initial_values_break_exactness() -> None:
    diffs, *_ = _updates_vs_backprop("mlp", init_noise=0.1)
    assert max(diffs.values()) > 1e-3


@pytest.mark.parametrize("exact_shortcut", [True, False])
def test_energy_trace_starts_with_the_output_error(exact_shortcut: bool) -> None:
    diffs, rule, result, model, _ = _updates_vs_backprop("mlp", exact_shortcut=exact_shortcut,
                                                         energy_trace=True)
    x, y = _model("mlp")[1:]
    e_out = output_error(rule.loss_fn, model(x.double()), y)
    assert result.metrics["energy_0"] == pytest.approx(0.5 * float(e_out.pow(2).sum()))
    assert result.metrics["inference_steps"] == 4
    assert all(f"energy_{t}" in result.metrics for t in range(5))


def test_batchnorm_running_statistics_move_as_in_one_backprop_step() -> None:
    _, _, _, model, ref = _updates_vs_backprop("resnet")
    for b, r in zip(model.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, r, rtol=1e-12, atol=0)


def test_each_vertex_function_runs_once_per_update() -> None:
    """The cost argument: no vertex is recomputed during Z-IL's inference phase."""
    model, x, y = make_model("cnn")
    calls = {"n": 0}
    for m in model.modules():
        if not isinstance(m, nn.Sequential):
            m.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    rule = biograd.create_rule("zil", model)
    rule.step(x, y)  # captures the graph (one classification pass)
    calls["n"] = 0
    rule.step(x, y)
    assert calls["n"] == len([m for m in model.modules() if not isinstance(m, nn.Sequential)])


def test_bad_labels_raise_before_any_update() -> None:
    model, x, _ = make_model("mlp")
    rule = biograd.create_rule("zil", model)
    with pytest.raises(biograd.InputError, match=r"labels must lie in \[0, 3\]"):
        rule.step(x, torch.full((x.shape[0],), 7))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "hp,match",
    [
        ({"gamma": 0.0}, "gamma must be > 0"),
        ({"gamma": "1"}, "gamma must be a number"),
        ({"init_noise": -0.1}, "init_noise must be >= 0"),
        ({"levelling": "yes"}, "levelling must be True or False"),
        ({"exact_shortcut": 1}, "exact_shortcut must be True or False"),
        ({"levels_per_call": 0}, "levels_per_call must be"),
        ({"energy_trace": "no"}, "energy_trace must be True or False"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(hp: dict, match: str) -> None:
    model, _, _ = make_model("mlp")
    with pytest.raises(biograd.ConfigError, match=match):
        biograd.create_rule("zil", model, **hp)


def test_a_deep_copied_rule_updates_its_own_model() -> None:
    """The captured graph points at the model's modules; a copy (alignment probes) must
    capture its own model rather than write into the original's parameters."""
    model, x, y = make_model("graph")
    rule = biograd.create_rule("zil", model)
    rule.step(x, y)
    clone = copy.deepcopy(rule)
    rule.zero_grad(set_to_none=True)
    clone.zero_grad(set_to_none=True)
    clone.step(x, y)
    assert all(p.grad is None for p in rule.model.parameters())
    assert all(p.grad is not None for p in clone.model.parameters())
