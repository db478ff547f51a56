"""Feedback autograd function and the dispatch table of layer handlers.

The backward-replacement rules (FA, sign symmetry, DFA, weight mirror, Kolen-Pollack; see
docs/algorithms/backward.md) keep each layer's forward op and its weight gradient exactly as in
backprop, ``dW = delta z^T``, but send the error to the layer's input through feedback weights
``B`` instead of ``W^T`` (Lillicrap et al. 2016, eq. delta_l = (B_{l+1} delta_{l+1}) * f'(h_l)).

Each parameterised layer type is served by a :class:`FeedbackHandler` found through a dispatch
table (:func:`register_feedback_handler`, :func:`handler_for`), in the style of BackPACK's
per-module extensions. A handler knows the layer's maths through a :class:`LayerOp`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class LayerOp(abc.ABC):
    """The maths of one layer call: forward, and backward with the input grad through ``B``."""

    @abc.abstractmethod
    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The ordinary forward op."""

    @abc.abstractmethod
    def backward(
        self, grad_out: Tensor, x: Tensor, feedback: Tensor, need_input: bool, need_bias: bool
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """``(grad_input through feedback, grad_weight as in BP, grad_bias as in BP)``.

        ``feedback`` has the handler's feedback shape (``W^T``'s for Linear, ``W``'s for conv);
        backprop is the special case ``feedback = handler.transposed_weight(module)``.
        """

    @abc.abstractmethod
    def feedback_grad(self, grad_weight: Tensor) -> Tensor:
        """``grad_weight`` laid out in the feedback's shape (Kolen-Pollack's transposed update)."""


class DirectSignal:
    """DFA's broadcast: the output error ``e_L`` captured by a hook on the model output.

    Every converted layer's input then receives ``B e_L`` reshaped to the input's shape
    (Nokland 2016, eq. delta_l = (B_l e_L) * f'(h_l)). Two ways of giving it (see
    docs/algorithms/backward.md, "Direct feedback alignment"):

    - ``cut_inputs=False`` (DFA's ``skips="propagate"``): the layer's op returns ``B e_L`` as its
      input's gradient, and autograd adds it to whatever else reaches that tensor (a skip).
    - ``cut_inputs=True`` (``skips="pure"``): every converted layer's input is a *cut point*
      (:meth:`inject`): its gradient is REPLACED by the sum of ``B_k e_L`` over the converted
      layers reading it, so nothing else (no skip, no other consumer) sends it error.

    A layer whose op pads its input first (``Conv2dHandler.prepare_input``) gets ``B e_L`` at its
    own input, before the padding, in both modes (also through :meth:`inject`).

    A cut costs a gradient hook per call. Where every consumer of a layer's input is a
    converted layer (every input of an MLP), the sum autograd forms IS the cut's value, so the
    layers listed in ``uncut_keys`` (found once from the autograd graph, see
    ``StepRecord.read_only_by_layers``) are given :attr:`uncut`: the same signal without cuts.
    """

    def __init__(self, cut_inputs: bool = False) -> None:
        self.error: Tensor | None = None
        self.cut_inputs = cut_inputs
        #: this step's cut points, keyed by the id of the tensor (held so the id stays unique)
        self._points: dict[int, tuple[Tensor, _InjectAt]] = {}
        #: keys of the layers whose inputs need no cut (only converted layers read them)
        self.uncut_keys: frozenset[str] = frozenset()
        self.uncut: DirectSignal = _Uncut(self) if cut_inputs else self

    def capture(self, grad: Tensor) -> None:
        self.error = grad

    def reset(self) -> None:
        """Forget the last step's error and cut points (called at each step's start)."""
        self.error = None
        self._points.clear()

    def release(self) -> None:
        """Drop the references to this step's layer inputs (called after the backward pass)."""
        self._points.clear()

    def project(self, feedback: Tensor, x_shape: torch.Size) -> Tensor:
        """``B e_L`` (``e_L @ B^T`` per sample) reshaped to ``x_shape``."""
        if self.error is None:
            raise RuntimeError("DFA: the output error was not captured before the layer's backward")
        e = self.error.reshape(self.error.shape[0], -1)
        return (e @ feedback.t()).reshape(x_shape)

    def input_grad(self, feedback: Tensor, x_shape: torch.Size) -> Tensor:
        """What a layer's op returns as its input's gradient (``B e_L``)."""
        return self.project(feedback, x_shape)

    def inject(self, x: Tensor, feedback: Tensor) -> None:
        """Give ``B e_L`` to ``x`` itself through a gradient hook on ``x`` (the op then returns
        a zero input gradient, :data:`ZERO_INPUT`). With ``cut_inputs`` the hook replaces the
        gradient ``x`` collects by the sum over its converted readers (one hook per tensor per
        step); otherwise it adds this layer's ``B e_L`` to it."""
        if not x.requires_grad:
            return
        if not self.cut_inputs:
            x.register_hook(_InjectAt(self, [feedback], replace=False))
            return
        entry = self._points.get(id(x))
        if entry is not None and entry[0] is x:
            entry[1].feedback.append(feedback)
            return
        point = _InjectAt(self, [feedback], replace=True)
        self._points[id(x)] = (x, point)
        x.register_hook(point)


class _Uncut(DirectSignal):
    """A :class:`DirectSignal` without cuts reading its owner's error."""

    def __init__(self, owner: DirectSignal) -> None:
        super().__init__(cut_inputs=False)
        self.owner = owner

    def project(self, feedback: Tensor, x_shape: torch.Size) -> Tensor:
        return self.owner.project(feedback, x_shape)


class _InjectAt:
    """The gradient hook of :meth:`DirectSignal.inject`: ``sum_k B_k e_L`` replacing (a cut
    point) or added to the gradient the tensor collects."""

    __slots__ = ("feedback", "replace", "signal")

    def __init__(self, signal: DirectSignal, feedback: list[Tensor], replace: bool) -> None:
        self.signal, self.feedback, self.replace = signal, feedback, replace

    def __call__(self, grad: Tensor) -> Tensor:
        total = None if self.replace else grad
        for b in self.feedback:
            g = self.signal.project(b, grad.shape)
            total = g if total is None else total + g
        return total  # type: ignore[return-value]


class _ZeroInput:
    """The ``direct`` a layer's op gets when its ``B e_L`` is injected at its input instead:
    the op's own input gradient is a zero (expanded, no allocation)."""

    @staticmethod
    def input_grad(feedback: Tensor, x_shape: torch.Size) -> Tensor:
        return feedback.new_zeros(()).expand(x_shape)


ZERO_INPUT: Any = _ZeroInput()


class LayerDecay:
    """Weight decay ``lam`` that one layer call's feedback op adds in its backward: ``lam W`` to
    the weight gradient and ``lam B`` to the feedback gradient (Kolen-Pollack's decay, P3), in
    the same pass that produces them (no extra pass over ``.grad`` after the backward). The
    flags say which of the two it added; the rule adds the rest itself (a layer whose call ran
    the module's own forward, or whose output reached no loss)."""

    __slots__ = ("feedback_done", "lam", "weight_done")

    def __init__(self, lam: float = 0.0) -> None:
        self.lam = lam
        self.weight_done = False
        self.feedback_done = False

    def reset(self, lam: float) -> LayerDecay:
        """This step's decay, nothing added yet."""
        self.lam, self.weight_done, self.feedback_done = lam, False, False
        return self


def fast_apply(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """``function.apply`` without ``torch.autograd.Function.apply``'s Python wrapper (which
    binds default arguments when ``setup_context`` is defined, checks for functorch transforms
    and unwraps tensors left over from finished ones, about 2 us per call): the C++ ``apply``
    itself, or the full ``apply`` while a ``torch.func`` transform is active. For Functions
    called with every argument given and no ``setup_context``."""
    raw = torch._C._FunctionBase.__dict__.get("apply")  # type: ignore[attr-defined]
    if raw is None or not hasattr(torch._C, "_are_functorch_transforms_active"):
        return function.apply
    c_apply = raw.__get__(None, function)
    full, active = function.apply, torch._C._are_functorch_transforms_active

    def apply(*args: Any) -> Any:
        return full(*args) if active() else c_apply(*args)

    return apply


class _Saved:
    """What autograd keeps for a tensor saved under :class:`WeightSwap`'s hooks: the tensor
    (the feedback in place of a swapped weight) and its version, checked when it is unpacked
    (saved-tensor hooks bypass autograd's own check that a saved tensor was not modified)."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor, self.version = tensor, tensor._version


_autograd = torch._C._autograd  # type: ignore[attr-defined]
_push_hooks = getattr(_autograd, "_push_saved_tensors_default_hooks", None)
_pop_hooks = getattr(_autograd, "_pop_saved_tensors_default_hooks", None)
_top_hooks = getattr(_autograd, "_top_saved_tensors_default_hooks", None)
_hooks_enabled = getattr(_autograd, "_saved_tensors_hooks_is_enabled", None)


class WeightSwap:
    """Feedback through the layer's own autograd node: during one call of a plain
    ``nn.Linear`` / ``nn.Conv2d`` (its own ``forward``), saved-tensor hooks
    (``torch.autograd.graph.saved_tensors_hooks``) hand autograd the feedback ``B`` in place of
    the weight view the op saves for its input gradient (``W^T`` for ``F.linear``'s ``addmm``,
    ``W`` for the convolution). That saved view serves the input gradient alone (the weight
    gradient of a linear op reads the input and the output error only), so the node computes
    exactly the feedback op's gradients, ``delta B^T`` for the input and backprop's for the
    weight and bias, in C++: no Python autograd Function per layer call (its Python forward
    and backward are most of a feedback layer's extra cost on an MLP, docs/algorithms/
    backward.md). The other tensor the op saves (its input) is kept as it is, with the version
    check autograd would make; a call whose op saved no such view (an unusual input, a weight
    recomputed per call) is reported, and the caller runs the feedback op instead. For fixed
    feedback: ``B`` gets no gradient this way.
    """

    __slots__ = ("feedback", "hits", "target")

    def __init__(self) -> None:
        self.target: Tensor | None = None
        self.feedback: Tensor | None = None
        self.hits = 0

    @staticmethod
    def available() -> bool:
        """Whether a step may swap: the hooks exist in this torch, are enabled, and no outer
        saved-tensor hooks are active (the swap would bypass them for the layer's tensors)."""
        if _push_hooks is None or _pop_hooks is None or _top_hooks is None:
            return False
        if _hooks_enabled is not None and not _hooks_enabled():
            return False
        return _top_hooks(False) is None and not torch._C._are_functorch_transforms_active()

    def pack(self, t: Tensor) -> _Saved:
        target = self.target
        if target is not None and t.data_ptr() == target.data_ptr() and \
                t.shape == target.shape and t.stride() == target.stride() and \
                t.dtype == target.dtype:
            self.hits += 1
            return _Saved(self.feedback)  # type: ignore[arg-type]
        return _Saved(t)

    @staticmethod
    def unpack(saved: _Saved) -> Tensor:
        if saved.tensor._version != saved.version:
            raise modified_in_place("input or feedback")
        return saved.tensor

    def call(
        self, forward: Callable[[Tensor], Tensor], x: Tensor, target: Tensor, feedback: Tensor
    ) -> Tensor | None:
        """``forward(x)`` (the module's own forward, :meth:`FeedbackHandler.swap_forward`) with
        ``target`` (the weight view the op saves for the input gradient,
        :meth:`FeedbackHandler.transposed_weight`) replaced by ``feedback`` in the tensors
        autograd saves; ``None`` when the op saved no such view (then the result is discarded
        and the caller runs the feedback op)."""
        self.target, self.feedback, self.hits = target, feedback, 0
        _push_hooks(self.pack, self.unpack)  # type: ignore[misc]
        try:
            y = forward(x)
        finally:
            _pop_hooks()  # type: ignore[misc]
            self.target = self.feedback = None
        return y if self.hits else None


def modified_in_place(what: str) -> RuntimeError:
    """The error of a feedback op whose saved tensor changed between forward and backward (what
    autograd raises for its own saved tensors)."""
    return RuntimeError(
        f"one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: the {what} of a biograd feedback op changed between the forward and the "
        f"backward pass; do not modify a layer's input or feedback in place before backward"
    )


class FeedbackFunction(torch.autograd.Function):
    """Forward: the layer's ordinary op. Backward: BP's weight/bias gradients, the input gradient
    through ``scale * feedback`` (or ``direct``'s ``B e_L``), and, when ``feedback`` requires
    grad (Kolen-Pollack) and the input needs one (else B carries no error), a feedback gradient
    equal to the weight gradient transposed.
    (``scale``: what a rule's ``scaled_feedback`` hook returns beside ``T``, ``B = scale * T``;
    applied to the input gradient. The built-in rules pass 1.)"""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        feedback: Tensor,
        op: LayerOp,
        direct: DirectSignal | None,
        scale: float = 1.0,
        decay: LayerDecay | None = None,
    ) -> Tensor:
        ctx.op, ctx.direct, ctx.has_bias, ctx.scale = op, direct, bias is not None, scale
        ctx.decay = decay
        ctx.save_for_backward(x, weight, feedback)
        return op.forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        need_b = need_b and ctx.has_bias
        direct: DirectSignal | None = ctx.direct
        if direct is None:
            gx, gw, gb = ctx.op.backward(grad_out, x, feedback, need_x, need_b)
            if gx is not None and ctx.scale != 1.0:
                gx = gx * ctx.scale
        else:
            _, gw, gb = ctx.op.backward(grad_out, x, weight, False, need_b)
            gx = direct.input_grad(feedback, x.shape) if need_x else None
        gfb = ctx.op.feedback_grad(gw) if (need_fb and need_x) else None  # B unused otherwise
        decay: LayerDecay | None = ctx.decay
        if decay is not None:
            if gfb is not None:
                gfb.add_(feedback, alpha=decay.lam)
                decay.feedback_done = True
            if need_w:
                gw = gw.add(weight, alpha=decay.lam)  # not in place: a handler's op made gw
                decay.weight_done = True
        return gx, (gw if need_w else None), gb, gfb, None, None, None, None


_apply_generic = fast_apply(FeedbackFunction)


class FeedbackHandler(abc.ABC):
    """How one layer type is converted: its op, its ``W^T``-shaped view, init and mirror maths."""

    @abc.abstractmethod
    def op(self, module: nn.Module) -> LayerOp:
        """The :class:`LayerOp` of ``module`` (its stride, padding, ... baked in)."""

    @abc.abstractmethod
    def transposed_weight(self, module: nn.Module) -> Tensor:
        """The feedback that makes the layer exact backprop (``W^T`` for Linear, ``W`` for conv)."""

    @abc.abstractmethod
    def fan_in(self, module: nn.Module) -> int:
        """Inputs per output unit (the fan-in of PyTorch's default initialisation)."""

    @abc.abstractmethod
    def mirror_correlation(
        self, module: nn.Module, n: int, std: float, generator: torch.Generator
    ) -> Tensor:
        """P3's mirror mode on ``n`` noise inputs x ~ N(0, std^2): the correlation ``x y^T / n``
        with ``y = W x`` (no bias), in the feedback's shape; its expectation is ``std^2 W^T``."""

    @torch.no_grad()
    def mirror_update(
        self,
        module: nn.Module,
        feedback: Tensor,
        n: int,
        std: float,
        lr: float,
        decay: float,
        generator: torch.Generator,
    ) -> None:
        """One mirror step in place: ``B <- (1 - lr decay) B + lr x y^T / n``."""
        corr = self.mirror_correlation(module, n, std, generator)
        feedback.mul_(1.0 - lr * decay).add_(corr, alpha=lr)

    def swappable(self, module: nn.Module) -> bool:
        """Whether the module's own forward may run with ``B`` swapped in for the weight view
        its op saves (:class:`WeightSwap`); ``False`` here: the feedback op always."""
        return False

    def swap_forward(self, module: nn.Module) -> Callable[[Tensor], Tensor]:
        """The module's own forward as ``x -> y`` (for a :meth:`swappable` module)."""
        return lambda x: type(module).forward(module, x)  # type: ignore[no-any-return]

    def prepare_input(self, module: nn.Module, x: Tensor) -> Tensor:
        """Anything done to the input before the op (e.g. explicit padding); identity here."""
        return x

    def init_feedback(self, module: nn.Module, generator: torch.Generator) -> Tensor:
        """Fixed random feedback with the distribution of PyTorch's default init of ``W``:
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so ``B`` and ``W`` start with the same scale."""
        w = self.transposed_weight(module)
        bound = 1.0 / math.sqrt(self.fan_in(module))
        return uniform(w.shape, bound, generator).to(device=w.device, dtype=w.dtype)

    def forward(
        self,
        module: nn.Module,
        x: Tensor,
        feedback: Tensor,
        direct: DirectSignal | None = None,
        scale: float = 1.0,
        decay: LayerDecay | None = None,
    ) -> Tensor:
        """``module(x)`` whose backward sends the error through ``scale * feedback`` (and adds
        ``decay``'s terms to the weight and feedback gradients)."""
        xp = self.prepare_input(module, x)
        if direct is not None and (direct.cut_inputs or xp is not x):
            direct.inject(x, feedback)  # B e_L enters at the layer's own input (before padding)
            direct = ZERO_INPUT
        weight, bias = module.weight, module.bias  # type: ignore[union-attr]
        return _apply_generic(xp, weight, bias, feedback, self.op(module), direct, scale, decay)

    def bind(
        self,
        module: nn.Module,
        feedback: Tensor,
        direct: DirectSignal | None = None,
        scale: float = 1.0,
    ) -> Callable[[Tensor], Tensor]:
        """``x -> self.forward(module, x, feedback, direct, scale)``: the op with fixed feedback,
        as a callable (a convenience outside the rules; the rules call :meth:`forward` at every
        layer call, with the step's feedback and the module's current weight)."""
        return lambda x: self.forward(module, x, feedback, direct, scale)

    # ----------------------------------------------------------------- mirror mode, shared noise
    def mirror_noise_features(self, module: nn.Module) -> int | None:
        """Features per noise sample when mirror mode may hand this layer a slice of one shared
        noise draw (:meth:`mirror_update_from`); ``None``: the layer draws its own noise."""
        return None

    def mirror_update_from(
        self, module: nn.Module, feedback: Tensor, noise: Tensor, alpha: float, beta: float
    ) -> None:
        """``B <- beta B + alpha x^T (x W^T)`` for unit-variance noise ``x`` of shape
        (n, :meth:`mirror_noise_features`); only for handlers that return a size there."""
        raise NotImplementedError(f"{type(self).__name__} draws its own mirror noise")


def uniform(shape: torch.Size | tuple[int, ...], bound: float, g: torch.Generator) -> Tensor:
    """U(-bound, bound) drawn (on the CPU) from ``g``."""
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).float()


_HANDLERS: dict[type[nn.Module], FeedbackHandler] = {}


def register_feedback_handler(module_type: type[nn.Module], handler: FeedbackHandler) -> None:
    """Teach every backward-replacement rule to convert ``module_type`` (and its subclasses)."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not isinstance(handler, FeedbackHandler):
        raise TypeError(f"handler must be a biograd.ops.FeedbackHandler, got {type(handler)!r}")
    _HANDLERS[module_type] = handler


def handler_for(module: nn.Module) -> FeedbackHandler | None:
    """The handler of ``module``'s type, or of its nearest registered base class."""
    for cls in type(module).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    return None
