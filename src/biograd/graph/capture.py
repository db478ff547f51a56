"""Capture a ``torch.fx``-traceable model as a predictive-coding graph (P5, Sec. 3).

Salvatori et al. (2022, arXiv:2103.04689) run predictive coding on any computational graph:
every intermediate tensor becomes a *value node* x_v with a prediction mu_v = f_v(x_parents)
computed by its *vertex function* f_v. Here each fx node is classified as

- ``input``  a placeholder: a clamped value node (the data);
- ``vertex`` a call_module / call_function / call_method node that depends on the input and
  returns a floating tensor: a value node with its vertex function (``data`` when it has no
  parameters and only clamped parents, e.g. ``x.flatten(1)``: a fixed function of the data,
  clamped like the input);
- ``inline`` a node that is recomputed inside the vertex functions that use it: parameters and
  buffers (``get_attr``), anything that does not depend on the input (e.g. ``W.t()``), and
  nodes returning tuples of tensors (``chunk``, ``split``), folded into their ``getitem`` users;
- ``const``  a non-differentiable value computed once per forward pass (shapes, sizes, integer
  tensors) and held fixed during inference.

Parameters belong to the vertex whose function uses them; a parameter used by several vertices
(a weight-tied RNN cell unrolled in time) receives the sum of their updates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, fx, nn

from biograd.core.errors import UnsupportedModelError
from biograd.graph.guards import check_composite, check_node, frozen_buffers, unsupported
from biograd.graph.levels import assign_levels
from biograd.graph.vertex import CLAMPED, CONST, INLINE, INPUT, VERTEX, PCGraph, Vertex


def run_node(gm: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Execute one fx node on concrete arguments (parameters are fetched live from ``gm``)."""
    if node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "call_module":
        mod = node.meta.get("biograd_module")
        if mod is None:
            mod = node.meta["biograd_module"] = gm.get_submodule(str(node.target))
        return mod(*args, **kwargs)
    raise AssertionError(node.op)


def _has_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tensor(v) for v in value.values())
    return False


class _Tracer(fx.Tracer):
    """fx's default tracer, refusing composite modules (nn.LSTM, nn.MultiheadAttention, ...)
    when they are called, before their tuple outputs can make tracing fail for another
    reason (:func:`biograd.graph.guards.check_composite`)."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            name = self.path_of_module(m)
        except NameError:  # a module called but not registered as a submodule
            name = type(m).__name__
        check_composite(m, name, self.rule, leaf=self.is_leaf_module(m, name))
        return super().call_module(m, forward, args, kwargs)


def trace(model: nn.Module, rule: str) -> fx.GraphModule:
    """``fx.symbolic_trace`` with a clear error for untraceable models and composites."""
    try:
        tracer = _Tracer(rule)
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ...
        raise unsupported(
            rule, f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}). "
            "The model's forward must not branch or loop on tensor values (data-dependent "
            "control flow); use torch.where, or loops over fixed Python ints (e.g. a stored "
            "sequence length)."
        ) from exc


def _closure(node: fx.Node, kinds: dict[fx.Node, str]) -> list[fx.Node]:
    """The inline nodes a vertex recomputes, plus the vertex itself (dependency order)."""
    seen: dict[fx.Node, None] = {}

    def visit(n: fx.Node) -> None:
        for a in n.all_input_nodes:
            if kinds[a] == INLINE and a not in seen:
                visit(a)
        seen[n] = None

    visit(node)
    return list(seen)


def _consts_of(closure: list[fx.Node], kinds: dict[fx.Node, str]) -> list[fx.Node]:
    """Const nodes read by ``closure``, with the const nodes they read, in node order."""
    found: dict[fx.Node, None] = {}

    def visit(n: fx.Node) -> None:
        for a in n.all_input_nodes:
            if kinds[a] == CONST and a not in found:
                visit(a)
                found[a] = None
            elif kinds[a] == INLINE:
                visit(a)

    for c in closure:
        visit(c)
    return list(found)


def capture(model: nn.Module, x: Tensor, rule: str = "zil") -> PCGraph:
    """Trace ``model``, run it once on ``x`` to classify nodes, and build the vertex list."""
    gm = trace(model, rule)
    values: dict[fx.Node, Any] = {}
    kinds: dict[fx.Node, str] = {}
    depends: dict[fx.Node, bool] = {}
    out_node: fx.Node | None = None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    with torch.no_grad(), frozen_buffers(model):
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                if n is placeholders[0]:
                    kinds[n], depends[n], values[n] = INPUT, True, x
                elif n.args:  # an optional forward argument left at its default
                    kinds[n], depends[n], values[n] = CONST, False, n.args[0]
                else:
                    raise unsupported(rule, f"forward takes a second required input "
                                       f"{n.name!r}; PC graphs clamp a single input tensor.")
                continue
            if n.op == "output":
                out_node = n
                continue
            check_node(gm, n, rule)
            args = fx.node.map_arg(n.args, lambda a: values[a])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: values[a])
            values[n] = val = run_node(gm, n, args, kwargs)
            depends[n] = any(depends[a] for a in n.all_input_nodes)
            if n.op == "get_attr" or not depends[n]:
                kinds[n] = INLINE
            elif isinstance(val, Tensor):
                kinds[n] = VERTEX if val.is_floating_point() else CONST
            else:
                kinds[n] = INLINE if _has_tensor(val) else CONST
    assert out_node is not None
    result = out_node.args[0]
    if not isinstance(result, fx.Node) or kinds.get(result) != VERTEX:
        raise unsupported(rule, f"{type(model).__name__} must return one floating tensor that "
                           "depends on its input (the output vertex that receives the loss); "
                           f"got {result!r}.")
    return _build(gm, kinds, result)


def _build(gm: fx.GraphModule, kinds: dict[fx.Node, str], result: fx.Node) -> PCGraph:
    vertices: list[Vertex] = []
    index: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        if kinds.get(n) == INPUT:
            index[n] = len(vertices)
            vertices.append(Vertex(n.name, "input", n))
        elif kinds.get(n) == VERTEX:
            v = Vertex(n.name, "op", n)
            params: dict[int, nn.Parameter] = {}
            v.closure = _closure(n, kinds)
            for c in v.closure:
                for a in c.all_input_nodes:
                    if kinds[a] in (INPUT, VERTEX) and a not in v.sources:
                        v.sources[a] = index[a]
                if c.op == "call_module":
                    for p in gm.get_submodule(str(c.target)).parameters():
                        params.setdefault(id(p), p)
                elif c.op == "get_attr":
                    obj = run_node(gm, c, (), {})
                    if isinstance(obj, nn.Parameter):
                        params.setdefault(id(obj), obj)
                    elif isinstance(obj, nn.Module):
                        for p in obj.parameters():
                            params.setdefault(id(p), p)
            v.params = [p for p in params.values() if p.requires_grad]
            v.consts = _consts_of(v.closure, kinds)
            v.parents = sorted(set(v.sources.values()))
            if not v.params and all(vertices[p].kind in CLAMPED for p in v.parents):
                v.kind = "data"  # a fixed function of the data only: clamped like the input
            index[n] = len(vertices)
            vertices.append(v)
    order = list(range(len(vertices)))
    graph = PCGraph(gm, kinds, vertices, order, index[result], [None] * len(vertices))
    assign_levels(graph)
    return graph
