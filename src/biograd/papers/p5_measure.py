"""P5's measurements (Salvatori et al. 2022, arXiv:2103.04689): the architectures, Z-IL's
exactness from the full PC dynamics and the fast path against them, the ablations, the rounding
thresholds and the step times. :mod:`biograd.papers.p5_zil` stores them
(:meth:`~biograd.experiments.paper_report.Context.measure`) and writes the report; what each
number means is in its docstring.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import biograd
from biograd.core.rule import LearningRule
from biograd.graph.inference import PCInference, levels_of
from biograd.metrics.alignment import max_relative_difference
from biograd.models.resnet import resnet18
from biograd.models.sequence import lstm_classifier, rnn_classifier, transformer_block_classifier

Maker = Callable[[], tuple[nn.Module, Tensor, Tensor]]
FULL = {"exact_shortcut": False}
DTYPES = {"f64": torch.float64, "f32": torch.float32}
#: what each architecture is (part of its measurements' keys): builder, per-sample input shape
SPECS: dict[str, tuple[str, tuple[int, ...]]] = {
    "MLP": ("mlp(784, [256, 256], 10, tanh)", (784,)),
    "CNN": ("lenet(1, 10, 28, channels=(8, 16), hidden=128)", (1, 28, 28)),
    "RNN": ("rnn_classifier(28, 64, 10, 28)", (28, 28)),
    "LSTM": ("lstm_classifier(28, 64, 10, 28)", (28, 28)),
    "ResNet": ("ResNet((1, 1), 3, 10, width=8)", (3, 16, 16)),
    "transformer": ("transformer_block_classifier(28, 32, 4, 10, 28)", (28, 28)),
    "ResNet-18": ("resnet18(3, 10, width=64)", (3, 32, 32)),
}
#: architectures :func:`architectures` builds only when asked (real width: slow on a CPU)
LARGE = ("ResNet-18",)
_BUILD: dict[str, Callable[[], nn.Module]] = {
    "MLP": lambda: biograd.models.mlp(784, [256, 256], 10, activation="tanh"),
    "CNN": lambda: biograd.models.lenet(1, 10, 28, channels=(8, 16), hidden=128),
    "RNN": lambda: rnn_classifier(28, 64, 10, 28),
    "LSTM": lambda: lstm_classifier(28, 64, 10, 28),
    "ResNet": lambda: biograd.models.ResNet((1, 1), 3, 10, width=8),
    "transformer": lambda: transformer_block_classifier(28, 32, 4, 10, 28),
    "ResNet-18": lambda: resnet18(3, 10, width=64),
}
#: ablations, each breaking one condition (float64, against autograd), and standard IL
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "no levelling": ("zil", {"levelling": False}),
    "gamma = 0.5 (C3 breaks)": ("zil", {"gamma": 0.5}),
    "perturbed start (C1 breaks)": ("zil", {"init_noise": 0.1}),
    "IL (PC, T = 20)": ("predictive_coding", {"T": 20}),
}
#: rounding ulps per level of the value nodes allowed by the exactness threshold
C_ROUND = 10.0
#: a broken condition must move an update by more than this (far above any rounding)
BROKEN = 1e-2
#: Z-IL fast path / backprop time the cost claim allows (issue 12, item 3)
COST_BOUND = {"MLP": 1.10, "CNN": 1.10, "ResNet": 1.10, "ResNet-18": 1.10,
              "RNN": 1.5, "LSTM": 1.5, "transformer": 1.5}
#: the timed rules: label -> (rule, hyper-parameters); the slow ones run fewer rounds
COST = {"backprop": ("backprop", {}), "zil": ("zil", {}),
        "predictive_coding": ("predictive_coding", {"T": 20}),
        "zil full dynamics": ("zil", FULL)}
SLOW = ("predictive_coding", "zil full dynamics")
#: the rules the measurements run (their code is part of each measurement's key)
RULES = ("backprop", "predictive_coding", "zil")
#: the version of this module's measuring code (bump when what it measures changes)
VERSION = 2


def _batch(shape: tuple[int, ...], n_classes: int = 10, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randint(0, n_classes, (shape[0],), generator=g)


def architectures(batch: int, seed: int = 0, large: bool = False) -> dict[str, Maker]:
    """name -> () -> (model, x, y); ``seed`` draws the model's initialisation and the batch, so
    every call builds the same ones. ``large`` adds :data:`LARGE` (ResNet-18 at width 64)."""

    def mk(name: str) -> Maker:
        def make() -> tuple[nn.Module, Tensor, Tensor]:
            torch.manual_seed(seed)
            return (_BUILD[name](), *_batch((batch, *SPECS[name][1]), seed=seed))
        return make

    return {n: mk(n) for n in SPECS if large or n not in LARGE}


def run_step(maker: Maker, dtype: torch.dtype, rule: str = "zil",
             **hparams: Any) -> tuple[list[Tensor], dict[str, float], LearningRule, Tensor]:
    """One step of ``rule`` on ``maker``'s model in ``dtype``: the updates (``.grad``), the
    step's metrics, the rule and the input."""
    model, x, y = maker()
    model, x = model.to(dtype), x.to(dtype)
    r = biograd.create_rule(rule, model, **hparams)
    metrics = r.step(x, y).metrics
    return [p.grad for p in model.parameters()], metrics, r, x


def updates(maker: Maker, dtype: torch.dtype, rule: str = "zil", **hparams: Any) -> list[Tensor]:
    """The parameter updates (``.grad``) one step of ``rule`` writes on ``maker``'s model."""
    return run_step(maker, dtype, rule, **hparams)[0]


def rel_diff(a: list[Tensor], b: list[Tensor]) -> float:
    """P5's measure: max over parameters of max|a - b| / max|b|."""
    return max(max_relative_difference(p, q) for p, q in zip(a, b, strict=True))


def max_rel_diff(maker: Maker, dtype: torch.dtype, rule: str = "zil", **hparams: Any) -> float:
    """P5's exactness measure of ``rule`` against autograd on ``maker``'s model and batch."""
    return rel_diff(updates(maker, dtype, rule, **hparams), updates(maker, dtype, "backprop"))


def wave(metrics: dict[str, float]) -> list[float]:
    """The energy the error wave carries at each step, 1/2 sum ||e_v(t)||^2 over level t."""
    return [metrics[f"energy_{t}"] for t in range(int(metrics["inference_steps"]) + 1)]


def step_relative(a: list[float], b: list[float]) -> float:
    """max over steps t of |a_t - b_t| / |b_t| (steps where b_t = 0 must have a_t = 0)."""
    out = 0.0
    for x, y in zip(a, b, strict=True):
        out = max(out, abs(x - y) / abs(y) if y else (0.0 if x == 0 else math.inf))
    return out


def condition_factors(maker: Maker, energies: list[float]) -> list[float]:
    """kappa_t = ||mu_L(t)|| / ||e_L(t)|| per level t >= 1 (norms over the level's value nodes,
    float64): how much the PC error x_v - mu_v cancels. ``energies`` is the full dynamics'
    float64 wave, so ||e_L(t)|| = sqrt(2 E_t); 0 where a level carries no error."""
    model, x, y = maker()
    model, x = model.double(), x.double()
    rule = biograd.create_rule("zil", model)
    graph = rule.graph(x)
    inf = PCInference(graph, x, y, rule.loss_fn)
    values = dict(zip(inf.free, inf.initial, strict=True))
    out = []
    for t, level in enumerate(levels_of(graph)[1:], start=1):
        norm = math.sqrt(sum(float(values[v].double().pow(2).sum()) for v in level
                             if v in values))
        err = math.sqrt(2 * energies[t]) if t < len(energies) else 0.0
        out.append(norm / err if err > 0 else 0.0)
    return out


def exactness(maker: Maker, name: str = "") -> dict[str, Any]:
    """Every exactness number of one architecture and seed: full dynamics vs autograd, fast
    path vs full dynamics (updates and energy wave) in float64 and float32, the ablations
    (float64), the condition factors and whether the graph has skip edges. NaN where a
    column failed (printed)."""
    row: dict[str, Any] = {}
    bp64: list[Tensor] = []
    for tag, dtype in DTYPES.items():
        bp = updates(maker, dtype, "backprop")
        full, full_m, full_rule, x = run_step(maker, dtype, "zil", **FULL)
        fast, fast_m, _, _ = run_step(maker, dtype, "zil", energy_trace=True)
        row[f"full vs bp {tag}"] = rel_diff(full, bp)
        row[f"fast vs full {tag}"] = rel_diff(fast, full)
        row[f"fast vs bp {tag}"] = rel_diff(fast, bp)
        row[f"wave full {tag}"], row[f"wave fast {tag}"] = wave(full_m), wave(fast_m)
        row[f"wave fast vs full {tag}"] = step_relative(wave(fast_m), wave(full_m))
        if tag == "f64":
            bp64 = bp
            row["depth"] = int(full_m["inference_steps"])
            row["vertices"] = len(full_rule.graph(x).vertices)
    for label, (rule, hp) in ABLATIONS.items():
        try:
            got, _, r, x = run_step(maker, torch.float64, rule, **hp)
            row[label] = rel_diff(got, bp64)
            if label == "no levelling":
                row["vertices without levelling"] = len(r.graph(x).vertices)
        except Exception as exc:  # noqa: BLE001 - a column failing is reported, not fatal
            row[label] = float("nan")
            print(f"[reproduce p5-zil] {name} {label}: {exc}", flush=True)
    row["kappa"] = condition_factors(maker, row["wave full f64"])
    return row


def exactness_row(maker: Maker, name: str = "") -> dict[str, float]:
    """The float columns of :func:`exactness` (NaN where a column failed)."""
    return {k: v for k, v in exactness(maker, name).items() if isinstance(v, float)}


def level_factors(row: dict[str, Any]) -> list[float]:
    """K_t = 1 + sum_{1 <= s <= t} kappa_s per step t = 0..depth: the relative rounding error,
    in units of eps, of the level-t PC errors (one rounding, plus the cancellation of every
    level the wave passed, carried on to level t to first order)."""
    out, acc = [], 1.0
    for k in [0.0, *row["kappa"]]:
        acc += k
        out.append(acc)
    return out


def threshold(row: dict[str, Any], tag: str) -> float:
    """The rounding threshold of a ``tag`` (f64/f32) comparison of updates:
    C_ROUND eps sum_t w_t K_t, with w_t = ||e_L(t)|| / max_s ||e_L(s)|| the share of level t
    in the updates (the error it carries) and K_t :func:`level_factors`."""
    eps = torch.finfo(DTYPES[tag]).eps
    errs = [math.sqrt(2 * max(0.0, _num(e))) for e in row["wave full f64"]]
    top = max(errs) or 1.0
    return C_ROUND * eps * sum(e / top * k for e, k in zip(errs, level_factors(row),
                                                             strict=True))


def wave_check(row: dict[str, Any], tag: str) -> tuple[float, float, int]:
    """The fast path's wave energy against the full dynamics', step by step: (largest relative
    difference over the steps the dtype resolves, its largest ratio to that step's threshold
    2 C_ROUND eps K_t, number of steps whose threshold is >= 1: errors below the dtype's
    resolution of the value nodes, not testable)."""
    eps = torch.finfo(DTYPES[tag]).eps
    worst, ratio, blind = 0.0, 0.0, 0
    for a, b, k in zip(row[f"wave fast {tag}"], row[f"wave full {tag}"], level_factors(row),
                       strict=True):
        bound = 2 * C_ROUND * eps * k
        if bound >= 1:
            blind += 1
            continue
        a, b = _num(a), _num(b)
        rel = abs(a - b) / abs(b) if b else (0.0 if a == 0 else math.inf)
        rel = rel if rel == rel else math.inf
        worst, ratio = max(worst, rel), max(ratio, rel / bound)
    return worst, ratio, blind


def step_times(maker: Maker, repeats: int, slow_repeats: int,
               rules: dict[str, tuple[str, dict]] = COST) -> dict[str, list[float]]:
    """CPU seconds of each ``rules`` step per round (rules interleaved within a round, after
    warm-up); the :data:`SLOW` ones only in the first ``slow_repeats`` rounds."""
    model, x, y = maker()
    made = {n: biograd.create_rule(r, copy.deepcopy(model), **hp) for n, (r, hp) in rules.items()}
    times: dict[str, list[float]] = {n: [] for n in made}
    for n, r in made.items():  # warm-up (graph capture happens here)
        for _ in range(1 if n in SLOW else 2):
            r.zero_grad(set_to_none=True)
            r.step(x, y)
    for i in range(repeats):
        for n, r in made.items():
            if n in SLOW and i >= slow_repeats:
                continue
            r.zero_grad(set_to_none=True)
            t0 = time.process_time()
            r.step(x, y)
            times[n].append(time.process_time() - t0)
    return times


def seconds_per_update(maker: Maker, repeats: int,
                       rules: dict[str, tuple[str, dict]] = COST) -> dict[str, float]:
    """Median CPU seconds of one ``step`` per entry of ``rules`` (interleaved timing)."""
    times = step_times(maker, repeats, repeats, rules)
    return {n: statistics.median(t) for n, t in times.items()}


def ratio_quartiles(times: dict[str, list[float]], rule: str) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``rule``'s per-round time over backprop's
    in the same round; NaNs when not measured."""
    got, bp = times.get(rule) or [], times.get("backprop") or []
    ratios = [a / b for a, b in zip(got, bp, strict=False) if b]
    if not ratios:
        return (float("nan"),) * 3
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return float(q1), float(med), float(q3)


def _num(v: Any) -> float:
    """``v`` as a float; NaN for None (a NaN stored as JSON null) or anything not a number."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")
