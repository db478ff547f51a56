"""Checkpoints kept, verified and resumed: a real ``biograd train`` killed with SIGKILL mid-epoch
and resumed with ``--resume`` ends with the uninterrupted run's parameters, bit for bit; a
truncated or tampered checkpoint is refused and the previous one is used; divergence leaves the
last good checkpoint intact and is counted by ``compare``."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import biograd
from biograd import rundir
from biograd.core.errors import CheckpointError
from biograd.experiments.compare import compare
from biograd.experiments.grid import load_grid
from biograd.runner.config import load_config
from biograd.runner.train import train

train_module = sys.modules["biograd.runner.train"]
TINY = ["--dataset=synthetic", "--dataset_args.n=96", "--model_args.hidden=[12]",
        "--batch_size=16", "--epochs=3", "--lr=0.05", "--momentum=0.9", "--alignment_batch=16",
        "--eval_batch_size=48", "--checkpoint_every=4", "--keep_checkpoints=3", "--threads=1"]

# The child runs the real CLI; it only blocks (forever) at the start of its 11th step, i.e.
# mid-epoch 2 after the step-8 checkpoint, and drops a marker so the parent can SIGKILL it.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import biograd.runner.train  # noqa: F401
    train_module = sys.modules["biograd.runner.train"]
    from biograd.cli import main
    real, calls = train_module.StepGuard.loss, []
    def blocking(*args, **kwargs):
        calls.append(1)
        if len(calls) == 11:
            Path(sys.argv[1]).write_text("blocked")
            time.sleep(600)
        return real(*args, **kwargs)
    train_module.StepGuard.loss = blocking
    sys.exit(main(sys.argv[2:]))
""")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "1"}


def _state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's rule state (model, feedback weights, generator...)."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    walk("rule", torch.load(path, weights_only=True)["rule"])
    return flat


def _assert_equal_runs(a: Path, b: Path) -> None:
    sa, sb = _state(a / "checkpoint.pt"), _state(b / "checkpoint.pt")
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# each case runs two fresh interpreters (~15 s on a busy machine): backprop by default
@pytest.mark.parametrize("rule", [
    "backprop",
    pytest.param("kolen_pollack", marks=pytest.mark.slow),
    pytest.param("ldrl", marks=pytest.mark.slow),
])
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path: Path, rule: str) -> None:
    if rule not in biograd.list_rules():
        pytest.skip(f"{rule} is not registered")
    args = [*TINY, f"--rule={rule}", f"--out_dir={tmp_path}"]
    marker, run = tmp_path / "blocked", tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), "train", *args, "--run_name=killed"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        train(load_config(None, [*args, "--run_name=full"]))  # meanwhile, uninterrupted
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child never reached step 11"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["batch"], ck["step"]) == (1, 2, 8)  # mid-epoch 2
    assert not (run / "summary.json").exists()
    done = subprocess.run([sys.executable, "-m", "biograd", "train", "--resume", str(run)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    _assert_equal_runs(tmp_path / "full", run)
    assert rundir.read_json(run / "summary.json")["steps"] == 18


def _killed_run(tmp_path: Path, monkeypatch, *extra: str):
    """A run in-process interrupted (KeyboardInterrupt) at its 11th step, plus the same run
    uninterrupted in ``tmp_path/full``."""
    args = [*TINY, f"--out_dir={tmp_path}", *extra]
    train(load_config(None, [*args, "--run_name=full"]))
    cfg = load_config(None, [*args, "--run_name=part"])
    real, calls = train_module.StepGuard.loss, []

    def crash(*a, **k):
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_module.StepGuard, "loss", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    return cfg, tmp_path / "part"


def test_keeps_the_last_k_checkpoints_newest_first(tmp_path: Path, monkeypatch) -> None:
    _, run = _killed_run(tmp_path, monkeypatch)
    # checkpoints at step 4, 6 (end of epoch 1), 8: all three kept, newest first
    names = [p.name for p in rundir.checkpoint_files(run)]
    assert names == ["checkpoint.pt", "checkpoint.1.pt", "checkpoint.2.pt"]
    steps = [torch.load(run / n, weights_only=True)["step"] for n in names]
    assert steps == [8, 6, 4]
    full = rundir.checkpoint_files(tmp_path / "full")
    assert [torch.load(p, weights_only=True)["step"] for p in full] == [18, 16, 12]


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_checkpoint_is_refused_and_the_previous_one_used(
    tmp_path: Path, monkeypatch, capsys, damage: str
) -> None:
    cfg, run = _killed_run(tmp_path, monkeypatch)
    data = (run / "checkpoint.pt").read_bytes()
    if damage == "truncate":
        (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    else:  # same length, one tensor value changed: only the digest can tell
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        state["rule"]["model.1.weight"][0, 0] += 1.0
        torch.save(state, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be read|was modified"):
        rundir.read_checkpoint(run / "checkpoint.pt", rundir._manifest(run)["digests"])
    capsys.readouterr()
    train(cfg, resume=True)
    err = capsys.readouterr().err
    assert "falling back to checkpoint.1.pt" in err
    assert ("cannot be read" in err) if damage == "truncate" else ("was modified" in err)
    assert (run / "checkpoint.pt.refused").is_file()  # set aside, never rotated back in
    _assert_equal_runs(tmp_path / "full", run)


def test_no_good_checkpoint_is_an_error_and_nothing_changes(tmp_path: Path, monkeypatch) -> None:
    cfg, run = _killed_run(tmp_path, monkeypatch)
    for path in rundir.checkpoint_files(run):
        path.write_bytes(path.read_bytes()[:100])
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match="no usable checkpoint in .*cannot be read"):
        train(cfg, resume=True)
    assert _snapshot(run) == before


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """weights_only loading: a checkpoint that would run code on unpickling is refused."""
    run = tmp_path / "r"
    run.mkdir()
    torch.save({"epoch": 0, "rule": {}, "evil": Path("x")}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        rundir.load_checkpoint(run)


def test_divergence_keeps_the_last_good_checkpoint_and_counts(tmp_path: Path) -> None:
    args = [*TINY, f"--out_dir={tmp_path}", "--epochs=1"]
    summary = train(load_config(None, [*args, "--checkpoint_every=1", "--lr=1e6",
                                       "--run_name=r"]))
    assert summary["status"] == "diverged"
    step = summary["diverged"]["step"]
    run = tmp_path / "r"
    last = rundir.read_checkpoint(run / "checkpoint.pt", rundir._manifest(run)["digests"])
    assert last["step"] == step - 1  # intact (digest verified), written before the bad step
    assert all(torch.isfinite(v).all() for v in _state(run / "checkpoint.pt").values()
               if v.is_floating_point())
    # the arm's own lr (an --lr override would reach every run, arms included)
    base = [a for a in args if not a.startswith("--lr=")]
    grid = load_grid(None, [*base, "--name=c", "--arms.feedback_alignment.config.lr=1e6"])
    result = compare(grid)
    statuses = {n: [s["status"] for s in r] for n, r in result["results"].items()}
    assert statuses == {"backprop": ["completed"], "feedback_alignment": ["diverged"]}
    assert "| feedback_alignment | " in result["table"]
    row = next(line for line in result["table"].splitlines() if "| feedback_alignment |" in line)
    assert row.endswith("| 1 | 0 |")  # diverged 1, failed 0
    assert "feedback_alignment seed 0 diverged at step" in result["table"]


def test_python_and_numpy_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    random.seed(3)
    np.random.seed(4)
    rundir.save_checkpoint(tmp_path, {"epoch": 0, "rule": {}, **rundir.host_rng_state()})
    expected = (random.random(), float(np.random.rand()))
    state = rundir.load_checkpoint(tmp_path)  # weights_only: tensors and plain values only
    rundir.set_host_rng_state(state["python_rng"], state["numpy_rng"])
    assert (random.random(), float(np.random.rand())) == expected


@pytest.mark.parametrize(
    "rule", [n for n in biograd.list_rules() if "mlp" in biograd.rule_info(n).supports])
def test_every_rule_diverges_cleanly_within_one_step(tmp_path: Path, rule: str) -> None:
    """A huge learning rate blows the weights up at step 1; step 2's loss is over max_loss (or
    not finite): the run stops there, diverged (not crashed), with step 1's checkpoint intact."""
    cfg = load_config(None, [*TINY, f"--out_dir={tmp_path}", "--run_name=r", f"--rule={rule}",
                             "--lr=1e30", "--checkpoint_every=1", "--dataset_args.n=48"])
    summary = train(cfg)
    assert summary["status"] == "diverged", summary
    assert summary["diverged"]["step"] == 2
    run = tmp_path / "r"
    ck = rundir.read_checkpoint(run / "checkpoint.pt", rundir._manifest(run)["digests"])
    assert ck["step"] == 1


def test_warmup_scales_the_first_steps_linearly() -> None:
    """``warmup_steps``: step t moves by lr (t + 1) / N times the gradient, then by lr; the
    optimizer's own rate is left as the scheduler set it."""
    w = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([w], lr=0.1)
    moves = []
    for t in range(6):
        before = float(w.detach())
        w.grad = torch.ones(())
        train_module.warmed_step(opt, t, 4)
        moves.append(before - float(w.detach()))
        assert opt.param_groups[0]["lr"] == 0.1
    assert moves == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_warmup_run_resumes_exactly_and_leaves_the_schedule(tmp_path: Path,
                                                            monkeypatch) -> None:
    """Interrupted at step 11 of a 14-step warm-up under the cosine schedule, the resumed run
    equals the uninterrupted one; its logged rates are the schedule's, as without warm-up, and
    its weights differ from the run without warm-up."""
    cfg, run = _killed_run(tmp_path, monkeypatch, "--warmup_steps=14", "--scheduler=cosine")
    train(cfg, resume=True)
    _assert_equal_runs(tmp_path / "full", run)
    plain = load_config(None, [*TINY, f"--out_dir={tmp_path}", "--scheduler=cosine",
                               "--run_name=plain"])
    train(plain)
    lrs = [[row["lr"] for row in rundir.read_rows(d / "metrics.csv")]
           for d in (run, tmp_path / "plain")]
    assert lrs[0] == lrs[1]
    a, b = _state(run / "checkpoint.pt"), _state(tmp_path / "plain" / "checkpoint.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("rule.model"))
