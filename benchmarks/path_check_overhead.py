"""Per-step cost of the backward-replacement rules' check for silent backprop.

The check (``BackwardReplacementRule.check_paths``) inspects the autograd graph at the first
step only; later steps pay one flag test. This script measures, in ONE process on the same
model and batch, three variants of a rule, each timed in blocks of ``--steps`` steps
(``zero_grad`` + ``rule.step`` + ``SGD.step``), the variants' order rotating per repeat:

- ``plain``: the rule's class with its ``step`` replaced by the step without any check (the
  body before the check existed: forward with swapped layers, loss, backward);
- ``first_step`` (the default): the check ran at the warm-up's first step, skipped since;
- ``every_step``: the graph inspected at every step (opt-in, for data-dependent forwards).

Reported: the median over repeats of each variant's block time divided by the ``plain`` block
of the same repeat, and the one-time cost of the checked first step. Blocks are timed with the
process's CPU time (``time.process_time``, one thread: time spent descheduled on a shared
machine is not counted), the first step with wall time. For DFA (``skips="pure"``) ``plain``
cuts every layer input (it never inspects the graph, so it never learns which cuts are no-ops).

    python benchmarks/path_check_overhead.py --rules feedback_alignment kolen_pollack
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import biograd
from biograd.core.rule import StepResult
from biograd.ops.convert import swapped_forwards


def plain_step(rule: biograd.LearningRule, x: torch.Tensor, y: torch.Tensor) -> StepResult:
    """``BackwardReplacementRule.step`` without the path check (the code before the check)."""
    self = rule
    self.check_batch(x, y)
    self.prepare(x)
    self._in_use.clear()
    state = self._state
    state.step += 1
    state.direct = direct = self.direct_signal()
    if self._forwards is None:
        self._forwards = [self._layer_forward(layer) for layer in self.layers]
    with swapped_forwards(self.layers, self._forwards):
        out = self.model(x)
    self.check_labels(out, y)
    loss = self.loss_fn(out, y)
    if direct is not None:
        out.register_hook(direct.capture)
    loss.backward()
    self.after_backward()
    return StepResult(float(loss.detach()), out.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", nargs="+", default=["feedback_alignment", "kolen_pollack"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, choices=[1],
                    help="one thread (the CPU-time clock counts all threads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = biograd.models.mlp(784, [256, 256, 256], 10, activation="tanh")
    x, y = torch.randn(args.batch, 784), torch.randint(0, 10, (args.batch,))
    print(f"MLP 784-256-256-256-10 tanh, batch {args.batch}, {args.steps} steps per block, "
          f"{args.repeats} repeats, {args.threads} thread(s), torch {torch.__version__}")
    for name in args.rules:
        variants = {}
        for kind in ("plain", "first_step", "every_step"):
            rule = biograd.create_rule(name, copy.deepcopy(base))
            if kind == "every_step":
                rule.check_paths = "every_step"
            opt = torch.optim.SGD(rule.parameters(), lr=0.01, momentum=0.9)
            if kind == "plain":
                rule.step = lambda xb, yb, r=rule: plain_step(r, xb, yb)  # type: ignore[method-assign]
            variants[kind] = (rule, opt)
        checked = biograd.create_rule(name, copy.deepcopy(base))
        t0 = time.perf_counter()
        checked.step(x, y)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        checked.step(x, y)
        second = time.perf_counter() - t0

        def block(rule: biograd.LearningRule, opt: torch.optim.Optimizer) -> float:
            t = time.process_time()
            for _ in range(args.steps):
                opt.zero_grad()
                rule.step(x, y)
                opt.step()
            return time.process_time() - t

        for rule, opt in variants.values():  # warm-up (the first step runs the check)
            block(rule, opt)
        times: dict[str, list[float]] = {k: [] for k in variants}
        order = list(variants)
        for r in range(args.repeats):
            for k in order[r % 3:] + order[: r % 3]:
                times[k].append(block(*variants[k]))
        per = {k: statistics.median(v) / args.steps for k, v in times.items()}
        ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"],
                                                              strict=True)) for k in times}
        print(f"{name}: plain {per['plain'] * 1e3:.3f} ms/step; "
              f"first_step (default) {ratio['first_step']:.4f}x plain; "
              f"every_step {ratio['every_step']:.4f}x plain; "
              f"checked first step {first * 1e3:.2f} ms vs next step {second * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
