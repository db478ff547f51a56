"""biograd.graph: fx capture into a PC graph, levels, levelling, unsupported models (P5)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import biograd
from biograd.graph import PCGraph, build_graph, capture, forward, level_graph, predict
from biograd.graph.levels import children_of
from biograd.models.sequence import rnn_classifier
from tests.conftest import make_model


def _live_edges(g: PCGraph) -> list[tuple[int, int]]:
    return [(u, c) for c, v in enumerate(g.vertices) if g.level[c] is not None
            and v.kind in ("op", "identity") for u in v.parents
            if g.vertices[u].kind in ("op", "identity")]


def test_chain_levels_count_down_to_the_output() -> None:
    model = biograd.models.mlp(5, [4, 3], 2, activation="tanh")
    g = capture(model, torch.randn(3, 5))
    kinds = [v.kind for v in g.vertices]
    # x, flatten (a parameter-free function of the input: clamped), 3 Linear + 2 tanh ops
    assert kinds == ["input", "data", "op", "op", "op", "op", "op"]
    assert g.level[2:] == [4, 3, 2, 1, 0] and g.depth == 4
    assert [len(v.params) for v in g.vertices[2:]] == [2, 0, 2, 0, 2]


def test_feed_forward_sweep_reproduces_the_model_output() -> None:
    for kind in ("mlp", "cnn", "resnet", "graph"):
        model, x, _ = make_model(kind)
        model.eval()
        g = level_graph(capture(model, x))
        values, mus, consts = forward(g, x)
        torch.testing.assert_close(mus[g.output], model(x), rtol=0, atol=0)
        # every vertex's prediction from its parents' values equals its feed-forward value
        for i in g.order:
            if g.vertices[i].kind in ("op", "identity"):
                torch.testing.assert_close(predict(g, i, values, consts), mus[i], rtol=0, atol=0)


def test_levelling_makes_every_live_edge_span_exactly_one_level() -> None:
    model, x, _ = make_model("resnet")
    raw = capture(model, x)
    skips = [(u, c) for u, c in _live_edges(raw) if raw.level[u] != raw.level[c] + 1]
    assert skips, "a ResNet has skip connections spanning several levels"
    g = level_graph(raw)
    assert all(g.level[u] == g.level[c] + 1 for u, c in _live_edges(g))
    # identity chains replace exactly the skipped levels: sum over skips of (span - 1),
    # shared between the children of one vertex
    needed: dict[int, int] = {}
    for u, c in skips:
        needed[u] = max(needed.get(u, 0), raw.level[u] - raw.level[c] - 1)
    n_id = sum(v.kind == "identity" for v in g.vertices)
    assert n_id == sum(needed.values())
    assert g.depth == raw.depth


def test_weight_tied_cell_is_one_parameter_owned_by_every_time_step() -> None:
    model = rnn_classifier(3, 4, 2, seq_len=5)
    g = capture(model, torch.randn(2, 5, 3))
    owners = [i for i, v in enumerate(g.vertices) if any(p is model.hh.weight for p in v.params)]
    assert len(owners) == 4  # h_1 .. h_4 use W_hh (h_0 = tanh(W_ih x_0 + b))
    assert len({g.level[i] for i in owners}) == 4


def test_dead_vertices_have_no_level() -> None:
    class Dead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            unused = self.a(x) * 2  # noqa: F841 (computed but not used by the output)
            return self.b(x)

    g = capture(Dead(), torch.randn(2, 3))
    dead = [v.name for i, v in enumerate(g.vertices) if g.level[i] is None]
    assert "a" in dead and "mul" in dead


def test_children_are_the_inverse_of_parents() -> None:
    model, x, _ = make_model("graph")
    g = build_graph(model, x, rule="zil", levelling=True)
    kids = children_of(g)
    for c, v in enumerate(g.vertices):
        for p in v.parents:
            assert c in kids[p]


class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x).relu_()


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if h.sum() > 0:  # data-dependent control flow
            return h
        return -h


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc(x), x


@pytest.mark.parametrize(
    "model,match",
    [
        (_InPlace(), "node 'relu_'.*in-place"),
        (nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 2)), "in-place"),
        (_Branchy(), "cannot trace _Branchy.*data-dependent control flow"),
        (nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2)), "dropout"),
        (_TupleOut(), "must return one floating tensor"),
    ],
)
def test_unsupported_models_raise_a_clear_error(model: nn.Module, match: str) -> None:
    with pytest.raises(biograd.UnsupportedModelError, match=match):
        capture(model, torch.randn(4, 3), "zil")


def test_unsupported_model_error_reaches_the_rules() -> None:
    for name in ("zil", "predictive_coding"):
        rule = biograd.create_rule(name, _InPlace())
        with pytest.raises(biograd.UnsupportedModelError, match=f"rule '{name}'"):
            rule.step(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))


def test_eval_mode_dropout_is_accepted() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2)).eval()
    g = capture(model, torch.randn(4, 3))
    assert g.depth == 2
