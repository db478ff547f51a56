"""The "x backprop" column of ``biograd compare``: each rule's training step timed against
backprop's in this process, on the rule's own model, batch and optimizer settings
(:mod:`biograd.metrics.cost`: medians of paired, interleaved blocks).

Whole-epoch wall times of runs trained minutes apart on a shared machine are too noisy for a
ratio (other load, the first run's warm-up); the s/epoch column keeps them as measured.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from biograd.core.registry import REFERENCE_RULE, create_rule
from biograd.core.rule import LearningRule
from biograd.metrics.cost import CostEntry, device_sync, measure, training_step
from biograd.runner.config import Config
from biograd.runner.data import RunData, load_data
from biograd.runner.device import fork_rng, resolve_device
from biograd.runner.models import build_model
from biograd.runner.train import make_optimizer, rule_args_of

#: Seconds per timed block (each rule's and backprop's).
BLOCK_SECONDS = 0.05


def _data_key(cfg: Config) -> str:
    return repr((cfg.dataset, cfg.dataset_args, cfg.data_dir, cfg.val_size, cfg.seed,
                 cfg.train_subset, cfg.test_subset))


def rule_on_first_batch(
    sub: Config, data: RunData, device: torch.device, rule_name: str | None = None,
    rule_args: dict[str, Any] | None = None,
) -> tuple[LearningRule, Tensor, Tensor]:
    """A fresh rule (``sub.rule`` with ``sub.rule_args`` unless given) on ``sub``'s model,
    seeded with ``sub.seed``, on ``device``, and ``sub``'s first training batch there."""
    torch.manual_seed(sub.seed)
    model = build_model(sub.model, data.input_shape, data.num_classes, sub.model_args)
    rule = create_rule(rule_name or sub.rule, model.to(device), loss=sub.loss,
                       **(rule_args_of(sub) if rule_args is None else rule_args))
    x = data.train_x[: sub.batch_size].to(device)
    y = data.train_y[: sub.batch_size].to(device)
    return rule, x, y


def _entry(sub: Config, rule_name: str, rule_args: dict[str, Any], data: RunData,
           device: torch.device) -> CostEntry:
    rule, x, y = rule_on_first_batch(sub, data, device, rule_name, rule_args)
    return CostEntry(rule_name, training_step(rule, x, y, make_optimizer(sub, rule)))


def probe_clock(device: torch.device) -> Callable[[], float]:
    """The process's CPU time for a single-threaded CPU run (time spent descheduled by other
    load on a shared machine is not counted; the paired blocks then measure work, not luck),
    else wall time (GPU kernels, or several threads whose CPU times add up)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


def step_cost_ratios(subs: dict[str, Config], repeats: int) -> dict[str, float]:
    """``{label: median paired ratio of the training step of subs[label].rule to backprop's}``
    on each config's own model, batch and optimizer (backprop itself 1.0); a probe that fails is
    left out (with a message)."""
    if repeats < 1:
        return {}
    datasets: dict[str, RunData] = {}
    ratios: dict[str, float] = {}
    for name, sub in subs.items():
        try:
            if sub.rule == REFERENCE_RULE:
                ratios[name] = 1.0
                continue
            device = resolve_device(sub.device)
            if sub.threads:
                torch.set_num_threads(sub.threads)
            clock = probe_clock(device)
            key = _data_key(sub)
            if key not in datasets:
                datasets[key] = load_data(sub)
            data = datasets[key]
            with fork_rng(device):
                ref = _entry(sub, REFERENCE_RULE, {}, data, device)
                entry = _entry(sub, sub.rule, sub.rule_args, data, device)
                measure(ref, [entry], repeats, block_seconds=BLOCK_SECONDS, clock=clock,
                        sync=device_sync(device))
            ratios[name] = entry.ratio
        except Exception as exc:  # noqa: BLE001 - a failing probe must not sink the comparison
            print(f"[compare] cost probe of {name} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
    return ratios
