"""Direct feedback alignment (Nokland 2016, NeurIPS, arXiv:1609.01596)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from biograd.core.checks import choice
from biograd.core.errors import InputError, UnsupportedModelError
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.ops.autograd_paths import StepRecord
from biograd.ops.convert import FeedbackLayer
from biograd.ops.feedback import DirectSignal, uniform
from biograd.rules._backward import BackwardReplacementRule


@register_rule(
    "direct_feedback_alignment",
    family="backward_replacement",
    paper="Nokland 2016, NeurIPS (arXiv:1609.01596)",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class DirectFeedbackAlignment(BackwardReplacementRule):
    """Every converted layer's INPUT receives B_k e_L, e_L = dloss/d(model output).

    Nokland's delta_l = (B_l e_L) * f'(h_l): layer k's backward returns B_k e_L (reshaped to its
    input, B_k of shape (input numel per sample, output numel per sample)) instead of
    W_k^T delta_k; ordinary autograd then applies f' (and pooling, flatten, normalisation) on the
    way to the previous layer's output, whose weight update is BP's given that delta. So B_k
    plays Nokland's B_{k-1}. The layer producing the model output gets e_L itself, so its update
    equals backprop's. e_L is captured by a hook on the model's output tensor, so nothing assumes
    the output layer is the last converted module in execution order.

    ``skips`` says what happens where the graph is not a chain (a skip connection, a tensor read
    by several layers); on a chain (MLP, LeNet, VGG) both choices are the same algorithm:

    - ``"pure"`` (default; Nokland's DFA): every converted layer's input is a *cut point*: its
      gradient is exactly the sum of B_k e_L over the converted layers that read it, and what any
      other path (an identity skip, a second consumer) would send it is dropped. A layer's delta
      is then B e_L (of the cut points its output reaches) times its *local derivative*: the
      Jacobian of the non-converted operations between its output and those cut points, i.e.
      f'(h) for an activation, BatchNorm's batch-statistics backward, pooling's routing,
      reshapes; in a post-activation residual block y = relu(bn2(conv2(.)) + s), conv2's delta
      is bn2'^T (relu'(.) * B e_L) with B that of the layer reading y, and the skip input s
      gets nothing from y. Nothing travels between layers through autograd. Launay et al. 2020
      (arXiv:2006.12878; their TinyDFA cuts the graph at every feedback point with a detach)
      apply DFA this way to residual architectures. A model whose cuts cannot separate the
      layers (a residual stream or LSTM cell state that reaches converted layers only through
      other operations, e.g. pre-activation ResNets, pre-norm transformers) is refused at the
      first step (:meth:`check_graph`), naming the two layers; use ``"propagate"`` there.
    - ``"propagate"``: each converted layer's input gets its own B_k e_L and autograd SUMS the
      signals where paths merge, so an identity skip carries the sum of the DFA signals of the
      layers after it back to earlier layers (no weight transport, but not Nokland's equation:
      a layer's delta depends on every later layer's signal); this is what hooking each layer's
      input gradient gives (e.g. BioTorch's DFA layers, Sanfiz & Akrout 2021).

    B_k is a fixed buffer, U(-1/sqrt(n_in), 1/sqrt(n_in)) with n_in the input numel (the
    default init of a Linear(n_in -> n_out), transposed), created at the first ``step`` from a
    no-grad eval-mode forward that records the shapes.
    """

    SKIPS = ("pure", "propagate")

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        skips: str = "pure",
        allow_backprop: tuple[type[nn.Module] | str, ...] = (),
    ) -> None:
        super().__init__(model, loss, allow_backprop)
        self.skips = choice(self.name, "skips", skips, self.SKIPS)
        self._signal = DirectSignal(cut_inputs=skips == "pure")

    def direct_signal(self) -> DirectSignal:
        self._signal.reset()
        return self._signal

    def after_backward(self) -> None:
        self._signal.release()

    def check_graph(self, record: StepRecord, output: Tensor, loss: Tensor) -> None:
        """Pure DFA: refuse a model where a cut point's error would still come from two layers
        one of which follows the other (see the class docstring)."""
        if self.skips != "pure":
            return
        self._signal.uncut_keys = record.read_only_by_layers(loss)
        leak = record.dfa_skip_leak(output)
        if leak is not None:
            raise UnsupportedModelError(
                f"rule {self.name!r} with skips='pure' cuts the error at the input of every "
                f"converted layer, but in this model {leak} (a residual stream or cell state "
                f"that reaches converted layers only through other operations). Pure DFA cannot "
                f"be formed by those cuts; use skips='propagate' (skip paths sum the layers' "
                f"DFA signals) or restructure the model so that such a stream is a converted "
                f"layer's input."
            )

    @torch.no_grad()
    def prepare(self, x: Tensor) -> None:
        if len(self.feedback._buffers) == len(self.layers):
            return
        sizes: dict[str, int] = {}

        def record(key: str) -> Callable[..., None]:
            def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
                sizes.setdefault(key, args[0][0].numel())

            return hook

        hooks = [layer.module.register_forward_pre_hook(record(layer.key)) for layer in self.layers]
        was_training = self.model.training
        try:
            self.model.eval()
            out = self.model(x[:1])
        finally:
            self.model.train(was_training)
            for h in hooks:
                h.remove()
        n_out = out[0].numel()
        for layer in self.layers:
            if layer.key not in sizes:
                raise UnsupportedModelError(
                    f"rule {self.name!r}: layer {layer.path!r} is not called in the forward "
                    f"pass, so DFA cannot size its feedback; exclude it with allow_backprop"
                )
            n_in = sizes[layer.key]
            b = uniform((n_in, n_out), 1.0 / math.sqrt(n_in), self.generator)
            self.feedback.register_buffer(layer.key, b.to(out))

    def check_layer_input(self, layer: FeedbackLayer, x: Tensor) -> None:
        n_in = self.feedback.get(layer.key).shape[0]
        if x.numel() != n_in * x.shape[0]:
            raise InputError(
                f"rule {self.name!r}: layer {layer.path!r} gets inputs of {x[0].numel()} "
                f"values per sample, but its DFA feedback was built for {n_in}; DFA's "
                f"feedback matrices fix the input size of every layer"
            )

    def feedback_weight_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """DFA's B_k maps the OUTPUT error, so it has no W^T to align with: empty."""
        return {}
