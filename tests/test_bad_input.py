"""Every user-facing entry point answers bad input with a clear message and exit status 2 (CLI)
or a specific exception type (API), and changes nothing on disk (issue 6, item 3)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import biograd
import biograd.data
from biograd import rundir
from biograd.cli import main
from biograd.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    UnknownNameError,
    UnsupportedModelError,
)
from biograd.runner.config import load_config
from biograd.runner.train import train

T = ["--dataset=synthetic", "--dataset_args.n=48", "--model_args.hidden=[6]",
     "--batch_size=16", "--epochs=1", "--alignment_batch=16", "--eval_batch_size=48",
     "--out_dir=runs"]
MNIST = ["--dataset=mnist", "--model_args.hidden=[6]", "--out_dir=runs",
         "--dataset_args.download=false"]
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]


@pytest.fixture(scope="module")
def area(tmp_path_factory) -> Path:
    """A folder with a finished run, damaged copies of it, bad config files and bad data."""
    root = tmp_path_factory.mktemp("area")
    cfg = load_config(None, [*T, f"--out_dir={root / 'runs'}", "--run_name=r"])
    train(cfg)
    runs = root / "runs"
    shutil.copytree(runs / "r", runs / "trunc")
    ck = runs / "trunc" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:200])
    shutil.copytree(runs / "r", runs / "tamper")
    state = torch.load(runs / "tamper" / "checkpoint.pt", weights_only=True)
    state["rule"]["model.1.weight"][0, 0] += 1.0  # a loadable file with one value changed
    torch.save(state, runs / "tamper" / "checkpoint.pt")
    (root / "typo.yaml").write_text("rule: backprop\nbatchsize: 3\n")
    (root / "bad.yaml").write_text("rule: [backprop\n")
    (root / "list.yaml").write_text("- rule\n- backprop\n")
    for folder in ("corrupt/mnist", "junk", "empty/mnist", "fresh/mnist"):
        (root / folder).mkdir(parents=True)
    for name in MNIST_FILES:  # right names, wrong content: the SHA-256 check must refuse them
        (root / "corrupt" / "mnist" / name).write_bytes(b"not an idx file")
        (root / "junk" / name).write_bytes(b"\x00" * 64)
    return root


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 and every folder under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                         if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


CLI_CASES = [
    # unknown keys and wrong types
    (["train", *T, "--batchsize=3"], "unknown config key 'batchsize'. Did you mean 'batch_size'"),
    (["train", "--config", "typo.yaml"], "unknown config key 'batchsize'. Did you mean"),
    (["train", *T, "--rule_args.x=1", "--rule=kolen_pollack"],
     "rule 'kolen_pollack' has no hyper-parameter 'x'"),
    (["train", *T, "--epochs=two"], "config key 'epochs' must be int, got 'two' (str)"),
    (["train", *T, "--batch_size=1.5"], "config key 'batch_size' must be int, got 1.5 (float)"),
    (["train", *T, "--tensorboard=maybe"], "config key 'tensorboard' must be bool"),
    (["train", *T, "--rule_args=3"], "config key 'rule_args' must be dict, got 3 (int)"),
    # out-of-range values
    (["train", *T, "--lr=-0.1"], "config key 'lr' must be > 0, got -0.1"),
    (["train", *T, "--epochs=0"], "config key 'epochs' must be >= 1, got 0"),
    (["train", *T, "--batch_size=0"], "config key 'batch_size' must be >= 1, got 0"),
    (["train", *T, "--momentum=-0.5"], "config key 'momentum' must be >= 0, got -0.5"),
    (["train", *T, "--keep_checkpoints=0"], "config key 'keep_checkpoints' must be >= 1, got 0"),
    (["train", *T, "--val_size=1.5"], "'val_size' must be a fraction in [0, 1)"),
    (["train", *T, "--feedback_lr=0"], "config key 'feedback_lr' must be > 0 (or null), got 0"),
    (["train", *T, "--time_limit=0"], "config key 'time_limit' must be > 0 (or null), got 0"),
    (["train", *T, "--train_subset=0"], "config key 'train_subset' must be >= 1"),
    (["train", *T, "--rule=equilibrium_prop", "--rule_args.beta=0"],
     "rule 'equilibrium_prop': beta must be > 0, got 0"),
    (["train", *T, "--rule=dtp", "--rule_args.beta=-1"], "rule 'dtp': beta must be > 0, got -1"),
    # devices: an unknown name, a GPU where PyTorch sees none, a backend that cannot work
    (["train", *T, "--device=gpu"], "config key 'device': unknown device 'gpu'. Valid: cpu, cuda"),
    *([(["train", *T, "--device=cuda"], "config key 'device' is 'cuda' but PyTorch sees no CUDA "
                                         "device")] if not torch.cuda.is_available() else []),
    (["train", *T, "--dist_backend=mpi"], "unknown dist_backend 'mpi'. Valid: auto, gloo, nccl"),
    # unknown names, with the close matches
    (["train", *T, "--rule=backprob"], "unknown rule 'backprob'. Did you mean 'backprop'"),
    (["train", *T, "--model=mpl"], "unknown model 'mpl'. Did you mean 'mlp'"),
    (["train", *T, "--dataset=mnits"], "unknown dataset 'mnits'. Did you mean 'mnist'"),
    (["train", *T, "--optimizer=adamw"], "unknown optimizer 'adamw'. Did you mean 'adam'"),
    (["train", *T, "--loss=mes"], "unknown loss 'mes'. Did you mean 'mse'"),
    (["train", *T, "--rule=equilibrium_prop", "--rule_args.betta=0.5"],
     "no hyper-parameter 'betta'. Did you mean 'beta'"),
    (["train", *T, "--model_args.hiden=[4]"], "has no argument 'hiden'. Did you mean 'hidden'"),
    (["data", "fetch", "mnits"], "unknown dataset 'mnits'. Did you mean 'mnist'"),
    # a rule with a model it does not support: the message names the rules that do
    (["train", *T, "--rule=equilibrium_prop", "--model=lenet"],
     "rule 'equilibrium_prop' does not support model 'lenet' (a cnn model; it supports mlp). "
     "Rules that support cnn models: backprop, activation_relaxation"),
    (["compare", *T, "--arms=[equilibrium_prop]", "--model=lenet"],
     "rule 'equilibrium_prop' does not support cnn models"),
    # run directories and checkpoints
    (["train", *T, "--run_name=r"], "run directory 'runs/r' already exists; pass --overwrite"),
    (["train", "--resume", "runs/r", "--overwrite"], "drop --config and --overwrite"),
    (["train", "--resume", "runs/nothere"], "cannot resume 'runs/nothere': it holds no config"),
    (["train", "--resume", "runs/trunc", "--epochs=2"], "checkpoint.pt' cannot be read"),
    (["train", "--resume", "runs/tamper", "--epochs=2"], "was modified after it was written"),
    (["train", "--resume", "runs/r", "--epochs=2", "--model_args.hidden=[5]"],
     "does not fit this config"),
    # config files
    (["train", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["train", "--config", "bad.yaml"], "config file 'bad.yaml' is not valid YAML"),
    (["train", "--config", "list.yaml"], "must hold a mapping of keys to values, got list"),
    (["train", "--epochs"], "config keys are given as --key=value"),
    # missing or corrupt dataset files (checked by SHA-256; never downloaded here)
    (["train", *MNIST, "--data_dir=corrupt"], "missing or invalid train-images-idx3-ubyte"),
    (["train", *MNIST, "--data_dir=empty"], "could not obtain dataset 'mnist'"),
    (["data", "fetch", "mnist", "--data-dir", "fresh", "--from", "junk"],
     "gave files that failed verification: train-images-idx3-ubyte (SHA-256"),
    # a failed fetch into a folder that did not exist leaves no empty folders behind
    (["data", "fetch", "mnist", "--data-dir", "new/cache", "--from", "junk"],
     "could not obtain dataset 'mnist' into new/cache/mnist"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES,
                         ids=[f"{i:02d}" for i in range(len(CLI_CASES))])
def test_cli_bad_input_exits_2_and_changes_nothing(
    area: Path, monkeypatch, capsys, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(area)
    before = _snapshot(area)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert _snapshot(area) == before


def test_there_are_at_least_30_distinct_cases() -> None:
    assert len({m for _, m in CLI_CASES}) >= 30


MLP_RULES = [n for n in biograd.list_rules() if "mlp" in biograd.rule_info(n).supports]


def _mlp_rule(name: str):
    torch.manual_seed(0)
    return biograd.create_rule(name, biograd.models.mlp(12, [10], 4))


TENSOR_CASES = [
    (torch.zeros(6, 12, dtype=torch.long), torch.zeros(6, dtype=torch.long),
     "inputs must be a floating-point tensor"),
    (torch.zeros(6, 12, dtype=torch.float64), torch.zeros(6, dtype=torch.long),
     "inputs are torch.float64 but the model's parameters are torch.float32"),
    (torch.zeros(6, 5), torch.zeros(6, dtype=torch.long),
     "inputs of shape (6, 5) do not fit the model's first layer"),
    (torch.zeros(6, 12), torch.tensor([0, 1, 2, 3, 4, 0]), "labels must lie in [0, 3]"),
    (torch.zeros(6, 12), torch.tensor([0, 1, -1, 3, 2, 0]), "got range [-1, 3]"),
    (torch.zeros(6, 12), torch.zeros(6, 1, dtype=torch.long), "integer labels must be 1-D"),
    (torch.zeros(6, 12), torch.zeros(5, dtype=torch.long), "batch sizes differ: 6 inputs, 5"),
    (torch.zeros(6, 12), torch.zeros(6, 3), "float targets of shape (6, 3) do not match"),
]


@pytest.mark.parametrize("rule", MLP_RULES)
@pytest.mark.parametrize("case", range(len(TENSOR_CASES)))
def test_rule_step_rejects_bad_tensors(rule: str, case: int) -> None:
    x, y, message = TENSOR_CASES[case]
    r = _mlp_rule(rule)
    before = {k: v.clone() for k, v in r.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(InputError) as info:
        r.step(x, y)
    assert message in str(info.value) and f"rule {rule!r}" in str(info.value)
    assert all(p.grad is None for p in r.parameters())
    after = r.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_conv_input_of_the_wrong_shape() -> None:
    r = biograd.create_rule("backprop", biograd.models.lenet(1, 4, image_size=8,
                                                             channels=(3, 4), hidden=6))
    with pytest.raises(InputError, match=r"expects \(batch, 1, H, W\)"):
        r.step(torch.zeros(6, 3, 8, 8), torch.zeros(6, dtype=torch.long))


def test_api_errors_have_specific_types(area: Path) -> None:
    before = _snapshot(area)
    mlp = biograd.models.mlp(12, [10], 4)
    with pytest.raises(UnknownNameError, match="Did you mean 'backprop'"):
        biograd.create_rule("backprob", mlp)
    with pytest.raises(UnsupportedModelError, match="needs an MLP") as err:
        biograd.create_rule("equilibrium_prop", biograd.models.lenet(1, 4, image_size=8))
    graph_rules = [n for n in biograd.list_rules() if "graph" in biograd.rule_info(n).supports]
    assert f"accept arbitrary (torch.fx-traceable) models: {', '.join(graph_rules)}" in str(
        err.value)
    gru = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GRU(4, 4))
    with pytest.raises(UnsupportedModelError, match="layer '1' of type GRU") as err:
        biograd.create_rule("feedback_alignment", gru)
    assert "Other rules that accept" in str(err.value)
    others = str(err.value).split("models: ")[1].split(";")[0].split(", ")
    assert "feedback_alignment" not in others and "zil" in others
    with pytest.raises(ConfigError, match="rule 'ldrl': beta must be > 0"):
        biograd.create_rule("ldrl", mlp, beta=0.0)
    with pytest.raises(ConfigError, match="config key 'lr' must be > 0"):
        load_config(None, ["--lr=-1"])
    cfg = load_config(None, [*T, f"--out_dir={area / 'runs'}", "--run_name=r"])
    with pytest.raises(ConfigError, match="already exists"):
        train(cfg)
    with pytest.raises(UnsupportedModelError, match="Rules that support cnn models"):
        train(cfg.replace(rule="equilibrium_prop", model="lenet", run_name="x"))
    with pytest.raises(CheckpointError, match="cannot be read"):
        rundir.load_checkpoint(area / "runs" / "trunc")
    with pytest.raises(CheckpointError, match="was modified"):
        train(cfg.replace(run_name="tamper", epochs=2), resume=True)
    with pytest.raises(DataError, match="failed verification"):
        biograd.data.fetch("mnist", data_dir=area / "fresh", source_dir=area / "junk")
    assert _snapshot(area) == before
