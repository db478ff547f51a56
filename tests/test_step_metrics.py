"""Every key of a rule's ``StepResult.metrics`` reaches metrics.csv as ``rule/KEY``: the epoch
mean of the values the rule returned at each step (recorded here by wrapping ``rule.step``), for
an energy rule and a target-propagation rule; a mid-epoch resume continues the same sums."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import biograd
from biograd.rundir import read_rows
from biograd.runner.config import load_config
from biograd.runner.distributed import Dist
from biograd.runner.tally import METRIC_PREFIX
from biograd.runner.train import train

train_module = sys.modules["biograd.runner.train"]
RULES = [r for r in ("predictive_coding", "ldrl") if r in biograd.list_rules()]


def _cfg(tmp_path: Path, rule: str, *extra: str):
    return load_config(None, [
        "--dataset=synthetic", "--dataset_args.n=64", "--model_args.hidden=[8]",
        "--batch_size=16", "--epochs=2", "--lr=0.02", "--alignment_batch=16",
        f"--rule={rule}", f"--out_dir={tmp_path}", "--run_name=r", *extra])


def _record(monkeypatch) -> list[dict[str, float]]:
    """Wrap the training loop's step (``Dist.step``, which calls ``rule.step``); returns the
    metrics the rule gave at every training step."""
    seen: list[dict[str, float]] = []
    real = Dist.step

    def step(self, rule, x, y, index):
        out = real(self, rule, x, y, index)
        seen.append(dict(out[3]))
        return out

    monkeypatch.setattr(Dist, "step", step)
    return seen


@pytest.mark.parametrize("rule", RULES)
def test_step_metrics_are_epoch_means_in_metrics_csv(tmp_path: Path, monkeypatch,
                                                     rule: str) -> None:
    seen = _record(monkeypatch)
    train(_cfg(tmp_path, rule))
    steps = seen
    rows = read_rows(tmp_path / "r" / "metrics.csv")
    ends = [0] + [int(r["step"]) for r in rows]
    assert len(steps) == ends[-1] and steps[0], f"{rule} returned no step metrics"
    for epoch, row in enumerate(rows):
        chunk = steps[ends[epoch]: ends[epoch + 1]]
        keys = {k for s in chunk for k in s}
        assert {c for c in row if c.startswith(METRIC_PREFIX)} == {METRIC_PREFIX + k
                                                                    for k in keys}
        for key in keys:
            values = [s[key] for s in chunk if key in s]
            assert row[METRIC_PREFIX + key] == pytest.approx(sum(values) / len(values),
                                                             rel=1e-12, abs=1e-12)


def test_mid_epoch_resume_keeps_the_metric_sums(tmp_path: Path, monkeypatch) -> None:
    rule = RULES[-1]
    full = _cfg(tmp_path, rule, "--checkpoint_every=2", "--run_name=full")
    train(full)
    part = _cfg(tmp_path, rule, "--checkpoint_every=2", "--run_name=part")
    real, calls = train_module.StepGuard.loss, []

    def crash(*args, **kwargs):  # killed during the 7th step: resumes from step 6
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module.StepGuard, "loss", crash)
    with pytest.raises(KeyboardInterrupt):
        train(part)
    monkeypatch.undo()
    train(part, resume=True)
    a = read_rows(tmp_path / "full" / "metrics.csv")[-1]
    b = read_rows(tmp_path / "part" / "metrics.csv")[-1]
    cols = [c for c in a if c.startswith(METRIC_PREFIX)]
    assert cols and [a[c] for c in cols] == [b[c] for c in cols]
