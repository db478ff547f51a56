"""Overhead of the engine: ``biograd train``'s epoch time (metrics.csv ``seconds``: the training
loop alone, without evaluation) against a bare ``rule.step`` + ``opt.step`` loop over the same
batches (same seeded permutation, same model, rule and optimizer), interleaved in one process.

    python benchmarks/engine_overhead.py [--rules backprop feedback_alignment] [--rounds 5]
        [--train_subset 10000] [--threads 2] [--device cpu|cuda]

Prints, per rule, the median over rounds of train/bare and each round's seconds. Issue 14's
target: at most 1.05x.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from biograd.core.registry import create_rule
from biograd.rundir import read_rows
from biograd.runner.config import load_config
from biograd.runner.data import load_data, on_device_if_it_fits
from biograd.runner.device import resolve_device
from biograd.runner.models import build_model
from biograd.runner.train import epoch_batches, make_optimizer, rule_args_of, train


def bare_epoch(cfg, data, device) -> float:
    """Seconds of one epoch of the plain loop on the batches ``train`` draws for epoch 0."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.model_args)
    rule = create_rule(cfg.rule, model.to(device), loss=cfg.loss, **rule_args_of(cfg))
    opt = make_optimizer(cfg, rule)
    x, y = on_device_if_it_fits(data.train_x, data.train_y, device)
    batches = epoch_batches(cfg.seed, 0, len(x), cfg.batch_size, x.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for index in batches:
        opt.zero_grad(set_to_none=True)
        rule.step(x[index].to(device), y[index].to(device))
        opt.step()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", nargs="+", default=["backprop", "feedback_alignment"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train_subset", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="engine_overhead_")
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}, MNIST "
          f"784-256x3-10 tanh MLP, batch 64, SGD lr 0.01, {args.train_subset} samples/epoch")
    for rule in args.rules:
        cfg = load_config(None, [
            f"--rule={rule}", "--model=mlp", "--model_args.hidden=[256, 256, 256]",
            "--model_args.activation=tanh", "--dataset=mnist", "--batch_size=64",
            f"--train_subset={args.train_subset}", "--test_subset=1000", "--epochs=1",
            f"--threads={args.threads}", f"--device={args.device}", f"--out_dir={out}"])
        data = load_data(cfg)
        bare_epoch(cfg, data, device)  # warm-up (allocator, lazy init)
        ratios, rows = [], []
        for r in range(args.rounds):
            bare = bare_epoch(cfg, data, device)
            run = cfg.replace(run_name=f"{rule}-{r}")
            train(run)
            engine = read_rows(f"{out}/{rule}-{r}/metrics.csv")[0]["seconds"]
            ratios.append(engine / bare)
            rows.append(f"{engine:.2f}/{bare:.2f}")
        print(f"{rule}: train/bare median {statistics.median(ratios):.3f} "
              f"(rounds, train/bare seconds: {', '.join(rows)})", flush=True)


if __name__ == "__main__":
    main()
