"""P1's longer-budget check (papers/p1_longer.py): where LRA-E loses a cell by more than the
seeds' spread, LRA-E and the winner are retrained through the engine with
``settings.longer_epochs_factor`` times the epochs and the report states what that changed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from biograd.experiments.paper_report import Context, mean_std
from biograd.experiments.reproduce import plan
from biograd.papers import load_preset
from biograd.papers.p1_longer import backprop_check, gap_check, longer_check
from tests.conftest import scale_updates

TINY = ["dataset=synthetic", "dataset_args.n=48", "dataset_args.input_shape=[1,28,28]",
        "dataset_args.num_classes=10", "train_subset=32", "test_subset=16", "epochs=1",
        "batch_size=16", "alignment_batch=8", "eval_batch_size=16", "threads=1",
        "model_args.hidden=[8]"]
ARMS = ("lra_e", "direct_feedback_alignment")


def _ctx(tmp_path: Path, *extra: str, measure: bool = True) -> Context:
    p = plan(load_preset("p1-lra"), "standard", runs_dir=tmp_path, overrides=[*TINY, *extra])
    return Context(p, {}, tmp_path / "out", 0.0, [], measure_missing=measure)


def test_retrains_both_arms_every_seed_with_more_epochs_and_reports_it(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert ctx.plan.settings["longer_epochs_factor"] == 2  # the standard budget asks for it
    text = longer_check(ctx, "mnist-d8", ARMS, gap=1.5)
    stored = json.loads((ctx.measurements_dir / "longer-mnist-d8.json").read_text())
    runs = stored["result"]["runs"]
    assert stored["result"]["epochs"] == 2
    assert sorted((r["arm"], r["seed"]) for r in runs) == sorted(
        (a, s) for a in ARMS for s in (0, 1, 2))
    assert all(r["status"] == "completed" for r in runs)
    errs = {a: mean_std([100 * (1 - r["test_acc"]) for r in runs if r["arm"] == a])[0]
            for a in ARMS}
    assert f"LRA-E {errs['lra_e']:.2f} ±" in text
    assert f"direct_feedback_alignment {errs['direct_feedback_alignment']:.2f} ±" in text
    diff = errs["lra_e"] - errs["direct_feedback_alignment"]
    assert f"difference {diff:+.2f}; +1.50 at 1 epochs" in text
    assert re.search(r"closes -?\d+% of it", text)
    # stored: a second report reads it without training (nothing may be measured now)
    again = longer_check(_ctx(tmp_path, measure=False), "mnist-d8", ARMS, gap=1.5)
    assert again == text


def test_nothing_without_the_setting_and_not_measured_when_nothing_may_train(
        tmp_path: Path) -> None:
    assert longer_check(_ctx(tmp_path, "settings.longer_epochs_factor=0"), "mnist-d8", ARMS,
                        gap=1.0) == ""
    text = longer_check(_ctx(tmp_path, measure=False), "mnist-d8", ARMS, gap=1.0)
    assert text == " mnist-d8 with 2x the epochs: not measured."
    assert not (tmp_path / "p1-lra" / "standard" / "_measurements").exists()


def _bp_results(acc: float, loss: float = 2.5) -> dict:
    """The budget's own backprop runs of fmnist-d8, all completed at ``acc`` (fraction)."""
    return {("fmnist-d8", "backprop"): [
        {"status": "completed", "test_acc": acc, "train_loss": loss, "seed": s}
        for s in (0, 1, 2)]}


def test_backprop_below_its_reference_is_retrained_with_more_epochs(tmp_path: Path) -> None:
    p = plan(load_preset("p1-lra"), "standard", runs_dir=tmp_path, overrides=TINY)
    ctx = Context(p, _bp_results(0.5), tmp_path / "out", 0.0, [])
    ref = load_preset("p1-lra")["experiments"]["fmnist-d8"]["reference_accuracy"]
    assert ctx.reference_target("fmnist-d8") == ref
    text = backprop_check(ctx, "fmnist-d8")
    stored = json.loads((ctx.measurements_dir / "longer-backprop-fmnist-d8.json").read_text())
    runs = stored["result"]["runs"]
    assert stored["result"]["epochs"] == 2 and len(runs) == 3
    assert {(r["arm"], r["seed"], r["status"]) for r in runs} == {
        ("backprop", s, "completed") for s in (0, 1, 2)}
    acc = mean_std([100 * r["test_acc"] for r in runs])[0]
    loss = mean_std([r["train_loss"] for r in runs])[0]
    assert f"reached {acc:.2f} ±" in text and f"training loss {loss:.3f}, against 2.500" in text
    assert f"stays below {ref:g} % even with 2 epochs" in text  # a tiny synthetic task
    assert ("training loss still falling" in text) == (loss < 2.5)
    # the budget's backprop converged: nothing to check, nothing measured
    assert backprop_check(Context(p, _bp_results(0.9), tmp_path / "o2", 0.0, []),
                          "fmnist-d8") == ""
    # a lower reference that the longer runs reach: the budget is named as the cause
    low = Context(p, _bp_results(0.0), tmp_path / "o3", 0.0, [], measure_missing=False)
    low.reference_target = lambda exp: acc - 1.0  # the stored runs' accuracy is above it
    assert "under-train backprop here: with 2 epochs for every rule" in backprop_check(
        low, "fmnist-d8")


def test_backprop_check_needs_the_setting_and_finished_runs(tmp_path: Path) -> None:
    p = plan(load_preset("p1-lra"), "standard", runs_dir=tmp_path,
             overrides=[*TINY, "settings.longer_epochs_factor=0"])
    assert backprop_check(Context(p, _bp_results(0.5), tmp_path, 0.0, []), "fmnist-d8") == ""
    p = plan(load_preset("p1-lra"), "standard", runs_dir=tmp_path, overrides=TINY)
    two = {k: v[:2] for k, v in _bp_results(0.5).items()}
    assert backprop_check(Context(p, two, tmp_path, 0.0, []), "fmnist-d8") == ""
    text = backprop_check(Context(p, _bp_results(0.5), tmp_path, 0.0, [],
                                  measure_missing=False), "fmnist-d8")
    assert text == " fmnist-d8: backprop with 2x the epochs not measured."


def test_a_generalisation_gap_is_retrained_with_backprop_beside_it(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    text = gap_check(ctx, "mnist-d8", "dtp_sigma", gap=3.0, limit=2.0)
    stored = json.loads((ctx.measurements_dir / "longer-gap-mnist-d8-dtp_sigma.json")
                        .read_text())["result"]
    assert stored["epochs"] == 2
    assert sorted((r["arm"], r["seed"]) for r in stored["runs"]) == sorted(
        (a, s) for a in ("backprop", "dtp_sigma") for s in (0, 1, 2))
    errs = {a: [100 * (1 - r["test_acc"]) for r in stored["runs"] if r["arm"] == a]
            for a in ("backprop", "dtp_sigma")}
    gap = mean_std(errs["dtp_sigma"])[0] - mean_std(errs["backprop"])[0]
    assert f"gap {gap:+.2f} (+3.00 at 1 epochs)" in text
    assert ", ".join(f"{e:.2f}" for e in errs["dtp_sigma"]) in text
    assert ("not the budget alone" in text) == (gap > 2.0)
    assert gap_check(_ctx(tmp_path, measure=False), "mnist-d8", "dtp_sigma", 3.0, 2.0) == text
    assert gap_check(_ctx(tmp_path, "settings.longer_epochs_factor=0"), "mnist-d8",
                     "dtp_sigma", 3.0, 2.0) == ""
    assert gap_check(_ctx(tmp_path / "other", measure=False), "mnist-d8", "dtp_sigma", 3.0,
                     2.0) == " mnist-d8 dtp_sigma with 2x the epochs: not measured."


def test_a_run_another_check_retrained_is_read_not_trained_again(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """LRA-E lost a cell and fell behind backprop in it: the gap check reads LRA-E's longer
    runs from the longer check and trains only backprop's; a changed rule code, factor or
    config is never read."""
    from biograd.experiments import store
    from biograd.papers import p1_longer

    ctx = _ctx(tmp_path)
    longer_check(ctx, "mnist-d8", ARMS, gap=1.5)
    first = json.loads((ctx.measurements_dir / "longer-mnist-d8.json").read_text())
    trained: list[str] = []
    real = p1_longer.run_all
    monkeypatch.setattr(p1_longer, "run_all", lambda subs, *a, **k: (
        trained.extend(s.rule for s in subs), real(subs, *a, **k))[1])
    gap_check(_ctx(tmp_path), "mnist-d8", "lra_e", gap=3.0, limit=2.0)
    assert trained == ["backprop"] * 3
    got = json.loads((ctx.measurements_dir / "longer-gap-mnist-d8-lra_e.json").read_text())
    lra = [r for r in got["result"]["runs"] if r["arm"] == "lra_e"]
    assert [r.pop("from") for r in lra] == ["longer-mnist-d8"] * 3
    assert lra == [r for r in first["result"]["runs"] if r["arm"] == "lra_e"]
    # another factor, config or rule code: trained, not read
    views = {f"lra_e-s{s}": first["key"]["runs"][f"lra_e-s{s}"] for s in (0, 1, 2)}
    cfgs = {f"{s.arm}-s{s.seed}": s.config for s in ctx.plan.runs
            if s.experiment == "mnist-d8" and s.arm == "lra_e"}
    assert len(p1_longer._retrained_elsewhere(ctx, "x", 2, views, cfgs)) == 3
    assert p1_longer._retrained_elsewhere(ctx, "x", 3, views, cfgs) == {}
    assert p1_longer._retrained_elsewhere(
        ctx, "x", 2, {k: {**v, "lr": 0.5} for k, v in views.items()}, cfgs) == {}
    # a code change of LRA-E: read when its update probe is unchanged (a speed change),
    # trained again when the probe differs or cannot be compared (no config given)
    real_files = store.code_files
    monkeypatch.setattr(store, "code_files", lambda r: {**real_files(r), "biograd.x": "0"})
    monkeypatch.setattr(store, "_PROBES", {})
    assert p1_longer._retrained_elsewhere(ctx, "x", 2, views, {}) == {}
    assert len(p1_longer._retrained_elsewhere(ctx, "x", 2, views, cfgs)) == 3
    scale_updates(monkeypatch, "lra_e", 1.5)  # what the rule computes changes
    monkeypatch.setattr(store, "_PROBES", {})
    assert p1_longer._retrained_elsewhere(ctx, "x", 2, views, cfgs) == {}
