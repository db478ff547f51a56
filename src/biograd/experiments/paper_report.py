"""Shared pieces of the reproduction reports (``biograd reproduce``): the context a paper's
module reads, table and plot helpers, and the writer of ``OUT/PAPER.md``, ``OUT/PAPER.json``
and the cross-paper ``OUT/README.md`` (file layout: :mod:`biograd.experiments.summary`)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biograd.core.errors import ConfigError
from biograd.core.registry import REFERENCE_RULE
from biograd.experiments import store
from biograd.experiments.cost_probe import step_cost_ratios
from biograd.experiments.grid import COST_REPEATS
from biograd.experiments.hardware import cpu_name, hardware_info, machine_speed, speed_line
from biograd.experiments.store import short
from biograd.experiments.summary import refresh, report_stem, settle_reports
from biograd.rundir import ALIGNMENT, read_rows
from biograd.runner.config import Config, keyed
from biograd.runner.device import resolve_device

Results = dict[tuple[str, str], list[dict[str, Any]]]
#: statuses of a run that did not finish training (it counts against a rule's stability)
LOST = ("diverged", "failed")


def lost(run: dict[str, Any]) -> bool:
    """Whether ``run`` (a run summary) diverged or failed."""
    return run.get("status") in LOST


HELD, PARTLY, NOT_HELD = "held", "partly held", "did not hold"
#: the budget cannot test the claim (backprop not converged, too few seeds, runs missing, a
#: mechanism that needs more steps than the budget has): says nothing about the paper
NOT_TESTABLE = "not testable at this budget"
NOT_TESTED = "not tested"
VERDICTS = (HELD, PARTLY, NOT_HELD, NOT_TESTABLE, NOT_TESTED)


@dataclass
class Claim:
    """One of the paper's claims, the verdict this run gives it and why (plain words).

    ``statistic`` is the measured quantity the verdict rests on (e.g. "KP final angle 3.1°"),
    ``spread`` its spread over seeds (e.g. "± 0.4° over 3 seeds"), ``threshold`` what it was
    compared with (e.g. "< 15°"); a verdict of :data:`NOT_TESTABLE` says in ``evidence`` which
    property of the budget prevents the test (:meth:`Context.untestable`)."""

    claim: str
    verdict: str  # one of VERDICTS
    evidence: str
    statistic: str = ""
    spread: str = ""
    threshold: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim verdict {self.verdict!r} is not one of {VERDICTS}")

    def line(self) -> str:
        """The claim check's Markdown bullet."""
        measured = []
        if self.statistic:
            measured.append(f"statistic: {self.statistic}"
                            + (f" ({self.spread})" if self.spread else ""))
        if self.threshold:
            measured.append(f"threshold: {self.threshold}")
        detail = f" [{'; '.join(measured)}]" if measured else ""
        return f"- **{self.verdict}**: {self.claim}{detail} {self.evidence}".rstrip()


def verdict_of(n_held: int, n: int) -> str:
    """held (all ``n`` cases), partly held (some), did not hold (none), or not testable
    (``n`` = 0: no case the budget can test)."""
    if n == 0:
        return NOT_TESTABLE
    return HELD if n_held == n else (PARTLY if n_held else NOT_HELD)


@dataclass
class Section:
    """What a paper's module returns: Markdown body (tables, figures), claims, key numbers."""

    body: str
    claims: list[Claim]
    key_numbers: str
    extra: dict[str, Any] = field(default_factory=dict)


#: the role of the arm every claim compares against (backprop)
REFERENCE = "reference"


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of ``path``, None when it does not exist: whether a stored
    measurement changed since it was read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@dataclass
class Context:
    """Everything a paper's report module reads."""

    plan: Any  # biograd.experiments.reproduce.Plan
    results: Results
    out: Path
    started: float
    argv: list[str]
    #: whether :meth:`measure` computes what is not stored (False: a report from stored
    #: numbers only)
    measure_missing: bool = True
    #: ``time.perf_counter()`` after which :meth:`measure` computes nothing new (None: no limit;
    #: ``--train-minutes``)
    measure_until: float | None = None
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what :meth:`measure` found for each measurement it was asked for: ``"current"``,
    #: ``"measured"`` (computed now), ``"stale: WHY"`` or ``"missing"`` (stored for
    #: ``biograd reproduce --check``)
    found: dict[str, str] = field(default_factory=dict)
    _costs: dict[str, dict[str, float]] = field(default_factory=dict)
    #: ``{name: (key, code, file stamp, result or None)}`` of each :meth:`measure` asked
    _asked: dict[str, tuple[Any, dict[str, str], Any, dict[str, Any] | None]] = field(
        default_factory=dict)

    @property
    def cost_repeats(self) -> int:
        """Paired timing blocks per arm of :meth:`step_cost` (the ``cost_repeats`` setting)."""
        return int(self.plan.settings.get("cost_repeats", COST_REPEATS))

    @property
    def measurements_dir(self) -> Path:
        """Where measurements that are not training runs are stored: ``RUNS/PAPER/BUDGET/
        _measurements`` beside the run directories (the results store for ``standard``)."""
        return Path(self.plan.runs_dir) / self.plan.paper / self.plan.budget / "_measurements"

    def _may_measure(self) -> bool:
        return self.measure_missing and (self.measure_until is None
                                         or time.perf_counter() < self.measure_until)

    def measure(self, name: str, compute: Callable[[], dict[str, Any]], *,
                key: Any = None, rules: list[str] | tuple[str, ...] = (),
                timing: bool | str = False, configs: Sequence[Config] = ()
                ) -> dict[str, Any] | None:
        """A stored measurement: ``_measurements/NAME.json`` when it exists and was made with
        the same ``key`` (any JSON-able description of what it depends on: settings, arms'
        configs) and the same code of ``rules`` (rule names whose code fingerprint,
        :func:`biograd.experiments.store.code_files`, enters the stored key), else
        ``compute()`` run now and stored with the hardware it ran on. Returns the measured
        dict, or None when it is missing and this invocation measures nothing
        (``measure_missing`` False, or ``measure_until`` passed: the report then says so).
        Writing a report therefore only reads what an earlier measurement step stored
        (issue 14, item 5). ``timing``: the measurement is a timing (True: on the CPU, or the
        name of the device it timed, e.g. ``"cuda"``), so that device's speed right after it,
        at the thread count it ran with (:func:`biograd.experiments.hardware.machine_speed`),
        is stored beside it and printed with its hardware in the report. ``configs``: the run
        configs a non-timing measurement trains (e.g. P1's retrain checks); their update probes
        (:mod:`biograd.experiments.update_probe`) are stored with it, and a code change of its
        rules whose probes are unchanged keeps it current (as a stored run)."""
        path = self.measurements_dir / f"{name}.json"
        want = json.loads(json.dumps(_plain(key), default=str))
        files = {r: store.code_files(r) for r in dict.fromkeys(rules)}
        code = {r: store.code_hash(f) for r, f in files.items()}
        seen = self._asked.get(name)
        if seen is not None and seen[:3] == (want, code, _stamp(path)) \
                and (seen[3] is not None or not self._may_measure()):
            # asked again with the same key and the file unchanged since (several claims read
            # one measurement): the first answer, without re-reading or re-printing why
            return None if seen[3] is None else dict(seen[3])
        got = self._measure(name, path, want, files, code, compute, timing,
                            () if timing else configs)
        self._asked[name] = (want, code, _stamp(path), got)
        return None if got is None else dict(got)

    def _measure(self, name: str, path: Path, want: Any, files: dict[str, dict[str, str]],
                 code: dict[str, str], compute: Callable[[], dict[str, Any]],
                 timing: bool | str, configs: Sequence[Config]) -> dict[str, Any] | None:
        """:meth:`measure`'s first ask for ``name``: the stored result when current, else
        ``compute()`` when this invocation measures, else None."""
        if path.is_file():
            stored = json.loads(path.read_text())
            old_code = stored.get("code") or {}
            same_code = old_code == code
            if stored.get("key") == want and not same_code and configs \
                    and same_probes(stored.get("probes"), configs):
                print(f"[reproduce {self.plan.paper}] stored measurement {name}: the code of "
                      f"{', '.join(r for r in code if old_code.get(r) != code[r])} changed, "
                      "its update probes did not: current", file=sys.stderr, flush=True)
                same_code = True
            if stored.get("key") == want and same_code:
                if configs and "probes" not in stored and old_code == code \
                        and self._may_measure():  # written before probes: add them
                    stored["probes"] = _probes(configs)
                    _write_record(path, stored)
                self.measured[name] = stored
                self.found[name] = "current"
                return dict(stored["result"])
            why = ["its key changed"] if stored.get("key") != want else []
            for rule in code:
                changed = store.changed_files(
                    (stored.get("code_files") or {}).get(rule) or {}, files[rule])
                if old_code.get(rule) != code[rule]:
                    why.append(f"code of {rule} changed: {', '.join(changed) or 'unknown'}")
            why += [f"rule {r} no longer measured" for r in old_code if r not in code]
            self.found[name] = f"stale: {'; '.join(why)}"
            print(f"[reproduce {self.plan.paper}] stored measurement {name} is stale "
                  f"({'; '.join(why)})", file=sys.stderr, flush=True)
        self.found.setdefault(name, "missing")
        if not self._may_measure():
            return None
        started = time.perf_counter()
        result = compute()
        self.found[name] = "measured"
        record = {"name": name, "key": want, "code": code, "code_files": files,
                  "result": _plain(result), "hardware": hardware_info(),
                  **(_speed_after(timing) if timing else {}),
                  "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "seconds": round(time.perf_counter() - started, 2),
                  **({"probes": _probes(configs)} if configs else {})}
        _write_record(path, record)
        self.measured[name] = record
        return dict(record["result"])

    def step_cost(self, experiment: str, arm: str) -> float:
        """``arm``'s training step over backprop's on the arm's model, batch and optimizer
        (:func:`biograd.experiments.cost_probe.step_cost_ratios`, :attr:`cost_repeats` paired
        blocks), measured once per experiment and stored (:meth:`measure`, ``cost-EXPERIMENT``,
        keyed by the arms' configs and their rules' code); NaN if it was not measured."""
        if experiment not in self._costs:
            first: dict[str, Any] = {}
            for spec in self.plan.runs:
                if spec.experiment == experiment:
                    first.setdefault(spec.arm, spec.config)
            key = {"repeats": self.cost_repeats,
                   "arms": {a: {k: v for k, v in keyed(vars(c)).items()
                                if k not in ("out_dir", "run_name", "threads")}
                            for a, c in first.items()}}
            got = self.measure(f"cost-{experiment}",
                               lambda: step_cost_ratios(first, self.cost_repeats), key=key,
                               rules=sorted({c.rule for c in first.values()}),
                               timing=next((c.device for c in first.values()), True))
            self._costs[experiment] = got or {}
        return float(self._costs[experiment].get(arm, float("nan")))

    @property
    def report_stem(self) -> str:
        """The report's file name without suffix (:func:`report_stem`)."""
        return report_stem(self.plan.paper, self.plan.budget)

    @property
    def fig_dir(self) -> Path:
        """The report's figures: ``OUT/STEM/`` beside ``OUT/STEM.md``."""
        path = self.out / self.report_stem
        path.mkdir(parents=True, exist_ok=True)
        return path

    def figure(self, name: str) -> tuple[Path, str]:
        """(file path, Markdown link relative to the report) of figure ``name``."""
        return self.fig_dir / name, f"{self.report_stem}/{name}"

    def runs(self, experiment: str, arm: str) -> list[dict[str, Any]]:
        return self.results.get((experiment, arm), [])

    def arms(self, experiment: str) -> list[str]:
        return [a for (e, a) in self.results if e == experiment]

    def reference_target(self, experiment: str) -> float | None:
        """Backprop's test accuracy (%) at which ``experiment`` counts as trained to
        convergence (the preset's ``experiments.NAME.reference_accuracy``), or None."""
        exp = (self.plan.preset.get("experiments") or {}).get(experiment) or {}
        value = exp.get("reference_accuracy")
        return None if value is None else float(value)

    def untestable(self, experiment: str, arms: list[str] | tuple[str, ...] = (),
                   min_seeds: int = 1) -> str | None:
        """Why this budget cannot test a claim on ``experiment`` (None when it can): a run of
        ``arms`` (roles or labels; the reference is always checked) missing or not finished,
        fewer than ``min_seeds`` completed seeds, or backprop's mean test accuracy below the
        experiment's :meth:`reference_target`."""
        labels = [self.arm(REFERENCE)] + [self.find_arm(a) or a for a in arms]
        for label in dict.fromkeys(labels):
            runs = self.runs(experiment, label)
            done = [s for s in runs if s.get("status") in ("completed", "diverged")]
            if len(done) < len(self.plan.seeds) or not runs:
                return (f"{experiment}/{label}: {len(done)} of {len(self.plan.seeds)} runs "
                        "finished")
            if len(completed(runs)) < min_seeds and label == self.arm(REFERENCE):
                return f"{experiment}/{label}: fewer than {min_seeds} completed seeds"
        target = self.reference_target(experiment)
        acc = mean_accuracy(self, experiment, self.arm(REFERENCE))
        if target is not None and not acc >= target:
            return (f"{experiment}: backprop reached {acc:.2f} % test accuracy, below the "
                    f"{target:g} % at which this experiment counts as converged")
        return None

    def find_arm(self, role: str) -> str | None:
        """:meth:`arm`, or None where the preset has no arm for ``role``."""
        try:
            return self.arm(role)
        except ConfigError:
            return None

    def arm(self, role: str) -> str:
        """The label of the preset's arm playing ``role``, so renaming an arm in the YAML never
        changes what a claim compares: the arm whose ``role:`` key is ``role``, else (no arm
        claims it) the one arm whose rule is ``role`` (``reference`` means
        :data:`~biograd.core.registry.REFERENCE_RULE`). ConfigError if none or several."""
        arms = self.plan.preset.get("arms") or {}
        found = [a for a, spec in arms.items() if spec.get("role") == role]
        if not found:
            rule = REFERENCE_RULE if role == REFERENCE else role
            found = [a for a, spec in arms.items() if spec.get("rule") == rule]
        if len(found) != 1:
            raise ConfigError(
                f"preset {self.plan.paper!r}: the report needs exactly one arm for role "
                f"{role!r} (an arm with 'role: {role}', or the one arm training that rule), "
                f"found {found or 'none'}")
        return found[0]


def num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaNs for none."""
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def completed(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in runs if s.get("status") == "completed" and num(s.get("test_acc"))]


def accuracies(runs: list[dict[str, Any]]) -> list[float]:
    """Test accuracies (%) of the completed runs."""
    return [100 * s["test_acc"] for s in completed(runs)]


def mean_accuracy(ctx: Context, exp: str, arm: str) -> float:
    """Mean test accuracy (%) over the completed seeds of one (experiment, arm) cell."""
    return mean_std(accuracies(ctx.runs(exp, arm)))[0]


def cell(values: list[float], spec: str = ".2f") -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:{spec}} ± {std:{spec}}" if len(values) > 1 else f"{mean:{spec}}"


def pm(values: list[float], spec: str = ".2f", unit: str = "") -> str:
    """``mean ± std`` of ``values`` (each with ``unit``), or '-' when there are none."""
    mean, std = mean_std(values)
    return f"{mean:{spec}}{unit} ± {std:{spec}}{unit}" if values else "-"


def fmt(value: float, spec: str = ".1f", unit: str = "") -> str:
    """``value`` formatted with ``unit``, or '-' when it is NaN (nothing measured)."""
    return f"{value:{spec}}{unit}" if value == value else "-"


def cost_table(ctx: Context, exps: list[str], arms: list[str]) -> list[str]:
    """A Markdown section: each arm's training step relative to backprop's, per experiment
    (:meth:`Context.step_cost`: rule.step + optimizer step on the arm's model, first batch and
    optimizer, median of paired blocks measured in this process when the report is written)."""
    lines = ["## Cost per training step", "",
             "rule.step + optimizer step relative to backprop's on the same model, batch and "
             f"optimizer (median of {ctx.cost_repeats} interleaved block pairs, measured in one "
             "process when this report was written).", "",
             "| rule | " + " | ".join(exps) + " |", "| --- |" + " ---: |" * len(exps)]
    for arm in arms:
        cells = [fmt(ctx.step_cost(e, arm), ".2f", "×") if arm in ctx.arms(e) else ""
                 for e in exps]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def acc_cell(runs: list[dict[str, Any]]) -> str:
    """Test accuracy % (mean ± std over completed seeds) and how many runs diverged/failed."""
    text = cell(accuracies(runs))
    bad = [s.get("status") for s in runs if lost(s)]
    if bad:
        kinds = ", ".join(f"{bad.count(k)} {k}" for k in dict.fromkeys(bad))
        text = f"{text} ({kinds} of {len(runs)})" if text != "-" else f"{kinds} of {len(runs)}"
    return text


def angle_columns(runs: list[dict[str, Any]], prefix: str) -> dict[str, tuple[list, list]]:
    """Per column ``prefix/<name>`` of the runs' alignment.csv: (steps, mean over seeds)."""
    per: dict[str, dict[float, list[float]]] = {}
    for s in runs:
        path = Path(s.get("run_dir", "")) / ALIGNMENT
        if not path.is_file():
            continue
        for row in read_rows(path):
            for key, value in row.items():
                if key.startswith(prefix) and num(value):
                    per.setdefault(key[len(prefix):], {}).setdefault(row["step"], []).append(value)
    return {k: (sorted(v), [sum(v[x]) / len(v[x]) for x in sorted(v)]) for k, v in per.items()}


def plot_layer_angles(ctx: Context, experiment: str, arms: list[str], prefix: str, name: str,
                      ylabel: str) -> str:
    """One panel per arm, one line per layer (``prefix`` columns of alignment.csv) over
    training steps; returns the Markdown image line ('' when nothing was logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {a: angle_columns(ctx.runs(experiment, a), prefix) for a in arms}
    curves = {a: c for a, c in curves.items() if c}
    if not curves:
        return ""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for ax, (arm, cols) in zip(axes[0], curves.items(), strict=True):
        for col, (xs, ys) in cols.items():
            if col.endswith("bias"):
                continue
            ax.plot(xs, ys, label=f"layer {col.removesuffix('.weight')}", linewidth=1.2)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(0, 95)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.suptitle(f"{ylabel}: {experiment}", fontsize=10)
    fig.tight_layout()
    path, link = ctx.figure(name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![{ylabel}, {experiment}]({link})\n"


def learning_curves(ctx: Context, experiment: str, name: str) -> str:
    """The runner's learning-curve plot of one experiment (mean over seeds)."""
    from biograd.plots import learning_curves as plot

    groups = {a: [Path(s["run_dir"]) for s in ctx.runs(experiment, a) if "run_dir" in s]
              for a in ctx.arms(experiment)}
    path, link = ctx.figure(name)
    plot(groups, path, title=f"{experiment} ({ctx.plan.budget} budget)")
    return f"![learning curves, {experiment}]({link})\n"


def _run_machine(s: dict[str, Any]) -> str:
    """Where one run was trained, from its fingerprint (or summary): device, threads, CPU."""
    hw = s.get("hardware") or {}
    device = hw.get("device") or s.get("device") or "device not recorded"
    threads = hw.get("threads", s.get("threads"))
    text = str(device)
    if str(device).startswith("cuda"):
        cuda = hw.get("cuda")
        text += f" ({cuda if cuda and cuda != 'not recorded' else 'GPU name not recorded'})"
    if isinstance(threads, int):
        text += f", {threads} torch thread{'s' * (threads != 1)}"
    else:
        text += ", threads not recorded"
    cpu = hw.get("cpu")
    return text + (f", CPU {cpu}" if cpu and cpu != "not recorded" else ", CPU not recorded")


def _speed_after(timing: bool | str) -> dict[str, Any]:
    """``{"machine_speed": ...}`` of the device a timing ran on (True: the CPU; a run
    config's device name, resolved as the run resolves it), or nothing when that device is
    not here (its probe could not run either)."""
    try:
        device = resolve_device(timing if isinstance(timing, str) else "cpu")
    except ConfigError:
        return {}
    return {"machine_speed": machine_speed(device.type)}


def _measure_machine(record: dict[str, Any]) -> str:
    hw = record.get("hardware") or {}
    cuda = hw.get("cuda")
    threads = hw.get("torch_threads", "?")
    speed = record.get("machine_speed")
    return (f"{hw.get('cpu', 'CPU not recorded')}, {threads} torch thread"
            f"{'s' * (threads != 1)}, {'CUDA ' + cuda if cuda else 'no CUDA device'}"
            + (f"; speed then: {speed_line(speed)}" if speed else ""))


def _counted(items: list[str], what: str = "runs") -> str:
    return "; ".join(f"{k} ({items.count(k)} {what})" for k in dict.fromkeys(items))


def hardware(ctx: Context) -> list[str]:
    """What the report's numbers were produced on (issue 14 item 5): each run's device,
    threads and CPU/GPU as recorded when it was trained, each stored measurement's machine,
    the code versions of the runs, and the machine and versions that wrote this report."""
    runs = [s for r in ctx.results.values() for s in r if s.get("status") != "missing"]
    lines = [f"- training runs on: {_counted([_run_machine(s) for s in runs]) or 'none'}"]
    commits = [str(s.get("git_commit") or "not recorded")[:10] for s in runs]
    if runs:
        lines.append(f"- runs trained at git commit: {_counted(commits)}")
    by_machine: dict[str, list[str]] = {}
    for name, record in sorted(ctx.measured.items()):
        by_machine.setdefault(_measure_machine(record), []).append(
            f"{name} ({record.get('measured_at', 'time not recorded')})")
    for machine, names in by_machine.items():
        lines.append(f"- measurements {', '.join(names)}: {machine}")
    if not ctx.measured:
        lines.append("- measurements: none read or made")
    from biograd import __version__ as version

    lines.append(
        f"- report written on {cpu_name()} ({os.cpu_count()} logical CPUs, "
        f"{platform.platform()}) with python {sys.version.split()[0]}, torch "
        f"{torch.__version__}, numpy {np.__version__}, biograd {version}")
    return lines


def _config_lines(ctx: Context) -> list[str]:
    p = ctx.plan
    if not p.experiments:
        return [f"No training runs; measurement settings: {p.settings}"]
    lines = ["| experiment | dataset | model | model_args | loss | epochs | batch | "
             "train / test subset | optimizer |", "| --- | --- | --- | --- | --- | --- | --- "
             "| --- | --- |"]
    for name, c in p.experiments.items():
        opt = f"{c.optimizer} lr {c.lr:g}" + (f" mom {c.momentum:g}" if c.momentum else "")
        opt += f" wd {c.weight_decay:g}" if c.weight_decay else ""
        opt += f", {c.scheduler}" if c.scheduler != "none" else ""
        lines.append(f"| {name} | {c.dataset} | {c.model} | {c.model_args or '-'} | {c.loss} "
                     f"| {c.epochs} | {c.batch_size} | {c.train_subset or 'all'} / "
                     f"{c.test_subset or 'all'} | {opt} |")
    arms = p.preset.get("arms") or {}
    if arms:
        lines += ["", "| arm | rule | rule_args | config changes |", "| --- | --- | --- | --- |"]
        for label, arm in arms.items():
            lines.append(f"| {label} | {arm['rule']} | {arm.get('rule_args') or '-'} | "
                         f"{arm.get('config') or '-'} |")
    if p.settings:
        lines += ["", f"Measurement settings: {p.settings}"]
    return lines


def _runs_lines(ctx: Context) -> list[str]:
    lines = ["| experiment | arm | seed | status | epochs | steps | train s | wall s | "
             "test acc % | trained on | code | reused |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (exp, arm), runs in ctx.results.items():
        for s in runs:
            if s.get("status") == "missing":
                lines.append(f"| {exp} | {arm} | {s.get('seed')} | missing | - | - | - | - | - "
                             f"| - | - | - |")
                continue
            secs = s.get("seconds_per_epoch")
            train_s = (f"{secs * s.get('epochs_completed', 0):.1f}" if num(secs) else "-")
            acc = f"{100 * s['test_acc']:.2f}" if num(s.get("test_acc")) else "-"
            hw = s.get("hardware") or {}
            device = hw.get("device") or s.get("device") or "not recorded"
            lines.append(f"| {exp} | {arm} | {s.get('seed')} | {s.get('status')} | "
                         f"{s.get('epochs_completed', '-')} | {s.get('steps', '-')} | {train_s} |"
                         f" {fmt(s.get('wall_seconds') or float('nan'), '.1f')} | {acc} | "
                         f"{device} | {short(s.get('code_hash'))} | "
                         f"{'yes' if s.get('reused') else 'no'} |")
    return lines


def _missing_lines(ctx: Context) -> list[str]:
    gone = [(e, a, s) for (e, a), runs in ctx.results.items() for s in runs
            if s.get("status") == "missing"]
    if not gone:
        return []
    lines = ["## Missing runs", "", f"{len(gone)} runs of this budget are not in the store "
             "yet; the claims that need them are not testable at this budget until they are "
             "trained (`biograd reproduce` without `--no-train`, or with a larger "
             "`--train-minutes`).", ""]
    lines += [f"- {e} / {a} seed {s.get('seed')}: {s.get('reason', 'missing')}"
              for e, a, s in gone]
    return lines + [""]


def write(ctx: Context, section: Section) -> dict[str, Any]:
    """Write ``OUT/STEM.md`` and ``OUT/STEM.json`` (:func:`report_stem`: ``PAPER`` for the
    standard budget, ``PAPER-BUDGET`` otherwise), refresh ``OUT/README.md`` and, when OUT is
    the repository's docs/results, the README's summary table
    (:func:`biograd.experiments.summary.refresh`)."""
    p, preset = ctx.plan, ctx.plan.preset
    wall = time.perf_counter() - ctx.started
    every = [s for runs in ctx.results.values() for s in runs]
    here = [s for s in every if s.get("status") != "missing"]
    train_s = sum(s.get("seconds_per_epoch", 0) * s.get("epochs_completed", 0)
                  for s in here if num(s.get("seconds_per_epoch")))
    walls = [s["wall_seconds"] for s in here if num(s.get("wall_seconds"))]
    run_wall = sum(walls)
    reused = sum(bool(s.get("reused")) for s in here)
    reused_wall = sum(s["wall_seconds"] for s in here
                      if s.get("reused") and num(s.get("wall_seconds")))
    # measurements read from the store (made by an earlier invocation) and how long they took
    stored = [r for n, r in ctx.measured.items() if ctx.found.get(n) == "current"]
    stored_s = sum(float(r.get("seconds") or 0.0) for r in stored)
    n_missing = len(every) - len(here)
    cmd = "biograd reproduce " + " ".join(ctx.argv or [p.paper, "--budget", p.budget])
    lines = [
        f"# {p.paper}: {preset.get('title', '')}", "", f"Paper: {preset.get('reference', '')}",
        "", f"Claim (ALGORITHMS.md): {preset.get('claim', '')}", "",
        f"Generated by `{cmd}` at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"budget **{p.budget}**, seeds {p.seeds}.", "",
        "## Claim check", "",
    ]
    reason = ((p.preset.get("budgets") or {}).get(p.budget) or {}).get("reason")
    if reason:
        lines[-2:-2] = [f"Why this budget: {' '.join(str(reason).split())}", ""]
    if n_missing:
        lines[-2:-2] = [f"{n_missing} of {len(every)} runs are missing (listed under "
                        "Missing runs): claims that need them are not testable yet.", ""]
    for c in section.claims:
        lines.append(c.line())
    lines += ["", section.body.rstrip(), "", "## Configuration", "", *_config_lines(ctx), "",
              "## Hardware, versions and wall time", "", *hardware(ctx),
              f"- wall time of this invocation: {wall:.0f} s ({len(here)} training runs, "
              f"{reused} reused from an earlier invocation, {n_missing} missing); wall time "
              f"of the runs when they were trained (with evaluation and angle logging): "
              f"{run_wall:.0f} s over the {len(walls)} runs that recorded it"
              f"{'' if len(walls) == len(here) else f' ({len(here) - len(walls)} did not)'}; "
              f"training steps of all {len(here)} runs: {train_s:.0f} s; "
              f"{len(stored)} measurements read from the store, {stored_s:.0f} s when they "
              "were made", ""]
    bad = [(e, a, s) for (e, a), runs in ctx.results.items() for s in runs if lost(s)]
    if bad:
        lines += ["## Diverged and failed runs", ""]
        for e, a, s in bad:
            why = s.get("error") or (s.get("diverged") or {}).get("reason")
            at = (s.get("diverged") or {}).get("step")
            lines.append(f"- {e} / {a} seed {s.get('seed')}: {s.get('status')}"
                         + (f" at step {at}" if at else "") + f": {why}")
        lines.append("")
    lines += _missing_lines(ctx)
    if ctx.results:
        root = Path(p.runs_dir) / p.paper / p.budget
        lines += ["## Runs", "", f"Run directories: `{root.as_posix()}/EXPERIMENT/ARM-sSEED`; "
                  "code: the rule's code fingerprint (fingerprint.json, "
                  "biograd.experiments.store).", "", *_runs_lines(ctx), ""]
    ctx.out.mkdir(parents=True, exist_ok=True)
    settle_reports(ctx.out, p.paper)
    (ctx.out / f"{ctx.report_stem}.md").write_text("\n".join(lines))
    verdicts = [c.verdict for c in section.claims]
    summary = {"paper": p.paper, "title": preset.get("title", ""), "budget": p.budget,
               "seeds": len(p.seeds), "claim": preset.get("claim", ""),
               "verdicts": verdicts, "key_numbers": section.key_numbers,
               # the work behind the report: this invocation, plus the wall time of the runs
               # it reused when they were trained (wall_seconds.json) and of the stored
               # measurements it read when they were made
               "wall_seconds": round(wall + reused_wall + stored_s, 1),
               "runs": len(every), "missing": n_missing,
               "report": f"{ctx.report_stem}.md", **section.extra}
    (ctx.out / f"{ctx.report_stem}.json").write_text(
        json.dumps(_plain(summary), indent=2) + "\n")
    refresh(ctx.out)
    return summary


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """A measurement's record written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def _probes(configs: Sequence[Config]) -> dict[str, Any]:
    """``{config hash: update probe}`` of ``configs`` with the code at hand."""
    return {store.config_hash(c): store.probe_now(c) for c in configs}


def same_probes(stored: Any, configs: Sequence[Config]) -> bool:
    """Whether ``stored`` (a measurement's ``probes``) holds a probe for each of ``configs``
    equal to its probe with the code at hand."""
    from biograd.experiments.update_probe import difference

    return isinstance(stored, dict) and all(
        isinstance(stored.get(store.config_hash(c)), dict)
        and difference(stored[store.config_hash(c)], store.probe_now(c)) is None
        for c in configs)


def _plain(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
