"""Grids run ``--jobs N`` runs at a time in spawned processes: the same run directories and
weights as one at a time (threads pinned to 1 so the arithmetic is the same), each run's torch
thread count is its share of the cores, and a grid stays resumable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from biograd.core.errors import ConfigError
from biograd.experiments.compare import compare
from biograd.experiments.grid import load_grid
from biograd.experiments.jobs import run_all
from biograd.rundir import read_json
from biograd.runner.config import load_config
from biograd.runner.device import JOBS_ENV, available_cores, thread_count

ARGS = ["--dataset=synthetic", "--dataset_args.n=64", "--model_args.hidden=[8]",
        "--batch_size=16", "--epochs=1", "--lr=0.05", "--alignment_batch=16",
        "--eval_batch_size=40"]
GRID = [*ARGS, "--cost_repeats=0", "--arms=[feedback_alignment]", "--seeds=[0]"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["rule"]


def test_two_jobs_train_the_same_runs_as_one(tmp_path: Path) -> None:
    one = compare(load_grid(None, [*GRID, "--threads=1", f"--out_dir={tmp_path}",
                                   "--name=one"]))
    two = compare(load_grid(None, [*GRID, "--threads=1", f"--out_dir={tmp_path}",
                                   "--name=two"]), jobs=2)
    assert list(one["results"]) == list(two["results"]) == ["backprop", "feedback_alignment"]
    for rule in ("backprop", "feedback_alignment"):
        for seed in (0,):
            a, b = (_weights(tmp_path / n / f"{rule}-s{seed}") for n in ("one", "two"))
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    # resumable as before: a second call with jobs reuses every finished run
    again = compare(load_grid(None, [*GRID, "--threads=1", f"--out_dir={tmp_path}",
                                     "--name=two"]), jobs=2)
    assert all(s.get("reused") for runs in again["results"].values() for s in runs)


def test_each_parallel_run_takes_its_share_of_the_cores(tmp_path: Path) -> None:
    cfgs = [load_config(None, [*ARGS, f"--out_dir={tmp_path}",
                               f"--run_name=r{i}", f"--seed={i}"]) for i in range(2)]
    done = run_all(cfgs, jobs=2)
    share = max(1, available_cores() // 2)
    assert [s["threads"] for s, _ in done] == [share, share]
    assert read_json(tmp_path / "r0" / "summary.json")["threads"] == share


def test_thread_count(monkeypatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv(JOBS_ENV, "3")
    assert thread_count(5) == 5  # an explicit setting wins
    assert thread_count(0) == max(1, available_cores() // 3)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert thread_count(0) == max(1, available_cores() // 6)
    monkeypatch.delenv(JOBS_ENV)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert thread_count(0) == available_cores() == len(os.sched_getaffinity(0))


def test_bad_jobs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--jobs must be >= 1"):
        run_all([load_config(None, [*ARGS, f"--out_dir={tmp_path}"])], jobs=0)
