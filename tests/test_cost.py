"""biograd.metrics.cost: the pairing logic of the cost ratio, checked with a fake clock (real
timings belong in benchmarks/, not in unit tests), and the training-step closure."""

from __future__ import annotations

import pytest
import torch

import biograd
from biograd.metrics.cost import (
    CostEntry,
    calibrate,
    measure,
    paired_cost,
    timed_block,
    training_step,
)
from tests.conftest import make_model


class FakeClock:
    """Time advances only when a step runs, by that step's fixed cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def stepper(self, cost: float):
        def step() -> None:
            self.now += cost
        return step


def test_calibrate_sizes_blocks_to_the_requested_duration() -> None:
    clock = FakeClock()
    e = CostEntry("x", clock.stepper(0.002))
    calibrate(e, block_seconds=0.05, warmup=4, clock=clock)
    assert e.steps == 25
    slow = CostEntry("slow", clock.stepper(1.0))
    calibrate(slow, block_seconds=0.05, warmup=2, clock=clock)
    assert slow.steps == 3  # min_steps: never a block of one or two slow steps
    calibrate(slow, block_seconds=0.05, warmup=2, clock=clock, min_steps=1)
    assert slow.steps == 1
    assert timed_block(e, clock) == pytest.approx(0.002) and e.seconds == [pytest.approx(0.002)]


def test_paired_ratios_are_exact_cost_ratios_and_rotate_the_order() -> None:
    clock = FakeClock()
    order: list[str] = []

    def tracked(name: str, cost: float):
        inner = clock.stepper(cost)

        def step() -> None:
            order.append(name)
            inner()
        return step

    ref = CostEntry("backprop", tracked("bp", 0.01))
    a, b = CostEntry("a", tracked("a", 0.03)), CostEntry("b", tracked("b", 0.015))
    paired_cost(ref, [a, b], repeats=3, clock=clock)
    assert a.ratios == [pytest.approx(3.0)] * 3 and a.ratio == pytest.approx(3.0)
    assert b.ratio == pytest.approx(1.5) and len(b.ratios) == 3
    assert ref.seconds_per_step == pytest.approx(0.01) and len(ref.seconds) == 6
    firsts = [name for name in order if name != "bp"][::2]  # first non-reference per repeat
    assert firsts == ["a", "b", "a"]


def test_median_of_paired_ratios_resists_a_burst_of_load() -> None:
    """One block slowed tenfold (another job) moves one pair, not the median."""
    clock = FakeClock()
    slow_block = {"n": 0}

    def rule_step() -> None:
        slow_block["n"] += 1
        clock.now += 0.02 * (10 if slow_block["n"] == 2 else 1)

    ref, e = CostEntry("bp", clock.stepper(0.01)), CostEntry("r", rule_step)
    paired_cost(ref, [e], repeats=5, clock=clock)
    assert max(e.ratios) == pytest.approx(20.0) and e.ratio == pytest.approx(2.0)


def test_empty_entries_and_nan_before_measuring() -> None:
    e = CostEntry("x", lambda: None)
    assert e.ratio != e.ratio and e.seconds_per_step != e.seconds_per_step  # NaN
    paired_cost(e, [], repeats=2)  # nothing to pair: no error


@pytest.mark.parametrize("with_optimizer", [False, True])
def test_training_step_is_one_rule_step_and_optimizer_step(with_optimizer: bool) -> None:
    model, x, y = make_model("mlp")
    rule = biograd.create_rule("kolen_pollack", model)
    opt = torch.optim.SGD(rule.parameters(), lr=0.1) if with_optimizer else None
    lin = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    w = lin.weight.detach().clone()
    step = training_step(rule, x, y, opt)
    step()
    g1 = lin.weight.grad.clone()
    step()  # gradients are zeroed first: not accumulated over calls
    if with_optimizer:
        assert not torch.equal(lin.weight.detach(), w)
    else:
        assert torch.equal(lin.weight.detach(), w)
        torch.testing.assert_close(lin.weight.grad, g1)


def test_measure_sizes_every_block_then_pairs() -> None:
    clock = FakeClock()
    ref, e = CostEntry("bp", clock.stepper(0.005)), CostEntry("r", clock.stepper(0.02))
    measure(ref, [e], repeats=4, block_seconds=0.1, warmup=2, clock=clock)
    assert (ref.steps, e.steps) == (20, 5)
    assert e.ratios == [pytest.approx(4.0)] * 4 and len(ref.seconds) == 4
