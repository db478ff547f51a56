"""The ``biograd`` command line, run as a real subprocess (``python -m biograd``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from biograd.cli import main

TINY = ["--dataset=synthetic", "--dataset_args.n=64", "--model_args.hidden=[8]",
        "--batch_size=16", "--epochs=1", "--alignment_batch=16"]


def _biograd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "biograd", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_train_then_errors_then_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    run = tmp_path / "runs" / "r"
    done = _biograd("train", *TINY, "--out_dir=runs", "--run_name=r", "--threads=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 1
    before = _snapshot(run)

    monkeypatch.chdir(tmp_path)  # the rest in-process: same entry point, faster
    assert main(["train", *TINY, "--out_dir=runs", "--run_name=r"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert _snapshot(run) == before

    assert main(["train", "--resume", str(run), "--epochs=2"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 2


def test_bad_config_file_exits_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("rule: backprop\nbatchsize: 3\n")
    assert main(["train", "--config", "c.yaml"]) == 2
    assert "unknown config key 'batchsize'. Did you mean 'batch_size'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--lr=0"], "config key 'lr' must be > 0"),
        (["train", "--rule=nope", *TINY], "unknown rule 'nope'"),
        (["train", "--epochs"], "config keys are given as --key=value"),
        (["train", "--resume", "missing_dir"], "holds no config.yaml"),
        (["compare", "--arms.backprop.rule_args.x=1", *TINY], "no hyper-parameter 'x'"),
        (["compare", "--arms=[backprop]", "--rule_args.x=1", *TINY], "is set by each arm"),
        (["compare", "--rules=[backprop]", *TINY], "not a comparison key any more: use arms"),
        (["data", "fetch", "mnits"], "unknown dataset 'mnits'"),
        (["frobnicate"], "invalid choice"),
        (["rules", "--extra=1"], "unrecognised arguments"),
    ],
)
def test_every_bad_input_is_exit_2_with_a_message(
    tmp_path: Path, monkeypatch, capsys, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_rules_and_data_list(capsys) -> None:
    import biograd

    assert main(["rules"]) == 0
    header, _, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["name", "family", "supports", "paper", "hparams"]
    assert [r.split()[0] for r in rows] == biograd.list_rules()
    assert main(["data", "list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == biograd.data.list_datasets()


def test_compare_cli_writes_the_table(tmp_path: Path) -> None:
    done = _biograd("compare", *TINY, "--arms=[backprop]", "--out_dir=runs", "--name=c",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "runs" / "c" / "compare.md").read_text()
    assert "| backprop | reference | 1 |" in table and table in done.stdout
    assert "median of 5 interleaved block pairs" in table
    done = _biograd("compare", *TINY, "--arms=[backprop]", "--out_dir=runs", "--name=c",
                    "--cost_repeats=0", cwd=tmp_path)  # no probe: sub-runs reused as they are
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "runs" / "c" / "compare.md").read_text()
    assert "ratio of seconds per epoch" in table and "| 1.00 |" in table
