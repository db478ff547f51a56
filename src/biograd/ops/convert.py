"""Find the layers a backward-replacement rule converts, and swap their forward during a step.

Every module with its own parameters must be one of: a type with a registered
:class:`~biograd.ops.feedback.FeedbackHandler` (converted), a normalisation layer (keeps its
local backward: it transports no weight between layers), or explicitly allowed to use backprop
(``allow_backprop``). Anything else is an :class:`UnsupportedModelError` naming the layer
(DESIGN.md principle 3: a half-converted network silently trained by backprop is a bug).

The model stays a plain ``nn.Module``: :func:`swapped_forwards` sets an instance ``forward``
on each converted module only while the rule's forward pass runs, then removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

from torch import Tensor, nn

from biograd.core.errors import ConfigError, UnsupportedModelError, close_matches
from biograd.ops import conv as _conv  # noqa: F401  (registers the Conv2d handler)
from biograd.ops import linear as _linear  # noqa: F401  (registers the Linear handler)
from biograd.ops.feedback import FeedbackHandler, handler_for

#: Layers with parameters whose own local backward involves no weight transport.
LOCAL_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)

AllowBackprop = Sequence["type[nn.Module] | str"]


@dataclass
class FeedbackLayer:
    """One converted layer: its path in the model, the module and its handler."""

    path: str
    module: nn.Module
    handler: FeedbackHandler

    @cached_property
    def key(self) -> str:
        """A state_dict-safe name for the layer's feedback tensors."""
        return self.path.replace(".", "__") or "root"


def check_allow_backprop(rule: str, model: nn.Module, allow: object) -> tuple[object, ...]:
    """Validate ``allow_backprop``: module types or module paths (a path covers its children)."""
    if isinstance(allow, (str, type)):
        allow = (allow,)
    if not isinstance(allow, (tuple, list)):
        raise ConfigError(
            f"rule {rule!r}: allow_backprop must be a tuple of module types or module paths, "
            f"got {allow!r}"
        )
    paths = [n for n, _ in model.named_modules() if n]
    for a in allow:
        if isinstance(a, type) and issubclass(a, nn.Module):
            continue
        if isinstance(a, str):
            if a not in paths:
                raise ConfigError(
                    f"rule {rule!r}: allow_backprop names {a!r}, which is not a module path of "
                    f"the model.{close_matches(a, paths)} Paths: {', '.join(paths[:20])}"
                )
            continue
        raise ConfigError(
            f"rule {rule!r}: allow_backprop entries must be nn.Module types or module paths "
            f"(str), got {a!r}"
        )
    return tuple(allow)


def _allowed(path: str, module: nn.Module, allow: tuple[object, ...]) -> bool:
    for a in allow:
        if isinstance(a, type) and isinstance(module, a):
            return True
        if isinstance(a, str) and (path == a or path.startswith(a + ".")):
            return True
    return False


def feedback_layers(
    model: nn.Module, rule: str, allow_backprop: tuple[object, ...] = ()
) -> list[FeedbackLayer]:
    """The layers of ``model`` to convert, in ``named_modules`` order; errors as described above."""
    layers: list[FeedbackLayer] = []
    for path, module in model.named_modules():
        if not list(module.parameters(recurse=False)) or _allowed(path, module, allow_backprop):
            continue
        handler = handler_for(module)
        if handler is not None:
            layers.append(FeedbackLayer(path, module, handler))
        elif not isinstance(module, LOCAL_LAYERS):
            name = type(module).__name__
            where = repr(path) if path else "(the model itself)"
            raise UnsupportedModelError(
                f"rule {rule!r} cannot train layer {where} of type {name}: it has its own "
                f"parameters but no feedback handler, so its backward would need weight "
                f"transport. Register one with biograd.ops.register_feedback_handler({name}, "
                f"handler), or let it learn by ordinary backprop with "
                f"allow_backprop=({name},)" + (f" or allow_backprop=({path!r},)." if path else ".")
            )
    if not layers:
        raise UnsupportedModelError(
            f"rule {rule!r}: the model has no layer with a feedback handler (nn.Linear, "
            f"nn.Conv2d or a type given to biograd.ops.register_feedback_handler)"
        )
    return layers


@contextmanager
def swapped_forwards(
    layers: Sequence[FeedbackLayer], forwards: Sequence[Callable[[Tensor], Tensor]]
) -> Iterator[None]:
    """Run each ``layers[i].module`` with ``forwards[i]`` inside the block, then restore it."""
    saved = [layer.module.__dict__.get("forward") for layer in layers]
    try:
        for layer, fwd in zip(layers, forwards, strict=True):
            # an instance attribute shadows the class's forward; writing __dict__ directly
            # skips nn.Module.__setattr__'s bookkeeping (forward is no parameter or module)
            layer.module.__dict__["forward"] = fwd
        yield
    finally:
        for layer, old in zip(layers, saved, strict=True):
            if old is None:
                layer.module.__dict__.pop("forward", None)
            else:
                layer.module.__dict__["forward"] = old
