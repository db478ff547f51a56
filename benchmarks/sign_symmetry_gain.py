"""Sign symmetry's unit gain in ``B`` (the weight swap) against the gain on the input gradient
(an autograd Function per layer), issue 15 item 2.

Sign symmetry (Liao et al. 2016) uses ``B = g sign(W)^T``. biograd writes ``g sign(W)^T`` into
``B`` each step, so that the step runs every layer's own autograd node with ``B`` swapped in
(``WeightSwap``); the earlier route kept ``B = sign(W)^T`` and multiplied each input gradient
by ``g`` inside the feedback op, an autograd Function. Both compute the same update up to
rounding. This times both in ONE process with :mod:`biograd.metrics.cost` (blocks of steps of
each entry right after a block of backprop, order rotating, median of the paired ratios,
quartiles as spread), with feedback alignment beside them (the swap without the sign pass):
BioTorch's MLP 784-256-256-256-10 tanh, batch 64, ``SGD(lr=0.01, momentum=0.9)``, one random
batch, wall clock.

    python benchmarks/sign_symmetry_gain.py --threads 2 --repeats 61
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import Tensor

import biograd
from biograd.experiments.hardware import machine_speed, speed_line
from biograd.metrics.cost import CostEntry, measure, training_step
from biograd.ops.convert import FeedbackLayer
from biograd.rules.sign_symmetry import SignSymmetry, UnitMagnitudes


class GainOnInputGradient(UnitMagnitudes):
    """The earlier route: ``B = sign(W)^T`` with the gain as the op's scale (no swap)."""

    def feedback(
        self, rule: SignSymmetry, layer: FeedbackLayer, sign_wt: Tensor
    ) -> tuple[Tensor, float]:
        return sign_wt, rule.gains[layer.key]


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=41)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    x, y = torch.rand(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)

    def entry(name: str, rule: str, gain_route: bool = False) -> CostEntry:
        torch.manual_seed(args.seed)
        model = biograd.models.mlp(784, [256, 256, 256], 10, activation="tanh")
        r = biograd.create_rule(rule, model)
        if gain_route:
            assert isinstance(r, SignSymmetry)
            r.strategy = GainOnInputGradient(None)
            r.strategy.setup(r)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return CostEntry(name, training_step(r, x, y, opt))

    ref = entry("backprop", "backprop")
    entries = [entry("feedback_alignment", "feedback_alignment"),
               entry("sign_symmetry, gain in B (swap)", "sign_symmetry"),
               entry("sign_symmetry, gain on the input gradient (Function)", "sign_symmetry",
                     gain_route=True)]
    measure(ref, entries, args.repeats)
    lines = [f"{args.threads} thread(s), {args.repeats} paired repeats; "
             f"{speed_line(machine_speed())}", "",
             "| entry | ms/step | x backprop (quartiles) |", "| --- | ---: | ---: |",
             f"| backprop | {1e3 * ref.seconds_per_step:.3f} | 1 |"]
    for e in entries:
        q = statistics.quantiles(e.ratios, n=4)
        lines.append(f"| {e.name} | {1e3 * e.seconds_per_step:.3f} | "
                     f"{e.ratio:.3f} ({q[0]:.3f}-{q[2]:.3f}) |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
