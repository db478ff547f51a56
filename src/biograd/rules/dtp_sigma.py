"""DTP-sigma: P1's "improved variant of Difference Target Propagation" (Ororbia & Mali 2019)."""

from __future__ import annotations

from torch import nn

from biograd.core import checks
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.ops.tp_losses import DEFAULT_GUARD, TOP_TARGETS, ReconstructionLoss
from biograd.rules._target_prop import TargetPropagationRule


@register_rule(
    "dtp_sigma",
    family="target_propagation",
    paper="Ororbia & Mali 2019, Biologically Motivated Algorithms for Propagating Local Target "
    "Representations, AAAI (arXiv:1805.11703); P1's DTP-sigma, linear-inverse reading (see docs)",
    supports=("mlp", "cnn"),
)
class DTPSigma(TargetPropagationRule):
    """DTP with linear (affine) approximate inverses, P1's "improved DTP" as we read it.

    P1 (abstract) proposes "an improved variant of Difference Target Propagation" and reports it
    as DTP-sigma next to DTP; its defining section could not be read with the tools available
    when this rule was written, so the ingredient that separates it from :class:`DTP` is a
    reading, documented in docs/algorithms/target_prop.md ("Readings and choices"):

    - ``feedback_activation="identity"`` (default): each inverse is affine, ``g_l(y) = V_l y +
      c_l``, instead of DTP's ``V_l tanh(y) + c_l`` (``"same"`` gives DTP's inverse back);
    - ``top_target``: ``"error"`` (default) nudges the output by LRA-E's output error
      ``softmax(z_L) - onehot(y)``, ``"gradient"`` by ``dl/dz_L``; the two are equal for the
      cross-entropy loss (P1's protocol), so this part only matters for other losses;
    - ``sigma``: std of the noise of the reconstruction ``||g(f(z+n)) - (z+n)||^2`` (Lee et al.
      2015, sec. 2.3); ``sigma=0`` switches it off;
    - ``difference_correction``: ``False`` gives plain TP targets ``t_{l-1} = g_l(t_l)``.

    Inverses get ``feedback_steps`` updates per batch from the rule's own optimizer;
    ``feedback_guard`` caps each inverse-training step by the loss's exact curvature
    (``biograd.ops.tp_losses.guard_scale``; 0 turns it off).
    """

    def __init__(
        self, model: nn.Module, loss: str | LossFn = "cross_entropy", *, beta: float = 0.1,
        feedback_steps: int | list[int] = 1, feedback_lr: float | list[float] = 0.01,
        sigma: float | list[float] = 0.1, feedback_momentum: float = 0.9,
        feedback_activation: str = "identity", feedback_guard: float = DEFAULT_GUARD,
        top_target: str = "error", difference_correction: bool = True,
    ) -> None:
        checks.choice("dtp_sigma", "top_target", top_target, tuple(TOP_TARGETS))
        checks.flag("dtp_sigma", "difference_correction", difference_correction)
        super().__init__(
            model, loss, beta=beta, feedback_steps=feedback_steps, feedback_lr=feedback_lr,
            sigma=sigma, feedback_momentum=feedback_momentum,
            feedback_activation=feedback_activation, feedback_guard=feedback_guard,
            feedback_loss=ReconstructionLoss(),
            top_nudge=TOP_TARGETS[top_target], difference_correction=difference_correction,
        )

    #: sigma = 0 switches the noise of the inverse training off.
    ALLOW_ZERO_SIGMA = True
