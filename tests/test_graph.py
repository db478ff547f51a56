"""biograd.graph: fx capture into a PC graph, levels, levelling, unsupported models (P5)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import biograd
from biograd.graph import PCGraph, build_graph, capture, forward, level_graph, predict
from biograd.graph.levels import children_of
from biograd.models.sequence import (
    lstm_classifier,
    rnn_classifier,
    transformer_block_classifier,
)
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


class _Wrap(nn.Module):
    """A Linear head on the (batch, 8) tensor ``pick`` takes out of module ``m``'s output."""

    def __init__(self, m: nn.Module, pick) -> None:
        super().__init__()
        self.m, self.pick, self.out = m, pick, nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.pick(self.m, x))


def _last(m: nn.Module, x: Tensor) -> Tensor:
    return m(x)[0][:, -1]


def _first8(t: Tensor) -> Tensor:
    return t.flatten(1)[:, :8]


COMPOSITES = [  # (module, how the model calls it, class name, the rewrite the error points to)
    (nn.RNN(4, 8, batch_first=True), _last, "torch.nn.RNN", "RNNClassifier"),
    (nn.LSTM(4, 8, batch_first=True), _last, "torch.nn.LSTM", "LSTMClassifier"),
    (nn.GRU(4, 8, batch_first=True), _last, "torch.nn.GRU", r"h = \(1 - z\) \* n"),
    (nn.RNNCell(4, 8), lambda m, x: m(x[:, 0]), "torch.nn.RNNCell", "RNNClassifier"),
    (nn.LSTMCell(4, 8), lambda m, x: m(x[:, 0])[0], "torch.nn.LSTMCell", "LSTMClassifier"),
    (nn.GRUCell(4, 8), lambda m, x: m(x[:, 0]), "torch.nn.GRUCell", r"h = \(1 - z\) \* n"),
    (nn.MultiheadAttention(4, 2, batch_first=True), lambda m, x: _first8(m(x, x, x)[0]),
     "torch.nn.MultiheadAttention", "TransformerBlockClassifier"),
    (nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True),
     lambda m, x: _first8(m(x)), "torch.nn.TransformerEncoderLayer", "torch.softmax"),
    (nn.TransformerDecoderLayer(4, 2, 8, dropout=0.0, batch_first=True),
     lambda m, x: _first8(m(x, x)), "torch.nn.TransformerDecoderLayer", "torch.softmax"),
]


@pytest.mark.parametrize("module,call,cls,fix", COMPOSITES,
                         ids=[c[2].split(".")[-1] for c in COMPOSITES])
def test_composite_modules_are_refused_naming_the_module_and_the_rewrite(
    module: nn.Module, call, cls: str, fix: str
) -> None:
    """fx keeps every torch.nn module as one leaf: an nn.LSTM would be one vertex whose local
    update is BPTT through the whole block. Refused for both rules, with the way out."""
    for rule in ("zil", "predictive_coding"):
        with pytest.raises(biograd.UnsupportedModelError,
                           match=rf"rule '{rule}': module 'm' \({cls}\) runs several operations"
                                 rf".*elementary operations.*{fix}"):
            biograd.create_rule(rule, _Wrap(module, call)).step(
                torch.randn(3, 5, 4), torch.tensor([0, 1, 0]))


def test_the_issues_lstm_plus_transformer_model_is_refused_at_the_first_composite() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 8, batch_first=True)
            self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            out, (h, c) = self.rnn(x)  # tuple unpacking would otherwise stop fx first
            return self.head(self.enc(out).mean(1))

    with pytest.raises(biograd.UnsupportedModelError, match=r"module 'rnn' \(torch.nn.LSTM\)"):
        capture(Mixed(), torch.randn(3, 5, 4), "zil")


def test_fused_attention_function_and_leaf_modules_with_parts_are_refused() -> None:
    class Sdpa(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return self.out(nn.functional.scaled_dot_product_attention(q, k, v).mean(1))

    with pytest.raises(biograd.UnsupportedModelError,
                       match="scaled_dot_product_attention.*several operations.*torch.softmax"):
        capture(Sdpa(), torch.randn(3, 5, 4), "zil")

    class Block(nn.Module):  # any torch.nn module is an fx leaf; this one calls two parts
        __module__ = "torch.nn.modules.hypothetical"

        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.tanh(self.a(x)))

    with pytest.raises(biograd.UnsupportedModelError,
                       match=r"module '1' .*Block\) runs several.*its parts \(a, b\)"):
        capture(nn.Sequential(nn.Linear(4, 4), Block()), torch.randn(3, 4), "zil")


def test_a_parametrized_linear_is_still_one_vertex() -> None:
    """weight_norm's parametrization container is a child module, not a second operation."""
    lin = nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
    g = capture(nn.Sequential(lin, nn.Tanh(), nn.Linear(3, 2)), torch.randn(3, 4), "zil")
    assert [v.kind for v in g.vertices] == ["input", "op", "op", "op"]
    assert len(g.vertices[1].params) == 3  # bias, weight's g and v


def test_the_sequence_models_are_graphs_of_elementary_operations() -> None:
    """The P5 report's RNN, LSTM and transformer: every vertex is one operation (a Linear, a
    LayerNorm, or a tensor function / method), never a block of torch.nn modules."""
    models = [rnn_classifier(3, 4, 2, seq_len=3), lstm_classifier(3, 4, 2, seq_len=3),
              transformer_block_classifier(3, 8, 2, 2, seq_len=3)]
    for model in models:
        g = capture(model, torch.randn(2, 3, 3), "zil")
        mods = {type(model.get_submodule(str(v.node.target))) for v in g.vertices
                if v.node is not None and v.node.op == "call_module"}
        assert mods <= {nn.Linear, nn.LayerNorm}, mods
        for v in g.vertices:
            assert v.kind == "input" or [n for n in v.closure
                                         if g.kinds[n] != "inline"] == [v.node], v.name
