"""No silent backprop: a converted layer's parameter reached by anything but the layer's own
call (a weight read functionally, a tied readout) is refused by every backward-replacement rule,
naming the parameter; ordinary models, shared layers, weight_norm, dtype/device conversion and
DDP are accepted."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biograd
from biograd.core.errors import ConfigError
from biograd.metrics.alignment import backprop_gradients

FAMILY = [n for n in biograd.list_rules()
          if biograd.rule_info(n).family == "backward_replacement" and n != "backprop"]


def test_the_family_is_the_five_weight_transport_rules() -> None:
    assert sorted(FAMILY) == sorted([
        "feedback_alignment", "sign_symmetry", "direct_feedback_alignment", "weight_mirror",
        "kolen_pollack"])


class FunctionalUse(nn.Module):
    """``fc`` is called as a module AND its weight is read with F.linear in the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.head = nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(torch.tanh(self.fc(x)))
        return F.linear(torch.tanh(h), self.fc.weight)


class Readout(nn.Module):
    """A parameter-free readout tied to another layer's weight (tied embeddings)."""

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        self.source = [source]  # a plain list: not a submodule

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.source[0].weight


class TiedReadout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.hidden = nn.Linear(6, 6)
        self.readout = Readout(self.embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(torch.tanh(self.hidden(torch.tanh(self.embed(x)))))


class Scale(nn.Module):
    def __init__(self, w: nn.Parameter) -> None:
        super().__init__()
        self.w = w  # the SAME Parameter as a converted layer's weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.w.sum(0)


class TiedParameter(nn.Module):
    """A converted layer's weight registered in a second module that learns by backprop."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.scale = Scale(self.fc.weight)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.scale(torch.tanh(self.fc(x))))


def _batch(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, n_in, generator=g), torch.randint(0, n_out, (5,), generator=g)


@pytest.mark.parametrize("name", FAMILY)
def test_a_weight_read_functionally_is_refused_naming_it_and_its_user(name: str) -> None:
    model = FunctionalUse()
    rule = biograd.create_rule(name, model)
    x, y = _batch(6, 5)
    with pytest.raises(biograd.UnsupportedModelError) as err:
        rule.step(x, y)
    msg = str(err.value)
    assert f"rule '{name}'" in msg and "'fc.weight'" in msg
    assert "torch.nn.functional.linear" in msg and "the model itself (FunctionalUse)" in msg
    assert "allow_backprop=('fc',)" in msg
    # refused before the backward pass: no parameter got an update
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", FAMILY)
def test_a_tied_readout_is_refused_naming_the_weight_and_the_module(name: str) -> None:
    rule = biograd.create_rule(name, TiedReadout())
    x, y = _batch(4, 4)
    with pytest.raises(biograd.UnsupportedModelError, match=r"'embed\.weight'.*'readout' "
                       r"\(Readout\)"):
        rule.step(x, y)


@pytest.mark.parametrize("name", FAMILY)
def test_a_parameter_shared_with_a_backprop_module_is_refused(name: str) -> None:
    model = TiedParameter()
    rule = biograd.create_rule(name, model, allow_backprop=("scale",))
    x, y = _batch(6, 3)
    with pytest.raises(biograd.UnsupportedModelError, match=r"'fc\.weight'.*'scale' \(Scale\)"):
        rule.step(x, y)


@pytest.mark.parametrize("name", FAMILY)
def test_allow_backprop_on_the_layer_is_the_fix_and_then_it_learns_by_backprop(name: str) -> None:
    """Excluding ``fc`` from conversion (the message's fix) makes every use of its weight plain
    backprop: its gradient is then autograd's, given the error that reaches its uses."""
    torch.manual_seed(0)
    model = FunctionalUse().double()
    x, y = _batch(6, 5)
    x = x.double()
    rule = biograd.create_rule(name, model, allow_backprop=("fc",))
    rule.step(x, y)
    assert [layer.path for layer in rule.layers] == ["head"]
    assert model.fc.weight.grad is not None


def test_weight_transpose_feedback_gives_backprop_when_the_layer_is_allowed() -> None:
    torch.manual_seed(0)
    model = FunctionalUse().double()
    x, y = _batch(6, 5)
    x = x.double()
    rule = biograd.create_rule("feedback_alignment", model, allow_backprop=("fc",))
    with torch.no_grad():
        rule.feedback.get("head").copy_(model.head.weight.t())
    bp = backprop_gradients(rule, x, y)
    rule.step(x, y)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, bp[n], msg=n)


class Sometimes(nn.Module):
    """Reads ``fc.weight`` functionally only when the batch is large: a data-dependent forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        if x.shape[0] > 5:
            h = h + F.linear(h, self.fc.weight)
        return self.out(h)


def test_check_paths_first_step_every_step_and_off() -> None:
    small, big = _batch(6, 3), (torch.randn(8, 6), torch.randint(0, 3, (8,)))
    rule = biograd.create_rule("feedback_alignment", Sometimes())
    assert rule.check_paths == "first_step"
    rule.step(*small)
    rule.step(*big)  # the graph is inspected at the first step only: not seen
    rule = biograd.create_rule("feedback_alignment", Sometimes())
    rule.check_paths = "every_step"
    rule.step(*small)
    with pytest.raises(biograd.UnsupportedModelError, match="'fc.weight'"):
        rule.step(*big)
    rule = biograd.create_rule("feedback_alignment", FunctionalUse())
    rule.check_paths = "off"
    rule.step(*_batch(6, 5))
    with pytest.raises(ConfigError, match="check_paths must be one of"):
        rule.check_paths = "sometimes"


# ---------------------------------------------------------------- no false positives
class _Shared(nn.Module):
    """One Linear called twice through the module, and two layers sharing one Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.twin = nn.Linear(6, 6)
        self.twin.weight = self.shared.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.shared(x))))
        return self.head(torch.relu(self.twin(h)))


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    m = biograd.models
    return {
        "mlp": (m.mlp(12, [10, 8], 4), torch.randn(5, 12)),
        "lenet": (m.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6),
                  torch.randn(5, 1, 8, 8)),
        "simple_vgg": (m.simple_vgg(3, 4, width=1 / 32), torch.randn(5, 3, 32, 32)),
        "resnet18": (m.resnet18(3, 4, width=4), torch.randn(5, 3, 8, 8)),
        "rnn": (m.rnn_classifier(5, 7, 4, seq_len=4), torch.randn(5, 4, 5)),
        "lstm": (m.lstm_classifier(5, 7, 4, seq_len=4), torch.randn(5, 4, 5)),
        "shared": (_Shared(), torch.randn(5, 6)),
        "weight_norm": (nn.Sequential(nn.utils.weight_norm(nn.Linear(12, 5)), nn.Tanh(),
                                      nn.utils.weight_norm(nn.Linear(5, 4))), torch.randn(5, 12)),
    }


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("name", FAMILY)
def test_ordinary_models_are_accepted_and_every_parameter_learns(name: str) -> None:
    torch.manual_seed(0)
    for kind, (model, x) in _models().items():
        extra = {"skips": "propagate"} if kind == "lstm" and "direct" in name else {}
        rule = biograd.create_rule(name, model, **extra)
        y = torch.randint(0, 4 if kind != "shared" else 3, (x.shape[0],))
        for _ in range(2):
            rule.zero_grad(set_to_none=True)
            rule.step(x, y)
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), kind


@pytest.mark.parametrize("name", FAMILY)
def test_converting_the_rule_keeps_it_accepted(name: str) -> None:
    model, x = biograd.models.mlp(12, [10, 8], 4), torch.randn(5, 12)
    rule = biograd.create_rule(name, model)
    y = torch.randint(0, 4, (5,))
    rule.double()
    rule.step(x.double(), y)
    rule.check_paths = "every_step"
    rule.float()
    rule.to("cpu")
    rule.step(x, y)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["feedback_alignment", "direct_feedback_alignment"])
def test_a_ddp_wrapped_model_is_accepted(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's DistributedDataParallel wrapper (one gloo process): its forward and its gradient
    hooks are no path to a converted parameter."""
    import torch.distributed as dist

    monkeypatch.setitem(os.environ, "MASTER_ADDR", "127.0.0.1")
    monkeypatch.setitem(os.environ, "MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(biograd.models.mlp(12, [10], 4))
        rule = biograd.create_rule(name, model)
        rule.check_paths = "every_step"
        x, y = torch.randn(5, 12), torch.randint(0, 4, (5,))
        for _ in range(2):
            rule.step(x, y)
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the graph family
@pytest.mark.parametrize("cls", [FunctionalUse, TiedReadout, TiedParameter])
def test_zil_treats_a_functional_or_tied_weight_as_backprop_does(cls: type) -> None:
    """In graph mode a weight read functionally is an fx get_attr node, recomputed inside each
    vertex that uses it: Z-IL (exactly backprop, P5) gives it backprop's whole gradient."""
    torch.manual_seed(0)
    model = cls().double()
    x = torch.randn(5, 4 if cls is TiedReadout else 6, dtype=torch.float64)
    y = torch.arange(5) % model(x).shape[1]
    rule = biograd.create_rule("zil", model)
    bp = backprop_gradients(rule, x, y)
    rule.step(x, y)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, bp[n], msg=n)


def test_predictive_coding_graph_mode_updates_a_functional_weight_locally() -> None:
    """PC with T = 0: the value nodes sit at the feed-forward predictions, so every hidden error
    is zero and only the output vertex has one. ``fc.weight``, read functionally by the output
    vertex, then gets that vertex's local term alone, e^T tanh(h) (not autograd through the
    other vertices), and the layers below get nothing."""
    torch.manual_seed(0)
    model = FunctionalUse().double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4])
    biograd.create_rule("predictive_coding", model, T=0, fast_path=False).step(x, y)
    with torch.no_grad():
        t = torch.tanh(model.head(torch.tanh(model.fc(x))))
        e = (torch.softmax(F.linear(t, model.fc.weight), 1) - F.one_hot(y, 5)) / 5
    torch.testing.assert_close(model.fc.weight.grad, e.T @ t)
    assert float(model.head.weight.grad.abs().max()) == 0.0


class WeightNormFunctional(nn.Module):
    """A weight_norm layer (its ``weight`` recomputed from ``weight_g``/``weight_v`` at every
    call) whose weight of this call is also read functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.utils.weight_norm(nn.Linear(6, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return self.head(torch.tanh(F.linear(h, self.fc.weight)))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_recomputed_weight_read_functionally_is_named_as_the_weight() -> None:
    """The walk reaches the per-call weight before its (g, v) parameters: the error names
    ``fc.weight``, the tensor the model's code read, not an internal of weight_norm."""
    torch.manual_seed(0)
    rule = biograd.create_rule("feedback_alignment", WeightNormFunctional())
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    with pytest.raises(biograd.UnsupportedModelError, match=r"'fc\.weight'"):
        rule.step(x, y)
