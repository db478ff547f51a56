"""P3's exposure check (biograd.papers.p3_exposure): the preset's check experiment is the
LeNet's Kolen-Pollack run with only the decay raised to P3's exposure, it stays out of the
accuracy claims, and the alignment claim states what it measured, from constructed summaries."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from biograd.core.errors import ConfigError
from biograd.experiments.paper_report import HELD, NOT_HELD, PARTLY, Context
from biograd.experiments.reproduce import plan
from biograd.papers import load_preset, p3_decay, p3_exposure
from biograd.papers import p3_weight_transport as p3

STEPS = math.ceil(60000 / 64)
ACCS = {"backprop": 99.3, "feedback_alignment": 98.0, "sign_symmetry": 98.5,
        "weight_mirror": 99.0, "kolen_pollack": 99.1}
ALIGN = "WM and KP bring the feedback weights into alignment with W^T"


def _plan(tmp_path: Path, **settings):
    p = plan(load_preset("p3-weight-transport"), "standard", runs_dir=tmp_path)
    return dataclasses.replace(p, settings={**p.settings, **settings}) if settings else p


def _results(p, lenet_kp: float, check_kp: float | None, check_seeds: int = 3,
             check_steps: int = STEPS) -> dict:
    """Every run of ``p`` completed: angles 8 deg (WM) / 2 deg (KP) except LeNet's KP
    (``lenet_kp``) and the exposure check's KP (``check_kp``; None: its runs are absent)."""
    out: dict = {}
    for spec in p.runs:
        steps = check_steps if spec.experiment == "mnist-lenet-decay" else STEPS
        angle = {"weight_mirror": 8.0, "kolen_pollack": 2.0}.get(spec.arm, 50.0)
        if spec.experiment == "mnist-lenet" and spec.arm == "kolen_pollack":
            angle = lenet_kp
        if spec.experiment == "mnist-lenet-decay":
            if check_kp is None or spec.seed >= check_seeds:
                continue
            angle = check_kp
        out.setdefault((spec.experiment, spec.arm), []).append(
            {"status": "completed", "test_acc": (ACCS[spec.arm] + 0.01 * spec.seed) / 100,
             "angle_feedback": angle, "steps_per_epoch": steps})
    return out


def _claims(tmp_path: Path, lenet_kp: float, check_kp: float | None, **kw) -> dict:
    p = _plan(tmp_path)
    ctx = Context(p, _results(p, lenet_kp, check_kp, **kw), tmp_path, 0.0, [])
    return {c.claim.split(" (")[0].split(".")[0]: c
            for c in p3._claims(ctx, p3_exposure.claim_experiments(ctx))}


def test_check_is_the_lenet_kp_run_with_p3s_exposure(tmp_path: Path) -> None:
    p = _plan(tmp_path)
    assert p.settings["exposure_check"] == {"mnist-lenet": "mnist-lenet-decay"}
    check = [s for s in p.runs if s.experiment == "mnist-lenet-decay"]
    assert {s.arm for s in check} == {"kolen_pollack"} and len(check) == 3
    claim = {s.seed: s.config for s in p.runs
             if s.experiment == "mnist-lenet" and s.arm == "kolen_pollack"}
    for s in check:  # the same run but for the decay (and where it is stored)
        same = dataclasses.replace(s.config, weight_decay=claim[s.seed].weight_decay,
                                   out_dir=claim[s.seed].out_dir)
        assert same == claim[s.seed]
    lam, rates = p3_decay.kp_weight_decay(check[0].config), p3_decay.lr_sum(check[0].config, STEPS)
    assert p3.P3_EXPOSURE[0] <= lam * rates <= p3.P3_EXPOSURE[1]
    assert p3_decay.kp_weight_decay(claim[0]) * rates < p3.P3_EXPOSURE[0]  # the budget's LeNet
    # the check experiment exists only at the standard budget
    assert "mnist-lenet-decay" not in plan(load_preset("p3-weight-transport"), "quick",
                                           runs_dir=tmp_path).experiments


def test_check_experiment_stays_out_of_the_claims(tmp_path: Path) -> None:
    p = _plan(tmp_path)
    ctx = Context(p, {}, tmp_path, 0.0, [])
    assert p3_exposure.claim_experiments(ctx) == ["mnist-mlp", "mnist-lenet"]
    claims = _claims(tmp_path, lenet_kp=2.0, check_kp=1e-6)
    assert {c.verdict for c in claims.values()} == {HELD}  # a KP-only experiment would not be
    assert all("mnist-lenet-decay" not in c.evidence for c in claims.values())


def test_alignment_claim_reads_the_check_where_kp_misses(tmp_path: Path) -> None:
    claims = _claims(tmp_path, lenet_kp=20.0, check_kp=1e-6)
    align = claims[ALIGN]
    assert align.verdict == PARTLY  # the verdict is the budget's runs, not the check's
    assert "exposure 2.27" in align.evidence and "below the 15° threshold" in align.evidence
    assert "over 3 seeds" in align.evidence and "99.11 ± 0.01 %" in align.evidence
    still = _claims(tmp_path, lenet_kp=20.0, check_kp=30.0)[ALIGN]
    assert "not below the 15° threshold even there" in still.evidence
    absent = _claims(tmp_path, lenet_kp=20.0, check_kp=None)[ALIGN]
    assert "has no finished run yet (0 stored, 0 diverged)" in absent.evidence


def test_alignment_claim_fails_without_a_check(tmp_path: Path) -> None:
    p = _plan(tmp_path, exposure_check={})
    ctx = Context(p, _results(p, lenet_kp=20.0, check_kp=None), tmp_path, 0.0, [])
    align = p3._claims(ctx, p3_exposure.claim_experiments(ctx))[0]
    assert align.verdict == PARTLY and "decay exposure on" not in align.evidence
    only_lenet = p3._claims(ctx, ["mnist-lenet"])[0]
    assert only_lenet.verdict == NOT_HELD


@pytest.mark.parametrize(("setting", "message"), [
    ({"mnist-lenet": "mnist-lenet-wd"}, "check experiment 'mnist-lenet-wd' is not one of"),
    ({"lenet": "mnist-lenet-decay"}, "claim experiment 'lenet' is not one of"),
    ({"mnist-lenet": "mnist-lenet"}, "cannot be both a claim experiment and an exposure check"),
    ({"mnist-lenet": "mnist-mlp", "mnist-mlp": "mnist-lenet-decay"}, "cannot be both"),
    (["mnist-lenet"], "must map a claim experiment to its exposure-check experiment"),
])
def test_bad_settings_are_named(tmp_path: Path, setting, message: str) -> None:
    ctx = Context(_plan(tmp_path, exposure_check=setting), {}, tmp_path, 0.0, [])
    with pytest.raises(ConfigError, match=message):
        p3_exposure.checks(ctx)


def test_a_check_outside_p3s_exposure_is_named_not_used(tmp_path: Path) -> None:
    # a tenth of the steps per epoch (93): exposure 0.22, outside P3's 1.7-4.5
    align = _claims(tmp_path, lenet_kp=20.0, check_kp=1e-6, check_steps=STEPS // 10)[ALIGN]
    assert "runs at exposure 0.22, outside P3's 1.7-4.5" in align.evidence
    assert "below the 15° threshold" not in align.evidence
