"""Adopt runs and measurements trained in another results store (issue 16: runs that accumulate
across sessions and machines).

A budget larger than one session is trained wherever there is time: a second clone, a lent
GPU, another machine. Their run directories are ordinary ones with a ``fingerprint.json``
(:mod:`biograd.experiments.store`), so this checkout can tell which of them describe its own
runs. :func:`merge_store` (``biograd reproduce PAPER --merge-from DIR``) copies, for every run
of the plan:

- a run finished in the source (``completed`` or ``diverged``) whose fingerprint is current
  for this checkout (the same config, the same code of its rule), unless this store already
  holds a finished, current run there (never overwritten: the first one stays); a stale,
  interrupted or absent run here is replaced (a stale or interrupted one is moved to
  ``.stale/`` first, as ``reproduce`` does before retraining). Copied are the run's small
  outputs (config, metrics, summary, angles, fingerprint), never checkpoints, and its wall
  time from the source's ``wall_seconds.json`` (else its fingerprint's; else none, rather
  than the replaced run's);
- every stored measurement (``_measurements/NAME.json``) that this store lacks, or holds an
  older one of (by ``measured_at``); the one replaced is kept in ``.stale/_measurements/``.
  Whether a measurement is current is decided when the report reads it (its key and code,
  :meth:`biograd.experiments.paper_report.Context.measure`), so ``--check`` afterwards says
  what the merge left to do.

Nothing in the source is changed; runs that are stale there, unfinished or without a
fingerprint are listed with the reason and left out.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biograd import rundir, runlock
from biograd.core.errors import ConfigError
from biograd.experiments import store
from biograd.experiments.jobs import FINISHED, is_finished
from biograd.runner.train import run_dir_of

#: file names a merge never copies (resumable state, not results)
SKIPPED = ("checkpoint*", "checkpoints.json", ".*", "tensorboard")
MEASUREMENTS = "_measurements"
WALLS = "wall_seconds.json"


@dataclass
class Merged:
    """What :func:`merge_store` did: run labels and measurement names, with reasons."""

    runs: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    measurements: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The merge, one line per kind (for stderr)."""
        out = [f"adopted {len(self.runs)} runs" + (f": {', '.join(self.runs)}" if self.runs
                                                   else ""),
               f"adopted {len(self.measurements)} measurements"
               + (f": {', '.join(self.measurements)}" if self.measurements else "")]
        out += [f"kept here (already finished and current): {k}" for k in self.kept]
        out += [f"not adopted: {s}" for s in self.skipped]
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _copy_outputs(src: Path, dest: Path) -> None:
    """The run's small outputs from ``src`` into a new ``dest`` (written beside it, then
    renamed, so an interrupted merge leaves no half-copied run)."""
    tmp = dest.with_name(f".{dest.name}.merge.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(*SKIPPED))
    tmp.replace(dest)


def _source_root(plan: Any, source: Path) -> Path:
    root = Path(source) / plan.paper / plan.budget
    if not root.is_dir():
        raise ConfigError(
            f"--merge-from {str(source)!r}: no {plan.paper}/{plan.budget} folder there "
            f"(give the results root of the other store, the folder that holds "
            f"{plan.paper}/, e.g. /path/to/clone/results)")
    return root


def merge_store(plan: Any, source: str | Path) -> Merged:
    """Adopt into ``plan``'s store the finished, current runs and the newer measurements of
    the same paper and budget under ``source`` (a results root); see the module docstring.
    ``plan`` is a :class:`biograd.experiments.reproduce.Plan`."""
    from biograd.experiments.reproduce import WallLog, run_label, runs_root

    src_root = _source_root(plan, Path(source))
    here = runs_root(plan)
    if src_root.resolve() == here.resolve():
        raise ConfigError(f"--merge-from {str(source)!r} is this store itself: give the "
                          f"results root of another clone or machine")
    done = Merged()
    walls = WallLog(plan)
    src_walls = _read_json(src_root / WALLS)
    for spec in plan.runs:
        label = run_label(spec)
        dest = run_dir_of(spec.config)
        src = src_root / dest.relative_to(here)
        if not (src / rundir.SUMMARY).is_file():
            continue
        status = _read_json(src / rundir.SUMMARY).get("status")
        why = ([f"status {status!r} (not finished)"] if status not in FINISHED else
               ["no fingerprint.json (not trained by reproduce)"]
               if store.read_fingerprint(src) is None else
               store.stale_reasons(src, spec.config))
        if why:
            done.skipped.append(f"{label} ({'; '.join(why)})")
            continue
        if dest.is_dir() and is_finished(spec.config) and not store.stale_reasons(
                dest, spec.config):  # with or without its fingerprint (reproduce adopts it)
            done.kept.append(label)
            continue
        owner = runlock.holder(dest)
        if owner is not None:
            done.skipped.append(f"{label} (being trained here by pid {owner.get('pid')})")
            continue
        if dest.exists():
            store.move_stale(dest, here)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _copy_outputs(src, dest)
        seconds = src_walls.get(label)
        if not isinstance(seconds, (int, float)):
            seconds = (store.read_fingerprint(src) or {}).get("wall_seconds")
        if isinstance(seconds, (int, float)):
            walls.record(label, float(seconds))
        else:  # not known: not the old run's time either
            walls.forget(label)
        done.runs.append(label)
    _merge_measurements(src_root / MEASUREMENTS, here, done)
    return done


def _merge_measurements(src_dir: Path, here: Path, done: Merged) -> None:
    if not src_dir.is_dir():
        return
    for src in sorted(src_dir.glob("*.json")):
        dest = here / MEASUREMENTS / src.name
        new = _read_json(src)
        if not new.get("measured_at"):
            continue
        if dest.is_file():
            old = _read_json(dest)
            if old == new or str(old.get("measured_at", "")) >= str(new["measured_at"]):
                continue
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = here / store.STALE_DIR / MEASUREMENTS / f"{src.stem}-{stamp}.json"
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(dest), str(aside))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
        done.measurements.append(src.stem)
