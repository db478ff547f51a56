"""Kolen-Pollack's decay exposure and the feedback angles of stored runs, shared by the P3
report (:mod:`biograd.papers.p3_weight_transport`) and its exposure check
(:mod:`biograd.papers.p3_exposure`); P3: Akrout et al. 2019, arXiv:1904.05391.

Kolen-Pollack aligns ``B`` with ``W^T`` through its decay: ``W - B^T`` shrinks by
``(1 - lr_t lambda)`` per step, so what sets the final angle from a random start is the decay
exposure ``lambda sum_t lr_t`` (:func:`decay_exposure`).
"""

from __future__ import annotations

import math

from biograd.experiments.paper_report import Context, angle_columns, completed, num
from biograd.runner.config import Config

#: P3's decay exposure wd * sum_t lr_t on ImageNet (lr 0.1, wd 1e-4, about 450k steps = 90
#: epochs of 5005 steps): 4.5 with the rate held at 0.1 (docs/algorithms/backward.md), 2.25
#: under a cosine schedule, about 1.7 under a step schedule (/10 at 1/3 and 2/3 of training).
#: P3's exact schedule is not stated in what we hold, so the range is kept.
P3_EXPOSURE = (1.7, 4.5)


def lr_sum(cfg: Config, steps_per_epoch: int) -> float:
    """sum over the run's optimizer steps of the learning rate: the runner's cosine schedule
    is stepped per epoch (``CosineAnnealingLR(T_max=epochs)``), so epoch ``e`` runs at
    ``lr (1 + cos(pi e / E)) / 2``; without a schedule every step runs at ``lr``."""
    if cfg.scheduler == "cosine":
        per_epoch = sum((1 + math.cos(math.pi * e / cfg.epochs)) / 2 for e in range(cfg.epochs))
    else:
        per_epoch = float(cfg.epochs)
    return cfg.lr * steps_per_epoch * per_epoch


def kp_weight_decay(cfg: Config) -> float:
    """The decay lambda Kolen-Pollack applies to W and B: its ``rule_args.weight_decay``, else
    the run's ``weight_decay`` (the runner hands it to the rule)."""
    return float(cfg.rule_args.get("weight_decay", cfg.weight_decay))


def decay_exposure(ctx: Context, exp: str) -> float:
    """``lambda * sum_t lr_t`` of the Kolen-Pollack runs of ``exp`` (NaN if none finished):
    ``||W - B^T||`` shrinks by ``prod_t (1 - lr_t lambda) ~ exp(-exposure)`` under plain SGD
    (momentum ``m`` scales the effective rate by ``1 / (1 - m)``, for P3 and these runs
    alike)."""
    cfg = kp_config(ctx, exp)
    per_epoch = [s["steps_per_epoch"] for a in ctx.arms(exp) for s in ctx.runs(exp, a)
                 if num(s.get("steps_per_epoch"))]  # the same data and batch for every arm
    if cfg is None or not per_epoch:
        return float("nan")
    return kp_weight_decay(cfg) * lr_sum(cfg, int(per_epoch[0]))


def kp_config(ctx: Context, exp: str) -> Config | None:
    """The config of the Kolen-Pollack runs of ``exp`` (None if the plan has none)."""
    arm = ctx.arm("kolen_pollack")
    return next((s.config for s in ctx.plan.runs if s.experiment == exp and s.arm == arm), None)


def run_angles(ctx: Context, exp: str, arm: str) -> list[float]:
    """Final feedback-vs-forward angle (degrees, mean over layers) of each completed run."""
    return [s["angle_feedback"] for s in completed(ctx.runs(exp, arm))
            if num(s.get("angle_feedback"))]


def first_angle(ctx: Context, exp: str, arm: str) -> float:
    """Mean over layers of the first logged feedback angle (early in training)."""
    cols = angle_columns(ctx.runs(exp, arm), "angle_feedback/")
    firsts = [ys[0] for _, ys in cols.values() if ys]
    return sum(firsts) / len(firsts) if firsts else float("nan")
