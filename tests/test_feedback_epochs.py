"""Feedback-only epochs: Meulemans et al. 2020's DDTP schedule (s-DDTP of P2) trains its direct
feedback maps for 10 epochs before training and one after each epoch, forward weights frozen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import biograd
from biograd.runner.config import load_config
from biograd.runner.train import feedback_schedule, train

TP_RULES = [n for n in biograd.list_rules()
            if biograd.rule_info(n).family == "target_propagation"]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g)


@pytest.mark.parametrize("name", TP_RULES)
def test_feedback_only_step_trains_the_feedback_and_leaves_the_forward_weights(name: str) -> None:
    torch.manual_seed(0)
    model = biograd.models.mlp(12, [10, 8], 4, activation="tanh")
    rule = biograd.create_rule(name, model)
    x, y = _batch()
    rule.feedback_only_step(x, y)  # builds DDTP's maps on the first call
    before_fb = [p.detach().clone() for p in rule.feedback.parameters()]
    before_fw = [p.detach().clone() for p in model.parameters()]
    losses = rule.feedback_only_step(x, y)
    assert any(k.startswith("feedback_loss/") for k in losses)
    assert all(p.grad is None for p in model.parameters())
    for p, q in zip(model.parameters(), before_fw, strict=True):
        assert torch.equal(p.detach(), q)
    changed = [not torch.equal(p.detach(), q)
               for p, q in zip(rule.feedback.parameters(), before_fb, strict=True)]
    assert any(changed)


def test_rules_without_feedback_training_refuse_feedback_epochs() -> None:
    model = biograd.models.mlp(12, [10], 4)
    rule = biograd.create_rule("backprop", model)
    with pytest.raises(biograd.ConfigError, match="no feedback-only epochs"):
        rule.feedback_only_step(*_batch())
    cfg = load_config(None, ["--rule=backprop", "--feedback_epochs=2"])
    with pytest.raises(biograd.ConfigError, match="has no feedback-only epochs"):
        feedback_schedule(cfg, rule)
    assert feedback_schedule(load_config(None, ["--rule=backprop"]), rule) == (0, 0)


def test_s_ddtp_schedule_is_meulemans_and_the_config_overrides_it() -> None:
    model = biograd.models.mlp(12, [10], 4)
    s = biograd.create_rule("s_ddtp", model)
    assert feedback_schedule(load_config(None, ["--rule=s_ddtp"]), s) == (10, 1)
    cfg = load_config(None, ["--rule=s_ddtp", "--feedback_epochs=0", "--extra_feedback_epochs=2"])
    assert feedback_schedule(cfg, s) == (0, 2)
    p = biograd.create_rule("p_ddtp", biograd.models.mlp(12, [10], 4))
    assert feedback_schedule(load_config(None, ["--rule=p_ddtp"]), p) == (0, 0)
    with pytest.raises(biograd.ConfigError, match="feedback_epochs"):
        load_config(None, ["--feedback_epochs=-1"])


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [
        "--dataset=synthetic", "--dataset_args.n=64", "--model_args.hidden=[12]",
        "--batch_size=16", "--epochs=2", "--lr=0.05", "--alignment_batch=32",
        "--eval_batch_size=40", "--rule=s_ddtp", f"--out_dir={tmp_path}", *extra,
    ])


def test_the_runner_runs_the_feedback_epochs_and_they_change_the_forward_trajectory(
    tmp_path: Path,
) -> None:
    """With the maps warmed up, the first training step already uses trained maps: the forward
    weights differ from a run without feedback-only epochs (same seed, same batches)."""
    runs = {}
    for name, extra in (("none", ["--feedback_epochs=0", "--extra_feedback_epochs=0"]),
                        ("warm", ["--feedback_epochs=2", "--extra_feedback_epochs=1"])):
        train(_cfg(tmp_path, f"--run_name={name}", *extra))
        state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["rule"]
        runs[name] = {k: v for k, v in state.items() if k.startswith("model.")}
    assert runs["none"].keys() == runs["warm"].keys()
    assert any(not torch.equal(runs["none"][k], runs["warm"][k]) for k in runs["none"])
