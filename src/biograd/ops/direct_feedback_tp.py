"""Direct feedback maps of DDTP-linear and their difference reconstruction loss.

Direct difference target propagation (DDTP, Meulemans et al. 2020, "A Theoretical Framework for
Target Propagation", NeurIPS, arXiv:2006.14331, sec. 3.3 and fig. 3; code
meulemansalex/theoretical_framework_for_target_propagation, ``lib/direct_feedback_layers.py``
``DDTPMLPLayer`` and ``lib/conv_layers.py`` ``DDTPConvLayer``). DDTP-linear gives every hidden
block ``l`` a linear map ``Q_l`` from the network's output ``a_L`` (the last block's output: the
logits, before the softmax of the loss) straight to the block's output ``z_l`` (after the
activation and, for conv blocks, after pooling; flattened, ``n_l = C*H*W`` rows for a conv
block, as ``DDTPConvLayer``'s ``feature_size``). Targets (difference correction through the
direct map; code ``backward``: ``layer_target + layer_activation - layer_tilde``):

    t_l = z_l + Q_l t_L - Q_l a_L = z_l + Q_l (t_L - a_L)

Difference reconstruction loss of a direct map (the paper's DRL with direct feedback; code
``compute_feedback_gradients``: perturb the layer, run the frozen forward layers to the output,
reconstruct the perturbation through ``Q_l``):

    eps ~ sigma N(0, I) on z_l,   da = f_{l->L}(z_l + eps) - f_{l->L}(z_l)
    L_l = mean_b ||Q_l da - eps||^2 / sigma^2 + lam ||Q_l||_F^2

For small noise ``da = J eps`` (``J = d a_L / d z_l``), so ``E[L_l] = ||Q J - I||_F^2 +
lam ||Q||_F^2``, minimised by ``Q = J^T (J J^T + lam I)^{-1}``: with it, ``t_l - z_l =
-beta J^T (J J^T + lam I)^{-1} e`` is the damped Gauss-Newton target (Meulemans et al., sec. 3).
The damping term is the exact expectation, for a linear map, of the paper's second DRL term
``lam ||g(a + eta) - g(a)||^2 / sigma^2`` (``eta ~ sigma N(0, I)``); the authors' code realises
it as weight decay on the feedback weights (``feedback_wd``; with their ``mse_loss``, which also
averages over the ``n_l`` units, ``lam = n_l * feedback_wd / 2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biograd.ops.tp_losses import gaussian_like

Tail = Callable[[Tensor], Tensor]


class DirectFeedback(nn.Module):
    """``Q_l``: a linear map (no bias: it cancels in every difference) from the output's ``n_out``
    units to the ``n_units`` units of block ``l``'s (flattened) output. ``requires_grad=False``:
    the rule trains it inside ``step`` with its own optimizer."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    @classmethod
    def xavier(cls, n_out: int, n_units: int, generator: torch.Generator,
               like: Tensor) -> DirectFeedback:
        """Xavier-normal initial ``Q`` (std ``sqrt(2 / (n_units + n_out))``), as the authors'
        code initialises the direct maps; drawn from ``generator``, on ``like``'s device/dtype."""
        std = math.sqrt(2.0 / (n_units + n_out))
        w = torch.randn((n_units, n_out), generator=generator, dtype=torch.float64) * std
        return cls(w.to(device=like.device, dtype=like.dtype))

    def forward(self, d_out: Tensor, like: Tensor) -> Tensor:
        """``Q d_out`` shaped like the block output ``like``: the shift of a difference."""
        return F.linear(d_out, self.weight).reshape(like.shape)


def direct_targets(feedback: nn.ModuleList, outputs: list[Tensor], top: Tensor) -> list[Tensor]:
    """``[t_0, ..., t_{L-2}, t_L]`` with ``t_l = z_l + Q_l (t_L - a_L)``; ``outputs`` are the
    block outputs ``z_0..z_{L-1}`` (``a_L = z_{L-1}``) and ``top`` is ``t_L``."""
    shift = top - outputs[-1]
    hidden = [z + q(shift, z) for q, z in zip(feedback, outputs[:-1], strict=True)]
    return [*hidden, top]


def direct_drl_loss(tail: Tail, q: DirectFeedback, z: Tensor, a: Tensor, sigma: float,
                    generator: torch.Generator, damping: float) -> Tensor:
    """``mean_b ||Q (tail(z + eps) - a) - eps||^2 / sigma^2 + damping ||Q||_F^2`` (module
    docstring); ``tail`` runs the frozen blocks after ``l`` up to the output, ``a = tail(z)``."""
    eps = gaussian_like(z, sigma, generator)
    with torch.no_grad():
        da = tail(z + eps) - a
    residual = q(da, z) - eps
    value = residual.pow(2).flatten(1).sum(1).mean() / sigma**2
    return value + damping * q.weight.pow(2).sum() if damping else value
