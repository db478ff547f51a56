"""benchmarks/vs_biotorch.py: the non-timing logic (tables, targets, BioTorch absent). No
timing assertions: the numbers themselves belong in docs/results.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from biograd.metrics.cost import CostEntry


def load_bench() -> ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "vs_biotorch.py"
    spec = importlib.util.spec_from_file_location("vs_biotorch", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


bench = load_bench()


def entry(name: str, ratio: float) -> CostEntry:
    e = CostEntry(name, lambda: None)
    e.seconds.append(1e-3)
    e.ratios.append(ratio)
    return e


def test_verdict_needs_both_the_backprop_ratio_and_biotorch() -> None:
    rows = [bench.Row("fa", biotorch=entry("BioTorch fa", 1.20),
                      biograd=entry("feedback_alignment", 1.10))]
    # ratio to backprop at the limit and no slower than BioTorch (x plain autograd)
    assert bench.verdict(entry("feedback_alignment", 1.10), rows)[1] == "met"
    assert "> 1.10x backprop" in bench.verdict(entry("feedback_alignment", 1.11), rows)[1]
    rows[0].biograd = entry("feedback_alignment", 1.21)
    assert bench.verdict(entry("feedback_alignment", 1.0), rows)[1] == (
        "MISSED: slower than BioTorch")
    rows[0].biotorch = None
    assert "BioTorch not timed" in bench.verdict(entry("feedback_alignment", 1.0), rows)[1]
    # rules without a BioTorch counterpart: the backprop ratio alone
    assert bench.verdict(entry("weight_mirror", 1.20), rows)[1] == "met"
    assert bench.verdict(entry("kolen_pollack", 1.16), rows)[1].startswith("MISSED")
    assert bench.verdict(entry("dtp", 3.0), rows) == ("", "")


def test_smoke_run_without_biotorch(tmp_path: Path) -> None:
    out = tmp_path / "t.md"
    text = bench.main([
        "--no-biotorch", "--data", "synthetic", "--threads", "1", "--steps", "2",
        "--repeats", "1", "--slow-repeats", "1", "--warmup", "1",
        "--rules", "feedback_alignment", "equilibrium_prop", "--out", str(out),
    ])
    assert out.read_text() == text
    for label, *_ in bench.SHARED:
        assert f"| {label} | - |" in text  # BioTorch cells empty, row present
    assert "BioTorch not run (--no-biotorch)" in text
    assert "| feedback_alignment | " in text and "| equilibrium_prop | " in text
    assert "(iterative: fewer repeats)" in text  # equilibrium_prop is timed as iterative
    assert "| dtp |" not in text  # --rules restricts part 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit, match="--steps"):
        bench.main(["--no-biotorch", "--steps", "0"])
