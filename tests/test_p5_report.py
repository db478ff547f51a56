"""P5's report (``biograd reproduce p5-zil``): every number is a stored measurement, a second
invocation only reads them, the rounding thresholds follow their formula, and the cost
statistics are the paired per-round ratios."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from biograd.experiments import paper_report
from biograd.experiments.reproduce import plan
from biograd.papers import load_preset
from biograd.papers import p5_measure as pm
from biograd.papers import p5_zil as p5

TINY = ["settings.repeats=2", "settings.slow_repeats=1", "settings.exactness_batch=2",
        "settings.cost_batch=2", "settings.architectures=[MLP]"]


def _ctx(tmp_path: Path, *, measure_missing: bool = True,
         budget: str = "standard") -> paper_report.Context:
    p = plan(load_preset("p5-zil"), budget, overrides=TINY, runs_dir=tmp_path / "runs")
    return paper_report.Context(p, {}, tmp_path / "out", time.perf_counter(), [],
                                measure_missing=measure_missing)


def test_standard_budget_has_three_seeds_a_reason_and_resnet18() -> None:
    p = plan(load_preset("p5-zil"), "standard")
    assert p.seeds == [0, 1, 2] and not p.runs
    assert "ResNet-18" in p.settings["architectures"]
    assert p.settings["repeats"] > plan(load_preset("p5-zil"), "quick").settings["repeats"]
    assert (load_preset("p5-zil")["budgets"]["standard"]["reason"] or "").strip()
    assert set(p.settings["architectures"]) <= set(p5.architectures(2, large=True))


def test_seeds_draw_different_models_and_batches() -> None:
    (m0, x0, y0), (m1, x1, y1) = (p5.architectures(2, s)["MLP"]() for s in (0, 1))
    assert not torch.equal(x0, x1)
    assert not torch.equal(next(m0.parameters()), next(m1.parameters()))
    m0b, x0b, y0b = p5.architectures(2, 0)["MLP"]()
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)
    assert torch.equal(next(m0.parameters()), next(m0b.parameters()))


def test_a_second_invocation_only_reads_the_stored_measurements(tmp_path: Path,
                                                                 monkeypatch) -> None:
    first = p5.report(_ctx(tmp_path))
    names = sorted(f.name for f in (tmp_path / "runs" / "p5-zil" / "standard"
                                    / "_measurements").glob("*.json"))
    assert names == ["exactness-MLP-s0.json", "exactness-MLP-s1.json",
                     "exactness-MLP-s2.json", "steptime-MLP.json"]

    def boom(*args, **kwargs):
        raise AssertionError("a stored measurement was measured again")

    monkeypatch.setattr(p5, "exactness", boom)
    monkeypatch.setattr(p5, "step_times", boom)
    again = p5.report(_ctx(tmp_path, measure_missing=False))
    strip = [line for line in again.body.splitlines() if "measured at" not in line]
    assert strip == [line for line in first.body.splitlines() if "measured at" not in line]
    assert [c.verdict for c in again.claims] == [c.verdict for c in first.claims]


def test_without_measurements_the_report_says_not_measured(tmp_path: Path) -> None:
    section = p5.report(_ctx(tmp_path, measure_missing=False))
    assert "| MLP | not measured |" in section.body
    assert all(c.verdict == paper_report.NOT_TESTABLE for c in section.claims)
    assert not (tmp_path / "runs").exists()


def test_exactness_row_on_a_small_model() -> None:
    """Thm. 1 within the rounding threshold; the fast path equals autograd by construction;
    gamma = 0.5 scales the level-k updates by 0.5^k, so some update moves by >= 1/2."""
    row = p5.exactness(p5.architectures(2, 0)["MLP"])
    for tag in p5.DTYPES:
        assert row[f"full vs bp {tag}"] <= p5.threshold(row, tag) < 1
        assert row[f"fast vs bp {tag}"] == 0.0
        # fast == autograd, so fast vs full is full vs autograd up to the normalisation
        assert row[f"fast vs full {tag}"] == pytest.approx(row[f"full vs bp {tag}"], rel=1e-6)
        assert p5.wave_check(row, tag)[1] <= 1
    assert row["gamma = 0.5 (C3 breaks)"] >= 0.5
    assert row["vertices"] == row["vertices without levelling"]  # an MLP has no skip edge
    assert len(row["kappa"]) == row["depth"] and len(row["wave full f64"]) == row["depth"] + 1


def test_threshold_is_the_first_order_rounding_bound() -> None:
    # errors ||e_t|| = sqrt(2 E_t) = 4, 2, 1; kappa = 10, 100: K = 1, 11, 111
    row = {"kappa": [10.0, 100.0], "wave full f64": [8.0, 2.0, 0.5]}
    assert pm.level_factors(row) == [1.0, 11.0, 111.0]
    eps = torch.finfo(torch.float32).eps
    want = p5.C_ROUND * eps * (1.0 * 1 + 0.5 * 11 + 0.25 * 111)
    assert p5.threshold(row, "f32") == pytest.approx(want, rel=1e-12)


def test_wave_check_skips_steps_below_the_dtypes_resolution() -> None:
    eps = torch.finfo(torch.float32).eps
    big = 1 / (2 * p5.C_ROUND * eps)  # K_t at which the step's threshold reaches 1
    row = {"kappa": [1.0, big], "wave full f64": [1.0, 1.0, 1.0],
           "wave full f32": [1.0, 1.0, 1.0], "wave fast f32": [1.0, 1.0 + 1e-6, 5.0]}
    worst, ratio, blind = p5.wave_check(row, "f32")
    assert blind == 1 and worst == pytest.approx(1e-6, rel=1e-6)
    assert ratio == pytest.approx(1e-6 / (2 * p5.C_ROUND * eps * 2), rel=1e-6)


def test_cost_ratios_are_paired_per_round() -> None:
    times = {"backprop": [1.0, 2.0, 4.0, 1.0], "zil": [1.0, 3.0, 4.0, 2.0],
             "zil full dynamics": [10.0]}
    assert p5.ratio_quartiles(times, "zil") == pytest.approx((1.0, 1.25, 1.625))
    assert p5.ratio_quartiles(times, "zil full dynamics") == (10.0, 10.0, 10.0)
    assert all(math.isnan(v) for v in p5.ratio_quartiles(times, "predictive_coding"))


def test_a_rebuilt_report_counts_the_stored_measurements_time(tmp_path: Path) -> None:
    """A report rebuilt from stored measurements states the time they took when they were
    made (P5 has no runs: the work behind it is its measurements), not just the rebuild's."""
    p5.report(_ctx(tmp_path))
    stored = [json.loads(f.read_text())["seconds"] for f in
              (tmp_path / "runs" / "p5-zil" / "standard" / "_measurements").glob("*.json")]
    ctx = _ctx(tmp_path, measure_missing=False)
    summary = paper_report.write(ctx, p5.report(ctx))
    assert summary["wall_seconds"] >= round(sum(stored), 1) > 0
    text = (tmp_path / "out" / "p5-zil.md").read_text()
    assert f"4 measurements read from the store, {sum(stored):.0f} s when they were made" in text
