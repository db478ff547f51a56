"""The results store (issue 16 item 2, issue 14 item 5): runs accumulate across invocations,
a run is retrained only when its config or its rule's code changed (and then kept under
.stale/), a report can be written from stored runs and measurements alone, and training can
be bounded in time, and ``reproduce --check`` says what a reproduction would do while doing
none of it. One tiny synthetic preset (5 arms x 1 seed, seconds to train) trained once
per session and copied into each test."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from biograd import runlock
from biograd.cli import main
from biograd.experiments import jobs, status, store
from biograd.experiments import reproduce as grid
from biograd.experiments.paper_report import Context
from biograd.experiments.summary import settle_reports, update_readme_summary
from biograd.papers import check, reproduce
from biograd.runner.yamlio import read_yaml
from tests.conftest import scale_updates

PAPER = "p3-weight-transport"
ARMS = ("backprop", "feedback_alignment", "sign_symmetry", "weight_mirror", "kolen_pollack")
PRESET = f"""paper: {PAPER}
title: tiny store test
base: {{dataset: synthetic, dataset_args: {{n: 48, input_shape: [1, 6, 6], num_classes: 3}},
       train_subset: 32, test_subset: 16, epochs: 1, batch_size: 16, alignment_batch: 8,
       eval_batch_size: 16, threads: 1, model: mlp, weight_decay: 1.0e-4, momentum: 0.9,
       model_args: {{hidden: [8], activation: tanh}}}}
budgets:
  quick: {{seeds: 1}}
  standard: {{seeds: 1, reason: 'a test budget', settings: {{cost_repeats: 0}}}}
experiments:
  mnist-mlp: {{}}
arms:
""" + "".join(f"  {a}: {{rule: {a}}}\n" for a in ARMS)


def _write_preset(folder: Path, extra: str = "") -> Path:
    path = folder / "preset.yaml"
    text = PRESET
    if extra:  # e.g. a config change of one arm
        text = text.replace("  feedback_alignment: {rule: feedback_alignment}",
                            f"  feedback_alignment: {{rule: feedback_alignment, {extra}}}")
    path.write_text(text)
    return path


def _run(folder: Path, **kw):
    return reproduce(PAPER, "standard", out=folder / "docs" / "results",
                     runs_dir=folder / "results", preset=folder / "preset.yaml", **kw)


def _root(folder: Path) -> Path:
    return folder / "results" / PAPER / "standard"


def _files(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in _root(folder).rglob("*") if p.is_file()}


def _summaries(folder: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns
            for p in _root(folder).glob("mnist-mlp/*/summary.json")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("store")
    _write_preset(folder)
    _run(folder)
    return folder


@pytest.fixture
def store_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained store (mtimes kept) to change freely."""
    shutil.copytree(trained, tmp_path / "w", copy_function=shutil.copy2)
    return tmp_path / "w"


def _change_rule(monkeypatch, rule: str, module: str = "biograd.rules.x",
                 value: str = "0", updates: bool = True) -> None:
    """A code change of ``rule``: ``module``'s hash in its code files set to ``value`` and,
    with ``updates``, every gradient its step writes scaled by 1.5 (a change of what it
    computes; without it, a change the update probe shows to compute the same)."""
    real = store.code_files
    monkeypatch.setattr(store, "code_files",
                        lambda r: {**real(r), module: value} if r == rule else real(r))
    monkeypatch.setattr(store, "_PROBES", {})  # probes of this test's code only
    if updates:
        scale_updates(monkeypatch, rule, 1.5)


@pytest.fixture
def no_training(monkeypatch):
    """Any training or dry build fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("trained although nothing needed training")

    monkeypatch.setattr(jobs, "train", refuse)
    monkeypatch.setattr(grid, "dry_build", refuse)


def test_standard_uses_the_results_store_by_default(tmp_path: Path, monkeypatch) -> None:
    assert grid.default_runs_dir("standard") == "results"
    assert grid.default_runs_dir("quick") == grid.default_runs_dir("full") == "runs/reproduce"
    monkeypatch.chdir(tmp_path)
    _write_preset(tmp_path)
    summary = reproduce(PAPER, "standard", out="docs/results", preset="preset.yaml",
                        train=False)
    report = (tmp_path / "docs" / "results" / f"{PAPER}.md").read_text()
    assert f"`results/{PAPER}/standard/EXPERIMENT/ARM-sSEED`" in report
    assert summary["missing"] == summary["runs"] == len(ARMS)
    assert not (tmp_path / "results").exists()  # --no-train writes nothing into the store


def test_every_run_gets_a_fingerprint(trained: Path) -> None:
    for arm in ARMS:
        run = _root(trained) / "mnist-mlp" / f"{arm}-s0"
        fp = json.loads((run / store.FINGERPRINT).read_text())
        assert fp["rule"] == arm and not fp["adopted"] and fp["wall_seconds"] > 0
        assert fp["code_files"] == store.code_files(arm)
        assert fp["code_hash"] == store.code_hash(fp["code_files"])
        assert fp["hardware"]["device"] == "cpu" and fp["hardware"]["threads"] == 1
        assert fp["hardware"]["cpu"] != "not recorded"
        assert f"biograd.rules.{arm}" in fp["code_files"]
    fa = store.code_files("feedback_alignment")
    assert "biograd.rules._backward" in fa and "biograd.models.mlp" in fa
    assert not any(m.startswith("biograd.rules.") and m.endswith(("kolen_pollack", "zil"))
                   for m in fa)  # another rule's change leaves feedback alignment's runs


def test_rebuild_trains_nothing_and_reads_only(store_copy: Path, no_training) -> None:
    """The acceptance: with every run and measurement stored, the report is rebuilt without
    training, measuring or writing into the store."""
    before = _files(store_copy)
    first = json.loads((store_copy / "docs" / "results" / f"{PAPER}.json").read_text())
    again = _run(store_copy)
    assert _files(store_copy) == before
    assert again["verdicts"] == first["verdicts"] and again["missing"] == 0
    report = (store_copy / "docs" / "results" / f"{PAPER}.md").read_text()
    rows = [r for r in report.split("## Runs")[1].splitlines() if r.startswith("| mnist-mlp |")]
    assert len(rows) == len(ARMS) and all(r.endswith("| yes |") for r in rows)
    for arm in ARMS:  # the short code fingerprint of each run
        assert store.short(store.code_hash(store.code_files(arm))) in report
    assert "CUDA used" not in report
    assert "training runs on: cpu, 1 torch thread, CPU " in report


def test_config_change_of_one_arm_retrains_that_arm_only(store_copy: Path, capsys) -> None:
    before = _summaries(store_copy)
    _write_preset(store_copy, "config: {lr: 0.02}")
    _run(store_copy)
    assert "feedback_alignment-s0 (config changed: lr)" in capsys.readouterr().err
    after = _summaries(store_copy)
    assert {a for a in ARMS if after[f"{a}-s0"] != before[f"{a}-s0"]} == {"feedback_alignment"}
    kept = list((_root(store_copy) / ".stale" / "mnist-mlp").glob("feedback_alignment-s0-*"))
    assert len(kept) == 1 and read_yaml(kept[0] / "config.yaml")["lr"] == 0.01
    assert read_yaml(_root(store_copy) / "mnist-mlp/feedback_alignment-s0/config.yaml")[
        "lr"] == 0.02


def test_code_change_of_one_rule_retrains_its_runs_only(store_copy: Path, monkeypatch,
                                                        capsys) -> None:
    _change_rule(monkeypatch, "kolen_pollack", "biograd.rules.kolen_pollack", "0" * 64)
    before = _summaries(store_copy)
    _run(store_copy)
    err = capsys.readouterr().err
    assert "code of kolen_pollack changed: biograd.rules.kolen_pollack (float64: " in err
    after = _summaries(store_copy)
    assert {a for a in ARMS if after[f"{a}-s0"] != before[f"{a}-s0"]} == {"kolen_pollack"}
    fp = json.loads((_root(store_copy) / "mnist-mlp/kolen_pollack-s0" / store.FINGERPRINT)
                    .read_text())
    assert fp["code_files"]["biograd.rules.kolen_pollack"] == "0" * 64
    assert len(list((_root(store_copy) / ".stale").glob("*/kolen_pollack-s0-*"))) == 1


def test_a_code_change_that_keeps_the_updates_keeps_the_runs(store_copy: Path, no_training,
                                                            monkeypatch, capsys) -> None:
    """A faster implementation: the code hash changes, the update probe does not. Nothing is
    retrained; the reproduction records the new code (and the old hash) in the fingerprint."""
    old = json.loads((_root(store_copy) / "mnist-mlp/kolen_pollack-s0" / store.FINGERPRINT)
                     .read_text())
    assert old["probe"]["float64"]["state"] and "equivalent_code" not in old
    _change_rule(monkeypatch, "kolen_pollack", updates=False)
    got = _check(store_copy)
    assert [r.state for r in got["runs"]] == ["current"] * len(ARMS)
    assert "current     mnist-mlp/kolen_pollack-s0: code of kolen_pollack changed (" \
           "biograd.rules.x (added)), its updates did not (update probe)" in "\n".join(
               status.lines(got))
    # a timing is of the code: the step-cost measurement follows KP's code, probe or not
    assert [k for k, v in got["measurements"].items() if v != "current"] == [
        k for k in got["measurements"] if k.startswith("cost-")]
    before = _summaries(store_copy)
    _run(store_copy)
    assert _summaries(store_copy) == before and "stale run" not in capsys.readouterr().err
    fp = json.loads((_root(store_copy) / "mnist-mlp/kolen_pollack-s0" / store.FINGERPRINT)
                    .read_text())
    assert fp["code_files"]["biograd.rules.x"] == "0"
    assert fp["code_hash"] == store.code_hash(store.code_files("kolen_pollack"))
    assert [(e["code_hash"], e["changed"]) for e in fp["equivalent_code"]] == [
        (old["code_hash"], ["biograd.rules.x (added)"])]
    assert fp["probe"] == old["probe"] and fp["wall_seconds"] == old["wall_seconds"]
    _run(store_copy)  # the new code is the fingerprint's now: nothing more recorded
    assert json.loads((_root(store_copy) / "mnist-mlp/kolen_pollack-s0" / store.FINGERPRINT)
                      .read_text()) == fp


def test_without_a_probe_a_code_change_is_stale_and_reuse_adds_the_probe(
        store_copy: Path, monkeypatch) -> None:
    """A fingerprint written before probes: stale on any code change (nothing to compare);
    reused with its own code, it gains the probe of that code."""
    for arm in ("kolen_pollack", "feedback_alignment"):
        path = _root(store_copy) / f"mnist-mlp/{arm}-s0" / store.FINGERPRINT
        fp = json.loads(path.read_text())
        want = fp.pop("probe")
        path.write_text(json.dumps(fp))
    _change_rule(monkeypatch, "kolen_pollack", updates=False)
    runs = {r.label: r for r in _check(store_copy)["runs"]}
    assert runs["mnist-mlp/kolen_pollack-s0"].state == "stale"
    assert "(no update probe stored with the run)" in runs["mnist-mlp/kolen_pollack-s0"].why
    assert runs["mnist-mlp/feedback_alignment-s0"].state == "current"
    before = _summaries(store_copy)
    _run(store_copy)
    after = _summaries(store_copy)
    assert {a for a in ARMS if after[f"{a}-s0"] != before[f"{a}-s0"]} == {"kolen_pollack"}
    fp = json.loads((_root(store_copy) / "mnist-mlp/feedback_alignment-s0" / store.FINGERPRINT)
                    .read_text())
    assert fp["probe"] == want == store.probe_now(_plan_run(store_copy, "feedback_alignment"))


def _plan_run(folder: Path, arm: str):
    """The config of ``arm``'s run in the tiny preset."""
    p = grid.plan(grid.load_preset(PAPER, folder / "preset.yaml"), "standard",
                  runs_dir=folder / "results")
    return next(s.config for s in p.runs if s.arm == arm)


def test_code_hash_ignores_docstrings_and_comments_not_code() -> None:
    src = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'
    assert store.ast_hash(src) == store.ast_hash("def f(x):\n\n    return x+1\n")
    assert store.ast_hash(src) != store.ast_hash("def f(x):\n    return x - 1\n")
    assert store.changed_files({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == [
        "b", "c (added)"]


def test_runs_without_fingerprint_are_adopted(store_copy: Path, no_training) -> None:
    for fp in _root(store_copy).glob("mnist-mlp/*/" + store.FINGERPRINT):
        fp.unlink()
    before = _summaries(store_copy)
    _run(store_copy)
    assert _summaries(store_copy) == before
    for arm in ARMS:
        fp = json.loads((_root(store_copy) / f"mnist-mlp/{arm}-s0" / store.FINGERPRINT)
                        .read_text())
        assert fp["adopted"] and fp["code_files"] == store.code_files(arm)
        assert fp["wall_seconds"] is None
        assert fp["hardware"]["cpu"] == "not recorded" and fp["hardware"]["device"] == "cpu"


def test_adopted_run_with_other_config_is_stale(store_copy: Path, capsys) -> None:
    (_root(store_copy) / "mnist-mlp/backprop-s0" / store.FINGERPRINT).unlink()
    cfg = _root(store_copy) / "mnist-mlp/backprop-s0/config.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 1", "epochs: 3"))
    _run(store_copy)
    assert "backprop-s0 (config changed: epochs)" in capsys.readouterr().err


def test_no_train_reports_missing_runs_as_untestable(store_copy: Path, no_training,
                                                     capsys) -> None:
    shutil.rmtree(_root(store_copy) / "mnist-mlp" / "weight_mirror-s0")
    before = _files(store_copy)
    summary = _run(store_copy, train=False)
    assert _files(store_copy) == before
    assert summary["missing"] == 1
    err = capsys.readouterr().err
    assert "mnist-mlp/weight_mirror-s0: not trained (--no-train)" in err
    report = (store_copy / "docs" / "results" / f"{PAPER}.md").read_text()
    assert "## Missing runs" in report and "| mnist-mlp | weight_mirror | 0 | missing |" in report
    p = grid.plan(grid.load_preset(PAPER, store_copy / "preset.yaml"), "standard",
                  runs_dir=store_copy / "results")
    ctx = Context(p, grid.run_plan(p, train=False), store_copy / "o", 0.0, [])
    assert ctx.runs("mnist-mlp", "weight_mirror")[0]["status"] == "missing"
    assert "weight_mirror: 0 of 1 runs finished" in ctx.untestable("mnist-mlp",
                                                                  ["weight_mirror"])
    assert ctx.untestable("mnist-mlp", ["kolen_pollack"]) is None


def test_train_minutes_zero_trains_nothing(tmp_path: Path, no_training, capsys) -> None:
    _write_preset(tmp_path)
    summary = _run(tmp_path, train_minutes=0)
    assert summary["missing"] == len(ARMS)
    assert "not started (--train-minutes reached)" in capsys.readouterr().err
    assert not list((tmp_path / "results").rglob("summary.json"))


def test_only_trains_the_chosen_runs_and_reports_all(store_copy: Path, monkeypatch,
                                                     capsys) -> None:
    """``--only`` trains what its patterns choose; finished runs are reused as always, the
    others are missing (and a stale one is left where it is, not moved to .stale/); it takes
    no measurement (a missing one stays missing for the plain command to take)."""
    cost = _root(store_copy) / "_measurements" / "cost-mnist-mlp.json"
    cost.unlink()
    for arm in ("weight_mirror", "kolen_pollack"):
        shutil.rmtree(_root(store_copy) / "mnist-mlp" / f"{arm}-s0")
    fa = _root(store_copy) / "mnist-mlp/feedback_alignment-s0/config.yaml"
    fa.write_text(fa.read_text().replace("lr: 0.01", "lr: 0.03"))  # stale
    trained: list[str] = []
    real = jobs.train
    monkeypatch.setattr(jobs, "train", lambda cfg, **kw: trained.append(cfg.rule)
                        or real(cfg, **kw))
    summary = _run(store_copy, only=["mnist-mlp/kolen*"])
    assert trained == ["kolen_pollack"] and summary["missing"] == 2
    err = capsys.readouterr().err
    assert "mnist-mlp/weight_mirror-s0: not chosen by --only" in err
    assert "feedback_alignment-s0 (config changed: lr): not used (not chosen by --only)" in err
    assert not (_root(store_copy) / ".stale").exists()
    assert (_root(store_copy) / "mnist-mlp/kolen_pollack-s0/fingerprint.json").is_file()
    assert not cost.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--only", "mnist-lenet"], "--only 'mnist-lenet' chooses no run of p3-weight-transport "
     "(standard): give EXPERIMENT, EXPERIMENT/ARM or EXPERIMENT/ARM-sSEED (shell patterns "
     "allowed), with experiments mnist-mlp and arms backprop, feedback_alignment"),
    (["--only", "mnist-mlp", "--overwrite"], "--overwrite deletes every run of the budget"),
    (["--only", "mnist-mlp", "--no-train"], "--only chooses runs to train, and --no-train"),
    (["--only", "mnist-mlp", "--check"], "--check trains and writes nothing: drop --only"),
])
def test_bad_only_is_an_error_and_changes_nothing(store_copy: Path, capsys, extra: list[str],
                                                  message: str) -> None:
    before = _tree(store_copy)
    argv = ["reproduce", PAPER, "--budget", "standard", "--preset",
            str(store_copy / "preset.yaml"), "--runs", str(store_copy / "results"),
            "--out", str(store_copy / "docs" / "results"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert _tree(store_copy) == before


def _ctx(tmp_path: Path, **kw) -> Context:
    plan = SimpleNamespace(paper=PAPER, budget="standard", runs_dir=str(tmp_path),
                           settings={}, runs=[], preset={})
    return Context(plan, {}, tmp_path / "out", 0.0, [], **kw)


def test_measurements_are_reused_and_invalidated_by_key_and_code(tmp_path: Path,
                                                                 monkeypatch) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"value": len(calls)}

    rules = ["feedback_alignment"]
    ctx = _ctx(tmp_path)
    assert ctx.measure("m", compute, key={"a": 1}, rules=rules) == {"value": 1}
    assert _ctx(tmp_path).measure("m", compute, key={"a": 1}, rules=rules) == {"value": 1}
    assert len(calls) == 1
    record = json.loads((ctx.measurements_dir / "m.json").read_text())
    assert record["code"] == {"feedback_alignment": store.code_hash(
        store.code_files("feedback_alignment"))}
    assert record["hardware"]["torch_threads"] >= 1
    # a report-only context reads it, and computes nothing that is missing or stale
    reader = _ctx(tmp_path, measure_missing=False)
    assert reader.measure("m", compute, key={"a": 1}, rules=rules) == {"value": 1}
    assert reader.measure("m", compute, key={"a": 2}, rules=rules) is None
    assert reader.measure("other", compute) is None and len(calls) == 1
    assert _ctx(tmp_path, measure_until=-1.0).measure("other", compute) is None
    # a changed key or changed code of the measured rule measures again
    assert _ctx(tmp_path).measure("m", compute, key={"a": 2}, rules=rules) == {"value": 2}
    real = store.code_files
    monkeypatch.setattr(store, "code_files", lambda r: {**real(r), "biograd.ops.x": "0"})
    assert _ctx(tmp_path).measure("m", compute, key={"a": 2}, rules=rules) == {"value": 3}
    monkeypatch.setattr(store, "code_files", real)
    # the code of a rule the measurement does not depend on changes nothing
    assert _ctx(tmp_path).measure("n", compute, rules=["backprop"]) == {"value": 4}
    monkeypatch.setattr(store, "code_files", lambda r: {**real(r), "biograd.x": "0"}
                        if r == "kolen_pollack" else real(r))
    assert _ctx(tmp_path).measure("n", compute, rules=["backprop"]) == {"value": 4}


def test_a_measurement_of_training_runs_follows_their_updates_not_their_code(
        tmp_path: Path, store_copy: Path, monkeypatch) -> None:
    """A measurement that trains runs (``configs``) stores their update probes: a code change
    of its rule that keeps the probes keeps it, one that changes them measures again; a
    timing never keeps across a code change."""
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"value": len(calls)}

    cfg = _plan_run(store_copy, "kolen_pollack")
    kw = dict(key={"a": 1}, rules=["kolen_pollack"], configs=[cfg])
    assert _ctx(tmp_path).measure("m", compute, **kw) == {"value": 1}
    record = json.loads((tmp_path / PAPER / "standard" / "_measurements" / "m.json").read_text())
    assert record["probes"] == {store.config_hash(cfg): store.probe_now(cfg)}
    assert _ctx(tmp_path).measure("t", compute, timing=True, **kw) == {"value": 2}
    _change_rule(monkeypatch, "kolen_pollack", updates=False)
    assert _ctx(tmp_path).measure("m", compute, **kw) == {"value": 1}  # kept
    assert _ctx(tmp_path).measure("t", compute, timing=True, **kw) == {"value": 3}
    monkeypatch.undo()
    _change_rule(monkeypatch, "kolen_pollack", updates=True)
    assert _ctx(tmp_path).measure("m", compute, **kw) == {"value": 4}  # measured again
    # a measurement stored before probes gains them when read by a measuring invocation
    # with unchanged code, never by a report-only one
    monkeypatch.undo()
    path = tmp_path / PAPER / "standard" / "_measurements" / "m.json"
    record = json.loads(path.read_text())
    del record["probes"]
    record["code"] = {"kolen_pollack": store.code_hash(store.code_files("kolen_pollack"))}
    record["code_files"] = {"kolen_pollack": store.code_files("kolen_pollack")}
    path.write_text(json.dumps(record))
    assert _ctx(tmp_path, measure_missing=False).measure("m", compute, **kw) == {"value": 4}
    assert "probes" not in json.loads(path.read_text())
    assert _ctx(tmp_path).measure("m", compute, **kw) == {"value": 4}
    assert json.loads(path.read_text())["probes"] == {
        store.config_hash(cfg): store.probe_now(cfg)}


def test_a_measurement_asked_twice_is_read_once(tmp_path: Path, capsys, monkeypatch) -> None:
    """Several claims read one measurement: within one report the file is read once and a
    stale one is announced once; a different key in the same context is still asked anew."""
    calls: list[int] = []

    def compute() -> dict:
        calls.append(1)
        return {"value": len(calls)}

    _ctx(tmp_path).measure("m", compute, key={"a": 1})
    reader = _ctx(tmp_path, measure_missing=False)
    reads: list[str] = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        reads.append(self.name), real(self, *a, **k))[1])
    assert reader.measure("m", compute, key={"a": 1}) == {"value": 1}
    got = reader.measure("m", compute, key={"a": 1})
    got["value"] = 99  # the caller's copy: the next answer is unchanged
    assert reader.measure("m", compute, key={"a": 1}) == {"value": 1}
    assert reads.count("m.json") == 1
    capsys.readouterr()
    assert reader.measure("m", compute, key={"a": 2}) is None
    assert reader.measure("m", compute, key={"a": 2}) is None
    assert capsys.readouterr().err.count("stored measurement m is stale") == 1
    assert reader.found["m"].startswith("stale: its key changed") and len(calls) == 1
    # written by another context since: read again, not the first (missing) answer
    assert reader.measure("late", compute) is None
    _ctx(tmp_path).measure("late", compute)
    assert reader.measure("late", compute) == {"value": 2}


def test_timing_measurements_store_the_machine_speed(tmp_path: Path) -> None:
    import time

    import torch

    from biograd.experiments import hardware, paper_report

    # the timer itself: a call that sleeps 2 ms is timed per call (a block of 10 ms holds 5 of
    # them), never below 2 ms; the upper bound leaves room for a loaded machine's late wake-ups
    assert 0.0019 < hardware._per_call(lambda: time.sleep(0.002), lambda: None, 3) < 0.0075
    ctx = _ctx(tmp_path)
    ctx.measure("timed", lambda: {"v": 1}, timing=True)
    ctx.measure("plain", lambda: {"v": 2})
    timed = json.loads((ctx.measurements_dir / "timed.json").read_text())
    plain = json.loads((ctx.measurements_dir / "plain.json").read_text())
    speed = timed["machine_speed"]
    assert speed["threads"] == torch.get_num_threads() and "machine_speed" not in plain
    for k in ("gemm_gflops", "gemm_peak_gflops", "tanh_ns", "small_op_us"):
        assert 0 < speed[k] < 1e6
    line = paper_report._measure_machine(timed)
    assert f"speed then: GEMM 256x256x64 {speed['gemm_gflops']:g} GFLOP/s" in line
    assert "speed then" not in paper_report._measure_machine(plain)
    if not torch.cuda.is_available():  # a timing on a device that is not here: no speed line
        ctx.measure("gpu", lambda: {"v": 3}, timing="cuda")
        gpu = json.loads((ctx.measurements_dir / "gpu.json").read_text())
        assert "machine_speed" not in gpu


def test_config_keys_added_later_leave_stored_results_current(store_copy: Path) -> None:
    """A measurement stored before a config key existed (its key lacks it) stays current while
    the key holds its default, and is stale once it is set; the same for config hashes."""
    from biograd.runner.config import ADDED_KEYS, Config, keyed

    assert "warmup_steps" in ADDED_KEYS
    assert keyed({"lr": 0.1, "warmup_steps": 0}) == {"lr": 0.1}
    assert keyed({"lr": 0.1, "warmup_steps": 5}) == {"lr": 0.1, "warmup_steps": 5}
    old = {k: v for k, v in Config().to_dict().items() if k not in ADDED_KEYS}
    assert store.config_hash(Config()) == store._digest(store._canonical(store.config_view(old)))
    path = _root(store_copy) / "_measurements" / "cost-mnist-mlp.json"
    record = json.loads(path.read_text())
    for arm in record["key"]["arms"].values():  # as stored before the keys were added
        for k in ADDED_KEYS:
            arm.pop(k, None)
    path.write_text(json.dumps(record))

    def found(*overrides: str) -> str:
        p = grid.plan(grid.load_preset(PAPER, store_copy / "preset.yaml"), "standard",
                      runs_dir=store_copy / "results", overrides=list(overrides))
        ctx = Context(p, {}, store_copy / "o", 0.0, [], measure_missing=False)
        ctx.step_cost("mnist-mlp", "backprop")
        return ctx.found["cost-mnist-mlp"]

    assert found() == "current"
    assert found("--warmup_steps=10").startswith("stale: its key changed")


def test_step_cost_is_keyed_by_its_arms_rules(store_copy: Path, monkeypatch) -> None:
    p = grid.plan(grid.load_preset(PAPER, store_copy / "preset.yaml"), "standard",
                  runs_dir=store_copy / "results", overrides=["settings.cost_repeats=1"])
    ctx = Context(p, {}, store_copy / "o", 0.0, [])
    assert ctx.step_cost("mnist-mlp", "backprop") == 1.0
    record = json.loads((ctx.measurements_dir / "cost-mnist-mlp.json").read_text())
    assert sorted(record["code"]) == sorted(ARMS)


def test_reports_per_budget_and_the_readme_summary(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "results"
    out.mkdir(parents=True)
    (out / "p1-lra").mkdir()
    (out / "p1-lra" / "fig.png").write_bytes(b"png")
    (out / "p1-lra.md").write_text("# old quick report\n![fig](p1-lra/fig.png)\n")
    row = {"paper": "p1-lra", "title": "T", "seeds": 1, "verdicts": ["held"],
           "key_numbers": "k", "wall_seconds": 3.0}
    (out / "p1-lra.json").write_text(json.dumps({**row, "budget": "quick"}))
    settle_reports(out, "p1-lra")  # a quick report at PAPER.md moves to PAPER-quick.md
    assert not (out / "p1-lra.md").exists() and (out / "p1-lra-quick" / "fig.png").is_file()
    assert "](p1-lra-quick/fig.png)" in (out / "p1-lra-quick.md").read_text()
    assert json.loads((out / "p1-lra-quick.json").read_text())["budget"] == "quick"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- summary:start -->\nOLDTABLE\n<!-- summary:end -->\nrest\n")
    update_readme_summary(out)
    text = readme.read_text()
    assert "[p1-lra](docs/results/p1-lra-quick.md)" in text and "OLDTABLE" not in text
    (out / "p1-lra.json").write_text(json.dumps({**row, "budget": "standard", "seeds": 3,
                                                 "verdicts": ["did not hold"]}))
    update_readme_summary(out)
    text = readme.read_text()
    assert "| [p1-lra](docs/results/p1-lra.md) | T | standard (3 seeds, 3 s); also " \
           "[quick](docs/results/p1-lra-quick.md) | did not hold |" in text
    assert text.startswith("intro\n") and text.endswith("<!-- summary:end -->\nrest\n")
    assert update_readme_summary(tmp_path / "elsewhere") is None  # not docs/results


# ---------------------------------------------------------------- reproduce --check
def _tree(folder: Path) -> dict[Path, int]:
    """Every file under ``folder`` (store and reports) with its modification time."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _check(folder: Path) -> dict:
    return check(PAPER, "standard", out=folder / "docs" / "results",
                 runs_dir=folder / "results", preset=folder / "preset.yaml")


def _argv(folder: Path) -> list[str]:
    return ["reproduce", PAPER, "--budget", "standard", "--check",
            "--out", str(folder / "docs" / "results"), "--runs", str(folder / "results"),
            "--preset", str(folder / "preset.yaml")]


def test_an_up_to_date_store_is_current(store_copy: Path, no_training, capsys) -> None:
    before = _tree(store_copy)
    got = _check(store_copy)
    assert got["current"] and [r.state for r in got["runs"]] == ["current"] * len(ARMS)
    assert got["measurements"] and set(got["measurements"].values()) == {"current"}
    written = json.loads((store_copy / "docs" / "results" / f"{PAPER}.json").read_text())
    assert got["verdicts"] == got["written_verdicts"] == written["verdicts"]
    assert main(_argv(store_copy)) == 0
    assert "up to date: nothing to train or measure" in capsys.readouterr().out
    assert _tree(store_copy) == before


def test_stale_absent_and_interrupted_runs_are_listed_not_touched(
        store_copy: Path, no_training, monkeypatch, capsys) -> None:
    root = _root(store_copy) / "mnist-mlp"
    shutil.rmtree(root / "weight_mirror-s0")  # absent, with an earlier wall time
    (root / "sign_symmetry-s0" / "summary.json").unlink()  # interrupted
    (root / "backprop-s0" / "summary.json").write_text(json.dumps(
        {"status": "failed", "error": "RuntimeError: boom"}))  # crashed
    walls = _root(store_copy) / "wall_seconds.json"
    took = json.loads(walls.read_text())
    del took["mnist-mlp/sign_symmetry-s0"]  # ... and no wall time to estimate from
    walls.write_text(json.dumps(took))
    _change_rule(monkeypatch, "kolen_pollack")  # stale
    before = _tree(store_copy)
    got = _check(store_copy)
    states = {r.label: r for r in got["runs"]}
    assert {k: r.state for k, r in states.items()} == {
        "mnist-mlp/backprop-s0": "failed", "mnist-mlp/feedback_alignment-s0": "current",
        "mnist-mlp/sign_symmetry-s0": "interrupted", "mnist-mlp/weight_mirror-s0": "absent",
        "mnist-mlp/kolen_pollack-s0": "stale"}
    assert "code of kolen_pollack changed: biograd.rules.x (added)" in states[
        "mnist-mlp/kolen_pollack-s0"].why
    assert states["mnist-mlp/weight_mirror-s0"].estimate == took["mnist-mlp/weight_mirror-s0"]
    assert states["mnist-mlp/sign_symmetry-s0"].estimate is None and got["unestimated"] == 1
    assert states["mnist-mlp/backprop-s0"].why == "RuntimeError: boom"
    assert got["train_seconds"] == pytest.approx(took["mnist-mlp/weight_mirror-s0"]
                                                 + took["mnist-mlp/kolen_pollack-s0"]
                                                 + took["mnist-mlp/backprop-s0"])
    cost = [k for k in got["measurements"] if k.startswith("cost-")]
    assert cost and got["measurements"][cost[0]].startswith(
        "stale: code of kolen_pollack changed")
    assert not got["current"]
    assert main(_argv(store_copy)) == 1
    out = capsys.readouterr().out
    assert "5 runs: 1 current, 1 stale, 1 interrupted, 1 failed, 1 absent" in out
    assert "1 runs with no earlier wall time to estimate from" in out
    assert _tree(store_copy) == before  # nothing moved to .stale/, no report rewritten
    assert not (_root(store_copy) / ".stale").exists()


def test_a_run_stale_by_its_epochs_is_estimated_at_the_new_length(
        store_copy: Path, no_training) -> None:
    """A preset that doubles the epochs: each stale run's estimate is its wall time x 2 (the
    planned steps over the steps it did), not the shorter run's time."""
    took = json.loads((_root(store_copy) / "wall_seconds.json").read_text())
    preset = store_copy / "preset.yaml"
    preset.write_text(preset.read_text().replace("epochs: 1,", "epochs: 2,"))
    got = _check(store_copy)
    assert {r.state for r in got["runs"]} == {"stale"}
    for r in got["runs"]:
        assert "config changed: epochs" in r.why
        assert r.estimate == pytest.approx(2 * took[r.label])
    assert got["train_seconds"] == pytest.approx(2 * sum(took[r.label] for r in got["runs"]))


def test_an_arm_never_trained_is_estimated_from_backprop_and_its_step_cost(
        store_copy: Path, capsys) -> None:
    shutil.rmtree(_root(store_copy) / "mnist-mlp" / "weight_mirror-s0")
    walls = _root(store_copy) / "wall_seconds.json"
    took = json.loads(walls.read_text())
    del took["mnist-mlp/weight_mirror-s0"]  # no wall time of the arm itself
    walls.write_text(json.dumps(took))
    cost = next(_root(store_copy).rglob("cost-mnist-mlp.json"))
    record = json.loads(cost.read_text())  # this budget times no blocks: give it a ratio
    ratio = record["result"]["weight_mirror"] = 2.5
    cost.write_text(json.dumps(record))
    got = {r.label: r for r in _check(store_copy)["runs"]}["mnist-mlp/weight_mirror-s0"]
    assert got.scaled and got.estimate == pytest.approx(took["mnist-mlp/backprop-s0"] * ratio)
    assert main(_argv(store_copy)) == 1
    assert (f"absent      mnist-mlp/weight_mirror-s0 (~{got.estimate / 60:.1f} min = backprop "
            "x step cost)") in capsys.readouterr().out


def test_a_run_another_process_is_training_is_listed_as_training(
        store_copy: Path, no_training, capsys) -> None:
    run = _root(store_copy) / "mnist-mlp" / "sign_symmetry-s0"
    (run / "summary.json").unlink()  # started, not finished ...
    runlock.lock_path(run).write_text(json.dumps(  # ... and its process still running
        {"pid": os.getppid(), "host": socket.gethostname(), "since": 0}))
    got = {r.label: r for r in _check(store_copy)["runs"]}["mnist-mlp/sign_symmetry-s0"]
    assert got.state == "training" and got.why == (
        f"by pid {os.getppid()} on {socket.gethostname()}")
    assert main(_argv(store_copy)) == 1
    assert "training    mnist-mlp/sign_symmetry-s0 (~" in capsys.readouterr().out


def test_a_diverged_run_is_estimated_as_the_whole_run_it_stopped_short_of(
        store_copy: Path, no_training, monkeypatch) -> None:
    path = _root(store_copy) / "mnist-mlp" / "weight_mirror-s0" / "summary.json"
    summary = json.loads(path.read_text())
    planned = summary["steps"]  # the run completed: all its steps were planned
    assert planned >= 2
    summary.update(status="diverged", steps=1, diverged={"step": 1})
    path.write_text(json.dumps(summary))
    took = json.loads((_root(store_copy) / "wall_seconds.json").read_text())
    _change_rule(monkeypatch, "weight_mirror")  # stale: to be retrained
    got = {r.label: r for r in _check(store_copy)["runs"]}["mnist-mlp/weight_mirror-s0"]
    assert got.state == "stale" and not got.scaled
    assert got.estimate == pytest.approx(
        took["mnist-mlp/weight_mirror-s0"] * planned)


def test_check_with_training_options_is_an_error(store_copy: Path, capsys) -> None:
    for extra in (["--no-train"], ["--overwrite"], ["--train-minutes", "1"]):
        assert main(_argv(store_copy) + extra) == 2
        assert "--check trains and writes nothing: drop --" in capsys.readouterr().err


def test_lines_name_each_state() -> None:
    runs = [status.RunState("e/a-s0", "stale", "config changed: lr", 120.0),
            status.RunState("e/b-s0", "current")]
    text = "\n".join(status.lines({
        "paper": "p", "budget": "standard", "runs": runs, "measurements": {"m": "missing"},
        "verdicts": ["held"], "written_verdicts": None, "train_seconds": 120.0,
        "unestimated": 0, "current": False}))
    assert "stale       e/a-s0 (~2.0 min): config changed: lr" in text
    assert "about 2 min of run wall time for 1 runs" in text
    assert "measurements: 1: 1 missing" in text and "not up to date" in text
