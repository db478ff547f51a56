"""Weight mirror (Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, P3, arXiv:1904.05391)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from biograd.core.checks import choice, flag, positive, positive_int
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.core.rule import StepResult
from biograd.metrics.alignment import feedback_alignment_angles
from biograd.rules._backward import BackwardReplacementRule


class GaussianNoise:
    """Unit noise x ~ N(0, 1) (P3's description), from ``torch.randn`` on the rule's generator."""

    def draw(self, numel: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        return torch.randn(numel, generator=generator, dtype=dtype)


class RademacherNoise:
    """Unit noise x = +-1 with probability 1/2 each: zero mean and unit variance like N(0, 1),
    so E[x x^T] = I and the mirror's expected update and fixed point are unchanged (P3 asks
    only for zero-mean noise of variance sigma^2; its code uses uniform noise), and the sample
    covariance's diagonal is exact instead of chi-square distributed. Drawn as random bytes
    (one generator draw per 8 values) mapped through a 256 x 8 sign table: about 3x cheaper
    than ``torch.randn`` on a CPU generator."""

    _BITS = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    _TABLES: dict[torch.dtype, Tensor] = {}

    def draw(self, numel: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        table = self._TABLES.get(dtype)
        if table is None:
            table = self._TABLES[dtype] = (self._BITS * 2 - 1).to(dtype)
        idx = torch.randint(0, 256, ((numel + 7) // 8,), generator=generator)
        return table.index_select(0, idx).view(-1)[:numel]


MIRROR_NOISES = {"rademacher": RademacherNoise, "gaussian": GaussianNoise}


@register_rule(
    "weight_mirror",
    family="backward_replacement",
    paper="Akrout et al. 2019, NeurIPS, arXiv:1904.05391",
    supports=("mlp", "cnn", "resnet", "graph"),
)
class WeightMirror(BackwardReplacementRule):
    """Engaged mode = feedback alignment through B; mirror mode (inside every ``step``, after the
    engaged backward) teaches B the transpose of W from noise.

    Mirror mode (P3 section 4): each converted layer's input is driven with zero-mean noise
    x of std sigma (``mirror_noise_std``; ``mirror_noise`` "rademacher": x = +-sigma, the
    default, or "gaussian": x ~ N(0, sigma^2); same mean and covariance, see
    :class:`RademacherNoise`), its pre-activation y = W x (no bias) is observed
    and B <- B + eta (x y^T / n - lambda B) (``mirror_lr`` eta, ``mirror_decay`` lambda, n =
    ``mirror_batch_size`` noise samples, ``mirror_steps`` such updates per batch). Since
    E[x y^T] = sigma^2 W^T, B tends to (sigma^2 / lambda) W^T; the default lambda = sigma^2
    makes that fixed point W^T itself (same scale as FA's init). Conv layers are driven with
    noise images convolved without padding (see ``Conv2dHandler.mirror_correlation``), so the
    correlation, taken through the conv's weight gradient, tends to sigma^2 W. Defaults
    (eta 0.002, n 16) keep the steady-state angle to W^T near 7 deg for 256 inputs and 13 deg
    for 784 (noise ~ sqrt(eta lambda fan_in / (2 n)), see docs/algorithms/backward.md) at
    about +27-29% of an MLP's backprop step (benchmarks/speed.py); the time constant is
    1/(eta lambda) = 500 steps. Each mirror
    step draws the noise of every layer in one call (layer slices of one tensor, drawn on the
    CPU from the rule's generator) where the layer's handler supports it (Linear, Conv2d).
    B is a buffer (the user's optimizer never sees it), initialised like FA's.

    Warm-up (P3's procedure: its code runs a mirror pass before the first engaged step, as many
    mirror batches as the training set has batches): the first ``step`` runs
    ``mirror_warmup_steps`` mirror updates before its forward pass, unless
    :meth:`mirror_warmup` was called already. The default, None, is four time constants,
    ``ceil(4 / (eta lambda))`` (2000 at the defaults: B within e^-4 of its fixed point, about
    two MNIST epochs of batches of 64), or 0 without decay (no fixed point); 0 turns it off.

    Mirror mode skips a layer whose ``B`` carried no error at the engaged step (its input
    needs no gradient: the first layer of a network fed with data), as that ``B`` takes no part
    in learning; the feedback angles leave it out. ``train_unused_feedback=True`` mirrors every
    layer. Before the first step (``mirror_warmup``) every layer is mirrored.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        mirror_noise_std: float = 1.0,
        mirror_lr: float = 0.002,
        mirror_decay: float | None = None,
        mirror_steps: int = 1,
        mirror_batch_size: int = 16,
        mirror_noise: str = "rademacher",
        mirror_warmup_steps: int | None = None,
        train_unused_feedback: bool = False,
        allow_backprop: tuple[type[nn.Module] | str, ...] = (),
    ) -> None:
        super().__init__(model, loss, allow_backprop)
        self.train_unused_feedback = flag(self.name, "train_unused_feedback", train_unused_feedback)
        choice(self.name, "mirror_noise", mirror_noise, tuple(MIRROR_NOISES))
        self.mirror_noise = mirror_noise
        self.noise = MIRROR_NOISES[mirror_noise]()
        self.mirror_noise_std = positive(self.name, "mirror_noise_std", mirror_noise_std)
        self.mirror_lr = positive(self.name, "mirror_lr", mirror_lr)
        decay = mirror_noise_std**2 if mirror_decay is None else mirror_decay
        self.mirror_decay = positive(self.name, "mirror_decay", decay, allow_zero=True)
        self.mirror_steps = positive_int(self.name, "mirror_steps", mirror_steps, allow_zero=True)
        self.mirror_batch_size = positive_int(self.name, "mirror_batch_size", mirror_batch_size)
        if mirror_warmup_steps is None:
            rate = self.mirror_lr * self.mirror_decay
            mirror_warmup_steps = math.ceil(4 / rate) if rate > 0 else 0
        self.mirror_warmup_steps = positive_int(self.name, "mirror_warmup_steps",
                                                mirror_warmup_steps, allow_zero=True)
        self._warmed_up = False
        self.init_random_feedback()
        # layers fed from one shared noise draw (with their features per noise sample) and
        # layers whose handler draws its own noise: fixed by the layer types and shapes
        feats = [(lay, lay.handler.mirror_noise_features(lay.module)) for lay in self.layers]
        self._shared = [(layer, f) for layer, f in feats if f is not None]
        self._own = [layer for layer, f in feats if f is None]

    @torch.no_grad()
    def mirror(self, steps: int = 1) -> None:
        """``steps`` mirror-mode updates of every layer's B whose feedback is in use (all with
        ``train_unused_feedback`` or before the first step); no forward parameter changes."""
        n, std, lr = self.mirror_batch_size, self.mirror_noise_std, self.mirror_lr
        alpha, beta = lr * std * std / n, 1.0 - lr * self.mirror_decay
        every = self.train_unused_feedback
        shared = [(lay, f) for lay, f in self._shared if every or self.feedback_in_use(lay)]
        own = [layer for layer in self._own if every or self.feedback_in_use(layer)]
        sizes = [n * f for _, f in shared]
        fbs = [self.feedback.get(layer.key) for layer, _ in shared]
        for _ in range(steps):
            if shared:
                fb0 = fbs[0]
                noise = self.noise.draw(sum(sizes), self.generator, fb0.dtype).to(fb0.device)
                for (layer, _), fb, x in zip(shared, fbs, noise.split(sizes), strict=True):
                    x = x.view(n, -1).to(fb.device, fb.dtype)  # no-ops on one device and dtype
                    layer.handler.mirror_update_from(layer.module, fb, x, alpha, beta)
            for layer in own:  # handlers without shared-noise support draw Gaussian noise
                layer.handler.mirror_update(
                    layer.module, self.feedback.get(layer.key), n, std, lr, self.mirror_decay,
                    self.generator,
                )

    def prepare(self, x: Tensor) -> None:
        super().prepare(x)
        if not self._warmed_up:
            self.mirror_warmup(self.mirror_warmup_steps)

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """The engaged step (warming up first, see the class docstring); a first step that
        raises (a bad batch) leaves B, the generator and the warm-up as they were."""
        if self._warmed_up:
            return super().step(x, y)
        feedback = {k: v.clone() for k, v in self.feedback.state_dict().items()}
        generator = self.generator.get_state()
        try:
            return super().step(x, y)
        except Exception:
            with torch.no_grad():
                for k, v in feedback.items():
                    self.feedback.get(k).copy_(v)
            self.generator.set_state(generator)
            self._warmed_up = False
            raise

    def after_backward(self) -> None:
        self.mirror(self.mirror_steps)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "warmed_up": self._warmed_up}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        # a checkpoint written before the warm-up existed comes from a run already training
        self._warmed_up = bool(state.get("warmed_up", True))

    def mirror_warmup(
        self, steps: int, sample: Tensor | tuple[int, ...] | None = None
    ) -> dict[str, float]:
        """Run ``steps`` mirror-mode updates before training (the first :meth:`step` then skips
        its own warm-up); returns the B-vs-W^T angles.

        ``sample`` (a batch or an input shape) is accepted for API symmetry but not needed:
        mirror mode drives each layer with its own noise, whose shape the layer defines.
        """
        positive_int(self.name, "steps", steps, allow_zero=True)
        self.mirror(steps)
        self._warmed_up = True
        return feedback_alignment_angles(self)
