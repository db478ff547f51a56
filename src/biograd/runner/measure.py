"""What the runner measures besides the loss: accuracy with ``rule.predict`` and the two
alignment angles of ALGORITHMS.md ("Metrics used by the papers").

Both run under ``torch.random.fork_rng`` (CPU and, on CUDA, the model's GPU) so measuring never
changes the training trajectory (a run with ``alignment_every`` set trains exactly like one
without). Inputs may live on the host: each chunk is moved to the model's device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from biograd.core.rule import LearningRule
from biograd.metrics.alignment import feedback_alignment_angles, update_alignment
from biograd.runner.device import fork_rng, module_device


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@torch.no_grad()
def accuracy(rule: LearningRule, x: Tensor, y: Tensor, batch_size: int) -> float:
    """Fraction of ``x`` whose ``rule.predict`` argmax equals ``y`` (model in eval mode)."""
    if len(x) == 0:
        return float("nan")
    was_training = rule.model.training
    rule.model.eval()
    correct = 0
    device = module_device(rule.model)
    try:
        with fork_rng(device):
            for start in range(0, len(x), batch_size):
                out = rule.predict(x[start : start + batch_size].to(device))
                correct += int((out.argmax(-1) == y[start : start + batch_size].to(device)).sum())
    finally:
        rule.model.train(was_training)
    return correct / len(x)


def angles(rule: LearningRule, x: Tensor, y: Tensor) -> dict[str, float]:
    """Update-vs-backprop angles (mean over weight tensors, i.e. parameters with >= 2 dims,
    plus one column per parameter) and, for rules with feedback weights, feedback-vs-forward
    angles (mean and per layer) and, for target-propagation rules, feedback-vs-forward
    Jacobian angles (mean and per layer). Degrees."""
    device = module_device(rule.model)
    x, y = x.to(device), y.to(device)
    with fork_rng(device):
        upd = update_alignment(rule, x, y)
    weights = [n for n, p in rule.model.named_parameters() if p.requires_grad and p.dim() >= 2]
    out = {"angle_update": _mean([upd[n] for n in weights if n in upd])}
    out.update({f"angle_update/{n}": v for n, v in upd.items()})
    fb = feedback_alignment_angles(rule)
    if fb:
        out["angle_feedback"] = _mean(list(fb.values()))
        out.update({f"angle_feedback/{n}": v for n, v in fb.items()})
    with fork_rng(device):
        jac = rule.jacobian_alignment(x)
    if jac:
        out["angle_jacobian"] = _mean(list(jac.values()))
        out.update({f"angle_jacobian/{n}": v for n, v in jac.items()})
    return out


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite, with one reduction per tensor and one
    host sync: a NaN or inf anywhere makes the total NaN or inf. A total that overflows from
    finite values is re-checked tensor by tensor, so the answer is exact."""
    if not tensors:
        return True
    total = torch.stack([t.detach().sum(dtype=torch.float32) for t in tensors]).sum()
    if bool(torch.isfinite(total)):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _first_non_finite(named: list[tuple[str, Tensor]]) -> str | None:
    """The name of the first tensor of ``named`` holding a NaN or inf, or None."""
    return next((n for n, t in named if not bool(torch.isfinite(t).all())), None)


#: the updates and parameters are checked every this many steps (and always before a
#: checkpoint or an alignment row, at the end of an epoch and when the time limit stops a run);
#: the loss, a host float already, is checked every step
GUARD_EVERY = 100


class StepGuard:
    """The divergence checks of one run. The loss is checked every step, before its update is
    applied (it is a host float already: no extra sync). The updates (``.grad``) and the
    updated parameters are checked together, one reduction per tensor and one host sync,
    every ``every`` steps and whenever the caller forces it (before a checkpoint or an
    alignment row, at the end of an epoch or of the run), so a checkpoint never holds a
    non-finite parameter and the step costs no sync of its own. A parameter used by the
    forward pass that turns non-finite makes the next step's loss non-finite, so such a run
    stops one step later; a non-finite update is applied before it is caught (the last
    checkpoint, taken before it, stays untouched). The named parameters are listed once
    (:meth:`refresh` after a step that may have created some, e.g. the first)."""

    def __init__(self, rule: LearningRule, max_loss: float, every: int = GUARD_EVERY) -> None:
        self.rule, self.max_loss, self.every = rule, max_loss, every
        self.named: list[tuple[str, Tensor]] = []
        self.refresh()

    def refresh(self) -> None:
        self.named = list(self.rule.named_parameters())

    def loss(self, loss: float) -> str | None:
        """Why this step's loss makes the run diverged (naming a non-finite parameter when one
        caused it), or None if it is fine."""
        if not math.isfinite(loss):
            cause = _first_non_finite(self.named)
            return f"loss is {loss}" + (f" (non-finite parameter {cause})" if cause else "")
        if loss > self.max_loss:
            return f"loss {loss:.4g} exceeds max_loss {self.max_loss:g}"
        return None

    def update(self, step: int, force: bool = False) -> str | None:
        """After the optimizer step of step number ``step`` (counted from 1): on every
        ``every``-th step, or when ``force``, why the updates or the parameters make the run
        diverged (naming the first offender, an update before a parameter); None if they are
        finite or were not checked."""
        if not force and step % self.every:
            return None
        return self.check()

    def check(self) -> str | None:
        """Why the updates or the parameters make the run diverged now, or None."""
        grads = [(n, p.grad) for n, p in self.named if p.grad is not None]
        if _all_finite([g for _, g in grads] + [p for _, p in self.named]):
            return None
        if (name := _first_non_finite(grads)) is not None:
            return f"non-finite update in {name}"
        if (name := _first_non_finite(self.named)) is not None:
            return f"non-finite parameter {name} after the update"
        return None
