"""s-DDTP: DDTP-linear with Meulemans et al.'s own schedule, one of P2's DRL baselines."""

from __future__ import annotations

from torch import nn

from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.rules._ddtp import DirectDTPRule


@register_rule(
    "s_ddtp",
    family="target_propagation",
    paper="Meulemans et al. 2020, A Theoretical Framework for Target Propagation, NeurIPS "
    "(arXiv:2006.14331), DDTP-linear; as the s-DDTP baseline of Ernoult et al. 2022 "
    "(arXiv:2201.13415)",
    supports=("mlp", "cnn"),
)
class SDDTP(DirectDTPRule):
    """DDTP-linear trained as Meulemans et al. did: feedback-only epochs (10 before training,
    one after each epoch) and one DRL step per direct map per training batch.

    Every hidden block l gets the target ``t_l = z_l + Q_l (t_L - a_L)`` through a linear direct
    map ``Q_l`` from the output (logits) to its output (for conv blocks: the flattened pooled
    activation), ``t_L = a_L - beta dl/da_L``; each block descends ``||z_l - t_l||^2 / (2 beta)``.
    Per batch, after the forward targets, each ``Q_l`` takes one Adam step on the difference
    reconstruction loss ``mean_b ||Q_l (f(z_l + eps) - f(z_l)) - eps||^2 / sigma^2 + damping
    ||Q_l||_F^2``, eps ~ sigma N(0, I), whose minimiser ``J^T (J J^T + damping I)^{-1}`` makes the
    targets damped Gauss-Newton targets (docs/algorithms/target_prop.md, "DDTP").

    P2's s-DDTP runs the authors' published DDTP-linear configuration (``DDTPConvCIFAR`` with
    ``final_configs/cifar10_DDTPConv.py``: ``nb_feedback_iterations`` 1, Adam feedback lr 4.5e-3,
    sigma 0.0092, plus 10 feedback-only epochs before training and one after every epoch). The
    feedback-only epochs are this rule's schedule (``FEEDBACK_EPOCHS = (10, 1)``): the runner
    calls :meth:`feedback_only_step` over the training set for them (config keys
    ``feedback_epochs`` / ``extra_feedback_epochs`` override; a hand-written loop calls it
    itself). That schedule is what separates it from ``p_ddtp``, which trains its maps only
    alongside the forward weights. Feedback rate and noise are ours for MNIST-sized nets
    (docs/algorithms/target_prop.md).
    """

    #: Meulemans et al.'s schedule: 10 feedback-only epochs before training, 1 after each epoch
    FEEDBACK_EPOCHS = (10, 1)

    def __init__(
        self, model: nn.Module, loss: str | LossFn = "cross_entropy", *, beta: float = 0.1,
        feedback_steps: int | list[int] = 1, feedback_lr: float | list[float] = 1e-3,
        sigma: float | list[float] = 0.1, feedback_momentum: float = 0.9,
        damping: float = 0.0, feedback_optimizer: str = "adam",
    ) -> None:
        super().__init__(
            model, loss, beta=beta, feedback_steps=feedback_steps, feedback_lr=feedback_lr,
            sigma=sigma, feedback_momentum=feedback_momentum, damping=damping,
            feedback_optimizer=feedback_optimizer,
        )
