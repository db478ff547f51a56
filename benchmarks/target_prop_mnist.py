"""Target-propagation acceptance runs on MNIST (issue 3): accuracy, update-vs-backprop angle,
Jacobian alignment and cost per batch relative to backprop, one process, one thread.

    OMP_NUM_THREADS=1 python benchmarks/target_prop_mnist.py --model mlp --epochs 5 \
        --rules backprop ldrl dtp dtp_sigma drl --out mlp.json
    OMP_NUM_THREADS=1 python benchmarks/target_prop_mnist.py --model lenet --epochs 2 \
        --rules backprop dtp ldrl --out lenet.json
    OMP_NUM_THREADS=1 python benchmarks/target_prop_mnist.py --timing-only --model mlp

Forward optimizer for every rule: SGD(lr, momentum 0.9) over ``rule.parameters()``; the TP
rules train their feedback weights themselves inside ``step``. ``--hp rule.key=value``
overrides a rule's hyper-parameter (value parsed as Python literal).
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import torch
from torch.utils.data import DataLoader

import biograd
import biograd.data
from biograd.metrics import update_alignment
from biograd.metrics.jacobian import jacobian_alignment

MLP_HPARAMS: dict[str, dict] = {
    "backprop": {},
    "ldrl": {},
    "dtp": {},
    "dtp_sigma": {},
    "drl": {},
}
LENET_HPARAMS: dict[str, dict] = {
    "backprop": {},
    # conv feedback sums its gradient over all positions: the MLP's feedback rates diverge
    "ldrl": {"feedback_lr": 1e-4},
    "dtp": {"feedback_lr": 1e-4},
}


def make_model(kind: str) -> torch.nn.Module:
    if kind == "mlp":
        return biograd.models.mlp(784, [256, 256, 256], 10, activation="tanh")
    return biograd.models.lenet(1, 10, 28)


def evaluate(rule: biograd.LearningRule, data: torch.utils.data.TensorDataset) -> float:
    x, y = data.tensors
    correct = 0
    for i in range(0, len(y), 1000):
        correct += int((rule.predict(x[i:i + 1000]).argmax(-1) == y[i:i + 1000]).sum())
    return 100.0 * correct / len(y)


def mean_angle(angles: dict[str, float]) -> float:
    ws = [v for k, v in angles.items() if k.endswith("weight")]
    return sum(ws) / len(ws)


def time_per_batch(name: str, kind: str, hp: dict, x: torch.Tensor, y: torch.Tensor,
                   n: int) -> float:
    torch.manual_seed(0)
    rule = biograd.create_rule(name, make_model(kind), **hp)
    opt = torch.optim.SGD(rule.parameters(), lr=0.01, momentum=0.9)
    for i in range(n + 2):
        if i == 2:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        rule.step(x, y)
        opt.step()
    return (time.perf_counter() - t0) / n


def train(name: str, kind: str, hp: dict, args: argparse.Namespace, train_set, test_set) -> dict:
    torch.manual_seed(args.seed)
    rule = biograd.create_rule(name, make_model(kind), **hp)
    opt = torch.optim.SGD(rule.parameters(), lr=args.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, generator=gen)
    probe_x, probe_y = train_set.tensors[0][:256], train_set.tensors[1][:256]
    row: dict = {"rule": name, "model": kind, "hparams": hp, "epochs": []}
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            rule.step(x, y)
            opt.step()
        ep = {"epoch": epoch + 1, "test_acc": evaluate(rule, test_set),
              "time_s": time.perf_counter() - t0}
        if epoch == 0 or epoch == args.epochs - 1:
            ep["update_angle_deg"] = mean_angle(update_alignment(rule, probe_x, probe_y))
            if name != "backprop":
                probes = None if kind == "mlp" else 16  # exact for the MLP, estimate for LeNet
                ep["jacobian_angle_deg"] = jacobian_alignment(rule, probe_x[:64], probes=probes)
        row["epochs"].append(ep)
        print(json.dumps({"rule": name, **ep}), flush=True)
    row["final_test_acc"] = row["epochs"][-1]["test_acc"]
    row["train_time_s"] = time.perf_counter() - t0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "lenet"), default="mlp")
    ap.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist")
    ap.add_argument("--rules", nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None,
                    help="forward SGD rate (default 0.05 for the MLP, 0.01 for LeNet)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=0, help="train on the first N samples only")
    ap.add_argument("--hp", nargs="*", default=[], help="rule.key=value overrides")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--timing-batches", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.lr is None:
        args.lr = 0.05 if args.model == "mlp" else 0.01  # LeNet diverges with backprop at 0.05
    table = MLP_HPARAMS if args.model == "mlp" else LENET_HPARAMS
    rules = args.rules or list(table)
    hps = {r: dict(table.get(r, {})) for r in dict.fromkeys(["backprop", *rules])}
    for item in args.hp:
        key, value = item.split("=", 1)
        r, k = key.split(".", 1)
        hps[r][k] = ast.literal_eval(value)
    flat = args.model == "mlp"
    train_set = biograd.data.load(args.dataset, "train", flatten=flat)
    test_set = biograd.data.load(args.dataset, "test", flatten=flat)
    if args.subset:
        train_set = torch.utils.data.TensorDataset(*(t[:args.subset] for t in train_set.tensors))
    xb, yb = train_set.tensors[0][:args.batch], train_set.tensors[1][:args.batch]
    times = {r: time_per_batch(r, args.model, hps[r], xb, yb, args.timing_batches)
             for r in dict.fromkeys(["backprop", *rules])}
    cost = {r: {"ms_per_batch": 1e3 * t, "ratio_to_backprop": t / times["backprop"]}
            for r, t in times.items()}
    print(json.dumps({"cost_per_batch": cost}), flush=True)
    result: dict = {"args": vars(args), "cost_per_batch": cost, "runs": []}
    if not args.timing_only:
        for r in rules:
            result["runs"].append(train(r, args.model, hps[r], args, train_set, test_set))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
