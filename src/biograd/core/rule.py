"""The one contract every learning rule follows (DESIGN.md).

A rule owns a plain ``nn.Module`` and, per batch, writes its weight updates into ``.grad`` of the
parameters; any ``torch.optim`` optimizer then applies them. The rule is itself an ``nn.Module``
so that ``state_dict`` / ``load_state_dict`` / ``.to(device)`` cover the model, the rule's own
feedback parameters and buffers, and the random generator the rule draws from.

Sign convention: ``.grad`` holds a *descent direction of the loss*, exactly what autograd would
write for backprop, so ``optimizer.step()`` moves parameters along ``-grad``.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from biograd.core.errors import ConfigError, InputError
from biograd.core.losses import LossFn, get_loss


@dataclass
class StepResult:
    """What :meth:`LearningRule.step` returns for one batch.

    ``loss`` is the output loss of the forward pass (before any update), ``output`` the model's
    output on the batch (detached), ``metrics`` rule-specific scalars (energies, residuals, ...).
    """

    loss: float
    output: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class LearningRule(nn.Module, abc.ABC):
    """Abstract base of every rule. Subclasses implement :meth:`step`.

    Subclasses register feedback parameters (``nn.Parameter`` trained by the user's optimizer)
    and buffers as attributes of ``self`` outside ``self.model``; :meth:`feedback_parameters`
    finds them. Hyper-parameters are keyword-only arguments of ``__init__`` with defaults, which
    :func:`biograd.rule_info` reads.
    """

    name: ClassVar[str] = ""
    #: The keyword of a hyper-parameter that *is* the network's weight decay and that the rule
    #: applies itself, in ``.grad`` (Kolen-Pollack: ``"weight_decay"``, P3's lambda on W and B).
    #: The runner passes its ``weight_decay`` config there unless ``rule_args`` sets it.
    WEIGHT_DECAY_HPARAM: ClassVar[str | None] = None
    #: Feedback-only epochs of the rule's published schedule: ``(before training, after each
    #: epoch)`` passes over the training set calling :meth:`feedback_only_step` (Meulemans et
    #: al. 2020's DDTP: 10 and 1). The runner's ``feedback_epochs`` / ``extra_feedback_epochs``
    #: override them.
    FEEDBACK_EPOCHS: ClassVar[tuple[int, int]] = (0, 0)

    def __init__(self, model: nn.Module, loss: str | LossFn = "cross_entropy") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InputError(f"rule {self.name!r} needs a torch.nn.Module, got {type(model)!r}")
        self.model = model
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn: LossFn = get_loss(loss)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator().manual_seed(seed)

    # ----------------------------------------------------------------- the contract
    @abc.abstractmethod
    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """Compute this batch's updates and write them into ``.grad`` (accumulating)."""

    @torch.no_grad()
    def feedback_only_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Train only the rule's own feedback on a batch (forward weights and their ``.grad``
        untouched); returns the feedback losses. Rules without feedback training of their own
        have no such phase: ConfigError."""
        raise ConfigError(
            f"rule {self.name!r} trains no feedback of its own, so it has no feedback-only "
            f"epochs; leave feedback_epochs and extra_feedback_epochs at null (or 0)"
        )

    def predict(self, x: Tensor) -> Tensor:
        """Inference: a plain feed-forward pass of the model."""
        return self.model(x)

    def reference_output(self, x: Tensor) -> Tensor:
        """The differentiable output whose loss the rule's update is compared with (the
        reference gradient of :func:`biograd.metrics.update_alignment`): the model's forward
        pass, unless the rule predicts otherwise (equilibrium propagation: its free phase)."""
        return self.model(x)

    def forward_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the model (what backprop would train)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def feedback_parameters(self) -> list[nn.Parameter]:
        """The rule's own trainable parameters (feedback weights, inverses, ...)."""
        model_ids = {id(p) for p in self.model.parameters()}
        return [p for p in super().parameters() if p.requires_grad and id(p) not in model_ids]

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:  # type: ignore[override]
        """Forward parameters, then feedback parameters: what the user's optimizer owns."""
        yield from self.forward_parameters()
        yield from self.feedback_parameters()

    def rule_decayed_parameters(self) -> list[nn.Parameter]:
        """Parameters whose weight decay the rule writes into ``.grad`` itself (Kolen-Pollack's
        W and B); :meth:`param_groups` gives them ``weight_decay=0`` so that an optimizer built
        with a ``weight_decay`` does not decay them twice. Empty for most rules."""
        return []

    def param_groups(self, feedback_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups: forward parameters first, then feedback parameters (``feedback_lr``
        if given). Parameters the rule decays itself (:meth:`rule_decayed_parameters`) go into
        their own groups, ``"forward/rule_decay"`` and ``"feedback/rule_decay"``, pinned to
        ``weight_decay=0``."""
        own = {id(p) for p in self.rule_decayed_parameters()}
        groups: list[dict[str, Any]] = []
        for kind, params in (("forward", self.forward_parameters()),
                             ("feedback", self.feedback_parameters())):
            extra: dict[str, Any] = {}
            if kind == "feedback" and feedback_lr is not None:
                extra["lr"] = feedback_lr
            plain = [p for p in params if id(p) not in own]
            decayed = [p for p in params if id(p) in own]
            if plain or kind == "forward":
                groups.append({"params": plain, "name": kind, **extra})
            if decayed:
                groups.append({"params": decayed, "name": f"{kind}/rule_decay",
                               "weight_decay": 0.0, **extra})
        return groups

    # ----------------------------------------------------------------- diagnostics hooks
    def alignment_probe(self) -> LearningRule:
        """A throw-away copy used by :func:`biograd.metrics.update_alignment`.

        Rules whose update only approximates the gradient in a limit (e.g. target propagation
        as beta -> 0) override this to return a copy set up for that comparison.
        """
        return copy.deepcopy(self)

    def feedback_weight_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{layer: (B, W^T)}`` for rules with feedback weights that should align with the
        forward weights' transpose (same shapes); empty for rules without such weights."""
        return {}

    def jacobian_alignment(self, x: Tensor, probes: int | None = None) -> dict[str, float]:
        """``{layer: degrees}`` between each feedback block's Jacobian and the forward block's
        Jacobian transposed (target-propagation rules, P2); empty for rules without inverse
        feedback blocks."""
        return {}

    # ----------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # ----------------------------------------------------------------- helpers for subclasses
    def check_batch(self, x: Tensor, y: Tensor) -> None:
        """Raise :class:`InputError` for tensors a rule cannot use."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise InputError(
                f"rule {self.name!r}: inputs must be a floating-point tensor, got "
                f"{getattr(x, 'dtype', type(x))}; convert with x.float()"
            )
        if not isinstance(y, Tensor):
            raise InputError(f"rule {self.name!r}: labels must be a tensor, got {type(y)!r}")
        if y.shape[0] != x.shape[0]:
            raise InputError(
                f"rule {self.name!r}: batch sizes differ: {x.shape[0]} inputs, {y.shape[0]} labels"
            )
        if not y.is_floating_point() and y.dim() != 1:
            raise InputError(
                f"rule {self.name!r}: integer labels must be 1-D (batch,), "
                f"got shape {tuple(y.shape)}"
            )
        self.check_input_fits(x)

    def check_input_fits(self, x: Tensor) -> None:
        """Raise :class:`InputError` if ``x``'s dtype differs from the model's parameters, or
        (for an ``nn.Sequential`` starting with [Flatten,] Linear or Conv2d) its shape does
        not fit the first layer; cases torch would reject with a bare RuntimeError."""
        param = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        if param is not None and x.dtype != param.dtype:
            raise InputError(
                f"rule {self.name!r}: inputs are {x.dtype} but the model's parameters are "
                f"{param.dtype}; convert with x.to({param.dtype})"
            )
        if not isinstance(self.model, nn.Sequential) or len(self.model) == 0:
            return
        layers = list(self.model)
        flat = isinstance(layers[0], nn.Flatten)
        first = layers[1] if flat and len(layers) > 1 else layers[0]
        if isinstance(first, nn.Linear):
            got = x[:1].flatten(1).shape[1] if flat else x.shape[-1]
            if x.dim() < 2 or got != first.in_features:
                raise InputError(
                    f"rule {self.name!r}: inputs of shape {tuple(x.shape)} do not fit the "
                    f"model's first layer {first} (expects {first.in_features} features per "
                    f"sample)"
                )
        elif isinstance(first, nn.Conv2d) and not flat and (
                x.dim() != 4 or x.shape[1] != first.in_channels):
            raise InputError(
                f"rule {self.name!r}: inputs of shape {tuple(x.shape)} do not fit the model's "
                f"first layer {first} (expects (batch, {first.in_channels}, H, W))"
            )

    def check_labels(self, output: Tensor, y: Tensor) -> None:
        """Labels must index the output's classes."""
        if y.is_floating_point():
            if y.shape != output.shape:
                raise InputError(
                    f"rule {self.name!r}: float targets of shape {tuple(y.shape)} do not match "
                    f"the output's shape {tuple(output.shape)}"
                )
            return
        n = output.shape[-1]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
            raise InputError(
                f"rule {self.name!r}: labels must lie in [0, {n - 1}] for a model with {n} "
                f"outputs; got range [{int(y.min())}, {int(y.max())}]"
            )

    @staticmethod
    def accumulate_grad(param: Tensor, update: Tensor) -> None:
        """Add ``update`` into ``param.grad`` (creating it), as autograd accumulates."""
        update = update.detach().to(param.dtype).reshape(param.shape)
        if param.grad is None:
            param.grad = update.clone()
        else:
            param.grad.add_(update)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, loss={self.loss_name!r}"
