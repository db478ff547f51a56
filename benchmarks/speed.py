"""Seconds per batch of every registered rule (rule.step + optimizer step), and the ratio to
backprop, measured in ONE process on the same model, data and batch.

Method: each rule gets a copy of the same initial model, default hyper-parameters and
``SGD(lr=0.01, momentum=0.9)`` over ``rule.parameters()`` (PyTorch's default implementation,
i.e. the per-parameter loop on CPU; the same optimizer and settings for every rule and for
backprop, so a rule with trainable feedback, Kolen-Pollack, also pays for the optimizer stepping
its B); after a warm-up, each repeat times a block of steps of every rule, the rules' order
rotating from repeat to repeat, and each rule's block right after a block of backprop: the
ratio is the median over repeats of these paired ratios (pairing cancels drift from other load
on a shared machine far better than a ratio of medians), seconds per batch the median of the
rule's blocks. The targets are judged on this full step ("ratio to backprop").
The extra "step-only ratio" column is information only: the same pairing with the optimizer
left out (``zero_grad`` + ``rule.step`` against ``zero_grad`` + backprop's ``step``).
``--clock cpu`` times with the process's CPU time instead of wall time (use it with
``--threads 1`` on a machine shared with other jobs: time spent descheduled is not counted);
the default, ``auto``, picks it for one thread and wall time otherwise.
Rules whose ``supports`` lack the model kind are listed with a note, as are rules that fail.

    python benchmarks/speed.py                    # every rule, MLP 784-256-256-256-10 tanh
    python benchmarks/speed.py --model mlp --rules kolen_pollack weight_mirror   # just these
    python benchmarks/speed.py --model lenet --out speed_lenet.md
    python benchmarks/speed.py --model resnet18 --batch 128 --device cuda --no-step-only
    python benchmarks/speed.py --rules weight_mirror --variant weight_mirror:mirror_noise=gaussian
(backprop, the reference, is always added to ``--rules``; ``--variant`` adds a rule with
non-default hyper-parameters as an extra row.)
"""

from __future__ import annotations

import argparse
import ast
import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

import biograd
from biograd.experiments.hardware import machine_speed, speed_line
from biograd.metrics.cost import CostEntry, calibrate, device_sync, paired_cost, training_step

#: Targets from the issue (ratio to backprop), shown next to the measurement.
TARGETS = {
    "feedback_alignment": 1.15, "sign_symmetry": 1.15, "kolen_pollack": 1.15,
    "direct_feedback_alignment": 1.1, "weight_mirror": 1.4,
}
#: Issue 15's CUDA targets (ResNet-18 width 64, batch 128), used with --model resnet18 on cuda.
CUDA_RESNET_TARGETS = {
    "feedback_alignment": 1.10, "direct_feedback_alignment": 1.10, "kolen_pollack": 1.10,
    "sign_symmetry": 1.15, "weight_mirror": 1.30,
}


@dataclass
class Entry:
    """One table row: the full step and the step without the optimizer, timed separately."""

    name: str
    full: CostEntry | None = None
    step_only: CostEntry | None = None
    note: str = ""


def build(kind: str, batch: int, seed: int, width: int = 64
          ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """The benchmark model, one batch of random data, and the model kind it counts as."""
    torch.manual_seed(seed)
    if kind == "mlp":
        model = biograd.models.mlp(784, [256, 256, 256], 10, activation="tanh")
        x = torch.randn(batch, 784)
        supports = "mlp"
    elif kind == "lenet":
        model = biograd.models.lenet(1, 10, image_size=28)
        x = torch.randn(batch, 1, 28, 28)
        supports = "cnn"
    elif kind == "resnet18":  # issue 15's CUDA setting: width 64, 32x32 RGB, batch 128
        model = biograd.models.resnet18(3, 10, width=width)
        x = torch.randn(batch, 3, 32, 32)
        supports = "resnet"
    else:
        raise SystemExit(f"unknown --model {kind!r}; use mlp, lenet or resnet18")
    return model, x, torch.randint(0, 10, (batch,)), supports


#: The clock of every timed block (``--clock``).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter
#: What a timed block waits on before reading the clock (``--device cuda``: the GPU's queue).
sync = None


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``RULE:key=value[,key=value]`` -> (rule, hparams); values as Python literals, else str."""
    name, _, spec = text.partition(":")
    hparams: dict[str, object] = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: expected RULE:key=value[,key=value]")
        try:
            hparams[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            hparams[key.strip()] = value.strip()
    return name.strip(), hparams


def prepare(
    specs: list[tuple[str, dict[str, object]]], model: nn.Module, kind: str, x, y, args
) -> list[Entry]:
    entries = []
    for name, hparams in specs:
        label = name + ("[" + ",".join(f"{k}={v}" for k, v in hparams.items()) + "]"
                        if hparams else "")
        e = Entry(label)
        entries.append(e)
        if kind not in biograd.rule_info(name).supports:
            e.note = f"skipped: does not support {kind!r} models"
            continue
        try:
            torch.manual_seed(args.seed)
            rule = biograd.create_rule(name, copy.deepcopy(model), **hparams)
            opt = torch.optim.SGD(rule.parameters(), lr=0.01, momentum=0.9)
            e.full = CostEntry(label, training_step(rule, x, y, opt))
            e.step_only = CostEntry(label, training_step(rule, x, y))
            calibrate(e.full, args.block, args.warmup, clock, sync)
            e.step_only.steps = e.full.steps
        except Exception as err:  # noqa: BLE001 - a broken rule must not stop the table
            e.full = e.step_only = None
            e.note = f"failed: {type(err).__name__}: {err}"[:120]
    return entries


def measure(entries: list[Entry], repeats: int, step_only: bool = True) -> None:
    """Paired blocks (:func:`biograd.metrics.cost.paired_cost`): full steps, then, for the
    step-only column, the same without the optimizer."""
    base = next(e for e in entries if e.name == "backprop")
    live = [e for e in entries if e.full is not None and e is not base]
    assert base.full is not None and base.step_only is not None
    paired_cost(base.full, [e.full for e in live], repeats, clock, sync)  # type: ignore[misc]
    if step_only:
        paired_cost(base.step_only, [e.step_only for e in live], repeats,  # type: ignore[misc]
                    clock, sync)


def table(entries: list[Entry], title: str, targets: dict[str, float] = TARGETS) -> str:
    lines = [title, "", "| rule | s / batch | ratio to backprop | target | note | "
             "step-only ratio |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for e in entries:
        if e.full is None or not e.full.seconds:
            lines.append(f"| {e.name} | - | - | {targets.get(e.name, '')} | {e.note} | - |")
            continue
        med = e.full.seconds_per_step
        ratio = e.full.ratio if e.full.ratios else 1.0
        only = e.step_only
        step = f"{only.ratio:.3f}" if only is not None and only.ratios else (
            "1.000" if e.name == "backprop" else "-")
        target = targets.get(e.name)
        note = e.note or ("" if target is None else ("met" if ratio <= target else "MISSED"))
        lines.append(
            f"| {e.name} | {med:.5f} | {ratio:.3f} | {target or ''} | {note} | {step} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="examples: `python benchmarks/speed.py --model mlp --rules kolen_pollack "
        "weight_mirror` (just the MLP and these rules; backprop is always added); "
        "`python benchmarks/speed.py --model lenet`. Method: see the module docstring.",
    )
    p.add_argument("--model", default="mlp", choices=["mlp", "lenet", "resnet18"],
                   help="mlp: 784-256-256-256-10 tanh (default); lenet: LeNet on 1x28x28; "
                   "resnet18: ResNet-18 on 3x32x32 (--width)")
    p.add_argument("--width", type=int, default=64, help="resnet18's first-stage channels")
    p.add_argument("--device", default="cpu", help="cpu or cuda (wall clock, blocks end with "
                   "a sync)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=21, help="timed blocks per rule")
    p.add_argument("--block", type=float, default=0.05, help="seconds per timed block (approx.)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps per rule")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rules", nargs="*",
                   help="only these rules (default: every registered; backprop always added)")
    p.add_argument("--variant", action="append", default=[], metavar="RULE:KEY=VALUE,...",
                   help="also time RULE with these hyper-parameters (repeatable), e.g. "
                   "weight_mirror:mirror_noise=gaussian")
    p.add_argument("--clock", default="auto", choices=["auto", *sorted(CLOCKS)],
                   help="wall: perf_counter; cpu: process CPU time (for shared machines, with "
                   "--threads 1); auto (default): cpu with one thread, else wall (as the "
                   "compare/report cost probe)")
    p.add_argument("--no-step-only", action="store_true",
                   help="skip the step-only (no optimizer) column, halving the run time")
    p.add_argument("--out", help="also write the Markdown table to this file")
    args = p.parse_args(argv)
    global clock, sync
    device = torch.device(args.device)
    if args.clock == "auto":
        args.clock = "cpu" if args.threads == 1 and device.type == "cpu" else "wall"
    clock, sync = CLOCKS[args.clock], device_sync(device)
    torch.set_num_threads(args.threads)
    model, x, y, kind = build(args.model, args.batch, args.seed, args.width)
    model, x, y = model.to(device), x.to(device), y.to(device)
    names = args.rules or biograd.list_rules()
    if "backprop" not in names:
        names = ["backprop", *names]
    specs = [(n, {}) for n in names] + [parse_variant(v) for v in args.variant]
    entries = prepare(specs, model, kind, x, y, args)
    measure(entries, args.repeats, step_only=not args.no_step_only)
    title = (
        f"### Speed: {args.model}, batch {args.batch}, {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"{args.threads} thread(s), {args.clock} "
        f"clock, median of {args.repeats} interleaved blocks, ratio = median of paired ratios "
        f"to a backprop block timed just before (torch {torch.__version__}; machine speed "
        f"after the blocks: {speed_line(machine_speed(str(device)))})"
    )
    on_gpu_resnet = args.model == "resnet18" and device.type == "cuda"
    text = table(entries, title, CUDA_RESNET_TARGETS if on_gpu_resnet else TARGETS)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
