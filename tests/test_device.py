"""Every rule on a CUDA device computes the same updates as on the CPU.

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/test_device.py``.
The expectation is the CPU run of the same rule, model, batch and seed: a rule's randomness comes
from its own CPU generator (:attr:`LearningRule.generator`), so the two runs draw the same noise
and differ only by floating-point rounding of the device's kernels (TF32 is switched off).
"""

from __future__ import annotations

import copy

import pytest
import torch

import biograd
from biograd.core.registry import MODEL_KINDS
from tests.conftest import make_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = [
    (name, kind)
    for name in biograd.list_rules()
    for kind in MODEL_KINDS
    if kind in biograd.rule_info(name).supports
]


@pytest.fixture(autouse=True)
def _no_tf32():
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _updates(name: str, kind: str, device: str, *, move_rule: bool) -> tuple[dict, float]:
    """Two steps of ``name`` on ``kind`` (the second sees feedback state left by the first):
    the second step's ``.grad`` per parameter name, moved to the CPU, and its loss."""
    model, x, y = make_model(kind, seed=0)
    model, x = model.double(), x.double()
    torch.manual_seed(0)
    if move_rule:  # build on the CPU, then move the whole rule
        rule = biograd.create_rule(name, model).to(device)
    else:  # move the model first, then build the rule around it
        rule = biograd.create_rule(name, model.to(device))
    x, y = x.to(device), y.to(device)
    for p in rule.parameters():
        assert p.device.type == torch.device(device).type, f"{name}: parameter left on {p.device}"
    rule.zero_grad(set_to_none=True)
    rule.step(x, y)
    with torch.no_grad():  # a plain SGD step so the second step starts from moved weights
        for p in rule.parameters():
            if p.grad is not None:
                p.sub_(0.05 * p.grad)
    rule.zero_grad(set_to_none=True)
    res = rule.step(x, y)
    grads = {n: p.grad.detach().cpu() for n, p in rule.named_parameters()
             if p.requires_grad and p.grad is not None}
    for n, g in grads.items():
        assert torch.isfinite(g).all(), f"{name} on {device}: non-finite update in {n}"
    assert res.output.device.type == torch.device(device).type
    return grads, res.loss


@cuda
@pytest.mark.parametrize("move_rule", [False, True], ids=["model_first", "rule_to"])
@pytest.mark.parametrize("name,kind", CASES)
def test_cuda_updates_equal_cpu_updates(name: str, kind: str, move_rule: bool) -> None:
    cpu, loss_cpu = _updates(name, kind, "cpu", move_rule=False)
    gpu, loss_gpu = _updates(name, kind, "cuda", move_rule=move_rule)
    assert gpu.keys() == cpu.keys()
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-9, abs=1e-12)
    # absolute tolerance relative to the largest update of the whole step: a layer that the
    # error has not reached yet (predictive coding on a deep net) holds rounding noise only
    scale = max(float(g.abs().max()) for g in cpu.values()) + 1e-12
    for n in cpu:
        torch.testing.assert_close(gpu[n], cpu[n], rtol=1e-6, atol=1e-8 * scale,
                                   msg=lambda m, n=n: f"{name}/{kind} {n}: {m}")


@cuda
@pytest.mark.parametrize("name,kind", CASES)
def test_cuda_state_dict_loads_on_cpu(name: str, kind: str) -> None:
    model, x, y = make_model(kind, seed=0)
    rule = biograd.create_rule(name, model.to("cuda"))
    rule.step(x.cuda(), y.cuda())
    state = copy.deepcopy(rule.state_dict())
    cpu_model, _, _ = make_model(kind, seed=1)
    cpu_rule = biograd.create_rule(name, cpu_model)
    cpu_rule.load_state_dict({k: v.cpu() if torch.is_tensor(v) else v for k, v in state.items()})
    loaded = cpu_rule.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        if torch.is_tensor(v):
            assert loaded[k].device.type == "cpu", k
            assert torch.equal(loaded[k], v.cpu()), k


# ----------------------------------------------------------------------------- the runner on CUDA
RUN = ["--dataset=synthetic", "--dataset_args.n=99", "--model_args.hidden=[10]",
       "--batch_size=16", "--epochs=2", "--lr=0.05", "--momentum=0.9", "--alignment_batch=16",
       "--eval_batch_size=50", "--threads=1", "--alignment_every=5"]
RUNNER_RULES = ["backprop", "kolen_pollack", "ldrl"]


def _final_state(path) -> dict:
    from tests.test_distributed import _tensors

    state = torch.load(path / "checkpoint.pt", weights_only=True, map_location="cpu")
    return _tensors(state["rule"])


@cuda
@pytest.mark.parametrize("rule", RUNNER_RULES)
def test_runner_trains_on_cuda_like_on_cpu(tmp_path, rule: str) -> None:
    """``--device=cuda``: the same run as on the CPU up to float32 rounding (TF32 off), the
    summary names the device, and the checkpoint loads on a CPU-only machine."""
    from biograd.runner.config import load_config
    from biograd.runner.train import train

    runs = {}
    for device in ("cpu", "cuda"):
        cfg = load_config(None, [*RUN, f"--rule={rule}", f"--device={device}",
                                 f"--out_dir={tmp_path}", f"--run_name={device}"])
        summary = train(cfg)
        assert summary["status"] == "completed" and summary["steps"] == 14
        assert summary["device"] == ("cpu" if device == "cpu" else "cuda:0")
        runs[device] = _final_state(tmp_path / device)
    assert runs["cpu"].keys() == runs["cuda"].keys()
    for k, v in runs["cpu"].items():
        if v.is_floating_point():
            torch.testing.assert_close(runs["cuda"][k], v, rtol=1e-4, atol=1e-5, msg=k)


@cuda
@pytest.mark.parametrize("rule", ["backprop", "ldrl"])
def test_resume_on_cuda_equals_an_uninterrupted_run(tmp_path, rule: str) -> None:
    from biograd.cli import main

    base = [*RUN, f"--rule={rule}", "--device=cuda", f"--out_dir={tmp_path}"]
    assert main(["train", *base, "--epochs=1", "--run_name=cut"]) == 0
    assert main(["train", "--resume", str(tmp_path / "cut"), "--epochs=2"]) == 0
    assert main(["train", *base, "--epochs=2", "--run_name=whole"]) == 0
    cut, whole = _final_state(tmp_path / "cut"), _final_state(tmp_path / "whole")
    for k, v in whole.items():
        assert torch.equal(cut[k], v), k


@cuda
@pytest.mark.parametrize("rule", ["backprop", "kolen_pollack"])
def test_two_processes_on_one_gpu_equal_one_process(tmp_path, rule: str) -> None:
    """The CUDA data-parallel path (batches, gradients and state on the GPU, reduced by gloo,
    which handles CUDA tensors; NCCL refuses two ranks on one GPU) against one CUDA process."""
    from biograd.runner.config import load_config
    from biograd.runner.train import train
    from tests.test_distributed import ARGS, _launch, _max_diff

    gpu = ("--device=cuda:0",)
    (tmp_path / "two").mkdir()
    _launch(tmp_path / "two", [rule], extra=gpu)
    train(load_config(None, [*ARGS, *gpu, f"--rule={rule}", f"--out_dir={tmp_path}",
                             "--run_name=one"]))
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / rule / "checkpoint.pt", weights_only=True)
    assert _max_diff(one["rule"], two["rule"]) <= 1e-6
    r0 = torch.load(tmp_path / "two" / f"{rule}.rank0.pt", weights_only=True, map_location="cpu")
    r1 = torch.load(tmp_path / "two" / f"{rule}.rank1.pt", weights_only=True, map_location="cpu")
    assert _max_diff(r0, r1) == 0.0
