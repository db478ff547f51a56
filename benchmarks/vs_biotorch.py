"""biograd beside BioTorch (Sanfiz & Akrout 2021, arXiv:2108.13446): milliseconds per training
step of every rule both libraries implement, on the same model, data, batches and thread count,
interleaved in ONE process; then biograd's cost relative to its own backprop for every rule
that supports MLPs.

Setting (BioTorch's MNIST MLP): 784-256-256-256-10 tanh, cross-entropy, batch 64,
``SGD(lr=0.01, momentum=0.9)`` over the trainable parameters, real MNIST training batches
(``biograd.data.load("mnist", flatten=True)``), cycled in the same order for every entry. Every
model starts from a copy of the same initial weights. One step is ``zero_grad`` + forward +
backward (or ``rule.step``) + ``optimizer.step()``.

Part 1 (side by side): the reference is plain autograd (``torch.nn`` model,
``F.cross_entropy(...).backward()``). Each repeat times a block of ``--steps`` steps of every
entry, each right after a block of the reference, the entries' order rotating from repeat to
repeat (:func:`biograd.metrics.cost.paired_cost`); ms/step is the median of an entry's blocks,
"x plain" the median of its paired ratios. BioTorch modes and their biograd counterparts:
``backpropagation`` - ``backprop``; ``fa`` - ``feedback_alignment``; ``usf`` -
``sign_symmetry`` (defaults: scaled sign(W)); ``frsf`` - ``sign_symmetry(magnitudes="random")``;
``dfa`` - ``direct_feedback_alignment``; ``brsf`` (magnitudes redrawn every batch) has no
biograd counterpart and is timed for BioTorch alone.
Part 2 (biograd alone): the same pairing with biograd's backprop as the reference, for every
registered rule whose ``supports`` include ``"mlp"``. Backward-replacement rules get blocks of
``--steps`` steps and ``--repeats`` repeats; iterative rules (energy, target-propagation and
LRA families) get blocks of about the same wall time as a backprop block (at least 3 steps) and
``--slow-repeats`` repeats, as their steps cost 3-30x more.
Clock: wall time (``time.perf_counter``); with ``--device cuda`` every block ends with
``torch.cuda.synchronize()`` before the clock is read. Threads: ``torch.set_num_threads``
(``--threads``, default ``os.cpu_count()``). On a machine shared with other jobs, run with
``OMP_WAIT_POLICY=PASSIVE`` in the environment: with the default (spinning) policy an
oversubscribed core turns each of the many small parallel regions of a step into a wait for a
descheduled thread (on this project's 2-core machine at load 7, plain autograd at 2 threads
took 20-330 ms per step instead of about 3-5 ms with PASSIVE); the header records the policy.

BioTorch is optional: without it part 1 times plain autograd and biograd only. It declares
heavy dependencies (torchvision, jupyter, tensorboard, torchattacks, ...) that its
``BioModule`` path never imports, so install it without them, beside biograd, in its own venv
(the same torch as the Makefile's)::

    python3 -m venv /work/venvs/biotorch
    /work/venvs/biotorch/bin/python -m pip install torch==2.13.0
    /work/venvs/biotorch/bin/python -m pip install -e /work/main
    /work/venvs/biotorch/bin/python -m pip install --no-deps biotorch==0.0.16
    /work/venvs/biotorch/bin/python benchmarks/vs_biotorch.py --threads 2

BioTorch 0.0.16 imports and runs unpatched on torch 2.13 (its ``BioModule`` needs only torch).
Its DFA layers use ``Module.register_backward_hook``, which torch 2.13 flags as deprecated
("non-full backward hook ... multiple autograd Nodes"); the hook still replaces each layer's
input gradient by ``e B`` (checked against the DFA formula in float64), so the warning is
silenced here, and the converter's progress prints are swallowed.

    python benchmarks/vs_biotorch.py                     # all cores, CPU
    python benchmarks/vs_biotorch.py --threads 2 --out vs_biotorch.md
    python benchmarks/vs_biotorch.py --device cuda
    python benchmarks/vs_biotorch.py --rules feedback_alignment kolen_pollack   # part 2 subset
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import biograd
from biograd.experiments.hardware import machine_speed, speed_line
from biograd.metrics.cost import CostEntry, calibrate, device_sync, paired_cost

Batches = list[tuple[torch.Tensor, torch.Tensor]]

#: (row label, BioTorch mode or None, biograd rule or None, biograd hyper-parameters).
SHARED: list[tuple[str, str | None, str | None, dict[str, Any]]] = [
    ("backprop", "backpropagation", "backprop", {}),
    ("feedback alignment", "fa", "feedback_alignment", {}),
    ("sign symmetry (uSF)", "usf", "sign_symmetry", {}),
    ("sign symmetry, fixed random magnitudes (frSF)", "frsf", "sign_symmetry",
     {"magnitudes": "random"}),
    ("DFA", "dfa", "direct_feedback_alignment", {}),
    ("sign symmetry, magnitudes redrawn per batch (brSF)", "brsf", None, {}),
]

#: Issue 15's targets: ratio to biograd's backprop; "vs_biotorch" also asks for a ratio to
#: plain autograd no larger than BioTorch's for the same rule.
TARGETS: dict[str, float] = {
    "feedback_alignment": 1.10, "sign_symmetry": 1.10, "direct_feedback_alignment": 1.10,
    "kolen_pollack": 1.15, "weight_mirror": 1.20,
}
VS_BIOTORCH = {"feedback_alignment": "fa", "sign_symmetry": "usf",
               "direct_feedback_alignment": "dfa"}
BACKPROP_TARGET = 1.05  #: biograd's backprop vs plain autograd
FAST_FAMILIES = ("reference", "backward_replacement")


@dataclass
class Row:
    """One line of the side-by-side table."""

    label: str
    biotorch: CostEntry | None = None
    biograd: CostEntry | None = None
    notes: list[str] = field(default_factory=list)


def load_batches(name: str, batch: int, count: int, device: torch.device) -> Batches:
    """The first ``count`` batches of the training split, flattened, on ``device``."""
    data = biograd.data.load(name, "train", flatten=True)
    x, y = data.tensors
    n = min(count, len(x) // batch)
    if n < 1:
        raise SystemExit(f"dataset {name!r} has {len(x)} samples: fewer than one batch of {batch}")
    return [(x[i * batch:(i + 1) * batch].contiguous().to(device),
             y[i * batch:(i + 1) * batch].contiguous().to(device)) for i in range(n)]


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def torch_step(model: nn.Module, batches: Batches, dfa: bool = False) -> Callable[[], None]:
    """Plain autograd (or a BioTorch model): forward, cross-entropy, backward, SGD step."""
    opt = sgd(trainable(model))
    feed = itertools.cycle(batches)

    def step() -> None:
        x, y = next(feed)
        opt.zero_grad(set_to_none=True)
        out = model(x, targets=y, loss_function=F.cross_entropy) if dfa else model(x)
        F.cross_entropy(out, y).backward()
        opt.step()

    return step


def biograd_step(rule: biograd.LearningRule, batches: Batches) -> Callable[[], None]:
    """``zero_grad`` + ``rule.step`` + SGD step over ``rule.parameters()``."""
    opt = sgd(rule.parameters())
    feed = itertools.cycle(batches)

    def step() -> None:
        x, y = next(feed)
        opt.zero_grad(set_to_none=True)
        rule.step(x, y)
        opt.step()

    return step


def import_biotorch() -> tuple[Any, str]:
    """(BioModule or None, version or why not)."""
    try:
        from biotorch.module.biomodule import BioModule
    except ImportError as err:
        return None, f"not importable ({err})"
    return BioModule, metadata.version("biotorch")


def biotorch_model(bio_module: Any, model: nn.Module, mode: str) -> nn.Module:
    """BioTorch's conversion of a copy of ``model`` (its prints swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return bio_module(copy.deepcopy(model), mode=mode, copy_weights=True, output_dim=10)


def label(rule: str, hparams: dict[str, Any]) -> str:
    return rule + ("[" + ",".join(f"{k}={v}" for k, v in hparams.items()) + "]"
                   if hparams else "")


def make_rule(
    rule: str, hparams: dict[str, Any], model: nn.Module, seed: int
) -> biograd.LearningRule:
    torch.manual_seed(seed)
    return biograd.create_rule(rule, copy.deepcopy(model), **hparams)


def side_by_side(
    model: nn.Module, batches: Batches, bio_module: Any, args: argparse.Namespace,
    sync: Callable[[], None] | None,
) -> tuple[CostEntry, list[Row], dict[str, CostEntry]]:
    """Part 1: the reference (plain autograd), rows of both libraries, and biograd's entries
    by label (reused in part 2)."""
    plain = CostEntry("plain autograd", torch_step(copy.deepcopy(model), batches))
    rows: list[Row] = []
    ours: dict[str, CostEntry] = {}
    for text, mode, rule, hparams in SHARED:
        row = Row(text)
        rows.append(row)
        if mode is not None and bio_module is not None:
            try:
                torch.manual_seed(args.seed)
                bt = biotorch_model(bio_module, model, mode)
                row.biotorch = CostEntry(f"BioTorch {mode}",
                                         torch_step(bt, batches, dfa=mode == "dfa"))
            except Exception as err:  # noqa: BLE001 - one broken mode must not stop the table
                row.notes.append(f"BioTorch {mode} failed: {type(err).__name__}: {err}"[:120])
        if rule is not None:
            try:
                entry = CostEntry(label(rule, hparams),
                                  biograd_step(make_rule(rule, hparams, model, args.seed),
                                               batches))
                row.biograd = ours[entry.name] = entry
            except Exception as err:  # noqa: BLE001
                row.notes.append(f"biograd {rule} failed: {type(err).__name__}: {err}"[:120])
    entries = [e for r in rows for e in (r.biotorch, r.biograd) if e is not None]
    for e in (plain, *entries):
        calibrate(e, warmup=args.warmup, sync=sync)
        e.steps = args.steps
    paired_cost(plain, entries, args.repeats, sync=sync)
    return plain, rows, ours


def own_cost(
    model: nn.Module, batches: Batches, ours: dict[str, CostEntry], args: argparse.Namespace,
    sync: Callable[[], None] | None,
) -> tuple[CostEntry, list[tuple[CostEntry, bool, str]]]:
    """Part 2: every MLP rule against biograd's backprop. Returns the reference and
    (entry, slow, note) per rule; an entry without timings carries its note."""
    bp = ours["backprop"]
    reference = CostEntry("backprop", bp.step, steps=args.steps)
    names = args.rules or biograd.list_rules()
    specs = [(n, {}) for n in names if n != "backprop"]
    specs += [(r, h) for _, _, r, h in SHARED if r is not None and h and r in names]
    block = args.steps * bp.seconds_per_step
    out: list[tuple[CostEntry, bool, str]] = []
    for rule, hparams in specs:
        name = label(rule, hparams)
        info = biograd.rule_info(rule)
        slow = info.family not in FAST_FAMILIES
        if "mlp" not in info.supports:
            out.append((CostEntry(name, lambda: None), slow, "skipped: no MLP support"))
            continue
        entry = ours.get(name)
        try:
            step = entry.step if entry else biograd_step(
                make_rule(rule, hparams, model, args.seed), batches)
            entry = CostEntry(name, step)
            calibrate(entry, block_seconds=block, warmup=args.warmup, sync=sync)
        except Exception as err:  # noqa: BLE001
            out.append((CostEntry(name, lambda: None), slow,
                        f"failed: {type(err).__name__}: {err}"[:120]))
            continue
        if not slow:
            entry.steps = args.steps
        out.append((entry, slow, ""))
    for slow, repeats in ((False, args.repeats), (True, args.slow_repeats)):
        group = [e for e, s, note in out if s == slow and not note]
        if group:
            paired_cost(reference, group, repeats, sync=sync)
    return reference, out


def ms(entry: CostEntry | None, ratio: float | None = None) -> str:
    if entry is None or not entry.seconds:
        return "-"
    r = entry.ratio if ratio is None else ratio
    return f"{1e3 * entry.seconds_per_step:.2f} ({r:.3f})"


def side_table(plain: CostEntry, rows: list[Row], version: str) -> str:
    head = (f"| rule | BioTorch {version}: ms/step (x plain autograd) | biograd: ms/step "
            f"(x plain autograd) | biograd / BioTorch |")
    lines = [head, "| --- | ---: | ---: | ---: |",
             f"| plain autograd (torch.nn + loss.backward) | {ms(plain, 1.0)} | - | - |"]
    for r in rows:
        both = r.biotorch is not None and r.biograd is not None and r.biotorch.ratios
        rel = f"{r.biograd.ratio / r.biotorch.ratio:.3f}" if both else "-"  # type: ignore[union-attr]
        note = f" ({'; '.join(r.notes)})" if r.notes else ""
        lines.append(f"| {r.label}{note} | {ms(r.biotorch)} | {ms(r.biograd)} | {rel} |")
    return "\n".join(lines) + "\n"


def verdict(entry: CostEntry, rows: list[Row]) -> tuple[str, str]:
    """(target text, met/MISSED) for a part-2 entry."""
    if entry.name == "backprop" or entry.name not in TARGETS:
        return "", ""
    limit = TARGETS[entry.name]
    target = f"<= {limit:.2f}"
    misses = [] if entry.ratio <= limit else [f"> {limit:.2f}x backprop"]
    mode = VS_BIOTORCH.get(entry.name)
    if mode is not None:
        target += ", <= BioTorch"
        row = next(r for r in rows if r.biograd is not None and r.biograd.name == entry.name)
        if row.biotorch is None or not row.biotorch.ratios:
            misses.append("BioTorch not timed")
        elif row.biograd.ratio > row.biotorch.ratio:  # type: ignore[union-attr]
            misses.append("slower than BioTorch")
    if misses == ["BioTorch not timed"]:
        return target, "met vs backprop (BioTorch not timed)"
    return target, "met" if not misses else "MISSED: " + ", ".join(misses)


def spread(values: list[float]) -> str:
    """Lower and upper quartile of the paired ratios (the median's spread)."""
    if len(values) < 2:
        return "-"
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q1:.3f}-{q3:.3f}"


def own_table(reference: CostEntry, out: list[tuple[CostEntry, bool, str]],
              rows: list[Row]) -> str:
    lines = ["| biograd rule | ms/step | x biograd backprop | quartiles | blocks (steps x "
             "repeats) | issue 15 target | verdict |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |",
             f"| backprop (reference) | {1e3 * reference.seconds_per_step:.2f} | 1 | | "
             f"{reference.steps} x all | | |"]
    for entry, slow, note in out:
        if note:
            lines.append(f"| {entry.name} | - | - | - | - | | {note} |")
            continue
        target, met = verdict(entry, rows)
        tag = " (iterative: fewer repeats)" if slow else ""
        lines.append(f"| {entry.name} | {1e3 * entry.seconds_per_step:.2f} | {entry.ratio:.3f} "
                     f"| {spread(entry.ratios)} | {entry.steps} x {len(entry.ratios)}{tag} | "
                     f"{target} | {met} |")
    return "\n".join(lines) + "\n"


def backprop_line(rows: list[Row]) -> str:
    bp = next((r.biograd for r in rows if r.biograd is not None
               and r.biograd.name == "backprop"), None)
    if bp is None or not bp.ratios:
        return ""
    met = "met" if bp.ratio <= BACKPROP_TARGET else "MISSED"
    return (f"biograd backprop / plain autograd: {bp.ratio:.2f} (target <= "
            f"{BACKPROP_TARGET:.2f}: {met})\n")


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> str:
    """Both parts; the Markdown text."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device; use --device cpu")
    torch.set_num_threads(args.threads)
    sync = device_sync(device)
    bio_module, version = (None, "not run (--no-biotorch)") if args.no_biotorch \
        else import_biotorch()
    batches = load_batches(args.data, args.batch, args.batches, device)
    torch.manual_seed(args.seed)
    model = biograd.models.mlp(batches[0][0].shape[1], [256, 256, 256], 10,
                               activation="tanh").to(device)
    plain, rows, ours = side_by_side(model, batches, bio_module, args, sync)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/vs_biotorch.py", *given])
    cpu = platform.processor() or platform.machine()
    text = (
        f"`{command}` ({time.strftime('%Y-%m-%d %H:%M %Z')}; {cpu}"
        f", {os.cpu_count()} cores, {args.threads} torch thread(s), OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, {device}; torch "
        f"{torch.__version__}; BioTorch {version}). MLP 784-256-256-256-10 tanh, batch "
        f"{args.batch}, SGD 0.01 momentum 0.9, {len(batches)} {args.data} batches cycled; wall "
        f"clock, blocks of {args.steps} steps, each after a plain-autograd block, "
        f"{args.repeats} interleaved repeats; ms/step = median block, x = median paired "
        f"ratio; machine speed after part 1: {speed_line(machine_speed(str(device)))}."
        "\n\n" + side_table(plain, rows, version) + "\n" + backprop_line(rows)
    )
    if not args.no_own and "backprop" not in ours:
        text += "\nPart 2 skipped: biograd's backprop failed in part 1 (see its row).\n"
    elif not args.no_own:
        reference, out = own_cost(model, batches, ours, args, sync)
        text += ("\nbiograd alone, each block after a biograd-backprop block; iterative rules: "
                 f"blocks of about {args.steps} backprop steps' time, {args.slow_repeats} "
                 "repeats.\n\n" + own_table(reference, out, rows))
    return text


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch.set_num_threads (default: os.cpu_count())")
    p.add_argument("--device", default="cpu", help="cpu or cuda (blocks end with a sync)")
    p.add_argument("--steps", type=int, default=50, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=31, help="interleaved blocks per entry (11 gave "
                   "quartiles too wide to read on a 2-core VM)")
    p.add_argument("--slow-repeats", type=int, default=5,
                   help="repeats for iterative rules in part 2")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps per entry")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=100, help="distinct batches, cycled")
    p.add_argument("--data", default="mnist", help="biograd dataset, flattened (default: mnist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rules", nargs="*", help="part 2: only these rules (default: all)")
    p.add_argument("--no-biotorch", action="store_true", help="do not time BioTorch")
    p.add_argument("--no-own", action="store_true", help="skip part 2")
    p.add_argument("--out", help="also write the Markdown to this file")
    args = p.parse_args(argv)
    if min(args.steps, args.repeats, args.slow_repeats, args.threads, args.batch) < 1:
        raise SystemExit("--steps, --repeats, --slow-repeats, --threads and --batch must be >= 1")
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():  # BioTorch's DFA hook, see the module docstring
            warnings.filterwarnings("ignore", message="Using a non-full backward hook")
            text = run(args, argv)
    finally:
        torch.set_num_threads(threads)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
