"""Equilibrium propagation's cost floor on the demo MLP, measured (issue 15, item 3): its step
beside the block products alone and beside its relaxation compiled whole, each as a ratio to
backprop in ONE process.

Entries (each block of steps timed right after a block of backprop, order rotating, median of
the paired ratios with quartiles; :mod:`biograd.metrics.cost`):

- ``equilibrium_prop``: the rule's step (in-place relaxation, closed-form update) + SGD.
- ``block products alone``: only the matrix products of that step, with the shapes and count
  the in-place loop runs (per Euler step ``D_even = C + A R_odd`` and ``D_odd = C + A^T
  R_even``; ``free_steps`` steps on the batch, ``nudged_steps`` on both nudged phases stacked),
  on the step's own buffers. No step can cost less than this without fewer products.
- ``relaxation compiled`` (``--compile``): both phases of the library's functional loop
  (:func:`biograd.ops.hopfield_dynamics.relax_hopfield`, the path ``predict`` uses) traced into
  one graph by ``torch.compile`` (inductor, ``fullgraph``, fixed shapes), without the update:
  what fusing the elementwise work around the products gives on this CPU. The first call
  compiles (tens of seconds) and is not timed.

    python benchmarks/eqprop_floor.py --compile             # one thread, the demo's setting
    python benchmarks/eqprop_floor.py --threads 2 --hidden 256 256 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

import biograd
from biograd.experiments.hardware import machine_speed, speed_line
from biograd.metrics.cost import CostEntry, measure, training_step
from biograd.ops.energy import output_grad_fn
from biograd.ops.hopfield_dynamics import Nudge, relax_hopfield
from biograd.rules.equilibrium_prop import EquilibriumProp


def products_alone(rule: EquilibriumProp) -> Callable[[], None]:
    """The step's block products on the buffers its last step left (same shapes, same count)."""
    loops = sorted((v for k, v in rule._workspace.items()
                    if isinstance(k, tuple) and k[0] == "loop"), key=lambda b: b.R.shape[1])
    if len(loops) != 2 or not all(b.blocks for b in loops):
        raise SystemExit("expected a free and a nudged loop with block products (a layered "
                         "MLP with at least two hidden layers)")
    plan = [(rule.free_steps, loops[0]), (rule.nudged_steps, loops[1])]  # batch, 2x batch

    def run() -> None:
        for steps, buf in plan:
            a_eo, a_oe = buf.blocks
            split, R, C, D = a_eo.shape[0], buf.R, buf.C, buf.D
            for _ in range(steps):
                torch.addmm(C[:split], a_eo, R[split:], out=D[:split])
                torch.addmm(C[split:], a_oe, R[:split], out=D[split:])

    return run


def compiled_relaxation(rule: EquilibriumProp, x: Tensor, y: Tensor) -> Callable[[], object]:
    """Both phases of the functional relaxation as one compiled graph (no update)."""

    def phases(x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        xf = rule.blocks[0].pre(x)
        chain = rule._chain(xf)
        start = rule.init(rule.blocks, xf, chain.input_drive)
        free = relax_hopfield(chain, start, steps=rule.free_steps, step_size=rule.step_size,
                              record="none")
        states = [s.repeat(2, 1) for s in free.states]
        n = x.shape[0]
        grad = output_grad_fn(rule.loss_fn, torch.cat([y, y]), states[-1].shape[1],
                              states[-1].dtype)
        beta = torch.cat([states[-1].new_full((n, 1), rule.beta),
                          states[-1].new_full((n, 1), -rule.beta)])
        nudged = relax_hopfield(chain.stacked(2), states, steps=rule.nudged_steps,
                                step_size=rule.step_size, nudge=Nudge(beta, grad=grad),
                                record="none")
        return free.states, nudged.states

    fn = torch.compile(phases, fullgraph=True, dynamic=False)

    def run() -> object:
        with torch.no_grad():
            return fn(x, y)

    t0 = time.perf_counter()
    run()
    print(f"compiled the relaxation in {time.perf_counter() - t0:.1f} s")
    return run


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--block", type=float, default=0.1, help="seconds per timed block")
    p.add_argument("--compile", action="store_true", help="also time the compiled relaxation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = biograd.models.mlp(784, list(args.hidden), 10, activation="tanh")
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    rules = {}
    for name in ("backprop", "equilibrium_prop"):
        rule = biograd.create_rule(name, copy.deepcopy(model))
        opt = torch.optim.SGD(rule.parameters(), lr=0.01, momentum=0.9)
        rules[name] = (rule, training_step(rule, x, y, opt))
    eq = rules["equilibrium_prop"][0]
    assert isinstance(eq, EquilibriumProp)
    rules["equilibrium_prop"][1]()  # fills the workspace the products run on
    entries = [CostEntry("backprop", rules["backprop"][1]),
               CostEntry("equilibrium_prop", rules["equilibrium_prop"][1]),
               CostEntry("block products alone", products_alone(eq))]
    if args.compile:
        entries.append(CostEntry("relaxation compiled (no update)",
                                 compiled_relaxation(eq, x, y)))
    measure(entries[0], entries[1:], args.repeats, block_seconds=args.block)
    sizes = "-".join(str(s) for s in [784, *args.hidden, 10])
    lines = [f"MLP {sizes} tanh, batch 64, {args.threads} thread(s), wall clock, "
             f"{args.repeats} paired blocks, torch {torch.__version__}; "
             f"{speed_line(machine_speed())}", "",
             "| entry | ms / step | x backprop (quartiles) |", "| --- | ---: | ---: |"]
    for e in entries:
        if e.ratios:
            q1, _, q3 = statistics.quantiles(e.ratios, n=4)
            ratio = f"{e.ratio:.2f} ({q1:.2f}-{q3:.2f})"
        else:
            ratio = "1"
        lines.append(f"| {e.name} | {1e3 * e.seconds_per_step:.2f} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
