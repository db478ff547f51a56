"""Cost of the iterative rules (equilibrium propagation, activation relaxation, target
propagation) as a ratio to backprop on the demo's MLP (configs/demo_mnist.yaml: 784-256-256-10
tanh, batch 64, one thread), issue 15 item 3.

Same method as benchmarks/speed.py (:mod:`biograd.metrics.cost`): one process, a copy of the
same initial model per rule, default hyper-parameters, ``SGD(lr=0.01, momentum=0.9)``, blocks of
steps of each rule timed right after a block of backprop, the rules' order rotating; the ratio
is the median of the paired ratios, with their quartiles as the spread. ``--clock auto`` is the
process CPU time with one thread (time spent descheduled by other jobs is not counted).

    python benchmarks/iterative_speed.py                        # the five rules, demo MLP
    python benchmarks/iterative_speed.py --hidden 256 256 256   # speed.py's MLP
    python benchmarks/iterative_speed.py --variant activation_relaxation:solver=euler

To compare with another checkout (e.g. before a change), run the same command with
``PYTHONPATH=<that checkout>/src``: two versions of biograd cannot share one process.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import biograd
from biograd.experiments.hardware import machine_speed, speed_line
from biograd.metrics.cost import CostEntry, calibrate, device_sync, paired_cost, training_step

RULES = ["equilibrium_prop", "activation_relaxation", "dtp", "drl", "ldrl"]
#: issue 15's targets (ratio to backprop on the demo MLP)
TARGETS = {"equilibrium_prop": 10.0, "activation_relaxation": 8.0}


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``RULE:key=value[,key=value]`` (values as Python literals, else strings)."""
    import ast

    name, _, spec = text.partition(":")
    hp: dict[str, object] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        try:
            hp[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            hp[key.strip()] = value.strip()
    return name.strip(), hp


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15, help="timed blocks per rule")
    p.add_argument("--block", type=float, default=0.1, help="seconds per timed block")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rules", nargs="*", default=RULES)
    p.add_argument("--variant", action="append", default=[], metavar="RULE:KEY=VALUE,...")
    p.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the Markdown table to this file")
    p.add_argument("--device", default="cpu", help="cpu or cuda (wall clock, blocks end with a "
                                                   "sync)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sync = device_sync(device)
    clock_name = ("cpu" if args.threads == 1 and device.type == "cpu" else "wall") \
        if args.clock == "auto" else args.clock
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = biograd.models.mlp(784, list(args.hidden), 10, activation="tanh").to(device)
    x = torch.randn(args.batch, 784).to(device)
    y = torch.randint(0, 10, (args.batch,)).to(device)
    specs = [("backprop", {})] + [(r, {}) for r in args.rules]
    specs += [parse_variant(v) for v in args.variant]
    entries = []
    for name, hp in specs:
        torch.manual_seed(args.seed)
        rule = biograd.create_rule(name, copy.deepcopy(model), **hp)
        opt = torch.optim.SGD(rule.parameters(), lr=0.01, momentum=0.9)
        label = name + ("[" + ",".join(f"{k}={v}" for k, v in hp.items()) + "]" if hp else "")
        entry = CostEntry(label, training_step(rule, x, y, opt))
        calibrate(entry, args.block, args.warmup, clock, sync)
        entries.append(entry)
    paired_cost(entries[0], entries[1:], args.repeats, clock, sync)
    sizes = "-".join(str(s) for s in [784, *args.hidden, 10])
    lines = [
        f"MLP {sizes} tanh, batch {args.batch}, {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"{args.threads} thread(s), {clock_name} clock, {args.repeats} paired blocks, torch "
        f"{torch.__version__}; machine speed after the blocks: "
        f"{speed_line(machine_speed(str(device)))}", "",
        "| rule | ms / step | ratio to backprop | quartiles | target |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for e in entries:
        if e.ratios:
            q1, _, q3 = statistics.quantiles(e.ratios, n=4)
            ratio, spread = f"{e.ratio:.2f}", f"{q1:.2f}-{q3:.2f}"
        else:
            ratio, spread = "1.00", ""
        target = TARGETS.get(e.name, "")
        lines.append(f"| {e.name} | {1e3 * e.seconds_per_step:.2f} | {ratio} | {spread} | "
                     f"{target} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
