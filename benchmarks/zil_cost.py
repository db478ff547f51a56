"""Seconds per update of zil relative to backprop (P5's cost claim: Z-IL costs about one
backprop; issue 12: at most 1.10x on the MLP, CNN and ResNet-18, 1.5x on the RNN, LSTM and
transformer), optionally with predictive_coding (T=20) and Z-IL's full dynamics.

Run: python benchmarks/zil_cost.py [--repeats 30] [--batch 64] [--threads 1]
     [--resnet18-batch 32] [--pc] [--full] [--device cuda]

One process; after two warm-up steps each (graph capture happens there) the rules are timed
interleaved, one step each per repeat, in CPU seconds of this process (time.process_time,
which a shared machine perturbs far less than wall-clock time). Reported: the median step
time per rule, and the median and interquartile range of the per-repeat ratios to the
backprop step of the same repeat (paired, so a slow moment of the machine hits both).
``zil, 1 step/call`` is the literal event-driven schedule (one autograd call per inference
step, levels_per_call=1); ``zil`` is the default (levels_per_call=8).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import biograd
from biograd.experiments.hardware import machine_speed, speed_line
from biograd.metrics.cost import device_sync
from biograd.papers.p5_measure import architectures

Maker = Callable[[], tuple[nn.Module, Tensor, Tensor]]


def resnet18(batch: int) -> Maker:
    """ResNet-18 (four stages of two BasicBlocks, width 64) on 32x32 RGB inputs."""
    def make() -> tuple[nn.Module, Tensor, Tensor]:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        return (biograd.models.ResNet((2, 2, 2, 2), 3, 10, width=64),
                torch.randn(batch, 3, 32, 32, generator=g),
                torch.randint(0, 10, (batch,), generator=g))
    return make


def step_times(maker: Maker, rules: dict[str, tuple[str, dict]], repeats: int,
               device: torch.device | None = None) -> dict[str, list[float]]:
    """Seconds of ``rule.step`` per repeat for each entry of ``rules`` (interleaved): CPU
    seconds of this process on the CPU, wall seconds ending with a sync on a GPU."""
    device = device or torch.device("cpu")
    gpu = device.type == "cuda"
    clock = time.perf_counter if gpu else time.process_time
    sync = device_sync(device) or (lambda: None)
    model, x, y = maker()
    model, x, y = model.to(device), x.to(device), y.to(device)
    made = {n: biograd.create_rule(r, copy.deepcopy(model), **hp) for n, (r, hp) in rules.items()}
    for r in made.values():
        for _ in range(2):
            r.zero_grad(set_to_none=True)
            r.step(x, y)
    sync()
    times: dict[str, list[float]] = {n: [] for n in made}
    for _ in range(repeats):
        for n, r in made.items():
            r.zero_grad(set_to_none=True)
            sync()
            t0 = clock()
            r.step(x, y)
            sync()
            times[n].append(clock() - t0)
    return times


def ratio(times: dict[str, list[float]], name: str) -> tuple[float, float, float]:
    """Median and quartiles of the per-repeat ratio of ``name`` to backprop."""
    r = sorted(a / b for a, b in zip(times[name], times["BP"], strict=True))
    q1, _, q3 = statistics.quantiles(r, n=4)
    return statistics.median(r), q1, q3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resnet18-batch", type=int, default=32,
                    help="batch of the ResNet-18 row (0 leaves it out)")
    ap.add_argument("--pc", action="store_true", help="add predictive_coding (T=20)")
    ap.add_argument("--full", action="store_true", help="add zil's full PC dynamics")
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--device", default="cpu", help="cpu (CPU seconds) or cuda (wall seconds, "
                                                    "each step ending with a sync)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rules: dict[str, tuple[str, dict]] = {
        "BP": ("backprop", {}), "zil": ("zil", {}),
        "zil, 1 step/call": ("zil", {"levels_per_call": 1})}
    if args.pc:
        rules["PC T=20"] = ("predictive_coding", {"T": 20})
    if args.full:
        rules["zil full dynamics"] = ("zil", {"exact_shortcut": False})
    makers: dict[str, Maker] = dict(architectures(args.batch))
    if args.resnet18_batch:
        makers[f"ResNet-18 (batch {args.resnet18_batch})"] = resnet18(args.resnet18_batch)
    only = [s for s in args.only.split(",") if s]
    others = [n for n in rules if n != "BP"]
    speed = speed_line(machine_speed(str(device)))  # before the table (rows print as timed)
    print(f"machine speed before the repeats: {speed}")
    where = (f"CUDA wall ms ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
             else "CPU ms")
    print(f"median {where} per update over {args.repeats} interleaved repeats, batch "
          f"{args.batch}, torch {torch.__version__}, {args.threads} thread(s); ratio = median "
          "[quartiles] of the per-repeat ratios to the same repeat's backprop step")
    print("| model | BP (ms) | " + " | ".join(f"{n} (ms) | {n} / BP" for n in others) + " |")
    print("| --- | ---: | " + " | ".join("---: | ---:" for _ in others) + " |")
    for name, maker in makers.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        times = step_times(maker, rules, args.repeats, device)
        cells = [f"{statistics.median(times['BP']) * 1e3:.2f}"]
        for n in others:
            med, q1, q3 = ratio(times, n)
            cells += [f"{statistics.median(times[n]) * 1e3:.2f}",
                      f"{med:.2f} [{q1:.2f}, {q3:.2f}]"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
