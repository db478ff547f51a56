"""P2's claim checks (biograd.papers.p2_ldrl) on hand-made run summaries: each verdict follows
from the stated threshold (L-DRL within 1 point of backprop, ahead of DRL and the DDTP
baselines, the smallest update angle, at least twice backprop's step time), only on the
experiments the budget can test (backprop converged to the preset's reference accuracy, every
run finished, 3 seeds), and diverged runs count against the rule that diverged."""

from __future__ import annotations

from pathlib import Path

import pytest

from biograd.experiments.paper_report import (
    HELD,
    NOT_HELD,
    NOT_TESTABLE,
    Context,
)
from biograd.experiments.reproduce import plan
from biograd.papers import load_preset
from biograd.papers.p2_ldrl import _claims, layer_angles, report
from biograd.rundir import ALIGNMENT, write_rows

ARMS = ("backprop", "dtp", "drl", "ldrl", "s_ddtp", "p_ddtp")
#: per arm: test accuracies (%) of seeds 0-2 and final mean update angles (degrees)
GOOD = {"backprop": ([98.3, 98.2, 98.4], [0.0, 0.0, 0.0]),
        "dtp": (None, None),  # every seed diverged
        "drl": ([97.5, 97.6, 97.4], [20.0, 21.0, 19.0]),
        "ldrl": ([97.9, 98.0, 97.8], [10.0, 11.0, 9.0]),
        "s_ddtp": ([97.0, 97.1, 96.9], [25.0, 24.0, 26.0]),
        "p_ddtp": ([97.2, 97.1, 97.3], [27.0, 26.0, 28.0])}


def _runs(arm: str, accs: list[float] | None, angles: list[float] | None,
          exp: str = "mnist-mlp") -> list[dict]:
    if accs is None:
        return [{"status": "diverged", "seed": s, "experiment": exp, "arm": arm}
                for s in range(3)]
    pairs = enumerate(zip(accs, angles, strict=True))
    return [{"status": "completed", "seed": s, "test_acc": a / 100, "angle_update": g,
             "experiment": exp, "arm": arm} for s, (a, g) in pairs]


def _ctx(cells: dict[str, tuple], costs: dict[str, float] | None = None,
         lenet: bool = False) -> Context:
    p = plan(load_preset("p2-ldrl"), "standard", runs_dir="/nonexistent")
    results = {("mnist-mlp", a): _runs(a, *cells[a]) for a in ARMS}
    for a in ARMS:  # the LeNet's runs are not in the store: status missing
        results["mnist-lenet", a] = (
            _runs(a, [99.2] * 3, [1.0] * 3, "mnist-lenet") if lenet else
            [{"status": "missing", "seed": s, "reason": "not trained"} for s in range(3)])
    ctx = Context(p, results, Path("/nonexistent"), 0.0, [], measure_missing=False)
    ctx._costs.update({"mnist-mlp": {"backprop": 1.0, "ldrl": (costs or {}).get("mlp", 5.7)},
                       "mnist-lenet": {"backprop": 1.0}
                       | ({"ldrl": costs["lenet"]} if costs and "lenet" in costs else {})})
    return ctx


def _verdicts(ctx: Context) -> list[str]:
    exps = list(ctx.plan.experiments)
    return [c.verdict for c in _claims(ctx, exps, [a for a in ARMS if a != "backprop"])]


def test_claims_hold_on_the_testable_experiment_and_name_the_untestable_one() -> None:
    ctx = _ctx(GOOD, costs={"mlp": 5.7, "lenet": 16.0})
    claims = _claims(ctx, list(ctx.plan.experiments), [a for a in ARMS if a != "backprop"])
    assert [c.verdict for c in claims] == [HELD, HELD, HELD, HELD]
    for c in claims[:3]:  # judged on mnist-mlp only; the LeNet is named with its reason
        assert "in 1 of 1 testable" in c.evidence and "mnist-lenet/backprop: 0 of 3" in c.evidence
    assert "ldrl 10.0° ± 1.0°" in claims[0].statistic and "dtp" in claims[0].statistic
    assert "gap +0.40 pts" in claims[1].statistic  # 98.3 - 97.9
    assert "2 of 2 measured" in claims[3].evidence  # cost needs no trained run


def test_accuracy_gap_threshold_is_one_point() -> None:
    inside = dict(GOOD, ldrl=([97.4, 97.3, 97.5], [10.0, 11.0, 9.0]))  # gap 0.9
    assert _verdicts(_ctx(inside))[1] == HELD
    below = dict(GOOD, ldrl=([97.2, 97.1, 97.3], [10.0, 11.0, 9.0]))  # gap 1.1
    ctx = _ctx(below)
    assert _verdicts(ctx)[1] == NOT_HELD
    # DRL's mean (97.5) is then above L-DRL's (97.2): "ahead" fails too
    assert _verdicts(ctx)[2] == NOT_HELD


def test_a_diverged_ldrl_seed_fails_the_accuracy_claim() -> None:
    ctx = _ctx(GOOD)
    ctx.results["mnist-mlp", "ldrl"][2] = {"status": "diverged", "seed": 2}
    v = _verdicts(ctx)
    assert v[1] == NOT_HELD and v[2] == NOT_HELD and v[0] == NOT_HELD


def test_a_rival_closer_to_backprop_fails_the_alignment_claim() -> None:
    cells = dict(GOOD, p_ddtp=([97.2, 97.1, 97.3], [9.0, 10.0, 8.0]))
    assert _verdicts(_ctx(cells))[0] == NOT_HELD
    # a rival whose every seed diverged has no angle: L-DRL still has the smallest
    assert _verdicts(_ctx(dict(GOOD, drl=(None, None))))[0] == HELD


def test_unconverged_backprop_makes_every_run_claim_untestable() -> None:
    cells = dict(GOOD, backprop=([97.9, 98.0, 97.95], [0.0, 0.0, 0.0]))  # mean 97.95 < 98
    ctx = _ctx(cells, costs={"mlp": 5.7})
    claims = _claims(ctx, list(ctx.plan.experiments), [a for a in ARMS if a != "backprop"])
    assert [c.verdict for c in claims[:3]] == [NOT_TESTABLE] * 3
    assert "below the 98 %" in claims[0].evidence
    assert claims[3].verdict == HELD and "mnist-lenet: not measured" in claims[3].evidence


def test_two_seeds_are_not_enough_at_the_standard_budget() -> None:
    ctx = _ctx(GOOD)
    ctx.results["mnist-mlp", "backprop"][0] = {"status": "diverged", "seed": 0}
    assert _verdicts(ctx)[:3] == [NOT_TESTABLE] * 3


def test_cost_threshold_is_twice_backprop() -> None:
    assert _verdicts(_ctx(GOOD, costs={"mlp": 1.9}))[3] == NOT_HELD
    assert _verdicts(_ctx(GOOD, costs={"mlp": 2.0}))[3] == HELD
    assert _verdicts(_ctx(GOOD, costs={"mlp": 2.0, "lenet": 1.5}))[3] == "partly held"


def test_a_converged_lenet_is_judged_too() -> None:
    ctx = _ctx(GOOD, lenet=True)  # every arm 99.2 %, 1 degree: ties are not wins for rivals
    claims = _claims(ctx, list(ctx.plan.experiments), [a for a in ARMS if a != "backprop"])
    assert "in 1 of 2 testable" in claims[0].evidence  # the LeNet's dtp angle equals L-DRL's
    assert claims[0].verdict == "partly held"
    assert claims[1].verdict == HELD and claims[2].verdict == HELD


def test_per_layer_final_angles_come_from_each_seeds_last_alignment_row(tmp_path: Path) -> None:
    ctx = _ctx(GOOD, costs={"mlp": 5.7, "lenet": 16.0})
    for s, run in enumerate(ctx.results["mnist-mlp", "ldrl"]):
        run["run_dir"] = str(tmp_path / f"ldrl-s{s}")
        Path(run["run_dir"]).mkdir()
        write_rows(Path(run["run_dir"]) / ALIGNMENT, [
            {"step": 250, "angle_update/1.weight": 50.0, "angle_update/1.bias": 3.0},
            {"step": 500, "angle_update/1.weight": 10.0 + 2 * s, "angle_update/1.bias": 4.0}])
    assert layer_angles(ctx, "mnist-mlp", "ldrl") == {"1.weight": [10.0, 12.0, 14.0]}
    assert layer_angles(ctx, "mnist-mlp", "ldrl", row=0) == {"1.weight": [50.0] * 3}
    ctx.out = tmp_path / "out"
    body = report(ctx).body
    assert "| ldrl | 50.0 → 12.0 ± 2.0 |" in body
    assert "| backprop | 98.30 ± 0.10 / 0.0 ± 0.0° / 1.0× |" in body


@pytest.mark.parametrize("budget,seeds", [("quick", 1), ("standard", 3)])
def test_standard_budget_plans_three_seeds_on_full_mnist(budget: str, seeds: int) -> None:
    p = plan(load_preset("p2-ldrl"), budget)
    assert len(p.seeds) == seeds
    if budget == "standard":
        assert list(p.experiments) == ["mnist-mlp", "mnist-lenet"]
        for cfg in p.experiments.values():
            assert cfg.train_subset is None and cfg.test_subset is None and cfg.threads == 1
        runs = {(r.experiment, r.arm): r.config for r in p.runs}
        assert runs["mnist-lenet", "ldrl"].rule_args == {"feedback_steps": [5, 20, 20]}
        assert runs["mnist-lenet", "ldrl"].lr == 0.005
        for arm in ("s_ddtp", "p_ddtp"):  # the DDTP authors' optimizer on the LeNet only
            lenet, mlp = runs["mnist-lenet", arm], runs["mnist-mlp", arm]
            assert (lenet.optimizer, lenet.lr, lenet.momentum) == ("adam", 3e-4, 0.0)
            assert (mlp.optimizer, mlp.momentum) == ("sgd", 0.9)
        assert p.preset["budgets"]["standard"]["reason"]
