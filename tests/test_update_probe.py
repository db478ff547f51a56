"""The update probe (biograd.experiments.update_probe): a replay of a run's first steps that
tells a code change keeping every update (a faster implementation) from one changing what
the rule computes. Expectations come from what the probe replays: the same config gives the
same sketch, a changed seed, rule argument or step gives another, and float rounding stays
inside the tolerance."""

from __future__ import annotations

import copy

import pytest

from biograd.experiments import update_probe as up
from biograd.runner.config import Config
from tests.conftest import scale_updates

BASE = dict(dataset="synthetic", dataset_args={"n": 32, "input_shape": [1, 6, 6],
                                               "num_classes": 3},
            model="mlp", model_args={"hidden": [8, 8], "activation": "tanh"}, batch_size=16,
            optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, threads=1)


def _cfg(rule: str, **kw) -> Config:
    return Config(**{**BASE, "rule": rule, **kw})


@pytest.mark.parametrize("rule", ["backprop", "feedback_alignment", "kolen_pollack",
                                  "weight_mirror", "dtp", "ldrl", "lra_e", "equilibrium_prop",
                                  "activation_relaxation", "predictive_coding", "zil"])
def test_a_probe_is_reproducible_and_runs_in_both_dtypes(rule: str) -> None:
    a, b = up.probe(_cfg(rule)), up.probe(_cfg(rule))
    assert up.usable(a) and up.difference(a, b) is None
    for dtype in ("float64", "float32"):
        assert "error" not in a[dtype], a[dtype]
        assert len(a[dtype]["losses"]) == up.STEPS
        # every tensor the rule holds is sketched: the network's layers at least
        assert any(k.endswith("weight") for k in a[dtype]["state"])


def test_what_the_run_computes_changes_the_probe(monkeypatch) -> None:
    base = up.probe(_cfg("feedback_alignment"))
    assert "float64" in up.difference(base, up.probe(_cfg("feedback_alignment", seed=1)))
    assert up.difference(base, up.probe(_cfg("feedback_alignment", lr=0.051))) is not None
    assert up.difference(base, up.probe(_cfg("backprop"))) is not None  # B != W^T
    scale_updates(monkeypatch, "feedback_alignment", 1 + 1e-6)  # one part in a million
    got = up.difference(base, up.probe(_cfg("feedback_alignment")))
    assert got is not None and got.startswith("float64: ")  # far above float64's tolerance


def test_rounding_stays_inside_the_tolerance() -> None:
    a = up.probe(_cfg("kolen_pollack"))
    b = copy.deepcopy(a)
    for dtype, tol in up.TOLERANCE.items():
        for values in b[dtype]["state"].values():
            values[-1] += 0.1 * tol * abs(values[0])  # a tenth of the tolerance of the norm
        b[dtype]["losses"][0] *= 1 + 0.1 * tol
    assert up.difference(a, b) is None
    b["float64"]["losses"][1] *= 1 + 10 * up.TOLERANCE["float64"]
    assert up.difference(a, b).startswith("float64: loss of step 2")


def test_only_probes_of_this_procedure_are_compared() -> None:
    a = up.probe(_cfg("backprop"))
    for change in ({"version": up.VERSION + 1}, {"steps": up.STEPS + 1}, {"batch": 1},
                   {"float64": {"error": "x"}, "float32": {"error": "y"}}):
        other = {**a, **change}
        assert not up.usable(other)
        assert up.difference(a, other) == "no comparable probe"
    assert up.difference(a, {**a, "float32": {"error": "RuntimeError: no"}}).startswith(
        "float32: the rule ran in one probe only")


def test_the_probe_builds_the_model_the_run_builds() -> None:
    # synthetic data with 3 classes: the runner keeps the dataset's 4 outputs at least
    assert up._shape(_cfg("backprop")) == ((1, 6, 6), 4)
    assert up._shape(_cfg("backprop", dataset="mnist", dataset_args={})) == ((1, 28, 28), 10)
