"""Sequence models written as plain, fx-traceable ``nn.Module``s (P5's RNN / LSTM /
transformer experiments): loops run over a stored sequence length, so ``torch.fx`` unrolls
them, and the cell's weights are tied across time (the same ``nn.Linear`` called per step).
Every operation is elementary (``nn.Linear``, ``nn.LayerNorm``, tensor functions): the
composite ``nn.LSTM`` / ``nn.MultiheadAttention`` would each be one vertex of a PC graph,
which :mod:`biograd.graph` refuses (their update would be backprop through the whole block).

Inputs are float tensors of shape (batch, seq_len, features); outputs are class logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from biograd.core.errors import ConfigError


def _check(name: str, **sizes: int) -> None:
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: {key} must be a positive integer, got {value!r}")


class RNNClassifier(nn.Module):
    """Many-to-one Elman RNN: h_t = tanh(W_ih x_t + W_hh h_{t-1} + b), logits = W_o h_T."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, seq_len: int) -> None:
        super().__init__()
        _check("rnn_classifier", input_size=input_size, hidden_size=hidden_size,
               num_classes=num_classes, seq_len=seq_len)
        self.seq_len, self.input_size = seq_len, input_size
        self.ih = nn.Linear(input_size, hidden_size)
        self.hh = nn.Linear(hidden_size, hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.ih(x[:, 0]))  # h_0 = 0
        for t in range(1, self.seq_len):
            h = torch.tanh(self.ih(x[:, t]) + self.hh(h))
        return self.out(h)


class LSTMClassifier(nn.Module):
    """Many-to-one LSTM with an explicit cell (Hochreiter & Schmidhuber 1997):
    [i, f, g, o] = W_x x_t + W_h h_{t-1} + b; c_t = s(f) c_{t-1} + s(i) tanh(g);
    h_t = s(o) tanh(c_t); logits = W_o h_T."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, seq_len: int) -> None:
        super().__init__()
        _check("lstm_classifier", input_size=input_size, hidden_size=hidden_size,
               num_classes=num_classes, seq_len=seq_len)
        self.seq_len = seq_len
        self.x2g = nn.Linear(input_size, 4 * hidden_size)
        self.h2g = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        i, f, g, o = self.x2g(x[:, 0]).chunk(4, dim=1)  # h_0 = c_0 = 0
        c = torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        for t in range(1, self.seq_len):
            i, f, g, o = (self.x2g(x[:, t]) + self.h2g(h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.out(h)


class TransformerBlockClassifier(nn.Module):
    """Input projection, one pre-norm transformer block (multi-head softmax self-attention and
    a GELU MLP, each with a residual; Vaswani et al. 2017), mean pooling over time, Linear."""

    def __init__(
        self, input_size: int, d_model: int, num_heads: int, num_classes: int, seq_len: int,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        _check("transformer_block_classifier", input_size=input_size, d_model=d_model,
               num_heads=num_heads, num_classes=num_classes, seq_len=seq_len,
               mlp_ratio=mlp_ratio)
        if d_model % num_heads:
            raise ConfigError(f"transformer_block_classifier: d_model ({d_model}) must be "
                              f"divisible by num_heads ({num_heads})")
        self.heads, self.d_head = num_heads, d_model // num_heads
        self.embed = nn.Linear(input_size, d_model)
        self.pos = nn.Parameter(torch.zeros(seq_len, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_ratio * d_model)
        self.fc2 = nn.Linear(mlp_ratio * d_model, d_model)
        self.head = nn.Linear(d_model, num_classes)
        nn.init.normal_(self.pos, std=0.02)

    def _split(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.heads, self.d_head)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.pos
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)
        h = h + self.proj((att @ v).transpose(1, 2).flatten(2))
        h = h + self.fc2(nn.functional.gelu(self.fc1(self.norm2(h))))
        return self.head(h.mean(dim=1))


def rnn_classifier(
    input_size: int = 28, hidden_size: int = 64, num_classes: int = 10, seq_len: int = 28
) -> RNNClassifier:
    """Many-to-one Elman RNN (e.g. row-by-row MNIST: 28 steps of 28 pixels)."""
    return RNNClassifier(input_size, hidden_size, num_classes, seq_len)


def lstm_classifier(
    input_size: int = 28, hidden_size: int = 64, num_classes: int = 10, seq_len: int = 28
) -> LSTMClassifier:
    """Many-to-one LSTM with an explicit, unrolled cell."""
    return LSTMClassifier(input_size, hidden_size, num_classes, seq_len)


def transformer_block_classifier(
    input_size: int = 28, d_model: int = 32, num_heads: int = 4, num_classes: int = 10,
    seq_len: int = 28, mlp_ratio: int = 2,
) -> TransformerBlockClassifier:
    """One transformer block over a sequence of feature vectors, mean-pooled, classified."""
    return TransformerBlockClassifier(input_size, d_model, num_heads, num_classes, seq_len,
                                      mlp_ratio)
