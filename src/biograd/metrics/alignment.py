"""Alignment diagnostics (ALGORITHMS.md, "Metrics used by the papers").

- update-vs-backprop angle: between a rule's update and autograd's gradient of the same loss
  on the same weights and batch (Lillicrap et al. 2016; P2, P3);
- feedback-vs-forward angle: between feedback weights B and W^T per layer (P3's figure).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from biograd.core.rule import LearningRule


def angle(a: Tensor, b: Tensor) -> float:
    """Angle in degrees between two tensors seen as flat vectors (90 if either is zero)."""
    a = a.detach().flatten().double()
    b = b.detach().flatten().double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 90.0
    cos = float((a @ b) / (na * nb))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def max_relative_difference(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (P5's exactness measure); 0 when both are zero."""
    scale = float(b.detach().abs().max())
    diff = float((a.detach() - b.detach()).abs().max())
    return diff / scale if scale > 0 else diff


def backprop_gradients(rule: LearningRule, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Autograd's gradient of ``rule``'s loss w.r.t. the model's parameters, on a copy: of the
    loss of :meth:`~biograd.LearningRule.reference_output` (the model's forward pass unless
    the rule's prediction is another computation, e.g. equilibrium propagation's free phase,
    which is then backpropagated through time)."""
    if type(rule).reference_output is LearningRule.reference_output:
        model = copy.deepcopy(rule.model)
        output = model
    else:
        probe = copy.deepcopy(rule)
        model, output = probe.model, probe.reference_output
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        rule.loss_fn(output(x), y).backward()
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def rule_updates(rule: LearningRule, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The rule's ``.grad`` for every forward parameter after one ``step`` on a probe copy."""
    probe = rule.alignment_probe()
    probe.zero_grad(set_to_none=True)
    probe.step(x, y)
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in probe.model.named_parameters()
        if p.requires_grad
    }


def update_alignment(rule: LearningRule, x: Tensor, y: Tensor) -> dict[str, float]:
    """Per forward parameter: angle (degrees) between the rule's update and backprop's gradient.

    Runs on copies, so the rule's weights, feedback state, ``.grad`` and RNG are untouched.
    """
    bp = backprop_gradients(rule, x, y)
    upd = rule_updates(rule, x, y)
    return {n: angle(upd[n], bp[n]) for n in bp}


def feedback_alignment_angles(rule: LearningRule) -> dict[str, float]:
    """Per layer with feedback weights: angle (degrees) between B and W^T."""
    return {n: angle(b, wt) for n, (b, wt) in rule.feedback_weight_pairs().items()}
