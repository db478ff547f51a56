"""Shared machinery of the backward-replacement rules (FA, sign symmetry, DFA, weight mirror,
Kolen-Pollack): layer conversion, feedback storage and the common ``step``.

A subclass says which feedback tensor each converted layer uses (:meth:`layer_feedback`) and
may act after the backward pass (:meth:`after_backward`: KP's weight decay, WM's mirror mode).

Unused feedback. A layer's ``B`` carries error only when the layer's input needs a gradient;
the first layer of a network fed with data never does, so its ``B`` takes no part in
learning. Each ``step`` records which layers' feedback was used (:meth:`feedback_in_use`).
The rules that train ``B`` (Kolen-Pollack, weight mirror) do not train unused feedback
unless ``train_unused_feedback=True`` (the forward weights' trajectory is the same either
way; for an MLP on data the first layer's ``B`` is most of all feedback entries), and
:meth:`feedback_weight_pairs` (hence the feedback-vs-forward angles) lists the used layers.
The decision is per call: a layer called several times in one step (shared weights) gets
Kolen-Pollack's ``B`` update from the calls whose input needs a gradient.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from biograd.core.losses import LossFn
from biograd.core.rule import LearningRule, StepResult
from biograd.ops.convert import (
    FeedbackLayer,
    check_allow_backprop,
    feedback_layers,
    swapped_forwards,
)
from biograd.ops.feedback import DirectSignal


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
        self._usage_known = False

    # ----------------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def layer_feedback(self, layer: FeedbackLayer) -> Tensor:
        """The ``B`` that ``layer``'s backward uses this step."""

    def scaled_feedback(self, layer: FeedbackLayer) -> tuple[Tensor, float]:
        """``(T, s)`` with ``B = s * T``: what the backward multiplies by (default ``(B, 1)``)."""
        return self.layer_feedback(layer), 1.0

    def direct_signal(self) -> DirectSignal | None:
        """DFA's output-error broadcast; ``None`` for layer-to-layer feedback."""
        return None

    def prepare(self, x: Tensor) -> None:
        """Called before the forward pass (e.g. lazy initialisation)."""

    def after_backward(self) -> None:
        """Called after ``.grad`` has been written."""

    # ----------------------------------------------------------------- the contract
    def feedback_in_use(self, layer: FeedbackLayer) -> bool:
        """Whether ``layer``'s feedback carried error at the last step: some call of the layer
        got an input that needs a gradient (True for every layer before the first step)."""
        return not self._usage_known or layer.key in self._in_use

    def layer_forward(
        self, layer: FeedbackLayer, direct: DirectSignal | None
    ) -> Callable[[Tensor], Tensor]:
        """``layer``'s forward for this step (subclass hook): by default the handler's op whose
        backward goes through :meth:`scaled_feedback`."""
        fb, scale = self.scaled_feedback(layer)
        return layer.handler.bind(layer.module, fb, direct, scale)

    def _forward_fn(
        self, layer: FeedbackLayer, direct: DirectSignal | None
    ) -> Callable[[Tensor], Tensor]:
        """:meth:`layer_forward`, recording whether the layer's feedback is used this step."""
        bound = self.layer_forward(layer, direct)
        in_use, key, bank = self._in_use, layer.key, self.feedback
        # trainable B of a call whose input needs no gradient: the feedback functions write
        # no B gradient then (it would take no part in learning), unless asked to train it,
        # in which case the input is made a leaf that needs one (its gradient is discarded)
        force = self.train_unused_feedback and bank.has(key) and bank.get(key).requires_grad

        def fwd(x: Tensor) -> Tensor:
            if x.requires_grad:
                in_use.add(key)
            elif force:
                x = x.detach().requires_grad_()
            return bound(x)

        return fwd

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self.check_batch(x, y)
        self.prepare(x)
        self._in_use.clear()
        self._usage_known = True
        direct = self.direct_signal()
        forwards = [self._forward_fn(layer, direct) for layer in self.layers]
        with swapped_forwards(self.layers, forwards):
            out = self.model(x)
        self.check_labels(out, y)
        loss = self.loss_fn(out, y)
        if direct is not None:
            out.register_hook(direct.capture)
        loss.backward()
        self.after_backward()
        return StepResult(float(loss.detach()), out.detach())

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
