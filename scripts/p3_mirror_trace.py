"""Trace one stored P3 run's first steps: loss, per-layer weight and update norms and, every
``--every`` steps, the update-vs-backprop and B-vs-W^T angles and |B| / |W^T| per layer.

The diagnosis of weight mirror's divergence on the ELU LeNet (docs/results.md, "P3 standard on
LeNet") ran it with the mirror settings changed::

    .venv/bin/python scripts/p3_mirror_trace.py weight_mirror 1 --steps 940 --warmup 2000 \
        --set rule_args.mirror_batch_size=64

It replays the run's config (``results/p3-weight-transport/standard/EXPERIMENT/ARM-sSEED/
config.yaml``), initialisation and data order with the run's optimizer at the first epoch's
rate (no schedule), one thread; ``--warmup N`` runs weight mirror's ``mirror_warmup(N)``
first instead of the rule's own warm-up (``--set rule_args.mirror_warmup_steps=0``: none);
it stops at the runner's divergence test (loss above ``max_loss`` or not finite).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from biograd.core.registry import create_rule
from biograd.metrics.alignment import feedback_alignment_angles, update_alignment
from biograd.runner.config import apply_override, from_dict
from biograd.runner.train import epoch_batches, make_optimizer, rule_args_of, seeded_data_and_model
from biograd.runner.yamlio import read_yaml

STORE = Path("results/p3-weight-transport/standard")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("arm")
    ap.add_argument("seed", type=int)
    ap.add_argument("--experiment", default="mnist-lenet")
    ap.add_argument("--steps", type=int, default=940)
    ap.add_argument("--every", type=int, default=60, help="angles every this many steps")
    ap.add_argument("--warmup", type=int, default=0, help="mirror_warmup steps first")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (repeatable), e.g. lr=0.005")
    args = ap.parse_args()
    data_cfg = read_yaml(STORE / args.experiment / f"{args.arm}-s{args.seed}" / "config.yaml")
    for item in args.set:
        apply_override(data_cfg, item)
    cfg = from_dict(data_cfg)
    data, model = seeded_data_and_model(cfg)
    torch.set_num_threads(1)
    rule = create_rule(cfg.rule, model, loss=cfg.loss, **rule_args_of(cfg))
    opt = make_optimizer(cfg, rule)
    if args.warmup:
        angles = rule.mirror_warmup(args.warmup)
        print("after warm-up, B vs W^T (deg):", {k: round(v, 1) for k, v in angles.items()})
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
