"""``biograd reproduce``: every paper's preset runs end to end at a tiny budget (synthetic data
through overrides), finished runs are reused, bad inputs fail clearly, and the measurements
follow from the mathematics (P4's relaxation error contracts by exactly 1 - step_size per step
at the top hidden layer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from biograd.cli import main
from biograd.core.errors import ConfigError, UnknownNameError
from biograd.experiments.paper_report import mean_std
from biograd.experiments.reproduce import plan
from biograd.papers import PAPERS, load_preset, reproduce
from biograd.papers.p4_activation_relaxation import relaxation_errors
from biograd.papers.p5_measure import architectures
from biograd.runner.config import Config
from biograd.runner.yamlio import read_yaml

#: a few batches of synthetic MNIST-shaped data for every run of a preset
TINY = ["dataset=synthetic", "dataset_args.n=48", "dataset_args.input_shape=[1,28,28]",
        "dataset_args.num_classes=10", "train_subset=32", "test_subset=16", "epochs=1",
        "batch_size=16", "alignment_batch=8", "eval_batch_size=16", "threads=1"]
TINY_SETTINGS = {
    "p4-activation-relaxation": ["settings.relax_batch=4", "settings.relax_steps=3"],
    "p5-zil": ["settings.repeats=1", "settings.exactness_batch=2", "settings.cost_batch=2",
               "settings.architectures=[MLP, ResNet]"],
}


def _tiny(paper: str, tmp_path: Path, **kw):
    # one paired block per arm for the reports' cost ratios (every paper has the setting)
    return reproduce(paper, "quick", out=tmp_path / "out", runs_dir=tmp_path / "runs",
                     overrides=[*TINY, "settings.cost_repeats=1",
                                *TINY_SETTINGS.get(paper, [])], **kw)


@pytest.mark.parametrize("paper", PAPERS)
def test_preset_runs_at_a_tiny_budget(paper: str, tmp_path: Path) -> None:
    summary = _tiny(paper, tmp_path)
    report = (tmp_path / "out" / f"{paper}-quick.md").read_text()  # quick: PAPER-quick.md
    assert summary["report"] == f"{paper}-quick.md"
    assert "## Claim check" in report and "## Hardware, versions and wall time" in report
    assert "CUDA used" not in report
    assert summary["verdicts"] and all(v in ("held", "partly held", "did not hold",
                                             "not testable at this budget", "not tested")
                                       for v in summary["verdicts"])
    for link in [line.split("](")[1].rstrip(")\n") for line in report.splitlines()
                 if line.startswith("![")]:
        assert (tmp_path / "out" / link).is_file(), link
    assert json.loads((tmp_path / "out" / f"{paper}-quick.json").read_text())["paper"] == paper
    assert f"[{paper}]({paper}-quick.md)" in (tmp_path / "out" / "README.md").read_text()
    if paper != "p5-zil":
        assert "failed" not in {s["status"] for s in _summaries(tmp_path)}
    if paper == "p2-ldrl":  # cost ratios measured by the paired step probe, one per experiment
        line = next(x for x in report.splitlines() if "relative to backprop (paired" in x)
        assert len(re.findall(r" \d+\.\d×", line)) == len(plan(
            load_preset(paper), "quick").experiments), line
    if paper in ("p1-lra", "p3-weight-transport", "p4-activation-relaxation"):
        # a cost table: every arm of every experiment measured (backprop exactly 1)
        rows = report.split("## Cost per training step")[1].split("\n## ")[0].splitlines()
        rows = [r for r in rows if r.startswith("| ") and r[2:6] not in ("rule", "--- ")]
        p = plan(load_preset(paper), "quick")
        arms = {spec.arm for spec in p.runs}
        assert {r.split(" | ")[0][2:] for r in rows} == arms
        for r in rows:
            cells = r.strip("| ").split(" | ")[1:]
            assert all(re.fullmatch(r"\d+\.\d\d×", c) for c in cells if c), r
            if r.startswith("| backprop "):
                assert all(c == "1.00×" for c in cells if c), r


def _summaries(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("summary.json")]


def test_full_budget_plans_the_papers_protocol() -> None:
    p = plan(load_preset("p1-lra"), "full")
    assert len(p.seeds) == 3 and len(p.runs) == 6 * 7 * 3
    cfg = p.experiments["mnist-d8"]
    assert cfg.epochs == 100 and cfg.batch_size == 50 and cfg.train_subset is None
    assert cfg.model_args == {"activation": "tanh", "hidden": [256] * 8}
    p3 = plan(load_preset("p3-weight-transport"), "full", seeds=1)
    assert "cifar10-resnet18" in p3.experiments  # full only
    assert "cifar10-resnet18" not in plan(load_preset("p3-weight-transport"), "quick").experiments


def test_per_arm_settings_apply_to_one_arm_of_one_experiment(tmp_path: Path) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text(
        "paper: p1-lra\nbase: {lr: 0.05}\n"
        "arms: {a: {rule: ldrl, rule_args: {beta: 0.2, sigma: 0.1}}, b: {rule: backprop}}\n"
        "experiments:\n"
        "  e1: {config: {model: mlp}}\n"
        "  e2: {config: {model: mlp},\n"
        "       per_arm: {a: {rule_args: {sigma: 0.3}, config: {lr: 0.01}}}}\n")
    runs = {(r.experiment, r.arm): r.config for r in plan(load_preset("p1-lra", path),
                                                           "quick").runs}
    assert runs["e2", "a"].rule_args == {"beta": 0.2, "sigma": 0.3} and runs["e2", "a"].lr == 0.01
    assert runs["e1", "a"].rule_args == {"beta": 0.2, "sigma": 0.1} and runs["e1", "a"].lr == 0.05
    assert runs["e2", "b"].rule_args == {} and runs["e2", "b"].lr == 0.05
    p2 = {(r.experiment, r.arm): r.config for r in plan(load_preset("p2-ldrl"), "full").runs}
    assert p2["mnist-lenet", "ldrl"].rule_args == {"feedback_steps": [5, 20, 20]}
    assert p2["mnist-mlp", "ldrl"].rule_args == {}


#: the paper the reuse tests run (any preset does: this one trains fastest at the tiny budget;
#: P3's weight mirror warms up for 2000 mirror steps per run and per update probe)
FAST = "p4-activation-relaxation"


def test_finished_runs_are_reused_not_redone(tmp_path: Path) -> None:
    summary = _tiny(FAST, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}
    assert len(before) == summary["runs"] > 1
    _tiny(FAST, tmp_path)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}
    assert after == before
    report = (tmp_path / "out" / f"{FAST}-quick.md").read_text()
    rows = [r for r in report.splitlines() if "| completed |" in r]
    assert len(rows) == len(before) and all(r.endswith("| yes |") for r in rows)
    # an interrupted run (checkpoint, no summary) is resumed, not retrained from scratch
    gone = next(iter(before))
    gone.unlink()
    _tiny(FAST, tmp_path)
    assert gone.is_file() and json.loads(gone.read_text())["steps"] == 2
    assert {p: p.stat().st_mtime_ns for p in before if p != gone} == {
        p: t for p, t in before.items() if p != gone}


def test_changed_config_retrains_and_keeps_the_old_runs(tmp_path: Path, capsys) -> None:
    """A run whose config changed is stale: moved under .stale/ (nothing lost) and retrained
    (biograd.experiments.store; tests/test_results_store.py covers the cases)."""
    _tiny(FAST, tmp_path)
    root = tmp_path / "runs" / FAST / "quick"
    lrs = {read_yaml(p)["lr"] for p in root.glob("*/*/config.yaml")}
    assert lrs and 0.5 not in lrs
    runs = len(list(root.glob("*/*/summary.json")))
    reproduce(FAST, "quick", out=tmp_path / "out", runs_dir=tmp_path / "runs",
              overrides=[*TINY, "lr=0.5", "settings.cost_repeats=1", *TINY_SETTINGS[FAST]])
    assert "config changed: lr" in capsys.readouterr().err
    kept = list((root / ".stale").glob("*/*/summary.json"))
    assert len(kept) == runs > 1
    assert {read_yaml(p.parent / "config.yaml")["lr"] for p in kept} == lrs
    assert {read_yaml(p)["lr"] for p in root.glob("*/*/config.yaml")} == {0.5}


def test_an_arm_config_for_one_budget_applies_in_that_budget_only(tmp_path: Path) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text(
        "paper: p1-lra\nbase: {lr: 0.05, momentum: 0.9}\n"
        "arms: {a: {rule: backprop, config: {momentum: 0.5}, standard: {lr: 0.01}},\n"
        "       b: {rule: backprop}}\n"
        "experiments: {e1: {config: {model: mlp}, per_arm: {a: {config: {momentum: 0.0}}}}}\n")
    preset = load_preset("p1-lra", path)
    std = {r.arm: r.config for r in plan(preset, "standard", runs_dir=tmp_path).runs}
    quick = {r.arm: r.config for r in plan(preset, "quick").runs}
    # arm.config <- arm[budget] <- per_arm.config
    assert (std["a"].lr, std["a"].momentum) == (0.01, 0.0)
    assert (quick["a"].lr, quick["a"].momentum) == (0.05, 0.0)
    assert (std["b"].lr, std["b"].momentum) == (0.05, 0.9)


def test_relaxation_error_contracts_geometrically_at_the_top_layer() -> None:
    """Top hidden layer: dx/dt = -x + J^T x_L with x_L held, so the Euler error is multiplied
    by exactly (1 - step_size) per step; lower layers converge too (the fixed point is the
    backprop gradient, P4 Eq. 5)."""
    cfg = Config(dataset="synthetic", dataset_args={"n": 32, "input_shape": [1, 6, 6],
                                                    "num_classes": 3},
                 model="mlp", model_args={"hidden": [7, 6, 5], "activation": "tanh"},
                 loss="mse")
    torch.set_default_dtype(torch.float64)
    try:
        errs = relaxation_errors(cfg, {"step_size": 0.2}, batch=8, steps=120)
    finally:
        torch.set_default_dtype(torch.float32)
    top = errs[-1]
    for t in (1, 5, 20):
        assert top[t] == pytest.approx(top[0] * 0.8**t, rel=1e-6)
    assert max(e[-1] for e in errs) < 1e-6 < min(e[0] for e in errs)


def test_mean_std_is_the_sample_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, 0.0)


def test_p5_architectures_cover_the_papers_list() -> None:
    preset = load_preset("p5-zil")
    assert set(preset["settings"]["architectures"]) <= set(architectures(2))


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "p9-nope"], "unknown paper 'p9-nope'"),
    (["reproduce", "p1-lra", "--budget", "huge"], "unknown budget 'huge'"),
    (["reproduce", "p1-lra", "--seeds", "0"], "--seeds must be >= 1"),
    (["reproduce", "p1-lra", "--batchsize=3"], "unknown config key 'batchsize'"),
    (["reproduce", "p1-lra", "--preset", "missing.yaml"], "not found"),
    (["reproduce", "p5-zil", "--settings.repeat=1"], "unknown setting 'repeat'"),
    (["reproduce", "p3-weight-transport", "--settings.cost_repeats=-1"],
     "settings.cost_repeats must be an integer >= 0"),
    (["reproduce", "p3-weight-transport", "--train-minutes", "-1"],
     "--train-minutes must be >= 0"),
])
def test_bad_inputs_exit_2(argv: list[str], message: str, tmp_path: Path, monkeypatch,
                           capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "docs").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, message", [
    ("paper: p1-lra\nbasis: {}\n", "unknown key 'basis'"),
    ("paper: p2-ldrl\n", "is for 'p2-ldrl'"),
    ("paper: p1-lra\narms: {a: {rule_args: {}}}\n", "needs a 'rule'"),
    ("paper: p1-lra\narms: {a: {rule: backprop}}\nexperiments: {e: {arms: [b]}}\n",
     "unknown arm 'b'"),
    ("paper: p1-lra\nbudgets: {quick: {epochs: 3}}\n", "unknown key 'epochs'"),
    ("paper: p1-lra\narms: {a: {rule: backprop}}\nexperiments: {e: {per_arm: {b: {}}}}\n",
     "per_arm: unknown arm 'b'"),
    ("paper: p1-lra\narms: {a: {rule: backprop}}\nexperiments: {e: {per_arm: {a: {lr: 1}}}}\n",
     "per_arm.a: unknown key 'lr'"),
])
def test_bad_presets_are_config_errors(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_preset("p1-lra", path)


def test_unknown_paper_is_unknown_name_error() -> None:
    with pytest.raises(UnknownNameError):
        load_preset("p6")


def test_cli_reproduce_writes_the_report(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "p5-zil", "--out", "res", "--settings.repeats=1",
            "--settings.exactness_batch=2", "--settings.cost_batch=2",
            "--settings.architectures=[MLP]"]
    assert main(argv) == 0
    assert "wrote res/p5-zil-quick.md" in capsys.readouterr().out
    report = (tmp_path / "res" / "p5-zil-quick.md").read_text()
    assert "biograd reproduce p5-zil --out res --settings.repeats=1" in report
    assert "| MLP |" in report


def test_two_invocations_on_one_store_keep_each_others_wall_times(tmp_path) -> None:
    """Two reproduce processes on one store (disjoint --only) each record their runs' wall
    times; neither overwrites the other's entries, and a later value of a key wins."""
    from biograd.experiments.reproduce import WallLog

    p = plan(load_preset("p3-weight-transport"), "quick", runs_dir=tmp_path)
    first, second = WallLog(p), WallLog(p)  # both read the (absent) file at start
    first.record("e/a-s0", 1.5)
    second.record("e/b-s0", 2.5)
    first.record("e/a-s1", 3.0)
    second.record("e/a-s0", 4.0)  # retrained by the second process
    assert WallLog(p).data == {"e/a-s0": 4.0, "e/b-s0": 2.5, "e/a-s1": 3.0}
    assert not list(first.path.parent.glob(".*.tmp"))
