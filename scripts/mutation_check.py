"""Mutation check: inject one-line defects into the rules and count how many the tests catch.

The mutants are listed in ``scripts/mutants.py`` (file, original text, replacement, targeted
pytest selection, and whether the line is part of a rule's core equation). A mutant is
*killed* when its tests fail (or error, or time out), and *survives* when they pass. A mutant
whose original text no longer occurs exactly once in its file is *invalid* (it tests nothing
and must be retargeted); so is one whose selection fails unmutated (the selections are run
once, unmutated, first).

The shared checkout is never modified: ``src/``, ``tests/`` and ``pyproject.toml`` are copied to
one temporary folder per worker, each mutant is applied in a worker's copy (and restored there
before the copy takes the next mutant), and pytest runs in that copy with ``biograd`` imported
from it (checked). Workers run in parallel, one single-threaded pytest each. By default each
pytest runs in a child forked from this process after it imported torch and pytest (but never
biograd), which saves the ~1.5 s interpreter and torch start of every run; ``--no-fork`` runs a
fresh ``python -m pytest`` instead. Each mutant gets ``--timeout`` seconds or
``--timeout-factor`` times its selection's unmutated time, whichever is larger; the whole run
gets ``--budget`` seconds.

Exit status (the CI gate, ``make mutation``): 0 only when every mutant is valid and was run,
the score (killed / valid) is at least ``--min-score`` and no mutant tagged core survives.

    python scripts/mutation_check.py [--workers N] [--only SUBSTRING] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Every test process runs single-threaded: the tests use tiny tensors, and two workers on two
#: cores with several threads each are several times slower than one thread each (measured).
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "BIOGRAD_TEST_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider")


@dataclass
class Job:
    """One pytest run: a selection, unmutated (``mutant is None``) or with one mutant applied."""

    tests: tuple[str, ...]
    mutant: Mutant | None = None
    timeout: float = 0.0
    outcome: str = "not run"
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    log_tail: str = ""


# ---------------------------------------------------------------------- running pytest
def _copy_tree(work: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")


def _pytest_argv(work: Path, tests: tuple[str, ...]) -> list[str]:
    return [*PYTEST_ARGS, "-c", str(work / "pyproject.toml"), "--rootdir", str(work), *tests]


def _child(work: Path, tests: tuple[str, ...], log: Path) -> None:
    """In a forked child: run pytest on the copy in ``work``, never return."""
    code = 99
    try:
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(work)
        os.environ.update(ENV)
        sys.dont_write_bytecode = True
        sys.path[:0] = [str(work / "src"), str(work)]
        import pytest

        import biograd

        if not str(biograd.__file__).startswith(str(work)):
            print(f"biograd imports from {biograd.__file__}, not the copy in {work}")
            code = 98
        else:
            code = int(pytest.main(_pytest_argv(work, tests)))
    except BaseException as err:  # noqa: BLE001 - report anything, then leave the child
        print(f"mutation check child failed: {err!r}")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Run:
    """A started pytest process (a forked child or a subprocess), pollable and killable."""

    def __init__(self, work: Path, tests: tuple[str, ...], log: Path, fork: bool) -> None:
        self.start = time.perf_counter()
        self.proc: subprocess.Popen[bytes] | None = None
        if fork:
            pid = os.fork()
            if pid == 0:
                _child(work, tests, log)
            self.pid = pid
        else:
            env = {**os.environ, **ENV, "PYTHONPATH": str(work / "src")}
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "pytest", *_pytest_argv(work, tests)], cwd=work,
                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.pid = self.proc.pid

    def poll(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        return None if pid == 0 else os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc is not None:
            self.proc.wait()
        else:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:  # already reaped
                pass


def _failed_tests(text: str) -> list[str]:
    return [line.split(" ", 1)[1].split(" - ")[0] for line in text.splitlines()
            if line.startswith(("FAILED ", "ERROR "))]


def run_jobs(jobs: list[Job], works: list[Path], fork: bool, deadline: float) -> None:
    """Run ``jobs`` on the worker copies ``works`` (one job per copy at a time) until done or
    ``deadline`` (``time.perf_counter``); jobs not finished by then stay 'not run'."""
    running: list[tuple[Run, Job, Path, str | None]] = []
    try:
        _run_jobs(list(jobs), list(works), fork, deadline, running)
    finally:  # interrupted (Ctrl-C, a failure here): stop the children, restore the copies
        for run, job, work, original in running:
            run.kill()
            if original is not None and job.mutant is not None:
                (work / job.mutant.file).write_text(original)


def _run_jobs(queue: list[Job], free: list[Path], fork: bool, deadline: float,
              running: list[tuple[Run, Job, Path, str | None]]) -> None:
    while queue or running:
        while queue and free and time.perf_counter() < deadline:
            job, work = queue.pop(0), free.pop()
            original = None
            if job.mutant is not None:
                path = work / job.mutant.file
                original = path.read_text()
                path.write_text(original.replace(job.mutant.original, job.mutant.replacement))
            log = work.parent / f"{work.name}.log"
            running.append((Run(work, job.tests, log, fork), job, work, original))
        if not running:
            break
        time.sleep(0.02)
        now = time.perf_counter()
        for entry in list(running):
            run, job, work, original = entry
            code = run.poll()
            over = now > deadline or now - run.start > job.timeout
            if code is None and not over:
                continue
            if code is None:
                run.kill()
            job.seconds = time.perf_counter() - run.start
            text = (work.parent / f"{work.name}.log").read_text(errors="replace")
            job.failed, job.log_tail = _failed_tests(text), text[-3000:]
            if code is None:
                job.outcome = "timeout" if now - run.start > job.timeout else "not run (budget)"
            else:
                job.outcome = "pass" if code == 0 else f"fail (exit {code})"
            if original is not None and job.mutant is not None:
                (work / job.mutant.file).write_text(original)
            running.remove(entry)
            free.append(work)


# ---------------------------------------------------------------------- the check
def _validity(m: Mutant, root: Path) -> str | None:
    path = root / m.file
    if not path.is_file():
        return f"invalid (no file {m.file})"
    count = path.read_text().count(m.original)
    return None if count == 1 else f"invalid (original found {count} times)"


def _workers(requested: int | None) -> int:
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))  # each worker holds a torch process (~0.3-0.5 GB)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=None, help="parallel pytest runs "
                        "(default: the usable cores, at most 8)")
    parser.add_argument("--timeout", type=float, default=60.0, help="least seconds per mutant")
    parser.add_argument("--timeout-factor", type=float, default=5.0,
                        help="a mutant may take this many times its selection's unmutated time")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run "
                        "(CI used 407 s of it on 2026-12-08, compiled-PC mutants ~15-28 s each)")
    parser.add_argument("--min-score", type=float, default=95.0, help="least percent killed")
    parser.add_argument("--only", default=None, help="run mutants whose name contains this")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    parser.add_argument("--no-fork", dest="fork", action="store_false",
                        help="a fresh python per pytest run instead of a forked child")
    args = parser.parse_args(argv)
    fork = args.fork and hasattr(os, "fork")
    if fork:  # import the heavy modules once; the thread settings must precede torch's import
        os.environ.update(ENV)
        import pytest  # noqa: F401
        import torch  # noqa: F401
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    mutants = [m for m in MUTANTS if args.only is None or args.only in m.name]
    jobs = [Job(m.tests, m) for m in mutants]
    with tempfile.TemporaryDirectory(prefix="biograd-mutants-") as tmp:
        works = [Path(tmp) / f"w{i}" for i in range(_workers(args.workers))]
        for work in works:
            _copy_tree(work)
        invalid = {id(j): _validity(j.mutant, works[0]) for j in jobs if j.mutant is not None}
        baselines = {t: Job(t, timeout=args.budget) for t in dict.fromkeys(
            j.tests for j in jobs if invalid[id(j)] is None)}
        run_jobs(list(baselines.values()), works, fork, deadline)
        for b in baselines.values():
            print(f"unmutated {b.outcome:>6} ({b.seconds:4.1f}s)  {' '.join(b.tests)}", flush=True)
            if b.outcome.startswith(("fail", "timeout")):
                print("  " + b.log_tail.replace("\n", "\n  ")[-1500:])
        todo = []
        for j in jobs:
            base = baselines.get(j.tests)
            if invalid[id(j)] is not None:
                j.outcome = invalid[id(j)]
            elif base is None or base.outcome.startswith("not run"):
                j.outcome = "not run (budget)"
            elif base.outcome != "pass":
                j.outcome = "invalid (tests fail unmutated)"
            else:
                j.timeout = max(args.timeout, args.timeout_factor * base.seconds)
                todo.append(j)
        run_jobs(todo, works, fork, deadline)
    return report(jobs, time.perf_counter() - t0, len(works), args)


def _status(job: Job) -> str:
    if job.outcome == "pass":
        return "survived"
    if job.outcome == "timeout" or job.outcome.startswith("fail"):
        return "killed"
    return job.outcome


def report(jobs: list[Job], wall: float, workers: int, args: argparse.Namespace) -> int:
    """Print one line per mutant, the score, the survivors; write the JSON; the exit status."""
    rows = []
    for j in jobs:
        m = j.mutant
        assert m is not None
        status = _status(j)
        by = f" by {j.failed[0]}" if status == "killed" and j.failed else ""
        by = " by timeout" if j.outcome == "timeout" else by
        tag = "core" if m.core else "    "
        print(f"{status:>9} {tag} {j.seconds:5.1f}s  {m.name} [{m.kind}]{by}")
        rows.append({"name": m.name, "kind": m.kind, "file": m.file, "core": m.core,
                     "status": status, "outcome": j.outcome, "seconds": round(j.seconds, 1),
                     "killed_by": j.failed[:1]})
    valid = [r for r in rows if r["status"] in ("killed", "survived")]
    killed = [r for r in valid if r["status"] == "killed"]
    survivors = [r for r in valid if r["status"] == "survived"]
    core_survivors = [r for r in survivors if r["core"]]
    other = [r for r in rows if r["status"] not in ("killed", "survived")]
    score = 100.0 * len(killed) / len(valid) if valid else 0.0
    print(f"\nmutation score: {len(killed)}/{len(valid)} killed = {score:.1f}% "
          f"(threshold {args.min_score:.0f}%); {len(core_survivors)} core survivors; "
          f"{len(other)} invalid or not run; {wall:.0f}s wall on {workers} workers")
    for r in survivors:
        print(f"  survivor{' (CORE EQUATION)' if r['core'] else ''}: {r['name']}  ({r['file']})")
    for r in other:
        print(f"  {r['status']}: {r['name']}  ({r['file']})")
    ok = bool(valid) and score >= args.min_score and not core_survivors and not other
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"score": score, "threshold": args.min_score, "passed": ok, "killed": len(killed),
             "valid": len(valid), "survivors": [r["name"] for r in survivors],
             "core_survivors": [r["name"] for r in core_survivors],
             "invalid_or_not_run": [r["name"] for r in other], "wall_seconds": round(wall, 1),
             "workers": workers, "results": rows}, indent=2))
    print(f"mutation check {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
