"""Shared machinery of the backward-replacement rules (FA, sign symmetry, DFA, weight mirror,
Kolen-Pollack): layer conversion, feedback storage and the common ``step``.

A subclass says which feedback tensor each converted layer uses (:meth:`layer_feedback`, by
default the one stored in ``rule.feedback``), may give a layer's op a weight decay to add
(:meth:`layer_decay`: Kolen-Pollack's) and may act after the backward pass
(:meth:`after_backward`: the decay no op added, WM's mirror mode).

Unused feedback. A layer's ``B`` carries error only when the layer's input needs a gradient;
the first layer of a network fed with data never does, so its ``B`` takes no part in
learning. Each ``step`` records which layers' feedback was used (:meth:`feedback_in_use`).
The rules that train ``B`` (Kolen-Pollack, weight mirror) do not train unused feedback
unless ``train_unused_feedback=True`` (the forward weights' trajectory is the same either
way; for an MLP on data the first layer's ``B`` is most of all feedback entries), and
:meth:`feedback_weight_pairs` (hence the feedback-vs-forward angles) lists the used layers.
The decision is per call: a layer called several times in one step (shared weights) gets
Kolen-Pollack's ``B`` update from the calls whose input needs a gradient.

No silent backprop. A converted layer's parameter reached by anything but the layer's own call
(``F.linear(h, self.fc.weight)``, a tied readout) would be trained by autograd through the true
weights. The first ``step`` inspects its autograd graph once (:mod:`biograd.ops.autograd_paths`)
and raises :class:`~biograd.core.errors.UnsupportedModelError` naming the parameter and the
module that used it; later steps skip the check (``check_paths``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from biograd.core.checks import choice
from biograd.core.losses import LossFn
from biograd.core.rule import LearningRule, StepResult
from biograd.ops.autograd_paths import StepRecord
from biograd.ops.convert import (
    FeedbackLayer,
    check_allow_backprop,
    feedback_layers,
    swapped_forwards,
)
from biograd.ops.feedback import DirectSignal, LayerDecay, WeightSwap


class FeedbackBank(nn.Module):
    """Feedback tensors keyed by :attr:`FeedbackLayer.key` (buffers, or parameters for KP).

    Loading a state_dict creates buffers it does not hold yet, so feedback that is built
    lazily (DFA, whose shapes are known only after a first forward) resumes exactly.
    """

    def get(self, key: str) -> Tensor:
        t = self._buffers.get(key)
        return t if t is not None else self._parameters[key]  # type: ignore[return-value]

    def has(self, key: str) -> bool:
        return key in self._buffers or key in self._parameters

    def _load_from_state_dict(  # type: ignore[override]
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        for k, v in state_dict.items():
            name = k[len(prefix):]
            if k.startswith(prefix) and "." not in name and not self.has(name):
                self.register_buffer(name, v.new_empty(v.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class StepState:
    """What the layers' forwards read during a step: its number (1 at the first step), DFA's
    output-error signal and the weight swap (None: this step uses the feedback ops). A plain
    object, so updating it per step is cheap."""

    def __init__(self) -> None:
        self.step = 0
        self.direct: DirectSignal | None = None
        self.swap: WeightSwap | None = None


class BackwardReplacementRule(LearningRule):
    """Base of the rules that replace ``W^T`` in the backward pass by feedback ``B``.

    ``allow_backprop``: module types or module paths that may keep ordinary backprop (for
    parameterised layers without a feedback handler); normalisation layers always do.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        allow_backprop: tuple[type[nn.Module] | str, ...] = (),
    ) -> None:
        super().__init__(model, loss)
        allow = check_allow_backprop(self.name, model, allow_backprop)
        self.layers: list[FeedbackLayer] = feedback_layers(model, self.name, allow)
        self.feedback = FeedbackBank()
        #: Whether feedback that carries no error is still trained (rules with trainable
        #: feedback expose it as a hyper-parameter; fixed feedback has nothing to train).
        self.train_unused_feedback = False
        self._in_use: set[str] = set()
        self._state = StepState()
        #: the converted layers' forwards, built once (see :meth:`_layer_forward`)
        self._forwards: list[Callable[[Tensor], Tensor]] | None = None
        self._check_paths = "first_step"
        self._paths_pending = True
        #: Whether plain Linear / Conv2d layers get their feedback by swapping ``B`` into their
        #: own autograd node (the default, cheaper) rather than through the feedback op, an
        #: autograd Function: the same update either way (see :meth:`_layer_forward`).
        self.swap_weights = True
        self._weight_swap = WeightSwap()

    CHECK_PATHS = ("first_step", "every_step", "off")

    @property
    def check_paths(self) -> str:
        """When a step inspects its autograd graph for parameters of converted layers reached
        outside the layers' own calls (silent backprop, an error): ``"first_step"`` (default:
        once, at the next step; the graph's structure is the model's), ``"every_step"`` (for
        forwards whose structure changes with the data; costs a Python pass over the graph per
        step) or ``"off"``."""
        return self._check_paths

    @check_paths.setter
    def check_paths(self, value: str) -> None:
        self._check_paths = choice(self.name, "check_paths", value, self.CHECK_PATHS)
        self._paths_pending = value != "off"

    # ----------------------------------------------------------------- subclass hooks
    def layer_feedback(self, layer: FeedbackLayer) -> Tensor:
        """The ``B`` that ``layer``'s backward uses this step: by default the one stored for it
        in :attr:`feedback` (FA, DFA, weight mirror, Kolen-Pollack)."""
        return self.feedback.get(layer.key)

    def scaled_feedback(self, layer: FeedbackLayer) -> tuple[Tensor, float]:
        """``(T, s)`` with ``B = s * T``: what the backward multiplies by (default ``(B, 1)``)."""
        return self.layer_feedback(layer), 1.0

    def direct_signal(self) -> DirectSignal | None:
        """DFA's output-error broadcast; ``None`` for layer-to-layer feedback."""
        return None

    def layer_decay(self, layer: FeedbackLayer) -> LayerDecay | None:
        """The decay ``layer``'s feedback op adds to its weight and feedback gradients this step
        (Kolen-Pollack's), given to the layer's first call of the step whose input needs a
        gradient; ``None`` (the default): none."""
        return None

    def prepare(self, x: Tensor) -> None:
        """Called before the forward pass (e.g. lazy initialisation)."""

    def after_backward(self) -> None:
        """Called after ``.grad`` has been written."""

    def check_layer_input(self, layer: FeedbackLayer, x: Tensor) -> None:
        """Called with each input that sends error through ``layer``'s feedback, before the op
        (DFA checks that the input fits its feedback matrix)."""

    def check_graph(self, record: StepRecord, output: Tensor, loss: Tensor) -> None:
        """Called at a step whose graph is inspected (``check_paths``), after the check for
        silent backprop, with the step's record, output and loss (pure DFA checks that its
        cuts hold and finds the layers that need none)."""

    # ----------------------------------------------------------------- the contract
    def feedback_in_use(self, layer: FeedbackLayer) -> bool:
        """Whether ``layer``'s feedback carried error at the last step: some call of the layer
        got an input that needs a gradient (True for every layer before the first step)."""
        return self._state.step == 0 or layer.key in self._in_use

    def _layer_forward(self, layer: FeedbackLayer) -> Callable[[Tensor], Tensor]:
        """``layer``'s forward during a step: the layer's op with its backward sending the error
        through :meth:`scaled_feedback` (fetched once per step, at the first call that needs
        it, with :meth:`layer_decay`), recording which layers' feedback is used.

        A call whose input needs no gradient sends no error through ``B``, and its weight and
        bias gradients are backprop's: it runs the module's own forward, unless unused
        feedback is to be trained; then the input is made a leaf that needs a gradient (which
        is discarded), so that trainable feedback gets its update.

        A call whose input needs a gradient runs, for a plain ``nn.Linear`` / ``nn.Conv2d``
        (``handler.swappable``) with fixed, unscaled layer-to-layer feedback (FA, weight mirror,
        sign symmetry: its gain is in its B), the module's own forward with ``B`` swapped in for
        the weight view autograd saves for the input gradient (:class:`WeightSwap`); otherwise
        (DFA, trained feedback or a decay: Kolen-Pollack, a scale from a subclass's
        ``scaled_feedback``, other layer types, a call the swap cannot serve,
        ``swap_weights=False``) the handler's
        feedback op, an autograd Function. Both give the same update, bit for bit.

        Built once per layer and kept across steps (per-step values are read from
        :class:`StepState`): a fresh closure per step costs more than its body. The
        :meth:`check_layer_input` and :meth:`layer_decay` hooks are called only when a subclass
        defines them."""
        rule, state, in_use = self, self._state, self._in_use
        module, handler, key = layer.module, layer.handler, layer.key
        native = type(module).forward  # the class's forward (the instance's is swapped)
        op = handler.forward
        params = module._parameters
        # the step it was fetched at, feedback, scale, the weight view to swap (None: no swap)
        memo: list[Any] = [0, None, 1.0, None]
        view: list[Any] = [None, 0, None]  # W, its address, the view of it the op saves
        can_swap = [handler.swappable(module)]
        own = handler.swap_forward(module) if can_swap[0] else native
        # hooks called only when a subclass defines them
        cls, base = type(self), BackwardReplacementRule
        check = cls.check_layer_input is not base.check_layer_input
        decays = cls.layer_decay is not base.layer_decay
        # the stored B, read from the bank directly when no subclass changes how B is made
        stored = self.feedback if all(getattr(cls, m) is getattr(base, m) for m in (
            "layer_feedback", "scaled_feedback")) else None

        def fetch(decay: LayerDecay | None) -> None:
            fb, scale = rule.scaled_feedback(layer) if stored is None else (stored.get(key), 1.0)
            memo[1], memo[2], memo[3] = fb, scale, None
            w = params.get("weight")
            # the swap serves fixed feedback without a scale (a trained B gets its gradient, a
            # scale its product with the input gradient, from the op)
            if state.swap is not None and can_swap[0] and state.direct is None and \
                    decay is None and scale == 1.0 and not fb.requires_grad and \
                    w is not None and w.requires_grad:
                if w is not view[0] or w.data_ptr() != view[1]:  # kept while W is the same
                    view[:] = w, w.data_ptr(), handler.transposed_weight(module).detach()
                memo[3] = view[2]
            memo[0] = state.step

        def fwd(x: Tensor) -> Tensor:
            if x.requires_grad:
                in_use.add(key)
            elif rule.train_unused_feedback and rule._feedback_trained(key):
                x = x.detach().requires_grad_()
            else:
                return native(module, x)
            decay = None
            if memo[0] != state.step:
                if decays:
                    decay = rule.layer_decay(layer)  # the step's first call only
                fetch(decay)
            if check:
                rule.check_layer_input(layer, x)
            if memo[3] is not None:
                y = state.swap.call(own, x, memo[3], memo[1])  # type: ignore[union-attr]
                if y is not None:
                    return y
                can_swap[0] = False  # the op saved no such weight view: the feedback op serves
                memo[3] = None
            direct = state.direct
            if direct is not None and key in direct.uncut_keys:
                direct = direct.uncut  # pure DFA where no cut is needed (see DirectSignal)
            return op(module, x, memo[1], direct, memo[2], decay)

        return fwd

    def _feedback_trained(self, key: str) -> bool:
        """Whether the feedback stored under ``key`` is trained by the user's optimizer."""
        bank = self.feedback
        return bank.has(key) and bank.get(key).requires_grad

    def __getstate__(self) -> dict[str, Any]:
        # the layers' forwards close over this rule: a copy (deepcopy, pickle) builds its own
        state = self.__dict__.copy()
        state["_forwards"] = None
        state.pop("_installs", None)
        return state

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self.check_batch(x, y)
        self.prepare(x)
        self._in_use.clear()
        state = self._state
        state.step += 1
        state.direct = direct = self.direct_signal()
        state.swap = self._weight_swap if self.swap_weights and WeightSwap.available() else None
        if self._forwards is None:
            self._forwards = [self._layer_forward(layer) for layer in self.layers]
            self._installs = [(layer.module.__dict__, fwd) for layer, fwd in
                              zip(self.layers, self._forwards, strict=True)]
        if self._paths_pending:
            with swapped_forwards(self.layers, self._forwards), \
                    StepRecord(self.model, self.layers) as record:
                out = self.model(x)
        else:
            record = None
            out = self._swapped_forward(x)
        self.check_labels(out, y)
        loss = self.loss_fn(out, y)
        if record is not None:
            record.silent_backprop(self.name, loss)
            self.check_graph(record, out, loss)
            self._paths_pending = self._check_paths == "every_step"
        if direct is not None:
            out.register_hook(direct.capture)
        loss.backward()
        self.after_backward()
        return StepResult(float(loss.detach()), out.detach())

    def _swapped_forward(self, x: Tensor) -> Tensor:
        """``self.model(x)`` with the layers' forwards swapped in: :func:`swapped_forwards`
        inlined (a module already holding an instance ``forward`` gets it back)."""
        installs = self._installs
        saved = [d.get("forward") for d, _ in installs]
        try:
            for d, fwd in installs:
                d["forward"] = fwd
            return self.model(x)  # type: ignore[no-any-return]
        finally:
            for (d, _), old in zip(installs, saved, strict=True):
                if old is None:
                    d.pop("forward", None)
                else:
                    d["forward"] = old

    def feedback_weight_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{layer path: (B, W^T)}`` (``W`` itself for conv kernels, the shape ``B`` has) of
        the layers whose feedback is in use (:meth:`feedback_in_use`), or of every layer with
        ``train_unused_feedback``: an unused ``B`` is never trained, so its angle says
        nothing about the rule."""
        return {
            layer.path: (
                self.layer_feedback(layer).detach(),
                layer.handler.transposed_weight(layer.module).detach(),
            )
            for layer in self.layers
            if self.train_unused_feedback or self.feedback_in_use(layer)
        }

    def init_random_feedback(self, as_parameter: bool = False) -> None:
        """Fixed random ``B`` per layer (FeedbackHandler.init_feedback), drawn from the rule's
        generator in layer order."""
        for layer in self.layers:
            b = layer.handler.init_feedback(layer.module, self.generator)
            if as_parameter:
                self.feedback.register_parameter(layer.key, nn.Parameter(b))
            else:
                self.feedback.register_buffer(layer.key, b)
