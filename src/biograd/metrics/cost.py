"""A rule's cost as a ratio to backprop, measured in one process (DESIGN.md: speed is measured,
not guessed).

Each entry is one training step as a closure (``zero_grad``, ``rule.step``, optionally the
optimizer's step). :func:`calibrate` sizes an entry's timed block to about ``block_seconds``;
:func:`paired_cost` then times, ``repeats`` times, a block of the reference (backprop) right
before a block of each other entry, rotating the entries' order from repeat to repeat. The
ratio is the median of these paired ratios: pairing cancels slow drift from other load on a
shared machine far better than a ratio of two medians measured minutes apart. Timing assertions
do not belong in unit tests; the clock is a parameter so that the pairing logic can be tested
with a fake one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from biograd.core.rule import LearningRule

Clock = Callable[[], float]


@dataclass
class CostEntry:
    """One timed step (``step()`` runs a whole training step) and its measurements."""

    name: str
    step: Callable[[], object]
    steps: int = 1  #: steps per timed block (:func:`calibrate`)
    seconds: list[float] = field(default_factory=list)  #: seconds per step, one per block
    ratios: list[float] = field(default_factory=list)  #: paired ratios to the reference

    @property
    def seconds_per_step(self) -> float:
        """Median seconds per step over the timed blocks (NaN before any)."""
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def ratio(self) -> float:
        """Median of the paired ratios to the reference (NaN before any)."""
        return statistics.median(self.ratios) if self.ratios else float("nan")


def training_step(
    rule: LearningRule, x: torch.Tensor, y: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
) -> Callable[[], None]:
    """``zero_grad`` + ``rule.step(x, y)`` (+ ``optimizer.step()`` when one is given)."""

    def step() -> None:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        else:
            rule.zero_grad(set_to_none=True)
        rule.step(x, y)
        if optimizer is not None:
            optimizer.step()

    return step


def calibrate(
    entry: CostEntry, block_seconds: float = 0.05, warmup: int = 10,
    clock: Clock = time.perf_counter, sync: Callable[[], None] | None = None,
    min_steps: int = 3,
) -> None:
    """Run ``entry`` once (lazy set-up) and ``warmup`` times, then set ``entry.steps`` so that
    a timed block lasts about ``block_seconds`` and holds at least ``min_steps`` steps (a
    block of one slow step, e.g. a 40 ms LeNet step, leaves its ratio to the noise of single
    steps: paired medians of 5 such blocks spread by +-20% on a shared machine)."""
    entry.step()
    t0 = clock()
    for _ in range(max(1, warmup)):
        entry.step()
    if sync is not None:
        sync()
    per_step = (clock() - t0) / max(1, warmup)
    floor = max(1, min_steps)
    entry.steps = max(floor, round(block_seconds / per_step)) if per_step > 0 else floor


def timed_block(
    entry: CostEntry, clock: Clock = time.perf_counter, sync: Callable[[], None] | None = None
) -> float:
    """Seconds per step of one block of ``entry.steps`` steps (recorded in ``entry.seconds``)."""
    t0 = clock()
    for _ in range(entry.steps):
        entry.step()
    if sync is not None:
        sync()
    per_step = (clock() - t0) / entry.steps
    entry.seconds.append(per_step)
    return per_step


def paired_cost(
    reference: CostEntry, entries: list[CostEntry], repeats: int,
    clock: Clock = time.perf_counter, sync: Callable[[], None] | None = None,
) -> None:
    """Append ``repeats`` paired ratios (entry block / reference block timed just before it)
    to every entry; the entries' order rotates by one each repeat."""
    for r in range(repeats):
        k = r % len(entries) if entries else 0
        for entry in entries[k:] + entries[:k]:
            t_ref = timed_block(reference, clock, sync)
            t = timed_block(entry, clock, sync)
            entry.ratios.append(t / t_ref if t_ref > 0 else float("nan"))


def measure(
    reference: CostEntry, entries: list[CostEntry], repeats: int, *,
    block_seconds: float = 0.05, warmup: int = 10, clock: Clock = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> None:
    """:func:`calibrate` the reference and every entry, then :func:`paired_cost`."""
    for e in (reference, *entries):
        calibrate(e, block_seconds, warmup, clock, sync)
    paired_cost(reference, entries, repeats, clock, sync)


def device_sync(device: torch.device) -> Callable[[], None] | None:
    """What a timed block waits on before reading the clock: the GPU's queue, else nothing."""
    return torch.cuda.synchronize if device.type == "cuda" else None
