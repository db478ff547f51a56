"""The training loop, run directories, resume, divergence and comparisons (tiny synthetic runs)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

import biograd
from biograd.core.errors import CheckpointError, ConfigError
from biograd.experiments.compare import compare
from biograd.experiments.grid import load_grid
from biograd.rundir import read_json, read_rows
from biograd.runner.config import load_config
from biograd.runner.train import train

train_module = sys.modules["biograd.runner.train"]  # the module, not the function


SMALL = ["--dataset=synthetic", "--dataset_args.n=96", "--model_args.hidden=[12]",
         "--batch_size=16", "--epochs=2", "--lr=0.05", "--alignment_batch=32",
         "--eval_batch_size=40"]


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*SMALL, f"--out_dir={tmp_path}", *extra])


def _grid(tmp_path: Path, *extra: str):
    """A comparison grid of the small setting (``extra``: grid or run config overrides)."""
    return load_grid(None, [*SMALL, f"--out_dir={tmp_path}", *extra])


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the rule's saved state (model weights, feedback weights, RNG state)."""
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    walk("rule", state["rule"])
    return flat


def _rules(*names: str) -> list[str]:
    return [n for n in names if n in biograd.list_rules()]


def test_train_writes_the_run_directory(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "--val_size=16", "--alignment_every=3", "--run_name=r")
    summary = train(cfg)
    out = tmp_path / "r"
    assert {p.name for p in out.iterdir()} >= {
        "config.yaml", "metrics.csv", "alignment.csv", "checkpoint.pt", "summary.json"}
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg.to_dict()
    rows = read_rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    # 80 training samples after the 16-sample validation split: 5 batches of 16 per epoch
    assert [r["step"] for r in rows] == [5, 10]
    weights = ["1.weight", "3.weight"]
    expected = ["epoch", "step", "train_loss", "train_acc", "test_acc", "val_acc", "seconds",
                "lr", "angle_update"] + [f"angle_update/{n}" for n in
                                         ["1.weight", "1.bias", "3.weight", "3.bias"]]
    assert list(rows[0]) == expected
    for row in rows:
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["val_acc"] <= 1 and row["seconds"] > 0
        assert math.isfinite(row["train_loss"])
        # backprop's update IS autograd's gradient: the angle is 0 up to rounding
        assert row["angle_update"] < 1e-2
        assert row["angle_update"] == pytest.approx(
            sum(row[f"angle_update/{n}"] for n in weights) / 2)
    assert [r["step"] for r in read_rows(out / "alignment.csv")] == [3, 6, 9]
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert summary["test_acc"] == rows[-1]["test_acc"]
    assert summary["steps_per_epoch"] == 5
    assert summary["seconds_per_epoch"] == pytest.approx(sum(r["seconds"] for r in rows) / 2)
    assert read_json(out / "summary.json") == summary
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["step"] == 10


def test_existing_run_dir_is_an_error_and_untouched(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "--epochs=1", "--run_name=r")
    train(cfg)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        train(cfg.replace(lr=0.5))
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
    train(cfg.replace(lr=0.5), overwrite=True)
    assert read_json(tmp_path / "r" / "summary.json")["status"] == "completed"
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["lr"] == 0.5


def test_resume_of_a_missing_or_corrupt_checkpoint(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "--epochs=1", "--run_name=r")
    with pytest.raises(CheckpointError, match="does not exist"):
        train(cfg, resume=True)
    train(cfg)
    with pytest.raises(CheckpointError, match="does not fit this config"):
        train(cfg.replace(epochs=2, model_args={"hidden": [7]}), resume=True)
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="cannot be read"):
        train(cfg.replace(epochs=2), resume=True)


def _crash_at(monkeypatch, step: int) -> None:
    """Simulate a kill (KeyboardInterrupt) just after the rule's ``step``-th batch."""
    real, calls = train_module.StepGuard.loss, []

    def crash(self, loss: float):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(self, loss)

    monkeypatch.setattr(train_module.StepGuard, "loss", crash)


def _assert_same_weights(a: Path, b: Path) -> None:
    w_a, w_b = _weights(a), _weights(b)
    assert w_a.keys() == w_b.keys()
    for key in w_a:
        assert torch.equal(w_a[key], w_b[key]), key


MLP_RULES = [n for n in biograd.list_rules() if "mlp" in biograd.rule_info(n).supports]


@pytest.mark.parametrize("rule", MLP_RULES)
def test_resume_after_an_epoch_reproduces_the_uninterrupted_run(
    tmp_path: Path, monkeypatch, rule: str
) -> None:
    extra = ("--momentum=0.9", "--scheduler=cosine", f"--rule={rule}", "--epochs=3")
    full = train(_cfg(tmp_path, *extra, "--run_name=full"))
    cfg = _cfg(tmp_path, *extra, "--run_name=part")
    _crash_at(monkeypatch, 8)  # 6 batches per epoch: killed during epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    ck = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["batch"], ck["step"]) == (1, 0, 6)
    resumed = train(cfg, resume=True)
    _assert_same_weights(tmp_path / "full", tmp_path / "part")
    assert resumed["test_acc"] == full["test_acc"] and resumed["steps"] == full["steps"] == 18
    rows = read_rows(tmp_path / "part" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] == read_rows(tmp_path / "full" / "metrics.csv")[-1]["train_loss"]


def test_resume_with_more_epochs_extends_the_run_exactly(tmp_path: Path) -> None:
    train(_cfg(tmp_path, "--momentum=0.9", "--epochs=3", "--run_name=full"))
    part = _cfg(tmp_path, "--momentum=0.9", "--epochs=1", "--run_name=part")
    train(part)
    train(part.replace(epochs=3), resume=True)
    _assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_resume_mid_epoch_from_a_step_checkpoint(tmp_path: Path, monkeypatch) -> None:
    extra = ("--momentum=0.9", "--epochs=2", "--checkpoint_every=4", "--alignment_every=1")
    train(_cfg(tmp_path, *extra, "--run_name=full"))
    cfg = _cfg(tmp_path, *extra, "--run_name=part")
    _crash_at(monkeypatch, 11)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    ck = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["batch"], ck["step"]) == (1, 2, 8)  # 2 batches into epoch 2
    train(cfg, resume=True)
    _assert_same_weights(tmp_path / "full", tmp_path / "part")
    assert (read_rows(tmp_path / "full" / "metrics.csv")[-1]["train_loss"]
            == read_rows(tmp_path / "part" / "metrics.csv")[-1]["train_loss"])
    # rows logged after the checkpoint by the killed run are replaced, not duplicated
    full_rows = read_rows(tmp_path / "full" / "alignment.csv")
    part_rows = read_rows(tmp_path / "part" / "alignment.csv")
    assert [r["step"] for r in part_rows] == list(range(1, 13))
    assert [r["angle_update"] for r in part_rows] == [r["angle_update"] for r in full_rows]


def test_huge_learning_rate_is_marked_diverged(tmp_path: Path) -> None:
    summary = train(_cfg(tmp_path, "--lr=1e8", "--checkpoint_every=1", "--run_name=r"))
    assert summary["status"] == "diverged"
    step = summary["diverged"]["step"]
    assert step >= 2  # the first step starts from finite weights and a finite loss
    assert "loss" in summary["diverged"]["reason"] or "non-finite" in summary["diverged"]["reason"]
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == step - 1  # the last good checkpoint, not overwritten
    weights = _weights(tmp_path / "r")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert read_json(tmp_path / "r" / "summary.json")["status"] == "diverged"


def _poison_at(monkeypatch, call: int, name: str) -> None:
    """Fill parameter ``name`` of the rule with NaN when the loss of step ``call`` is checked
    (before that step's update is applied)."""
    real, calls = train_module.StepGuard.loss, []

    def poison(self, loss):
        calls.append(loss)
        if len(calls) == call:
            with torch.no_grad():
                dict(self.rule.named_parameters())[name].fill_(float("nan"))
        return real(self, loss)

    monkeypatch.setattr(train_module.StepGuard, "loss", poison)


def test_non_finite_feedback_weight_never_reaches_a_checkpoint(tmp_path: Path,
                                                              monkeypatch) -> None:
    """A feedback weight is not used by the forward pass, so only the update check sees it:
    forced before every checkpoint, it stops the run at that step with the last good one."""
    _poison_at(monkeypatch, 3, "feedback.3")
    summary = train(_cfg(tmp_path, "--rule=kolen_pollack", "--checkpoint_every=1",
                         "--run_name=r"))
    assert summary["status"] == "diverged" and summary["diverged"]["step"] == 3
    assert "feedback.3" in summary["diverged"]["reason"]
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "r").values()
               if v.is_floating_point())


def test_no_alignment_row_is_computed_from_a_non_finite_weight(tmp_path: Path,
                                                               monkeypatch) -> None:
    """The update check is forced before every alignment row: a NaN feedback weight stops
    the run at that step and every row logged holds finite angles."""
    _poison_at(monkeypatch, 3, "feedback.3")
    summary = train(_cfg(tmp_path, "--rule=kolen_pollack", "--alignment_every=1",
                         "--run_name=r"))
    assert summary["status"] == "diverged" and summary["diverged"]["step"] == 3
    rows = read_rows(tmp_path / "r" / "alignment.csv")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["angle_update"]) for r in rows)


def test_non_finite_forward_weight_is_named_by_the_next_loss(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Without a checkpoint due, a NaN forward weight shows in the next step's loss, whose
    reason names the parameter; the epoch's checkpoint is never written."""
    _poison_at(monkeypatch, 2, "model.1.weight")
    summary = train(_cfg(tmp_path, "--rule=backprop", "--run_name=r"))
    assert summary["status"] == "diverged" and summary["diverged"]["step"] == 3
    assert "loss is nan" in summary["diverged"]["reason"]
    assert "model.1.weight" in summary["diverged"]["reason"]
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_update_check_runs_every_hundred_steps_or_when_forced() -> None:
    from biograd.core.registry import create_rule
    from biograd.runner.measure import GUARD_EVERY, StepGuard

    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    guard = StepGuard(create_rule("kolen_pollack", model), max_loss=1e4)
    assert guard.update(1, force=True) is None  # all finite
    with torch.no_grad():
        dict(guard.named)["feedback.0"][0, 0] = float("inf")
    assert GUARD_EVERY == 100
    assert guard.update(GUARD_EVERY - 1) is None  # not checked on this step
    assert "feedback.0" in guard.update(GUARD_EVERY)
    assert "feedback.0" in guard.update(7, force=True)


def test_max_loss_stops_at_the_first_step(tmp_path: Path) -> None:
    summary = train(_cfg(tmp_path, "--max_loss=1e-3", "--run_name=r"))
    # cross-entropy of 4 classes at initialisation is about log 4 > 1e-3
    assert summary["status"] == "diverged" and summary["diverged"]["step"] == 1
    assert "exceeds max_loss" in summary["diverged"]["reason"]
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    assert summary["epochs_completed"] == 0


def test_time_limit_stops_after_the_current_step(tmp_path: Path) -> None:
    summary = train(_cfg(tmp_path, "--time_limit=1e-9", "--run_name=r"))
    assert summary["status"] == "completed" and summary["truncated"] is True
    assert summary["steps"] == 1 and summary["epochs_completed"] == 1
    # the cut epoch is evaluated but never checkpointed as if it were complete
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    assert summary["seconds_per_epoch"] == pytest.approx(
        read_rows(tmp_path / "r" / "metrics.csv")[0]["seconds"] * 6)


def test_stop_after_epochs_trains_the_start_of_the_longer_schedule(tmp_path: Path) -> None:
    extra = ("--momentum=0.9", "--scheduler=cosine", "--epochs=3")
    full = train(_cfg(tmp_path, *extra, "--run_name=full"))
    start = train(_cfg(tmp_path, *extra, "--stop_after_epochs=1", "--run_name=start"))
    short = train(_cfg(tmp_path, "--momentum=0.9", "--scheduler=cosine", "--epochs=1",
                       "--run_name=short"))
    assert start["truncated"] is True and start["epochs_completed"] == 1
    assert full["truncated"] is False and start["steps"] == short["steps"] == 6
    rows = {n: read_rows(tmp_path / n / "metrics.csv") for n in ("full", "start", "short")}
    assert len(rows["start"]) == 1
    # epoch 1 of the 3-epoch cosine (lr 0.05 (1 + cos(pi / 3)) / 2 after it), not a 1-epoch one
    assert rows["start"][0] == {**rows["full"][0], "seconds": rows["start"][0]["seconds"]}
    assert rows["start"][0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi / 3)) / 2)
    assert rows["short"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="stop_after_epochs"):
        _cfg(tmp_path, "--stop_after_epochs=0")


def test_tensorboard_requested_without_the_package(tmp_path: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="tensorboard package is not installed"):
            train(_cfg(tmp_path, "--tensorboard=true", "--run_name=r"))
        assert not (tmp_path / "r").exists()
    else:
        pytest.skip("tensorboard is installed")


def test_compare_writes_table_and_plots_and_reuses_runs(tmp_path: Path, capsys) -> None:
    others = _rules("feedback_alignment", "kolen_pollack")
    grid = _grid(tmp_path, "--epochs=1", f"--arms={others}", "--seeds=[0, 1]", "--name=c")
    result = compare(grid)
    out = tmp_path / "c"
    names = ["backprop", *others]
    assert list(result["results"]) == names  # backprop first though not requested
    for name in names:
        for seed in (0, 1):
            assert read_json(out / f"{name}-s{seed}" / "summary.json")["status"] == "completed"
    table = (out / "compare.md").read_text()
    accs = [100 * read_json(out / f"backprop-s{s}" / "summary.json")["test_acc"] for s in (0, 1)]
    mean, std = sum(accs) / 2, abs(accs[0] - accs[1]) / math.sqrt(2)
    assert f"| backprop | reference | 2 | {mean:.2f} ± {std:.2f} |" in table
    assert "| 1.00 |" in table  # backprop's time ratio to itself
    costs = read_json(out / "compare.json")["step_cost_ratio"]
    assert set(costs) == set(names) and costs["backprop"] == 1.0
    for name in others:
        assert f"| {name} |" in table
        assert 0 < costs[name] < 100  # a paired ratio of step times (value: benchmarks/)
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert row.split(" | ")[5] == f"{costs[name]:.2f}"  # the × backprop column
    assert "median of 5 interleaved block pairs" in table
    for png in ("learning_curves.png", "angles.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in capsys.readouterr().out
    stamp = (out / "backprop-s0" / "summary.json").stat().st_mtime_ns
    again = compare(grid)
    assert all(s.get("reused") for runs in again["results"].values() for s in runs)
    assert (out / "backprop-s0" / "summary.json").stat().st_mtime_ns == stamp
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="was trained with a different config"):
        compare(_grid(tmp_path, "--epochs=1", f"--arms={others}", "--seeds=[0, 1]",
                      "--name=c", "--lr=0.01"))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_compare_errors_before_touching_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set by each arm"):
        compare(_grid(tmp_path, "--rule_args.weight_decay=0.1", "--arms=[kolen_pollack]"))
    with pytest.raises(ConfigError, match="arms.backprop.rule_args.x"):
        compare(_grid(tmp_path, "--arms.backprop.rule_args.x=1"))
    assert list(tmp_path.iterdir()) == []


def test_plots_average_the_runs_they_read(tmp_path: Path) -> None:
    from biograd.plots import angle_curves, learning_curves, mean_curve
    from biograd.rundir import write_rows

    a, b = tmp_path / "a", tmp_path / "b"
    for run, accs in ((a, [0.5, 0.7, 0.9]), (b, [0.3, 0.5])):  # b stopped after 2 epochs
        run.mkdir()
        write_rows(run / "metrics.csv", [
            {"epoch": e + 1, "test_acc": acc, "train_loss": 1.0 / (e + 1), "angle_update": 10.0}
            for e, acc in enumerate(accs)])
    assert mean_curve([a, b], "test_acc") == ([1.0, 2.0, 3.0], [0.4, 0.6, 0.9])
    write_rows(a / "alignment.csv", [{"step": 5, "epoch": 1, "angle_update": 30.0},
                                     {"step": 10, "epoch": 1, "angle_update": 20.0}])
    assert mean_curve([a, b], "angle_update", "alignment.csv", "step") == ([5.0, 10.0],
                                                                          [30.0, 20.0])
    for draw, name in ((learning_curves, "l.png"), (angle_curves, "a.png")):
        assert draw({"x": [a, b]}, tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_grid_runs_and_arm_selection(tmp_path: Path) -> None:
    grid = _grid(tmp_path, "--arms.backprop.config.momentum=0.5", "--seeds=[3]")
    (run,) = grid.runs(tmp_path / "c")
    sub = run.config
    assert (sub.rule, sub.seed, sub.momentum, sub.run_name) == ("backprop", 3, 0.5,
                                                                "backprop-s3")
    assert sub.out_dir == str(tmp_path / "c") and sub.batch_size == 16
    no_resnet = [n for n in biograd.list_rules() if "resnet" not in biograd.rule_info(n).supports]
    if not no_resnet:
        pytest.skip("every registered rule supports resnet")
    every = _grid(tmp_path, "--model=resnet18", "--arms=all")
    assert list(every.arms)[0] == "backprop" and set(every.skipped) == set(no_resnet)
    assert every.skipped[no_resnet[0]] == "does not support resnet models"
    with pytest.raises(ConfigError, match=f"rule '{no_resnet[0]}' does not support resnet"):
        _grid(tmp_path, "--model=resnet18", f"--arms=[{no_resnet[0]}]")


@pytest.mark.parametrize("rule", _rules("backprop", "dtp", "weight_mirror"))
def test_measuring_angles_does_not_change_training(tmp_path: Path, rule: str) -> None:
    train(_cfg(tmp_path, f"--rule={rule}", "--run_name=plain"))
    train(_cfg(tmp_path, f"--rule={rule}", "--alignment_every=1", "--run_name=measured"))
    _assert_same_weights(tmp_path / "plain", tmp_path / "measured")
    assert len(read_rows(tmp_path / "measured" / "alignment.csv")) == 12
