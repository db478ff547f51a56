"""The value-node types of a predictive-coding graph (P5, Salvatori et al. 2022,
arXiv:2103.04689, Sec. 3): the node kinds of a captured fx graph, a :class:`Vertex` (a value
node with its vertex function) and a :class:`PCGraph` (the vertices, their order and levels).
Their own module so that capture (which builds them) and levels (which levels them) both
import it, not each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

INPUT, VERTEX, INLINE, CONST = "input", "vertex", "inline", "const"
CLAMPED = ("input", "data")


@dataclass
class Vertex:
    """A value node: ``kind`` is ``input`` (a placeholder), ``data`` (a parameter-free function
    of the inputs only, e.g. ``x.flatten(1)``: clamped like the input), ``op`` (a vertex with
    a vertex function) or ``identity`` (inserted by levelling; predicts its parent's value)."""

    name: str
    kind: str
    node: fx.Node | None = None
    parents: list[int] = field(default_factory=list)
    sources: dict[fx.Node, int] = field(default_factory=dict)
    params: list[nn.Parameter] = field(default_factory=list)
    closure: list[fx.Node] = field(default_factory=list)  # inline nodes, then ``node``
    consts: list[fx.Node] = field(default_factory=list)  # const nodes it reads (node order)


@dataclass
class PCGraph:
    """Vertices in a topological ``order``, the ``output`` vertex, and each vertex's ``level``
    (its distance to the output; ``None`` for vertices that do not reach the output)."""

    gm: fx.GraphModule
    kinds: dict[fx.Node, str]
    vertices: list[Vertex]
    order: list[int]
    output: int
    level: list[int | None]
    levelled: bool = False

    @property
    def depth(self) -> int:
        """Largest level of a live non-input vertex (the number of Z-IL inference steps)."""
        return max((lv for v, lv in zip(self.vertices, self.level, strict=True)
                    if lv is not None and v.kind not in CLAMPED), default=0)

    def live(self, i: int) -> bool:
        return self.level[i] is not None
