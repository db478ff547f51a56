"""Training the runs of a grid: one at a time, or ``jobs`` at a time in spawned processes.

Every run is an ordinary run directory, so a grid is resumable whatever ``jobs`` was: a
finished run (its ``summary.json`` says completed or diverged) is reused, a started one resumes
from its checkpoint. With ``jobs > 1`` each worker process sees ``BIOGRAD_JOBS=jobs``, so a run
whose config leaves ``threads`` at 0 takes its share of the cores
(:func:`biograd.runner.device.thread_count`) instead of all of them.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from biograd import rundir
from biograd.core.errors import ConfigError
from biograd.experiments import store
from biograd.experiments.cost_probe import rule_on_first_batch
from biograd.metrics.cost import training_step
from biograd.runlock import RunBusyError
from biograd.runner.config import Config, same_config
from biograd.runner.data import load_data
from biograd.runner.device import JOBS_ENV, fork_rng, resolve_device
from biograd.runner.train import run_dir_of, train
from biograd.runner.yamlio import read_yaml

FINISHED = ("completed", "diverged")


def check_reusable(sub: Config) -> None:
    """An existing run must have been made with the same config (else nothing is reused
    silently and nothing is overwritten without --overwrite); keys added to biograd since it
    was saved count as equal when they hold their default (:func:`same_config`)."""
    path = run_dir_of(sub) / rundir.CONFIG
    if path.is_file() and not same_config(read_yaml(path), sub):
        raise ConfigError(
            f"sub-run {str(path.parent)!r} was trained with a different config; pass "
            f"--overwrite to retrain everything or choose another --run_name"
        )


def dry_build(sub: Config, warm_up_steps: int = 0) -> None:
    """Build the run's rule once so bad per-run settings fail before any run; ``warm_up_steps``
    untimed steps on a throw-away copy take one-time costs (allocator, lazy init) out of the
    first timed run."""
    device = resolve_device(sub.device)
    with fork_rng(device):
        step = training_step(*rule_on_first_batch(sub, load_data(sub), device))
        for _ in range(warm_up_steps):
            step()


def run_one(sub: Config, record: bool = False) -> dict[str, Any]:
    """Train one run, or reuse it: a finished run's summary is returned as it is (marked
    ``reused``), a started one resumes from its checkpoint (or restarts if it has none).
    ``record``: write the run's ``fingerprint.json`` (:mod:`biograd.experiments.store`, with
    the wall seconds of this call when it trained) when it finishes here, or when a finished
    run without one is reused (adopted); a reused run's fingerprint gains its update probe or
    the equivalent code at hand (:func:`biograd.experiments.store.refresh_fingerprint`)."""
    out, started = run_dir_of(sub), time.perf_counter()
    if out.exists():
        summary_path = out / rundir.SUMMARY
        if summary_path.is_file():
            summary = rundir.read_json(summary_path)
            if summary.get("status") in FINISHED:
                if record:  # adopt, add the update probe, or take an equivalent new code
                    store.refresh_fingerprint(out, sub, summary)
                return {**summary, "reused": True}
        if (out / rundir.CHECKPOINT).is_file():
            summary = train(sub, resume=True)
        else:
            summary = train(sub, overwrite=True)  # started but nothing to resume from
    else:
        summary = train(sub)
    if record and summary.get("status") in FINISHED:
        store.write_fingerprint(out, sub, summary,
                                wall_seconds=round(time.perf_counter() - started, 2))
    return summary


def _run_safely(sub: Config, record: bool = False) -> tuple[dict[str, Any], float]:
    """:func:`run_one` and its wall seconds; any error but a ConfigError becomes a ``failed``
    summary (also written into the run directory) so one broken rule does not sink the grid;
    a run another process is training (:class:`biograd.runlock.RunBusyError`) is left to it,
    ``missing`` here, its directory untouched."""
    t0 = time.perf_counter()
    try:
        summary = run_one(sub, record)
    except ConfigError:
        raise
    except RunBusyError as exc:  # another process trains it: leave its directory alone
        print(f"biograd: warning: {exc}; not trained here", file=sys.stderr, flush=True)
        return {"status": NOT_STARTED, "rule": sub.rule, "seed": sub.seed,
                "reason": str(exc)}, time.perf_counter() - t0
    except Exception as exc:
        traceback.print_exc()
        summary = {"status": "failed", "rule": sub.rule, "seed": sub.seed,
                   "error": f"{type(exc).__name__}: {exc}"}
        if run_dir_of(sub).is_dir():
            rundir.write_json(run_dir_of(sub) / rundir.SUMMARY, summary)
    return summary, time.perf_counter() - t0


def _worker_init(jobs: int) -> None:
    os.environ[JOBS_ENV] = str(jobs)


#: the summary of a run that was not started (``run_all``'s ``may_start`` said no)
NOT_STARTED = "missing"


def is_finished(sub: Config) -> bool:
    """Whether the run of ``sub`` has a finished summary (reusing it trains nothing)."""
    path = run_dir_of(sub) / rundir.SUMMARY
    return path.is_file() and rundir.read_json(path).get("status") in FINISHED


def run_all(subs: list[Config], jobs: int = 1,
            announce: Callable[[int], str] | None = None, *,
            may_start: Callable[[], bool] | None = None, record: bool = False,
            ) -> list[tuple[dict[str, Any], float]]:
    """Train every config of ``subs`` (see :func:`run_one`); returns ``(summary, wall
    seconds)`` in the order of ``subs``. ``jobs > 1``: that many spawned worker processes,
    each run in one of them. ``announce(i)`` is printed on stderr when run ``i`` starts (is
    submitted, with jobs). A ConfigError in any run is raised here.

    ``may_start()`` is asked before each run that would train (finished runs are always
    reused): when it says no, the run is not started and its summary is ``{"status":
    "missing"}``. ``record``: runs write their ``fingerprint.json`` (:func:`run_one`)."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")

    def say(i: int) -> None:
        if announce is not None:
            print(announce(i), file=sys.stderr, flush=True)

    def allowed(i: int) -> bool:
        return may_start is None or is_finished(subs[i]) or may_start()

    def missing(sub: Config) -> tuple[dict[str, Any], float]:
        return {"status": NOT_STARTED, "rule": sub.rule, "seed": sub.seed}, 0.0

    if jobs == 1 or len(subs) <= 1:
        out = []
        for i, sub in enumerate(subs):
            if not allowed(i):
                out.append(missing(sub))
                continue
            say(i)
            out.append(_run_safely(sub, record))
        return out
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, tuple[dict[str, Any], float]] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, len(subs)), mp_context=ctx,
                             initializer=_worker_init, initargs=(jobs,)) as pool:
        running: dict[Future, int] = {}
        for i, sub in enumerate(subs):
            while len(running) >= jobs:  # submit as workers free up, so may_start is timely
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    results[running.pop(f)] = f.result()
            if not allowed(i):
                results[i] = missing(sub)
                continue
            say(i)
            running[pool.submit(_run_safely, sub, record)] = i
        for f, i in running.items():
            results[i] = f.result()
    return [results[i] for i in range(len(subs))]
