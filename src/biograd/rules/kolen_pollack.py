"""Kolen-Pollack learning (Kolen & Pollack 1994; Akrout et al. 2019, P3, arXiv:1904.05391)."""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from biograd.core.checks import flag, positive
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.ops.convert import FeedbackLayer
from biograd.ops.feedback import LayerDecay
from biograd.rules._backward import BackwardReplacementRule

#: P3's weight decay (Akrout et al. 2019, ImageNet ResNets: 1e-4 on every weight and on B).
P3_WEIGHT_DECAY = 1e-4


@register_rule(
    "kolen_pollack",
    family="backward_replacement",
    paper="Akrout et al. 2019, NeurIPS, arXiv:1904.05391 (Kolen & Pollack 1994)",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class KolenPollack(BackwardReplacementRule):
    """FA-style backward through learned B that receives the transposed update of W, with
    P3's weight decay on W and B applied by the rule.

    P3 (section 4, eq. for the KP updates): dW = -eta delta z^T - lambda W,
    dB = -eta z delta^T - lambda B, so W - B^T decays as (1 - eta lambda)^t and B aligns with
    W^T from a random start; without lambda, W - B^T never shrinks and the rule is feedback
    alignment with a transposed-update twist. Here ``step`` writes B.grad = (W.grad)^T exactly
    (B is an ``nn.Parameter`` in ``feedback_parameters()``) and adds ``weight_decay`` lambda:
    lambda W to W.grad and lambda B to B.grad of every converted layer (in the layer op's
    backward, in the passes that write those gradients, see ``LayerDecay``; after the backward
    for what no op reached), so any optimizer (rate eta) applies P3's update. The default
    lambda = 1e-4 is P3's (the network's weight decay in its ImageNet runs: SGD lr 0.1, ~450k
    steps, so lr * lambda * steps ~ 4.5; a shorter run needs a larger lambda for the same
    shrinkage of W - B^T, docs/algorithms/backward.md).

    Do not also decay these W and B in the optimizer: :meth:`param_groups` puts them in groups
    pinned to ``weight_decay=0`` (:meth:`rule_decayed_parameters`), and the runner hands its
    ``weight_decay`` config to this rule (``WEIGHT_DECAY_HPARAM``). ``weight_decay=0`` must be
    asked for explicitly and warns: then the decay has to come from an optimizer that decays
    W and B identically (``torch.optim.SGD(rule.parameters(), weight_decay=...)``).

    A ``B`` that carries no error (its layer's input needs no gradient: the first layer of a
    network fed with data) takes no part in learning, so by default it gets no update (its
    ``.grad`` stays None, the optimizer skips it) and the feedback angles leave it out; the
    forward weights train exactly as if it were trained. ``train_unused_feedback=True``
    trains it too (to study that layer's alignment) at the cost of its update and optimizer
    step: on an MLP 784-256-256-256-10 that B holds 60% of all feedback entries.
    """

    #: the rule's ``weight_decay`` is the network's weight decay (P3's lambda on W and B)
    WEIGHT_DECAY_HPARAM = "weight_decay"

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        weight_decay: float = P3_WEIGHT_DECAY,
        train_unused_feedback: bool = False,
        allow_backprop: tuple[type[nn.Module] | str, ...] = (),
    ) -> None:
        super().__init__(model, loss, allow_backprop)
        self.weight_decay = positive(self.name, "weight_decay", weight_decay, allow_zero=True)
        if self.weight_decay == 0:
            warnings.warn(
                "kolen_pollack with weight_decay=0: the rule adds no decay, so W - B^T only "
                "shrinks if your optimizer decays W and B identically (P3's lambda); with a "
                "plain optimizer this is feedback alignment whose B gets W's transposed updates. "
                f"Leave weight_decay at its default ({P3_WEIGHT_DECAY:g}, P3's) to get P3's "
                "Kolen-Pollack.", UserWarning, stacklevel=2,
            )
        self.train_unused_feedback = flag(self.name, "train_unused_feedback", train_unused_feedback)
        self.init_random_feedback(as_parameter=True)
        self._decays = {layer.key: LayerDecay() for layer in self.layers}

    def rule_decayed_parameters(self) -> list[nn.Parameter]:
        """W and B of every converted layer when ``weight_decay > 0`` (the rule decays them)."""
        if self.weight_decay == 0:
            return []
        out: list[nn.Parameter] = []
        for layer in self.layers:
            out += [layer.module.weight, self.feedback.get(layer.key)]  # type: ignore[list-item]
        return out

    def layer_decay(self, layer: FeedbackLayer) -> LayerDecay | None:
        """The decay the layer's feedback op adds in its backward (``lam W`` to W.grad and
        ``lam B`` to B.grad in the passes that write them, see ``LinearFeedbackFunction``)."""
        if self.weight_decay == 0:
            return None
        return self._decays[layer.key].reset(self.weight_decay)

    def after_backward(self) -> None:
        """The decay of every W and B that has a gradient and whose op did not add it (a layer
        whose calls ran the module's own forward, the data layer; an op whose output reached no
        loss): ``p.grad += lam p``. Each op that did is reset for the next step."""
        if self.weight_decay == 0:
            return
        bank = self.feedback
        for layer in self.layers:
            decay = self._decays[layer.key]
            lam = decay.lam = self.weight_decay
            if decay.weight_done:
                decay.weight_done = False
            else:
                _add_decay(layer.module.weight, lam)  # type: ignore[arg-type]
            if decay.feedback_done:
                decay.feedback_done = False
            else:
                _add_decay(bank.get(layer.key), lam)


def _add_decay(p: Tensor, lam: float) -> None:
    """``p.grad += lam p`` when ``p`` has a gradient."""
    if p.grad is not None:
        p.grad.add_(p.detach(), alpha=lam)
