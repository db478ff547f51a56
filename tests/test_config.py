"""Config: dataclass defaults <- YAML <- --key=value overrides, and every error path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from biograd.core.errors import ConfigError
from biograd.runner.config import Config, from_dict, load_config
from biograd.runner.models import build_model
from biograd.runner.validate import check_names


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "lr: 1e-3\nepochs: 3\nrule_args: {a: 1, b: 2}\n")
    cfg = load_config(path, ["--epochs=5", "--rule_args.b=1e-4", "--rule_args.c=x"])
    assert cfg.lr == pytest.approx(1e-3)  # YAML, a float although written without a dot
    assert isinstance(cfg.lr, float)
    assert cfg.epochs == 5  # the override beats the file
    assert cfg.batch_size == Config().batch_size  # the default survives
    assert cfg.rule_args == {"a": 1, "b": pytest.approx(1e-4), "c": "x"}  # dotted keys merge


def test_override_values_are_yaml_scalars() -> None:
    cfg = load_config(None, ["--train_subset=null", "--tensorboard=true",
                             "--model_args.hidden=[8, 4]", "--feedback_lr=2", "--val_size=0.1"])
    assert cfg.train_subset is None and cfg.tensorboard is True
    assert cfg.model_args == {"hidden": [8, 4]}
    assert cfg.feedback_lr == 2 and cfg.val_size == pytest.approx(0.1)


def test_nested_overrides_create_and_deepen_dicts() -> None:
    cfg = load_config(None, ["--dataset_args.a.b=1e-4", "--dataset_args.a.c=2"])
    assert cfg.dataset_args == {"a": {"b": pytest.approx(1e-4), "c": 2}}


def test_round_trip_through_dict() -> None:
    cfg = load_config(None, ["--lr=0.5", "--model_args.hidden=[8, 4]"])
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--lrr=0.1"], "unknown config key 'lrr'. Did you mean 'lr'"),
        (["--rule_arg.x=1"], "Did you mean 'rule_args'"),
        (["--lr=fast"], "config key 'lr' must be float"),
        (["--epochs=1.5"], "config key 'epochs' must be int"),
        (["--tensorboard=3"], "config key 'tensorboard' must be bool"),
        (["--rule_args=3"], "config key 'rule_args' must be dict"),
        (["--lr=0"], "config key 'lr' must be > 0"),
        (["--lr=-1"], "config key 'lr' must be > 0"),
        (["--epochs=0"], "config key 'epochs' must be >= 1"),
        (["--batch_size=0"], "config key 'batch_size' must be >= 1"),
        (["--momentum=-0.1"], "config key 'momentum' must be >= 0"),
        (["--feedback_lr=0"], "config key 'feedback_lr' must be > 0"),
        (["--train_subset=0"], "config key 'train_subset' must be >= 1"),
        (["--val_size=1.5"], "config key 'val_size' must be a fraction"),
        (["--optimizer=sdg"], "unknown optimizer 'sdg'. Did you mean 'sgd'"),
        (["--scheduler=cos"], "unknown scheduler 'cos'"),
        (["--optimizer=adam", "--momentum=0.9"], "config key 'momentum' must be 0"),
        (["--seeds=[1]"], "belongs to a comparison, not to one run"),
        (["--rules=[backprop]"], "belongs to a comparison, not to one run"),
        (["--lr"], "must look like --key=value"),
        (["--lr=1", "--lr.x=1"], "'lr' is not a mapping"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_yaml(tmp_path, "lr: [1,\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(_yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        load_config(_yaml(tmp_path, "epoch: 2\n"))
    with pytest.raises(ConfigError, match="biograd compare --config FILE"):
        load_config(_yaml(tmp_path, "base: {lr: 0.1}\narms: [backprop]\n"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--rule=backprob"], "unknown rule 'backprob'. Did you mean 'backprop'"),
        (["--model=mpl"], "unknown model 'mpl'. Did you mean 'mlp'"),
        (["--dataset=mnits"], "unknown dataset 'mnits'"),
        (["--loss=mse2"], "unknown loss 'mse2'"),
        (["--rule_args.beta=0.1"], "'rule_args.beta': rule 'backprop' has no hyper-parameter"),
    ],
)
def test_unknown_names_are_config_errors(overrides: list[str], message: str) -> None:
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_names(cfg)


def test_model_table_builds_from_the_dataset_shape() -> None:
    import torch

    mlp = build_model("mlp", (1, 8, 8), 4, {"hidden": [5]})
    assert mlp(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    assert sum(p.numel() for p in mlp.parameters()) == 64 * 5 + 5 + 5 * 4 + 4
    lenet = build_model("lenet", (1, 8, 8), 3, {"channels": [2, 3], "hidden": 4})
    assert lenet(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ConfigError, match="'model_args.hiden'.*Did you mean 'hidden'"):
        build_model("mlp", (1, 8, 8), 4, {"hiden": [5]})
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        build_model("vgg", (1, 8, 8), 4)


def test_same_config_tolerates_keys_added_later_at_their_default() -> None:
    """A run saved before a config key existed is still the same run while the key holds its
    default (so upgrading biograd does not force retraining), and only then."""
    from biograd.runner.config import Config, same_config

    cfg = Config(rule="backprop", epochs=2)
    saved = cfg.to_dict()
    assert same_config(saved, cfg)
    old = {k: v for k, v in saved.items() if k != "time_limit"}
    assert same_config(old, cfg)
    assert not same_config(old, cfg.replace(time_limit=60.0))
    assert not same_config({**saved, "epochs": 3}, cfg)
    assert not same_config({**saved, "unknown_key": 1}, cfg)
    # the comparison keys a run config held before issue 14 never changed the run
    legacy = {**saved, "rules": ["backprop"], "seeds": [0], "rule_args_per_rule": {},
              "config_per_rule": {}, "cost_repeats": 5}
    assert same_config(legacy, cfg)
    assert load_config(None, base=legacy) == cfg
