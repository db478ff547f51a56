"""Data-parallel training (biograd.runner.distributed): two gloo processes on this CPU end with
the parameters of one process trained on the same global batches (within 1e-6), and every rank
ends each run with the same rule state, inner-loop rules included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import biograd
from biograd.core.errors import ConfigError
from biograd.experiments.compare import compare
from biograd.experiments.grid import load_grid
from biograd.runner import distributed
from biograd.runner.config import load_config
from biograd.runner.train import train

# n=99 with batch 16: the last global batch has 3 samples, split 2 + 1 between the ranks
ARGS = ["--dataset=synthetic", "--dataset_args.n=99", "--model_args.hidden=[10]",
        "--batch_size=16", "--epochs=2", "--lr=0.05", "--momentum=0.9", "--alignment_batch=16",
        "--eval_batch_size=50", "--threads=1"]
EXACT = ["backprop", "feedback_alignment", "kolen_pollack", "activation_relaxation"]
SYNCED = ["ldrl", "weight_mirror"]  # inner feedback loops: identical on all ranks, not exact

# Each rank joins the group itself, then trains every rule with the runner's train(); the rule
# object is captured so that every rank (not only rank 0, which writes the run dir) saves it.
WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    import biograd.runner.train
    train_module = sys.modules["biograd.runner.train"]
    from biograd.runner.config import load_config
    out, rules, args = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
    dist.init_process_group("gloo", init_method="env://")
    built, real = [], train_module.create_rule
    train_module.create_rule = lambda *a, **k: built.append(real(*a, **k)) or built[-1]
    for rule in rules:
        train_module.train(load_config(None, [*args, f"--rule={rule}", f"--out_dir={out}",
                                              f"--run_name={rule}"]))
        torch.save(built[-1].state_dict(), f"{out}/{rule}.rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, rules: list[str], world: int = 2, extra: tuple[str, ...] = ()) -> None:
    """``world`` processes, each joining a gloo group and training ``rules`` with ``ARGS`` +
    ``extra`` (later overrides win), each saving its own final rule state."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(out), ",".join(rules), *ARGS, *extra], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    walk("", state)
    return flat


def _max_diff(a: dict, b: dict) -> float:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    return max(float((ta[k].double() - tb[k].double()).abs().max()) if ta[k].numel() else 0.0
               for k in ta if ta[k].is_floating_point())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    rules = [r for r in EXACT + SYNCED if r in biograd.list_rules()]
    _launch(out, rules)
    return out


@pytest.mark.parametrize("rule", EXACT)
def test_two_processes_equal_one_process(two_ranks: Path, tmp_path: Path, rule: str) -> None:
    train(load_config(None, [*ARGS, f"--rule={rule}", f"--out_dir={tmp_path}", "--run_name=one"]))
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(two_ranks / rule / "checkpoint.pt", weights_only=True)
    assert (one["step"], two["step"]) == (14, 14)  # 7 global batches per epoch, 2 epochs
    diff = _max_diff(one["rule"], two["rule"])
    print(f"{rule}: max |2-process - 1-process| = {diff:.3g}")
    assert diff <= 1e-6
    assert _max_diff(one["optimizer"], two["optimizer"]) <= 1e-6
    # every rank holds the same state; only rank 0 wrote the run directory
    r0 = torch.load(two_ranks / f"{rule}.rank0.pt", weights_only=True)
    r1 = torch.load(two_ranks / f"{rule}.rank1.pt", weights_only=True)
    assert _max_diff(r0, r1) == 0.0


@pytest.mark.parametrize("rule", SYNCED)
def test_inner_loop_rules_end_identical_on_every_rank(two_ranks: Path, rule: str) -> None:
    if rule not in biograd.list_rules():
        pytest.skip(f"{rule} is not registered")
    r0 = torch.load(two_ranks / f"{rule}.rank0.pt", weights_only=True)
    r1 = torch.load(two_ranks / f"{rule}.rank1.pt", weights_only=True)
    assert _max_diff(r0, r1) == 0.0
    assert torch.equal(r0["_extra_state"]["generator"], r1["_extra_state"]["generator"])


def test_shards_cover_each_global_batch_once() -> None:
    index = torch.arange(7)
    parts = [distributed.Dist(r, 3).shard(index) for r in range(3)]
    assert torch.equal(torch.cat(parts), index)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert torch.equal(distributed.Dist().shard(index), index)


def test_bad_launch_environment(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE must be a positive integer"):
        distributed.from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT not set: launch with"):
        distributed.from_env()
    with pytest.raises(ConfigError, match="biograd compare does not run under torchrun"):
        compare(load_grid(None, [*ARGS, "--arms=[backprop]", "--out_dir=nowhere"]))
    assert not Path("nowhere").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.from_env() == distributed.Dist()


@pytest.mark.slow
def test_torchrun_cli(tmp_path: Path) -> None:
    """The documented launch: ``torchrun --nproc_per_node=2 -m biograd train ...``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", "-m", "biograd", "train", *ARGS,
         f"--out_dir={tmp_path}", "--run_name=ddp"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    train(load_config(None, [*ARGS, f"--out_dir={tmp_path}", "--run_name=one"]))
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert _max_diff(one["rule"], two["rule"]) <= 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "one"]
    # resumed under torchrun for one more epoch (rank 0 reads the checkpoint, sends it)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", "-m", "biograd", "train", "--resume",
         str(tmp_path / "ddp"), "--epochs=3"], env=env, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    train(load_config(None, [*ARGS, f"--out_dir={tmp_path}", "--run_name=one3", "--epochs=3"]))
    one = torch.load(tmp_path / "one3" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert two["step"] == 21 and _max_diff(one["rule"], two["rule"]) <= 1e-6


def test_device_and_backend_choice() -> None:
    """``device``/``dist_backend`` resolution (biograd.runner.device) on this machine."""
    from biograd.runner.device import backend_for, resolve_device

    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available()
                                      else cpu)
    assert backend_for(cpu, "auto") == "gloo"
    assert backend_for(torch.device("cuda", 0), "auto") == "nccl"
    assert backend_for(torch.device("cuda", 0), "gloo") == "gloo"
    with pytest.raises(ConfigError, match="NCCL reduces GPU tensors only"):
        backend_for(cpu, "nccl")
    with pytest.raises(ConfigError, match="unknown device 'cuda0'"):
        resolve_device("cuda0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="PyTorch sees no CUDA device"):
            resolve_device("cuda:1", local_rank=1)


def test_rank_zero_logs_the_rules_step_metrics(two_ranks: Path) -> None:
    if "ldrl" not in biograd.list_rules():
        pytest.skip("ldrl is not registered")
    from biograd.rundir import read_rows

    rows = read_rows(two_ranks / "ldrl" / "metrics.csv")
    cols = [c for c in rows[0] if c.startswith("rule/feedback_loss/")]
    assert cols and all(isinstance(r[c], float) for r in rows for c in cols)
