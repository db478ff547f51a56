"""``reproduce --merge-from``: runs and measurements trained in another store (another clone, a
lent GPU) are adopted when their fingerprint is current here, never over a finished current
run, without checkpoints, with their wall time; stale, unfinished and unfingerprinted ones are
listed and left out (:mod:`biograd.experiments.merge`). Two copies of one tiny trained store
stand for the two machines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from biograd.cli import main
from biograd.experiments import store
from biograd.experiments.merge import merge_store
from biograd.papers import _plan
from tests.test_results_store import ARMS, PAPER, _root, _run, _write_preset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("merge-store")
    _write_preset(folder)
    _run(folder)
    return folder


@pytest.fixture
def two(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``(here, there)``: this checkout's store with only backprop's run, the other with all."""
    there, here = tmp_path / "there", tmp_path / "here"
    shutil.copytree(trained, there)
    shutil.copytree(trained, here)
    for arm in ARMS[1:]:
        shutil.rmtree(_root(here) / "mnist-mlp" / f"{arm}-s0")
    (_root(here) / "_measurements").mkdir(exist_ok=True)
    walls = _root(here) / "wall_seconds.json"
    walls.write_text(json.dumps({f"mnist-mlp/{ARMS[0]}-s0": 1.5}))
    return here, there


def _plan_of(folder: Path, extra: str = ""):
    _write_preset(folder, extra)
    return _plan(PAPER, "standard", None, folder / "results", (), folder / "preset.yaml")


def _files(run: Path) -> set[str]:
    return {p.name for p in run.iterdir()}


def test_adopts_current_finished_runs_without_checkpoints(two) -> None:
    here, there = two
    run = _root(there) / "mnist-mlp" / "kolen_pollack-s0"
    (run / "checkpoint.pt").write_bytes(b"x")
    (run / "checkpoints.json").write_text("{}")
    walls = json.loads((_root(there) / "wall_seconds.json").read_text())
    done = merge_store(_plan_of(here), there / "results")
    assert sorted(done.runs) == sorted(f"mnist-mlp/{a}-s0" for a in ARMS[1:])
    assert done.kept == ["mnist-mlp/backprop-s0"] and not done.skipped
    got = _root(here) / "mnist-mlp" / "kolen_pollack-s0"
    assert _files(got) == _files(run) - {"checkpoint.pt", "checkpoints.json"}
    assert (got / "summary.json").read_bytes() == (run / "summary.json").read_bytes()
    merged = json.loads((_root(here) / "wall_seconds.json").read_text())
    assert merged["mnist-mlp/backprop-s0"] == 1.5  # kept here: its own wall time stays
    assert merged["mnist-mlp/kolen_pollack-s0"] == walls["mnist-mlp/kolen_pollack-s0"]
    # the report reads the adopted runs: nothing to train
    assert _run(here, train=False)["missing"] == 0
    # a second merge changes nothing, a finished run here without its fingerprint included
    (got / store.FINGERPRINT).unlink()
    again = merge_store(_plan_of(here), there / "results")
    assert not again.runs and len(again.kept) == len(ARMS)
    assert not (got / store.FINGERPRINT).exists()


def test_wall_time_comes_from_the_source_or_is_dropped(two) -> None:
    """Without the source's wall_seconds.json the fingerprint's wall time is taken, and with
    neither the replaced run's entry is dropped, never kept for the new run."""
    here, there = two
    (_root(there) / "wall_seconds.json").unlink()
    run = _root(there) / "mnist-mlp" / "kolen_pollack-s0"
    fp = json.loads((run / store.FINGERPRINT).read_text())
    (run / store.FINGERPRINT).write_text(json.dumps({**fp, "wall_seconds": 7.25}))
    mirror = _root(there) / "mnist-mlp" / "weight_mirror-s0" / store.FINGERPRINT
    mirror.write_text(json.dumps({**json.loads(mirror.read_text()), "wall_seconds": None}))
    walls = _root(here) / "wall_seconds.json"
    walls.write_text(json.dumps({"mnist-mlp/weight_mirror-s0": 99.0}))  # an older run's
    merge_store(_plan_of(here), there / "results")
    got = json.loads(walls.read_text())
    assert got["mnist-mlp/kolen_pollack-s0"] == 7.25
    assert "mnist-mlp/weight_mirror-s0" not in got


def test_leaves_out_stale_unfinished_and_unfingerprinted_runs(two) -> None:
    here, there = two
    root = _root(there) / "mnist-mlp"
    fa = root / "feedback_alignment-s0" / "config.yaml"
    fa.write_text(fa.read_text().replace("lr: 0.01", "lr: 0.03"))
    ss = root / "sign_symmetry-s0" / "summary.json"
    ss.write_text(json.dumps({**json.loads(ss.read_text()), "status": "interrupted"}))
    (root / "weight_mirror-s0" / store.FINGERPRINT).unlink()
    done = merge_store(_plan_of(here), there / "results")
    assert done.runs == ["mnist-mlp/kolen_pollack-s0"]
    text = "\n".join(done.lines())
    assert "not adopted: mnist-mlp/feedback_alignment-s0 (config changed: lr)" in text
    assert "sign_symmetry-s0 (status 'interrupted' (not finished))" in text
    assert "weight_mirror-s0 (no fingerprint.json (not trained by reproduce))" in text
    for arm in ("feedback_alignment", "sign_symmetry", "weight_mirror"):
        assert not (_root(here) / "mnist-mlp" / f"{arm}-s0").exists()


def test_a_stale_run_here_is_set_aside_and_replaced(two, trained: Path) -> None:
    """This checkout changed feedback_alignment's config, so its stored run is stale; the
    other store trained the new config: that run is adopted, the old one kept in .stale/."""
    here, there = two
    old = _root(here) / "mnist-mlp" / "feedback_alignment-s0"
    shutil.copytree(_root(trained) / "mnist-mlp" / "feedback_alignment-s0", old)
    extra = "config: {lr: 0.03}"
    _write_preset(there, extra)
    _run(there, only=["mnist-mlp/feedback_alignment"])  # retrained there with lr 0.03
    p = _plan_of(here, extra)
    cfg = next(s.config for s in p.runs if s.arm == "feedback_alignment")
    assert store.stale_reasons(old, cfg) == ["config changed: lr"]
    done = merge_store(p, there / "results")
    assert "mnist-mlp/feedback_alignment-s0" in done.runs
    assert store.stale_reasons(old, cfg) == []
    assert len(list((_root(here) / ".stale" / "mnist-mlp").iterdir())) == 1


def test_measurements_newer_or_missing_are_adopted(two) -> None:
    here, there = two
    src, dest = _root(there) / "_measurements", _root(here) / "_measurements"
    src.mkdir(exist_ok=True)
    old = {"name": "m", "result": {"v": 1}, "measured_at": "2026-12-01 10:00 UTC"}
    new = {"name": "m", "result": {"v": 2}, "measured_at": "2026-12-07 10:00 UTC"}
    (src / "m.json").write_text(json.dumps(new))
    (src / "n.json").write_text(json.dumps({**old, "name": "n"}))
    (dest / "m.json").write_text(json.dumps(old))
    (dest / "n.json").write_text(json.dumps({**new, "name": "n"}))  # newer here: kept
    done = merge_store(_plan_of(here), there / "results")
    assert done.measurements == ["m"]
    assert json.loads((dest / "m.json").read_text()) == new
    assert json.loads((dest / "n.json").read_text())["result"] == {"v": 2}
    aside = list((_root(here) / ".stale" / "_measurements").iterdir())
    assert len(aside) == 1 and json.loads(aside[0].read_text()) == old


def test_bad_merge_sources_are_refused(two, capsys) -> None:
    here, _ = two
    with pytest.raises(Exception, match="no p3-weight-transport/standard folder there"):
        merge_store(_plan_of(here), here / "nowhere")
    with pytest.raises(Exception, match="is this store itself"):
        merge_store(_plan_of(here), here / "results")
    args = ["reproduce", PAPER, "--budget", "standard", "--preset", str(here / "preset.yaml"),
            "--runs", str(here / "results"), "--out", str(here / "docs")]
    assert main([*args, "--merge-from", str(here / "nowhere")]) == 2
    assert "--merge-from" in capsys.readouterr().err
    assert main([*args, "--check", "--merge-from", str(here)]) == 2
    assert "--check trains and writes nothing: drop --merge-from" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--merge-from", str(here)]) == 2
    assert "drop --merge-from or --overwrite" in capsys.readouterr().err
    assert (_root(here) / "mnist-mlp" / "backprop-s0" / "summary.json").is_file()
