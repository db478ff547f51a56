"""One process at a time per run directory (:mod:`biograd.runlock`): a run another live
process is training is refused (CLI: exit 2, its files untouched), left alone by a grid
(``missing``, the others trained) and shown as ``training`` by ``reproduce --check``; a lock
left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biograd.cli import main
from biograd.experiments.jobs import run_all
from biograd.runlock import RunBusyError, hold, holder, lock_path
from biograd.runner.config import load_config
from biograd.runner.train import train

TINY = ["--dataset=synthetic", "--dataset_args.n=64", "--model_args.hidden=[8]",
        "--batch_size=16", "--epochs=1", "--alignment_batch=16", "--threads=1"]


def _lock(run: Path, pid: int, host: str | None = None) -> Path:
    """A lock file as another process would have left it."""
    path = lock_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                "since": time.time()}))
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _live_pid() -> int:
    return os.getppid()  # the process that started pytest: alive while the test runs


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_lock_is_held_for_the_block_and_released_however_it_ends(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r"
    with hold(run):
        owner = json.loads(lock_path(run).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert holder(run)["pid"] == os.getpid()
        with pytest.raises(RunBusyError, match=f"pid {os.getpid()}"), hold(run):
            pass  # a second holder, even in the same process
    assert not lock_path(run).exists() and holder(run) is None
    with pytest.raises(ValueError, match="boom"), hold(run):
        raise ValueError("boom")
    assert not lock_path(run).exists()


def test_a_live_owner_blocks_and_the_error_says_what_to_do(tmp_path: Path) -> None:
    run = tmp_path / "r"
    path = _lock(run, _live_pid())
    with pytest.raises(RunBusyError) as err, hold(run):
        pass
    text = str(err.value)
    assert f"pid {_live_pid()}" in text and str(run) in text and "disjoint --only" in text
    assert f"delete {str(path)!r}" in text
    assert path.exists()  # not ours to remove
    _lock(run, _dead_pid(), host="another-machine")  # another host: never guessed about
    with pytest.raises(RunBusyError, match="another-machine"), hold(run):
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    _lock(run, _dead_pid())
    assert holder(run) is None
    with hold(run):
        assert holder(run)["pid"] == os.getpid()
    assert "taking over" in capsys.readouterr().err
    assert not lock_path(run).exists()


def test_train_refuses_a_run_being_trained_and_leaves_it_alone(
        tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [*TINY, "--out_dir=runs", "--run_name=r"])
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch\n")  # what the other process has written so far
    _lock(run, _live_pid())
    before = _snapshot(tmp_path / "runs")
    with pytest.raises(RunBusyError):
        train(cfg, overwrite=True)  # not even --overwrite takes it from its owner
    assert main(["train", *TINY, "--out_dir=runs", "--run_name=r", "--overwrite"]) == 2
    assert "is being trained by another process" in capsys.readouterr().err
    assert _snapshot(tmp_path / "runs") == before


def test_a_grid_leaves_a_busy_run_to_its_owner_and_trains_the_rest(
        tmp_path: Path, capsys) -> None:
    cfgs = [load_config(None, [*TINY, f"--out_dir={tmp_path}", f"--run_name=r{i}",
                               f"--seed={i}"]) for i in range(2)]
    _lock(tmp_path / "r0", _live_pid())
    (busy, _), (done, _) = run_all(cfgs)
    assert busy["status"] == "missing" and f"pid {_live_pid()}" in busy["reason"]
    assert not (tmp_path / "r0").exists()
    assert done["status"] == "completed" and not lock_path(tmp_path / "r1").exists()
    assert "not trained here" in capsys.readouterr().err
