"""Sign symmetry (Liao, Leibo & Poggio 2016, AAAI; Xiao et al. 2018, arXiv:1811.03567)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from biograd.core.checks import choice, positive
from biograd.core.errors import ConfigError
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.ops.convert import FeedbackLayer
from biograd.rules._backward import BackwardReplacementRule


class UnitMagnitudes:
    """B = g_l sign(W)^T: only the signs of W are shared (Liao et al.'s "sign-concordant").

    ``gain`` None sets g_l to the std of PyTorch's default init of W, 1/sqrt(3 fan_in), a
    constant that keeps backward signals at backprop's scale (plain sign(W) entries are ~30x
    larger than W's and deltas would grow by that factor per layer); ``gain=1`` is the literal
    sign(W)^T.
    """

    def __init__(self, gain: float | None) -> None:
        self.gain = gain

    def setup(self, rule: SignSymmetry) -> None:
        for layer in rule.layers:
            g = self.gain or 1.0 / math.sqrt(3 * layer.handler.fan_in(layer.module))
            rule.gains[layer.key] = g

    def feedback(
        self, rule: SignSymmetry, layer: FeedbackLayer, sign_wt: Tensor
    ) -> tuple[Tensor, float]:
        # B itself scaled (one pass over W's entries), so that the step can serve it by the
        # weight swap (an unscaled B: no autograd Function per layer, see BackwardReplacementRule)
        return sign_wt.mul_(rule.gains[layer.key]), 1.0


class RandomMagnitudes:
    """B = |R| * sign(W)^T with R fixed random (FA's init; Liao et al.'s "random magnitude")."""

    def setup(self, rule: SignSymmetry) -> None:
        rule.init_random_feedback()
        for layer in rule.layers:
            rule.feedback.get(layer.key).abs_()

    def feedback(
        self, rule: SignSymmetry, layer: FeedbackLayer, sign_wt: Tensor
    ) -> tuple[Tensor, float]:
        return sign_wt.mul_(rule.feedback.get(layer.key)), 1.0


MAGNITUDES = {"unit": UnitMagnitudes, "random": RandomMagnitudes}


@register_rule(
    "sign_symmetry",
    family="backward_replacement",
    paper="Liao, Leibo & Poggio 2016, AAAI (arXiv:1510.05067); Xiao et al. 2018",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class SignSymmetry(BackwardReplacementRule):
    """FA-style backward with B built from the CURRENT signs of W at every step.

    ``magnitudes="unit"``: B = gain * sign(W)^T (see :class:`UnitMagnitudes`);
    ``magnitudes="random"``: B = |R| * sign(W)^T with fixed random R (:class:`RandomMagnitudes`).
    Weight updates are backprop's given the deltas. For conv layers B is the kernel
    gain * sign(W) used in the transposed convolution.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        magnitudes: str = "unit",
        gain: float | None = None,
        allow_backprop: tuple[type[nn.Module] | str, ...] = (),
    ) -> None:
        super().__init__(model, loss, allow_backprop)
        choice(self.name, "magnitudes", magnitudes, tuple(MAGNITUDES))
        if gain is not None:
            positive(self.name, "gain", gain)
            if magnitudes != "unit":
                raise ConfigError(
                    f"rule {self.name!r}: gain applies to magnitudes='unit' only (random "
                    f"magnitudes come from |R|); drop gain or use magnitudes='unit'"
                )
        self.gains: dict[str, float] = {}
        self._signs: dict[str, Tensor] = {}  # reused each step (no fresh large allocations)
        self.strategy = UnitMagnitudes(gain) if magnitudes == "unit" else RandomMagnitudes()
        self.strategy.setup(self)

    def scaled_feedback(self, layer: FeedbackLayer) -> tuple[Tensor, float]:
        # detach() instead of a no_grad context: the same result with less per-layer overhead
        wt = layer.handler.transposed_weight(layer.module).detach()
        key = layer.key
        buf = self._signs.get(key)
        if buf is None or buf.shape != wt.shape or buf.dtype != wt.dtype or buf.device != wt.device:
            buf = self._signs[key] = torch.empty_like(wt)
        torch.sign(wt, out=buf)
        return self.strategy.feedback(self, layer, buf)

    def layer_feedback(self, layer: FeedbackLayer) -> Tensor:
        fb, scale = self.scaled_feedback(layer)
        return fb * scale
