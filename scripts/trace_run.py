"""Trace the first steps of a stored run: loss, per-layer weight and update norms and, every
``--every`` steps, the update-vs-backprop angle per layer and, for rules with feedback weights,
the B-vs-W^T angles and |B| / |W^T| per layer.

It replays the run's config (``RUN_DIR/config.yaml``, e.g. ``results/p2-ldrl/standard/
mnist-lenet/p_ddtp-s1``), initialisation and data order with the run's optimizer at the first
epoch's rate (no schedule), one thread; ``--set KEY=VALUE`` changes the config first (e.g.
``--set optimizer=adam --set momentum=0 --set lr=0.001``). Feedback-only epochs before
training (s_ddtp's) are run as the runner runs them unless ``--no-feedback-epochs``. It stops
at the runner's divergence test (loss above ``max_loss`` or not finite).

The diagnosis of weight mirror's divergence on the ELU LeNet (docs/results.md, "P3 standard on
LeNet") ran it with the mirror settings changed::

    .venv/bin/python scripts/trace_run.py \
        results/p3-weight-transport/standard/mnist-lenet/weight_mirror-s1 --steps 940 \
        --warmup 2000 --set rule_args.mirror_batch_size=64

``--warmup N`` runs weight mirror's ``mirror_warmup(N)`` first instead of the rule's own
warm-up (``--set rule_args.mirror_warmup_steps=0``: none).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from biograd.core.registry import create_rule
from biograd.metrics.alignment import feedback_alignment_angles, update_alignment
from biograd.runner.config import apply_override, from_dict
from biograd.runner.train import (
    epoch_batches,
    feedback_epochs,
    feedback_schedule,
    make_optimizer,
    rule_args_of,
    seeded_data_and_model,
)
from biograd.runner.yamlio import read_yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a stored run directory (its config.yaml)")
    ap.add_argument("--steps", type=int, default=940)
    ap.add_argument("--every", type=int, default=60, help="angles every this many steps")
    ap.add_argument("--warmup", type=int, default=0, help="mirror_warmup steps first")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (repeatable), e.g. lr=0.005")
    ap.add_argument("--no-feedback-epochs", action="store_true",
                    help="skip the feedback-only epochs the rule asks for before training")
    args = ap.parse_args()
    data_cfg = read_yaml(args.run_dir / "config.yaml")
    for item in args.set:
        apply_override(data_cfg, item)
    cfg = from_dict(data_cfg)
    data, model = seeded_data_and_model(cfg)
    torch.set_num_threads(1)
    rule = create_rule(cfg.rule, model, loss=cfg.loss, **rule_args_of(cfg))
    opt = make_optimizer(cfg, rule)
    if args.warmup and not hasattr(rule, "mirror_warmup"):
        ap.error(f"--warmup: rule {cfg.rule!r} has no mirror warm-up")
    if args.warmup:
        angles = rule.mirror_warmup(args.warmup)
        print("after warm-up, B vs W^T (deg):", {k: round(v, 1) for k, v in angles.items()})
    before, _ = feedback_schedule(cfg, rule)
    if before and not args.no_feedback_epochs:
        print(f"{before} feedback-only epochs first", flush=True)
        feedback_epochs(cfg, rule, data.train_x, data.train_y, before, tag=0)
    order = [b for e in range(math.ceil(args.steps * cfg.batch_size / len(data.train_x)) + 1)
             for b in epoch_batches(cfg.seed, e, len(data.train_x), cfg.batch_size)]
    weights = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    print("step loss | |W| per layer | |update| per layer [| update angle | B angle | |B|/|W^T|]")
    probe = (data.train_x[:cfg.alignment_batch], data.train_y[:cfg.alignment_batch])
    for step in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss = rule.step(data.train_x[order[step]], data.train_y[order[step]]).loss
        grads = [p.grad.norm().item() for _, p in weights]
        diverged = not math.isfinite(loss) or loss > cfg.max_loss
        if not diverged:
            opt.step()
        line = (f"{step + 1} {loss:.3f} | " + " ".join(f"{p.norm():.2f}" for _, p in weights)
                + " | " + " ".join(f"{g:.2f}" for g in grads))
        if step % args.every == 0:
            upd = update_alignment(rule, *probe)
            line += " | " + " ".join(f"{upd[n]:.0f}" for n, _ in weights)
            if feedback_alignment_angles(rule):
                pairs = rule.feedback_weight_pairs()
                line += " | " + " ".join(f"{v:.0f}" for v in feedback_alignment_angles(rule)
                                         .values())
                line += " | " + " ".join(f"{float(b.norm() / wt.norm()):.2f}"
                                         for b, wt in pairs.values())
        if step % args.every == 0 or loss > 5 or diverged:
            print(line, flush=True)
        if diverged:
            print(f"diverged at step {step + 1}")
            break


if __name__ == "__main__":
    main()
