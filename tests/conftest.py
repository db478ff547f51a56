"""Shared fixtures: small models of every kind a rule can claim to support (MODEL_KINDS)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import Tensor, nn

import biograd

torch.set_num_threads(int(os.environ.get("BIOGRAD_TEST_THREADS", "2")))


class TinyGraphNet(nn.Module):
    """A small fx-traceable non-sequential model: a skip connection, LayerNorm, a product."""

    def __init__(self, d_in: int = 12, d: int = 10, n_out: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)
        self.gate = nn.Linear(d, d)
        self.out = nn.Linear(d, n_out)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x.flatten(1)))
        r = self.fc2(torch.relu(self.fc1(self.norm(h))))
        h = h + r * torch.sigmoid(self.gate(h))
        return self.out(h)


def make_model(kind: str, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A small model of ``kind`` with a matching batch (x, y); deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed + 1000)
    torch.manual_seed(seed)
    if kind == "mlp":
        model = biograd.models.mlp(12, [10, 8], 4, activation="tanh")
        x = torch.randn(6, 12, generator=g)
    elif kind == "cnn":
        model = biograd.models.lenet(1, 4, image_size=8, channels=(3, 4), hidden=6)
        x = torch.randn(6, 1, 8, 8, generator=g)
    elif kind == "resnet":
        model = biograd.models.ResNet((1, 1), in_channels=3, num_classes=4, width=4)
        x = torch.randn(6, 3, 8, 8, generator=g)
    elif kind == "graph":
        model = TinyGraphNet()
        x = torch.randn(6, 12, generator=g)
    else:
        raise ValueError(kind)
    y = torch.randint(0, 4, (6,), generator=g)
    return model, x, y


def assert_same_step(fast, r_fast, ref, r_ref, grad_rtol: float) -> None:
    """Two rules' steps on the same batch agree: every parameter's ``.grad`` (``grad_rtol``,
    atol 1e-13), the metrics (same keys, rel 1e-10, abs 1e-13) and the loss (rel 1e-12)."""
    for (n, p), q in zip(fast.model.named_parameters(), ref.model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=grad_rtol, atol=1e-13, msg=n)
    assert r_fast.metrics.keys() == r_ref.metrics.keys()
    for k, v in r_fast.metrics.items():
        assert v == pytest.approx(r_ref.metrics[k], rel=1e-10, abs=1e-13), k
    assert r_fast.loss == pytest.approx(r_ref.loss, rel=1e-12)


@pytest.fixture
def model_factory():
    return make_model


def scale_updates(monkeypatch, rule: str, factor: float) -> None:
    """Make rule ``rule``'s step write every gradient ``factor`` times what it computes (a
    change of what the rule computes, for tests of what notices one)."""
    from biograd.core.registry import rule_info

    cls = rule_info(rule).cls
    step = cls.step

    def scaled(self, x, y):
        res = step(self, x, y)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
        return res

    monkeypatch.setattr(cls, "step", scaled)
