"""The stale-feedback probe of P3's report (biograd.papers.p3_stale): lag 0 is backprop, a
lag at least the probe's length is feedback alignment with B fixed at the initial W^T, a lag of
one step uses the previous step's W^T, divergence follows the runner's rule, and the finding
reads the probes' outcomes."""

from __future__ import annotations

import pytest
import torch

from biograd.core.errors import ConfigError
from biograd.core.registry import create_rule
from biograd.papers import p3_stale
from biograd.runner.config import Config
from biograd.runner.data import load_data
from biograd.runner.models import build_model
from biograd.runner.train import epoch_batches, make_optimizer

CFG = Config(dataset="synthetic", dataset_args={"n": 48, "input_shape": [1, 6, 6],
                                                "num_classes": 3},
             model="mlp", model_args={"hidden": [10, 8], "activation": "tanh"},
             batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3, threads=1, seed=3)
STEPS = 7  # crosses an epoch (3 batches of 16 per epoch)


def _reference(rule_name: str, feedback: str) -> list[float]:
    """The probe's training loop written out: ``feedback`` "none" (backprop), "initial" (B is
    W^T at step 0, fixed) or "previous" (B is W^T of the step before, W^T of step 0 first)."""
    torch.manual_seed(CFG.seed)
    data = load_data(CFG)
    torch.manual_seed(CFG.seed)
    model = build_model(CFG.model, data.input_shape, data.num_classes, CFG.model_args)
    rule = create_rule(rule_name, model, loss=CFG.loss)
    opt = make_optimizer(CFG, rule)
    order = [b for e in range(3) for b in epoch_batches(CFG.seed, e, len(data.train_x),
                                                         CFG.batch_size)]
    current = lambda: [lay.module.weight.detach().t().clone() for lay in rule.layers]  # noqa: E731
    first, prev, losses = current() if feedback != "none" else None, None, []
    for t in range(STEPS):
        now = current() if feedback != "none" else None
        use = first if feedback == "initial" else (prev or now)
        if feedback != "none":
            with torch.no_grad():
                for lay, b in zip(rule.layers, use, strict=True):
                    rule.feedback.get(lay.key).copy_(b)
        prev = now
        opt.zero_grad(set_to_none=True)
        losses.append(rule.step(data.train_x[order[t]], data.train_y[order[t]]).loss)
        opt.step()
    return losses


def test_lag_zero_is_backprop() -> None:
    losses, diverged = p3_stale.probe_losses(CFG, 0, STEPS)
    assert diverged is None
    assert losses == pytest.approx(_reference("backprop", "none"), rel=1e-5)


def test_a_lag_as_long_as_the_probe_keeps_the_initial_w_transpose() -> None:
    losses, _ = p3_stale.probe_losses(CFG, STEPS, STEPS)
    assert losses == pytest.approx(_reference("feedback_alignment", "initial"), rel=1e-5)
    assert losses != pytest.approx(_reference("backprop", "none"), rel=1e-5)


def test_lag_one_uses_the_previous_steps_w_transpose() -> None:
    losses, _ = p3_stale.probe_losses(CFG, 1, STEPS)
    assert losses == pytest.approx(_reference("feedback_alignment", "previous"), rel=1e-5)


def test_divergence_is_the_runners_loss_test() -> None:
    # cross-entropy of 3 classes starts near ln 3 = 1.1 > max_loss 0.5: diverged at step 1
    import dataclasses

    got = p3_stale.probe(dataclasses.replace(CFG, max_loss=0.5), 2, STEPS)
    assert got == {"diverged_at": 1, "loss": None}
    ok = p3_stale.probe(CFG, 2, STEPS)
    assert ok["diverged_at"] is None and 0 < ok["loss"] < 10


def test_bad_lag_or_steps_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lag must be >= 0"):
        p3_stale.probe_losses(CFG, -1, 3)


def _result(lag: int, diverged: list[int | None], lr: float = 0.01) -> dict:
    return {"lag": lag, "lr": lr, "momentum": 0.9,
            "runs": [{"seed": i, "diverged_at": d, "loss": None if d else 0.1}
                     for i, d in enumerate(diverged)]}


def test_finding_needs_backprop_to_train_and_a_lag_to_diverge_in_every_seed() -> None:
    st = {"experiment": "e", "lr": 0.01, "momentum": 0.9}
    results = [_result(0, [None, None]), _result(1, [None, None]), _result(3, [52, 40]),
               _result(10, [None, 70]), _result(3, [9, 9], lr=0.1)]
    text = p3_stale.finding(st, results)
    assert text is not None and "3 steps stale" in text and "lag 0, 1 trained" in text
    assert "10" not in text.split("trained")[0]  # mixed outcomes count neither way
    assert p3_stale.finding(st, [_result(0, [None, 5]), _result(3, [52, 40])]) is None
    assert p3_stale.finding(st, [_result(0, [None]), _result(3, [None])]) is None


def test_report_measures_the_probe_once_then_reads_it(tmp_path) -> None:
    from biograd.papers import reproduce

    arms = ("backprop", "feedback_alignment", "sign_symmetry", "weight_mirror",
            "kolen_pollack")
    (tmp_path / "preset.yaml").write_text(
        "paper: p3-weight-transport\ntitle: tiny\n"
        "base: {dataset: synthetic, dataset_args: {n: 48, input_shape: [1, 6, 6], "
        "num_classes: 3}, train_subset: 32, test_subset: 16, epochs: 1, batch_size: 16, "
        "alignment_batch: 8, eval_batch_size: 16, threads: 1, model: mlp, "
        "model_args: {hidden: [8], activation: tanh}}\n"
        "budgets:\n  quick: {seeds: 1}\n  standard: {seeds: 1, settings: {cost_repeats: 0, "
        "stale_feedback: {experiment: e, seeds: [0, 1], steps: 4, "
        "probes: [{lag: 0}, {lag: 2, lr: 0.5, momentum: 0.0}]}}}\n"
        "experiments:\n  e: {}\narms:\n" + "".join(f"  {a}: {{rule: {a}}}\n" for a in arms))

    def run(**kw):
        return reproduce("p3-weight-transport", "standard", out=tmp_path / "docs",
                         runs_dir=tmp_path / "results", preset=tmp_path / "preset.yaml", **kw)

    run()
    stored = tmp_path / "results" / "p3-weight-transport" / "standard" / "_measurements"
    path = stored / "stale-feedback-e.json"
    first = path.read_text()
    report = (tmp_path / "docs" / "p3-weight-transport.md").read_text()
    assert "## Stale feedback" in report and "| W^T of step t - 2 | 0.5 | 0 | 0.5 |" in report
    assert report.count("trained (loss") + report.count("diverged at step") == 4
    run(train=False)  # reads the stored probe, measures nothing
    assert path.read_text() == first
    assert "| W^T of step t (backprop) | 0.01 | 0 | 0.01 |" in (
        tmp_path / "docs" / "p3-weight-transport.md").read_text()
