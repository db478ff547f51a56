"""Guards for PC graphs: nodes a PC graph cannot hold, and buffers that must not drift.

Composite ``torch.nn`` modules (:func:`check_composite`) are refused: ``torch.fx`` keeps every
``torch.nn`` module as one leaf, so an ``nn.LSTM`` or ``nn.MultiheadAttention`` would become a
single vertex whose "local" update is backprop through the whole block (BPTT inside the
LSTM), a hidden multi-operation vertex in a graph whose point is that every vertex is one
elementary operation with its own error (P5, Sec. 3). The error names the module and says
how to write it with elementary operations (as :mod:`biograd.models.sequence` does).
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor, fx, nn

from biograd.core.errors import UnsupportedModelError

_INPLACE_FUNCS = {operator.setitem, operator.iadd, operator.isub, operator.imul,
                  operator.itruediv, operator.ipow, operator.imatmul}


def unsupported(rule: str, msg: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"rule {rule!r}: {msg}")


_RNN_ADVICE = {
    "RNN": "an unrolled cell over a fixed number of steps, h_t = torch.tanh(W_ih(x[:, t]) + "
           "W_hh(h)) with nn.Linear layers (biograd.models.sequence.RNNClassifier)",
    "LSTM": "an unrolled cell over a fixed number of steps: gates i, f, g, o = (W_x(x[:, t]) + "
            "W_h(h)).chunk(4, dim=1) with nn.Linear layers, c = torch.sigmoid(f) * c + "
            "torch.sigmoid(i) * torch.tanh(g), h = torch.sigmoid(o) * torch.tanh(c) "
            "(biograd.models.sequence.LSTMClassifier)",
    "GRU": "an unrolled cell over a fixed number of steps: r, z = torch.sigmoid(W_xr(x_t) + "
           "W_hr(h)), torch.sigmoid(W_xz(x_t) + W_hz(h)), n = torch.tanh(W_xn(x_t) + "
           "r * W_hn(h)), h = (1 - z) * n + z * h, with nn.Linear layers (written like "
           "biograd.models.sequence.LSTMClassifier)",
}
_ATTENTION_ADVICE = (
    "its operations: nn.Linear projections for q, k, v, torch.softmax(q @ k.transpose(-2, -1) "
    "/ d_head ** 0.5, dim=-1) @ v, an output nn.Linear, and the residuals, nn.LayerNorm and MLP "
    "as separate calls in forward (biograd.models.sequence.TransformerBlockClassifier)")
_TRANSFORMERS = (nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
                 nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def composite_advice(mod: nn.Module, leaf: bool) -> str | None:
    """How to write ``mod`` with elementary operations, or None if it is one operation.

    Composite: the recurrent modules (nn.RNN / LSTM / GRU and their cells), attention and the
    transformer layers, and any other module that fx keeps as a leaf (``leaf``: every
    ``torch.nn`` module but the containers) while it holds submodules of its own (a
    parametrization container does not count)."""
    if isinstance(mod, (nn.LSTM, nn.LSTMCell)):
        return _RNN_ADVICE["LSTM"]
    if isinstance(mod, (nn.GRU, nn.GRUCell)):
        return _RNN_ADVICE["GRU"]
    if isinstance(mod, (nn.RNNBase, nn.RNNCellBase)):
        return _RNN_ADVICE["RNN"]
    if isinstance(mod, (nn.MultiheadAttention, *_TRANSFORMERS)):
        return _ATTENTION_ADVICE
    kids = [n for n, _ in mod.named_children() if n != "parametrizations"]
    if kids and leaf:
        return (f"its parts ({', '.join(kids[:4])}{', ...' if len(kids) > 4 else ''}) called "
                "one by one in forward, each an elementary operation")
    return None


def check_composite(mod: nn.Module, name: str, rule: str, leaf: bool = True) -> None:
    """Refuse a composite module (see :func:`composite_advice`), naming it and the fix."""
    advice = composite_advice(mod, leaf)
    if advice is not None:
        cls = type(mod)
        raise unsupported(
            rule, f"module {name!r} ({cls.__module__.split('.modules')[0]}.{cls.__name__}) runs "
            "several operations inside one call; torch.fx keeps it as one vertex, so its "
            "'local' update would be backprop through the whole block, a hidden "
            "multi-operation vertex in the PC graph. Write it with elementary operations "
            f"instead: {advice}.")


#: functions that run several operations in one call (checked like composite modules)
_COMPOSITE_FUNCS = {nn.functional.scaled_dot_product_attention: _ATTENTION_ADVICE}


def check_node(gm: fx.GraphModule, node: fx.Node, rule: str) -> None:
    """Reject in-place ops and train-mode dropout, naming the node and the fix."""
    where = f"node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"
    fix = "; use the out-of-place form (e.g. torch.relu(x), x = x + y, nn.ReLU())"
    inplace = node.kwargs.get("inplace", False) is True
    if node.op == "call_method":
        name = str(node.target)
        inplace |= name.endswith("_") and not name.endswith("__")
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.target in _COMPOSITE_FUNCS:
            raise unsupported(
                rule, f"{where} runs several operations (matmuls and a softmax) in one call, a "
                "hidden multi-operation vertex in the PC graph; write it with elementary "
                f"operations instead: {_COMPOSITE_FUNCS[node.target]}.")
        inplace |= node.target in _INPLACE_FUNCS or (name.endswith("_") and
                                                     not name.endswith("__"))
    elif node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        inplace |= getattr(mod, "inplace", False) is True
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.training and mod.p > 0:
            raise unsupported(rule, f"{where} is dropout in training mode; a PC graph "
                               "re-evaluates vertices, so random masks would differ between "
                               "evaluations. Call model.eval() on dropout or remove it.")
    if inplace:
        raise unsupported(rule, f"{where} is an in-place operation; every vertex of a PC "
                           f"graph must produce a new tensor{fix}.")


class frozen_buffers:
    """Context manager restoring every buffer of ``model`` on exit, so that re-evaluating a
    train-mode BatchNorm vertex during inference does not move its running statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved: list[tuple[Tensor, Tensor]] = []

    def __enter__(self) -> frozen_buffers:
        self.saved = [(b, b.detach().clone()) for b in self.model.buffers()]
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for b, s in self.saved:
                b.copy_(s)
