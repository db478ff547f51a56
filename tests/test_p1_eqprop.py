"""P1's probe of equilibrium propagation at depth (papers/p1_eqprop.py): EqProp retrained
through the engine with one setting changed per arm, the test accuracy and free-phase
residual of every epoch stored, and the report's reading of them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from biograd.core.errors import ConfigError
from biograd.experiments.paper_report import Context
from biograd.experiments.reproduce import plan
from biograd.papers import load_preset, p1_eqprop

TINY = ["dataset=synthetic", "dataset_args.n=48", "dataset_args.input_shape=[1,28,28]",
        "dataset_args.num_classes=10", "train_subset=32", "test_subset=16",
        "batch_size=16", "eval_batch_size=16", "threads=1", "model_args.hidden=[8, 8]"]


def _ctx(tmp_path: Path, *extra: str, measure: bool = True) -> Context:
    p = plan(load_preset("p1-lra"), "standard", runs_dir=tmp_path, overrides=[*TINY, *extra])
    return Context(p, {}, tmp_path / "out", 0.0, [], measure_missing=measure)


def test_every_arm_is_retrained_and_its_epochs_are_reported(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    st = ctx.plan.settings["eqprop_depth"]  # the standard budget asks for it
    lines, _ = p1_eqprop.section(ctx)
    stored = json.loads((ctx.measurements_dir / "eqprop-depth.json").read_text())
    runs = stored["result"]["runs"]
    names = [a["name"] for a in st["arms"]]
    assert sorted((r["experiment"], r["arm"], r["seed"]) for r in runs) == sorted(
        (e, a, s) for e in st["experiments"] for a in names for s in st["seeds"])
    assert all(r["status"] == "completed" and len(r["epochs"]) == st["epochs"] for r in runs)
    assert all(math.isfinite(e["residual"]) and e["residual"] >= 0 for r in runs
               for e in r["epochs"])
    # each arm trained with its own change: the key holds the configs the runs were given
    cfgs = stored["key"]["runs"]
    by_arm = {name: [c for k, c in cfgs.items() if k.endswith(name.replace(" ", "_"))]
              for name in names}
    own = by_arm[names[0]][0]
    for arm in st["arms"]:
        for c in by_arm[arm["name"]]:
            assert c["stop_after_epochs"] == st["epochs"] < c["epochs"]  # the run's start
            assert c["lr"] == arm.get("lr", own["lr"])
            assert c["rule_args"] == {**own["rule_args"], **(arm.get("rule_args") or {})}
    text = "\n".join(lines)
    for r in runs:
        accs = " → ".join(f"{100 * e['test_acc']:.1f}" for e in r["epochs"])
        assert f"| {r['experiment']} | {r['arm']} | {r['seed']} | {accs} % (residual " in text
    # stored: a second report reads it without training
    assert p1_eqprop.section(_ctx(tmp_path, measure=False))[0] == lines


def test_nothing_without_the_setting_and_not_measured_when_nothing_may_train(
        tmp_path: Path) -> None:
    assert p1_eqprop.section(_ctx(tmp_path, "settings.eqprop_depth=null")) == ([], None)
    lines, found = p1_eqprop.section(_ctx(tmp_path, measure=False))
    assert found is None and any(line.startswith("Not measured") for line in lines)
    assert not (tmp_path / "p1-lra" / "standard" / "_measurements").exists()


@pytest.mark.parametrize("bad", ["settings.eqprop_depth.arms=[]",
                                 "settings.eqprop_depth.experiments=[nowhere]",
                                 "settings.eqprop_depth.arms=[{lr: 0.1}]"])
def test_bad_settings_are_refused_with_what_is_wrong(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="eqprop_depth"):
        p1_eqprop.section(_ctx(tmp_path, bad, measure=False))


def _run(exp: str, arm: str, seed: int, acc: float) -> dict:
    return {"experiment": exp, "arm": arm, "seed": seed, "status": "completed",
            "epochs": [{"test_acc": acc, "train_loss": 1.0, "residual": 0.1}]}


def test_an_arm_rescues_a_cell_only_when_every_seed_beats_the_own_settings() -> None:
    info = {"experiments": ["d5"], "epochs": 1, "arms": ["own", "small step", "long"]}
    runs = [_run("d5", "own", 0, 0.30), _run("d5", "own", 1, 0.40),
            _run("d5", "small step", 0, 0.90), _run("d5", "small step", 1, 0.95),
            _run("d5", "long", 0, 0.80), _run("d5", "long", 1, 0.45)]  # +50 and +5 points
    text = p1_eqprop.finding(info, runs)
    assert text is not None
    assert "d5: with the run's settings 35.0 % (residual 0.10) after 1 epochs" in text
    assert ("rescued by small step 92.5 % (residual 0.10); not by long 62.5 % (residual "
            "0.10)") in text
    assert p1_eqprop.finding(info, [r for r in runs if r["arm"] != "own"]) is None


def test_a_retrain_far_from_the_stored_run_is_reported_as_not_repeating_it() -> None:
    info = {"arms": ["own", "small step"],
            "stored": {("d5", 0): [{"test_acc": 0.39, "train_loss": 1.2, "residual": 1.6}],
                       ("d5", 1): [{"test_acc": 0.80, "train_loss": 0.6, "residual": 1.5}]}}
    runs = [_run("d5", "own", 0, 0.82), _run("d5", "own", 1, 0.85),
            _run("d5", "small step", 0, 0.10)]
    note = p1_eqprop._repeat_note(info, runs)
    assert note is not None and "d5 seed 0: 39.0 % stored, 82.0 % retrained after epoch 1" in note
    assert "seed 1" not in note  # 5 points apart: within RESCUE_POINTS
    assert p1_eqprop._repeat_note(info, runs[1:]) is None
