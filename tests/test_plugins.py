"""Rules defined outside biograd reach the CLI: modules named in BIOGRAD_PLUGINS or by an
entry point of the group ``biograd.rules`` are imported by the registry (real subprocesses,
real modules and a real dist-info folder written by the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from biograd.core.registry import ENTRY_POINT_GROUP, PLUGINS_ENV

PLUGIN = '''
import torch
from biograd.core.registry import register_rule
from biograd.core.rule import LearningRule, StepResult


@register_rule("{name}", family="reference", paper="(test plugin)", supports=("mlp",))
class ScaledBackprop(LearningRule):
    """Backprop's gradient times ``scale`` (a rule defined outside biograd)."""

    def __init__(self, model, loss="cross_entropy", *, scale: float = 0.5):
        super().__init__(model, loss)
        self.scale = scale

    def step(self, x, y):
        self.check_batch(x, y)
        out = self.model(x)
        loss = self.loss_fn(out, y)
        params = self.forward_parameters()
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            self.accumulate_grad(p, self.scale * g)
        return StepResult(float(loss.detach()), out.detach())
'''

TINY = ["--dataset=synthetic", "--dataset_args.n=32", "--model_args.hidden=[8]",
        "--batch_size=16", "--epochs=1", "--alignment_batch=16", "--threads=1"]


def _biograd(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != PLUGINS_ENV}
    full.update({"OMP_NUM_THREADS": "1", **env})
    return subprocess.run([sys.executable, "-m", "biograd", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)


def _pythonpath(*folders: Path) -> str:
    return os.pathsep.join([*map(str, folders), os.environ.get("PYTHONPATH", "")])


def test_env_plugin_rule_is_listed_and_trains(tmp_path: Path) -> None:
    (tmp_path / "my_rules.py").write_text(PLUGIN.format(name="scaled_backprop"))
    env = {PLUGINS_ENV: "my_rules", "PYTHONPATH": _pythonpath(tmp_path)}
    listed = _biograd("rules", cwd=tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("scaled_backprop"))
    assert "scale=0.5" in row and "(test plugin)" in row
    done = _biograd("train", "--rule=scaled_backprop", "--rule_args.scale=0.25", *TINY,
                    "--out_dir=runs", "--run_name=r", cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["status"] == (
        "completed")
    plain = _biograd("rules", cwd=tmp_path, PYTHONPATH=_pythonpath(tmp_path))
    assert "scaled_backprop" not in plain.stdout  # only when asked for


def test_entry_point_plugin_rule_is_listed(tmp_path: Path) -> None:
    (tmp_path / "ep_rules.py").write_text(PLUGIN.format(name="ep_scaled_backprop"))
    dist = tmp_path / "biograd_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: biograd-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nscaled = ep_rules\n")
    listed = _biograd("rules", cwd=tmp_path, PYTHONPATH=_pythonpath(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith("ep_scaled_backprop") for line in listed.stdout.splitlines())


def test_a_plugin_that_cannot_be_imported_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken_rules.py").write_text("raise RuntimeError('boom')\n")
    env = {PLUGINS_ENV: "no_such_module", "PYTHONPATH": _pythonpath(tmp_path)}
    done = _biograd("rules", cwd=tmp_path, **env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'no_such_module'" in done.stderr and PLUGINS_ENV in done.stderr
    done = _biograd("rules", cwd=tmp_path, **{**env, PLUGINS_ENV: "broken_rules"})
    assert done.returncode == 2 and "RuntimeError: boom" in done.stderr
