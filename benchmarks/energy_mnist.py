"""MNIST acceptance runs and cost per batch for the energy/relaxation rules.

Suites (one process each; results appended as JSON lines to ``--out`` and printed):

- ``ar``: activation relaxation's variants (P4) and backprop trained the same way, MLP
  784-300-300-100-10 ReLU, MSE, batch 64, plain SGD 0.05 (P4: plain SGD);
- ``eqprop``: equilibrium propagation on 784-256-10 and 784-256-256-10 tanh MLPs, MSE, SGD
  0.02 with momentum 0.9, batch 64;
- ``lra``: LRA-E and backprop on 784-256-256-256-10 tanh, batch 50, 5 epochs (P1), Adam
  1e-3 as in the authors' PyTorch code (``--optim sgd`` for SGD);
- ``angles``: update-vs-backprop angle per parameter at initialisation, one batch;
- ``cost``: seconds per batch (step + optimizer step) of each rule / of backprop, measured
  in one process on the same architecture and batch (median of paired blocks).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/energy_mnist.py ar --epochs 3 --out results.jsonl
    OMP_NUM_THREADS=1 python benchmarks/energy_mnist.py cost
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import biograd
from biograd import data
from biograd.metrics.cost import CostEntry, measure, training_step

Optim = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]

#: name -> (rule, hparams): P4's four variants plus fixed random feedback.
AR_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "backprop": ("backprop", {}),
    "ar_standard": ("activation_relaxation", {}),
    "ar_no_derivative": ("activation_relaxation", {"derivative": "dropped"}),
    "ar_learned_backward": ("activation_relaxation", {"backward": "learned"}),
    "ar_both_simplifications": (
        "activation_relaxation", {"backward": "learned", "derivative": "dropped"}
    ),
    "ar_random_backward": ("activation_relaxation", {"backward": "random"}),
}


def _mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tr, te = data.load("mnist", "train", flatten=True), data.load("mnist", "test", flatten=True)
    return (*tr.tensors, *te.tensors)


@torch.no_grad()
def accuracy(rule: biograd.LearningRule, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy of ``rule.predict`` (a free phase for equilibrium_prop)."""
    hits = sum(int((rule.predict(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
               for i in range(0, len(x), 1000))
    return 100.0 * hits / len(x)


def train(
    tag: str, rule_name: str, model: nn.Module, loss: str, hparams: dict[str, Any],
    make_opt: Optim, epochs: int, batch: int, seed: int, limit: int | None = None,
) -> dict[str, Any]:
    """Train on MNIST's 60k training images; test accuracy after every epoch."""
    xtr, ytr, xte, yte = _mnist()
    if limit:
        xtr, ytr = xtr[:limit], ytr[:limit]
    torch.manual_seed(seed)
    rule = biograd.create_rule(rule_name, model, loss=loss, **hparams)
    opt = make_opt(rule.param_groups())
    g = torch.Generator().manual_seed(seed)
    accs, t0, steps = [], time.perf_counter(), 0
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            res = rule.step(xtr[idx], ytr[idx])
            opt.step()
            steps += 1
            if not torch.isfinite(torch.tensor(res.loss)):
                return {"tag": tag, "diverged": True, "steps": steps}
        accs.append(round(accuracy(rule, xte, yte), 2))
        print(f"  {tag} epoch {len(accs)}: test acc {accs[-1]:.2f}%", flush=True)
    secs = time.perf_counter() - t0
    return {"tag": tag, "rule": rule_name, "hparams": hparams, "loss": loss, "epochs": epochs,
            "batch": batch, "seed": seed, "test_acc": accs, "final_acc": accs[-1],
            "seconds": round(secs, 1), "ms_per_batch": round(1000 * secs / steps, 2)}


def sgd(lr: float, momentum: float) -> Optim:
    return lambda groups: torch.optim.SGD(groups, lr=lr, momentum=momentum)


def adam(lr: float) -> Optim:
    return lambda groups: torch.optim.Adam(groups, lr=lr)


def optimizer(a: argparse.Namespace, kind: str, lr: float, momentum: float = 0.0) -> Optim:
    """The suite's default optimizer ``kind`` ("sgd" or "adam") with its defaults;
    ``--optim``, ``--lr`` and ``--momentum`` override them."""
    kind = a.optim or kind
    if kind == "adam":
        return adam(a.lr or (lr if a.optim is None else 1e-3))
    return sgd(a.lr or lr, momentum if a.momentum is None else a.momentum)


def suite_ar(a: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for tag, (name, hp) in AR_VARIANTS.items():
        if a.only and tag not in a.only:
            continue
        torch.manual_seed(a.seed)
        model = biograd.models.mlp(784, [300, 300, 100], 10, activation="relu")
        out.append(train(tag, name, model, "mse", hp, optimizer(a, "sgd", 0.05),
                         a.epochs or 3, 64, a.seed, a.limit))
    return out


def suite_eqprop(a: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for hidden in ([256], [256, 256]):
        tag = f"eqprop_{len(hidden)}h"
        if a.only and tag not in a.only:
            continue
        torch.manual_seed(a.seed)
        model = biograd.models.mlp(784, hidden, 10, activation="tanh")
        out.append(train(tag, "equilibrium_prop", model, a.loss or "mse", {},
                         optimizer(a, "sgd", 0.02, 0.9), a.epochs or 3, 64, a.seed,
                         a.limit))
    return out


def suite_lra(a: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for tag, name in (("lra_e", "lra_e"), ("backprop_lra", "backprop")):
        if a.only and tag not in a.only:
            continue
        torch.manual_seed(a.seed)
        model = biograd.models.mlp(784, [256, 256, 256], 10, activation="tanh")
        out.append(train(tag, name, model, "cross_entropy", {}, optimizer(a, "adam", 1e-3),
                         a.epochs or 5, 50, a.seed, a.limit))
    return out


def suite_cost(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per batch of step + opt.step (SGD 0.01) of each rule against backprop on the
    same architecture and first training batch, in this process: median of ``--repeats``
    paired, interleaved blocks of about 0.05 s and at least 3 steps
    (:mod:`biograd.metrics.cost`)."""
    xtr, ytr, _, _ = _mnist()
    x, y = xtr[:64], ytr[:64]
    cases = [
        ("ar_standard", [300, 300, 100], "relu", "mse", "activation_relaxation", {}),
        ("ar_learned_dropped", [300, 300, 100], "relu", "mse", "activation_relaxation",
         {"backward": "learned", "derivative": "dropped"}),
        ("eqprop_1h", [256], "tanh", "mse", "equilibrium_prop", {}),
        ("eqprop_2h", [256, 256], "tanh", "mse", "equilibrium_prop", {}),
        ("lra_e", [256, 256, 256], "tanh", "cross_entropy", "lra_e", {}),
    ]
    out = []
    for tag, hidden, act, loss, name, hp in cases:
        entries = []
        for rname, rhp in (("backprop", {}), (name, hp)):
            torch.manual_seed(a.seed)
            model = biograd.models.mlp(784, hidden, 10, activation=act)
            rule = biograd.create_rule(rname, model, loss=loss, **rhp)
            opt = torch.optim.SGD(rule.parameters(), lr=0.01)
            entries.append(CostEntry(rname, training_step(rule, x, y, opt)))
        bp, entry = entries
        measure(bp, [entry], a.repeats, warmup=5)
        rec = {"tag": tag, "hidden": hidden, "batch": len(x), "repeats": a.repeats,
               "ms_backprop": round(1000 * bp.seconds_per_step, 3),
               "ms_rule": round(1000 * entry.seconds_per_step, 3),
               "ratio": round(entry.ratio, 2)}
        print(f"  {rec}", flush=True)
        out.append(rec)
    return out


def suite_angles(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Update-vs-backprop angle (degrees, per parameter) at initialisation on one training
    batch of 64. For equilibrium_prop the reference is backprop through time over its free
    phase (``rule.reference_output``: what it predicts and what its update estimates)."""
    from biograd.metrics import update_alignment

    xtr, ytr, _, _ = _mnist()
    x, y = xtr[:64], ytr[:64]
    cases = [(tag, [300, 300, 100], "relu", "mse", name, hp)
             for tag, (name, hp) in AR_VARIANTS.items() if tag != "backprop"]
    cases += [("eqprop_1h", [256], "tanh", "mse", "equilibrium_prop", {}),
              ("lra_e", [256, 256, 256], "tanh", "cross_entropy", "lra_e", {})]
    out = []
    for tag, hidden, act, loss, name, hp in cases:
        torch.manual_seed(a.seed)
        model = biograd.models.mlp(784, hidden, 10, activation=act)
        rule = biograd.create_rule(name, model, loss=loss, **hp)
        angles = {k: round(v, 2) for k, v in update_alignment(rule, x, y).items()}
        out.append({"tag": tag, "angles": angles})
    return out


SUITES = {"ar": suite_ar, "eqprop": suite_eqprop, "lra": suite_lra, "cost": suite_cost,
          "angles": suite_angles}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=list(SUITES))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="SGD step (suite default if unset)")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (suite default)")
    p.add_argument("--optim", choices=("sgd", "adam"), default=None,
                   help="suite default: sgd for ar (momentum 0) and eqprop (0.9), adam for lra")
    p.add_argument("--loss", default=None, help="eqprop only: mse (default) or cross_entropy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use the first N training images")
    p.add_argument("--only", nargs="*", default=None, help="run only these tags")
    p.add_argument("--repeats", type=int, default=15,
                   help="cost: paired blocks of each rule and backprop")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append JSON lines here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for rec in SUITES[a.suite](a):
        print(json.dumps(rec), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
