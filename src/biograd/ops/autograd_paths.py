"""One-pass inspection of a step's autograd graph for the backward-replacement rules.

A converted layer learns through its feedback op only if its parameters are reached by nothing
else. A weight read functionally, ``F.linear(h, self.fc.weight)`` in a model's forward, a
readout tied to ``fc.weight``, any path to a converted layer's parameter other than the layer's
own call, would be backpropagated by autograd through the true weights, with no error, and the
rule would be half backprop. :class:`StepRecord` records one forward pass (which calls of the
converted layers produced which autograd nodes, and which module and torch function created
every other node) and :meth:`StepRecord.silent_backprop` walks the graph from the loss once,
crossing each converted call from its output straight to its input (the call's own parameter
edges are the rule's), and names any parameter still reached.

The walk runs at a rule's first step only (a Python pass over the graph costs a few percent of
an MLP step; per-step it is skipped), so a model that reaches a weight functionally only on some
steps (data-dependent control flow) is caught only when ``check_paths="every_step"``.

:meth:`StepRecord.dfa_skip_leak` serves pure DFA: with the error cut at every converted layer's
input, it finds where a layer's error would still come from two layers one of which follows the
other (a residual stream or cell state that is no converted layer's input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, resolve_name

from biograd.core.errors import UnsupportedModelError
from biograd.ops.convert import FeedbackLayer

Node = Any  # torch.autograd.graph.Node (grad_fn objects)
Edge = tuple[Node, int]


@dataclass
class Call:
    """One call of a converted layer: its output's autograd node and its input's edge (None
    when the input needs no gradient or is a leaf: the walk stops there)."""

    layer: FeedbackLayer
    out: Node
    inp: Edge | None
    number: int  # 1 for the layer's first call in the step

    def label(self, calls_of_layer: int) -> str:
        more = f" (call {self.number} of {calls_of_layer})" if calls_of_layer > 1 else ""
        return f"{self.layer.path!r}{more}"


def _where(path: str, module: nn.Module) -> str:
    return f"{path!r} ({type(module).__name__})" if path else \
        f"the model itself ({type(module).__name__})"


class _Creators(TorchFunctionMode):
    """Notes, for each autograd node a torch function creates, the function and the module whose
    forward was running (innermost), so an offending path can be named."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.created: dict[Node, tuple[str, str]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            node = t.grad_fn if isinstance(t, Tensor) else None
            if node is not None and node not in self.created:
                self.created[node] = (resolve_name(func) or getattr(func, "__name__", "?"),
                                      self.stack[-1] if self.stack else "")
        return out


class StepRecord:
    """Context manager around one forward pass of ``model`` (with the layers' forwards swapped):
    records every call of ``layers`` and who created the other autograd nodes."""

    def __init__(self, model: nn.Module, layers: Sequence[FeedbackLayer]) -> None:
        self.model, self.layers = model, list(layers)
        self.calls: list[Call] = []
        self._stack: list[str] = []
        self._where: dict[str, str] = {}
        self._derived: dict[Node, str] = {}  # a weight recomputed per call (weight_norm)
        self._handles: list[Any] = []
        self._mode = _Creators(self._stack)

    # ----------------------------------------------------------------- recording
    def __enter__(self) -> StepRecord:
        count: dict[str, int] = {}
        for path, module in self.model.named_modules():
            self._where[path] = _where(path, module)
            self._handles.append(module.register_forward_pre_hook(self._enter(path), prepend=True))
            self._handles.append(module.register_forward_hook(self._leave))
        for layer in self.layers:
            self._handles.append(
                layer.module.register_forward_hook(self._recorder(layer, count), prepend=True))
        self._mode.__enter__()
        return self

    def _enter(self, path: str) -> Any:
        def push(_module: nn.Module, _args: tuple) -> None:
            self._stack.append(path)

        return push

    def _leave(self, _module: nn.Module, _args: tuple, _out: Any) -> None:
        self._stack.pop()

    def _recorder(self, layer: FeedbackLayer, count: dict[str, int]) -> Any:
        """The forward hook noting one call of ``layer`` (run first: it sees the op's output)."""

        def record(module: nn.Module, args: tuple, out: Any) -> None:
            x = args[0] if args else None
            node = out.grad_fn if isinstance(out, Tensor) else None
            if node is None:
                return
            inp = (x.grad_fn, x.output_nr) if isinstance(x, Tensor) and x.grad_fn else None
            count[layer.path] = count.get(layer.path, 0) + 1
            self.calls.append(Call(layer, node, inp, count[layer.path]))
            for name in ("weight", "bias"):
                t = getattr(module, name, None)
                if isinstance(t, Tensor) and not isinstance(t, nn.Parameter) and t.grad_fn:
                    self._derived.setdefault(t.grad_fn, f"{layer.path}.{name}".lstrip("."))

        return record

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _calls_of(self, call: Call) -> int:
        return sum(1 for c in self.calls if c.layer is call.layer)

    # ----------------------------------------------------------------- silent backprop
    def silent_backprop(self, rule: str, loss: Tensor) -> None:
        """Raise :class:`UnsupportedModelError` if a converted layer's parameter is reached from
        ``loss`` by any path other than that layer's own calls."""
        owned: dict[int, tuple[str, FeedbackLayer]] = {}
        for layer in self.layers:
            for name, p in layer.module.named_parameters(recurse=False):
                owned.setdefault(id(p), (f"{layer.path}.{name}".lstrip("."), layer))
        by_out = {c.out: c for c in self.calls}
        root = loss.grad_fn
        if root is None:
            return
        parent: dict[Node, Node | None] = {root: None}
        stack = [root]
        while stack:
            node = stack.pop()
            name = self._derived.get(node)
            var = getattr(node, "variable", None)
            if name is None and var is not None and id(var) in owned:
                name = owned[id(var)][0]
            if name is not None:
                raise UnsupportedModelError(self._silent_message(rule, name, node, parent))
            if var is not None:
                continue
            call = by_out.get(node)
            if call is not None:  # the rule's op: its parameter edges are the rule's own
                nexts = [call.inp[0]] if call.inp is not None else []
            else:
                nexts = [f for f, _ in node.next_functions if f is not None]
            for f in nexts:
                if f not in parent:
                    parent[f] = node
                    stack.append(f)

    def _silent_message(
        self, rule: str, name: str, node: Node, parent: dict[Node, Node | None]
    ) -> str:
        layer = next(
            (lay for lay in self.layers
             if name.startswith(f"{lay.path}.") or (not lay.path and "." not in name)),
            None,
        )
        path = layer.path if layer is not None else name.rsplit(".", 1)[0]
        chain, user, up = [], None, parent.get(node)
        while up is not None and user is None:
            chain.append(up.name())
            user = self._mode.created.get(up)
            up = parent.get(up)
        if user is not None:
            func, module_path = user
            who = f"{func}, called in the forward of {self._where.get(module_path, module_path)},"
        else:
            who = "an operation outside any module"
        kind = type(layer.module).__name__ if layer is not None else "layer"
        return (
            f"rule {rule!r}: parameter {name!r} of the converted layer {path!r} ({kind}) is "
            f"used outside the layer's own call: {who} reads it directly (backward path "
            f"... -> {' -> '.join(reversed(chain[-4:]))} -> {name!r}). Autograd would "
            f"backpropagate through that use with the true weights, silently mixing backprop "
            f"into {rule!r}. Call the module {path!r} itself (module(x), e.g. self.fc(h) "
            f"rather than F.linear(h, self.fc.weight)) wherever its weights are needed, or, if "
            f"the layer is meant to learn by ordinary backprop, exclude it from conversion with "
            f"allow_backprop=({path!r},)."
        )

    # ----------------------------------------------------------------- pure DFA
    def read_only_by_layers(self, loss: Tensor) -> frozenset[str]:
        """Keys of the converted layers every call of which gets an input that no autograd
        node other than converted calls consumes: a cut there changes nothing."""
        consumers: dict[Edge, set[Node]] = {}
        seen: set[Node] = set()
        todo = [loss.grad_fn] if loss.grad_fn is not None else []
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            for f, nr in node.next_functions:
                if f is not None:
                    consumers.setdefault((f, nr), set()).add(node)
                    todo.append(f)
        ops = {c.out for c in self.calls}
        keys = {c.layer.key for c in self.calls}
        for c in self.calls:
            if c.inp is not None and not consumers.get(c.inp, set()) <= ops:
                keys.discard(c.layer.key)
        return frozenset(keys)

    def dfa_skip_leak(self, output: Tensor) -> str | None:
        """With the error cut at every converted call's input (pure DFA), a description of a cut
        point whose error would come from two calls one of which follows the other, or None.

        The *sources* of a cut point (a converted call's input, or the model output) are the
        converted calls reached backwards from it through non-converted operations without
        crossing another cut point; call ``j`` precedes call ``c`` when ``j`` is a source of
        ``c``'s input. A cut point with sources ``j`` and ``i`` where ``j`` (transitively)
        precedes ``i`` carries error from ``i``'s successors back past ``i`` to ``j``: a skip."""
        by_out = {c.out: c for c in self.calls}
        readers: dict[Edge, list[Call]] = {}
        for c in self.calls:
            if c.inp is not None:
                readers.setdefault(c.inp, []).append(c)
        points: list[tuple[Edge, str]] = [
            (edge, " and ".join(r.label(self._calls_of(r)) for r in rs) + "'s input")
            for edge, rs in readers.items()
        ]
        if output.grad_fn is not None:
            points.append(((output.grad_fn, output.output_nr), "the model output"))

        def sources(start: Edge) -> list[Call]:
            found: list[Call] = []
            seen: set[Node] = set()
            todo = [start[0]]
            while todo:
                node = todo.pop()
                if node in seen:
                    continue
                seen.add(node)
                call = by_out.get(node)
                if call is not None:
                    found.append(call)
                    continue
                for f, nr in node.next_functions:
                    if f is not None and (f, nr) not in readers:
                        todo.append(f)
            return found

        src = {edge: sources(edge) for edge, _ in points}
        succ: dict[int, list[Call]] = {}
        for edge, rs in readers.items():
            for j in src[edge]:
                succ.setdefault(id(j), []).extend(rs)

        def after(j: Call) -> set[int]:
            reach: set[int] = set()
            todo = list(succ.get(id(j), []))
            while todo:
                c = todo.pop()
                if id(c) not in reach:
                    reach.add(id(c))
                    todo.extend(succ.get(id(c), []))
            return reach

        for edge, what in points:
            s = src[edge]
            for j in s:
                later = after(j)
                for i in s:
                    if i is not j and id(i) in later:
                        return (f"{what} would get error from {i.label(self._calls_of(i))} and "
                                f"also from the earlier {j.label(self._calls_of(j))}, along a "
                                f"path that bypasses the converted layers in between")
        return None
