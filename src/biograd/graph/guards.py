"""Guards for PC graphs: nodes a PC graph cannot hold, and buffers that must not drift."""

from __future__ import annotations

import operator

import torch
from torch import Tensor, fx, nn

from biograd.core.errors import UnsupportedModelError

_INPLACE_FUNCS = {operator.setitem, operator.iadd, operator.isub, operator.imul,
                  operator.itruediv, operator.ipow, operator.imatmul}


def unsupported(rule: str, msg: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"rule {rule!r}: {msg}")


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
