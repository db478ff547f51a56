"""P5 (Salvatori et al. 2022, arXiv:2103.04689): Z-IL's exactness (Table 1) and cost (Table 2)
per architecture, against backprop and standard inference learning (``predictive_coding``).

Exactness is P5's measure, ``max_params max|dW - dW_ref| / max|dW_ref|``. The evidence is the
full PC dynamics (``zil`` with ``exact_shortcut=False``: value nodes, errors, gradient steps
on the energy for every vertex at every step, level-k updates at step k) in float64 and
float32, compared with autograd, over the budget's seeds (each seed draws the model and the
batch). The fast path (the default event-driven schedule) is compared with the full dynamics,
updates and the energy its error wave carries, not only with autograd, since it runs
autograd's own backward operations level by level. Ablations break one condition each (no
levelling; gamma = 0.5; a perturbed start) and run the full dynamics.

The rounding threshold of a comparison is ``C_ROUND * eps * sum_t w_t K_t``: the PC error of
a level-t vertex, e_v = x_v - mu_v, is the difference of two values of norm about |mu_v|, so
forming it costs about eps kappa_t relative, kappa_t = ||mu_L(t)|| / ||e_L(t)|| (norms over the
level's value nodes, measured in float64 with e_v from the full dynamics' energy wave); the wave
carries it on, so level t's errors are off by about eps K_t, K_t = 1 + sum_{s <= t} kappa_s
(first order), and an update collects levels by their share w_t = ||e_L(t)|| / max ||e_L||.
``C_ROUND`` covers the rounding of the vertex operations themselves.

Cost is CPU time per update (``time.process_time``, one thread, rules interleaved round by
round after warm-up): the median of the per-round ratios to backprop, with quartiles.

The measuring code is :mod:`biograd.papers.p5_measure`; every number is a stored measurement
(:meth:`Context.measure`): ``exactness-ARCH-sSEED`` and ``steptime-ARCH``; writing the report
only reads them.
"""

from __future__ import annotations

import inspect
import math
import statistics
from typing import Any

import torch

from biograd.experiments.paper_report import Claim, Context, Section, mean_std, verdict_of
from biograd.papers.p5_measure import (
    ABLATIONS,
    BROKEN,
    C_ROUND,
    COST,
    COST_BOUND,
    DTYPES,
    LARGE,
    RULES,
    SPECS,
    VERSION,
    _num,
    architectures,
    exactness,
    ratio_quartiles,
    step_times,
    threshold,
    wave_check,
)


def _e(v: float) -> str:
    return f"{v:.1e}" if v == v else "nan"


def _over_seeds(rows: list[dict[str, Any]], col: str) -> str:
    """max over seeds (mean ± std over seeds) of one column; 'nan' marks an overflow."""
    vals = [_num(r.get(col)) for r in rows]
    if not vals:
        return "not measured"
    if any(v != v for v in vals):
        return f"nan (overflow in {sum(v != v for v in vals)} of {len(vals)})"
    mean, std = mean_std(vals)
    return f"{max(vals):.1e} ({mean:.1e} ± {std:.0e})" if len(vals) > 1 else f"{vals[0]:.1e}"


def _batches(st: dict[str, Any], name: str) -> tuple[int, int]:
    """(exactness batch, cost batch) of architecture ``name`` (``settings.batches`` overrides)."""
    ex, cost = int(st.get("exactness_batch", 16)), int(st.get("cost_batch", 64))
    got = (st.get("batches") or {}).get(name)
    return (int(got[0]), int(got[1])) if got else (ex, cost)


def measure_all(ctx: Context) -> tuple[dict[str, list[dict]], dict[str, dict[str, list]]]:
    """Every stored (or, when missing and allowed, newly made) measurement of this budget:
    exactness per architecture per seed, step times per architecture (seed 0)."""
    st = ctx.plan.settings
    names = list(st.get("architectures") or [n for n in SPECS if n not in LARGE])
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        from biograd.core.errors import unknown_name
        raise unknown_name("architecture", unknown[0], tuple(SPECS))
    repeats = int(st.get("repeats", 10))
    slow = int(st.get("slow_repeats", min(repeats, 3)))
    threads = int(st.get("threads", 1))
    torch.set_num_threads(threads)
    exact: dict[str, list[dict]] = {}
    cost: dict[str, dict[str, list]] = {}
    # the code of the rules every measurement runs enters its key (where measure takes it)
    code = ({"rules": RULES} if "rules" in inspect.signature(ctx.measure).parameters else {})
    for name in names:
        ex_batch, cost_batch = _batches(st, name)
        common = {"version": VERSION, "architecture": name, "model": SPECS[name][0],
                  "input": list(SPECS[name][1]), "threads": threads}
        for seed in ctx.plan.seeds:
            maker = architectures(ex_batch, seed, large=True)[name]
            got = ctx.measure(f"exactness-{name}-s{seed}",
                              lambda m=maker, n=name: exactness(m, n),
                              key={**common, "seed": seed, "batch": ex_batch,
                                   "ablations": ABLATIONS, "dtypes": list(DTYPES)}, **code)
            if got is not None:
                exact.setdefault(name, []).append(got)
            print(f"[reproduce p5-zil] exactness {name} seed {seed}: "
                  f"{'stored' if got is not None else 'not measured'}", flush=True)
        maker = architectures(cost_batch, 0, large=True)[name]
        got = ctx.measure(f"steptime-{name}",
                          lambda m=maker: step_times(m, repeats, slow),
                          key={**common, "seed": 0, "batch": cost_batch, "repeats": repeats,
                               "slow_repeats": slow, "rules": COST}, timing=True, **code)
        if got is not None:
            cost[name] = got
        print(f"[reproduce p5-zil] step times {name}: "
              f"{'stored' if got is not None else 'not measured'}", flush=True)
    return exact, cost


def report(ctx: Context) -> Section:
    exact, cost = measure_all(ctx)
    st = ctx.plan.settings
    names = list(st.get("architectures") or [n for n in SPECS if n not in LARGE])
    n_seeds = len(ctx.plan.seeds)
    lines = ["## Exactness (P5 Table 1)", "",
             "max over parameters of max|dW - dW_ref| / max|dW_ref| (P5's measure), one batch "
             "of random inputs per seed; each seed draws the model's initialisation and the "
             f"batch ({n_seeds} seed{'s' * (n_seeds > 1)}). Cells: the largest value over "
             "seeds (mean ± std over seeds). Batch per architecture: " + ", ".join(
                 f"{n} {_batches(st, n)[0]}" for n in names) + ". Z-IL conditions: C1 start "
             "at the feed-forward values, C2 update a vertex's parameters at the inference step "
             "equal to its distance to the output, C3 gamma = 1, and levelling (identity "
             "vertices) on graphs with skip edges.", "",
             "The evidence is the **full PC dynamics** (`zil` with `exact_shortcut=False`): "
             "value nodes x_v, errors x_v - mu_v, gradient steps of size gamma on the energy for "
             "every vertex at every step, the level-k parameters updated at step k, compared "
             "with autograd's gradients (dW_ref = backprop, same dtype).", "",
             "Threshold: float rounding. Forming the PC error x_v - mu_v subtracts two values "
             "of size |mu_v| whose difference is |e_v|, which costs eps |mu_v| / |e_v| "
             "relative; kappa_t = ||mu_L(t)|| / ||e_L(t)|| (norms over the level-t value "
             "nodes, float64, the errors from the full dynamics' energy wave) is that "
             "cancellation per level. The wave carries it on from level to level, so the level-t "
             "errors have a relative error of about eps K_t, K_t = 1 + sum_{s <= t} kappa_s "
             "(first order). An update collects the errors of the levels its parameters serve, "
             "so its threshold is C eps sum_t w_t K_t with w_t = ||e_L(t)|| / max_s ||e_L(s)|| "
             f"(the level's share), C = {C_ROUND:g} (roundings of the vertex operations per "
             "level) and eps the dtype's machine epsilon. Each seed is checked against its "
             "own threshold; the table shows the smallest over seeds. The float64 check is the "
             "one that would expose a wrong algorithm (any algebraic slip is far above 1e-10); "
             "the float32 check shows how far float32's cancellation moves the dynamics.", "",
             "| model | depth | vertices | sum_t w_t K_t | full vs BP f64 | threshold f64 | "
             "full vs BP f32 | threshold f32 |", "| --- | ---: | ---: | ---: | ---: | ---: | "
             "---: | ---: |"]
    for name in names:
        rows = exact.get(name, [])
        if not rows:
            lines.append(f"| {name} | not measured | | | | | | |")
            continue
        kap = [threshold(r, "f64") / (C_ROUND * torch.finfo(torch.float64).eps) for r in rows]
        lines.append(
            f"| {name} | {rows[0]['depth']} | {rows[0]['vertices']} | "
            f"{mean_std(kap)[0]:.2e} | {_over_seeds(rows, 'full vs bp f64')} | "
            f"{_e(min(threshold(r, 'f64') for r in rows))} | "
            f"{_over_seeds(rows, 'full vs bp f32')} | "
            f"{_e(min(threshold(r, 'f32') for r in rows))} |")
    lines += ["", "### The fast path against the full dynamics", "",
              "The **fast path** (the default schedule) is an event-driven implementation of "
              "the same dynamics, valid only where C1-C3 and levelling hold: it evaluates only "
              "the level-t vertices at step t, through the vjps recorded in the forward pass, "
              "i.e. autograd's own backward operations, so its difference to autograd is 0 by "
              "construction and is not evidence (last column). It is compared with the full "
              "dynamics: the updates, and the energy its error wave carries at each step "
              "(E(t) = 1/2 sum ||e_v(t)||^2 over the level-t vertices), as the largest relative "
              "difference over the steps, max_t |E_fast(t) - E_full(t)| / E_full(t), so the "
              "deepest levels count as much as the output's. Thresholds: the updates', those of "
              "the exactness table; the energy's, step by step, 2 C eps K_t (quadratic in the "
              "errors); a step whose threshold reaches 1 carries errors below the dtype's "
              "resolution of its value nodes and is not tested (counted in brackets).", "",
              "| model | updates f64 | updates f32 | wave energy f64 | wave energy f32 | fast "
              "vs autograd f64 | fast vs autograd f32 |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        rows = exact.get(name, [])
        cells = [_over_seeds(rows, c) for c in ("fast vs full f64", "fast vs full f32")]
        for tag in DTYPES:
            checks = [wave_check(r, tag) for r in rows]
            blind = max((c[2] for c in checks), default=0)
            cells.append(_over_seeds([{"w": c[0]} for c in checks], "w") + (
                f" [{blind} of {rows[0]['depth'] + 1} steps unresolved]" if blind else ""))
        cells += [_over_seeds(rows, c) for c in ("fast vs bp f64", "fast vs bp f32")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Ablations: one condition broken (float64, full dynamics vs autograd)", "",
              "| model | skip edges (levelling adds vertices) | " + " | ".join(ABLATIONS)
              + " |", "| --- | --- |" + " ---: |" * len(ABLATIONS)]
    for name in names:
        rows = exact.get(name, [])
        if not rows:
            lines.append(f"| {name} | not measured |" + " |" * len(ABLATIONS))
            continue
        skip = _skips(rows[0])
        lines.append(f"| {name} | {'yes' if skip else 'no'} ({rows[0]['vertices']} vs "
                     f"{rows[0].get('vertices without levelling', '?')}) | "
                     + " | ".join(_over_seeds(rows, c) for c in ABLATIONS) + " |")
    lines += ["", "The gamma = 1 dynamics diverge behind the error wave (vertices already used "
              "keep moving), which never reaches a later update. Breaking a condition lets that "
              "divergence act before an update: without levelling, errors arriving through a "
              "skip edge meet the other branch's at the wrong step (only graphs with skip edges "
              "can lose exactness); a perturbed start (noise 0.1 on every value node) gives "
              "nonzero errors everywhere at t = 0; where the values grow without bound the "
              "update overflows (nan). gamma = 0.5 scales the level-k updates by 0.5^k. IL is "
              "standard inference learning (T = 20, gamma = 0.1): approximate.", ""]
    lines += _cost_lines(ctx, names, cost)
    claims, key = _claims(names, exact, cost, n_seeds)
    return Section("\n".join(lines) + "\n", claims, key,
                   extra={"exactness": exact, "step_seconds": cost})


def _skips(row: dict[str, Any]) -> bool:
    """Whether levelling added identity vertices: the graph has skip edges."""
    return int(row["vertices"]) > int(row.get("vertices without levelling", row["vertices"]))


def _cost_lines(ctx: Context, names: list[str], cost: dict[str, dict[str, list]]) -> list[str]:
    st = ctx.plan.settings
    lines = ["## Cost per update (P5 Table 2)", "",
             "CPU time of one update (`time.process_time`, one thread, one process; the rules "
             "interleaved round by round after warm-up, seed-0 model and batch). Ratios: median "
             "of the per-round ratios to backprop [first, third quartile]. BP and the fast path "
             f"over {st.get('repeats', 10)} rounds, the full dynamics and IL over "
             f"{st.get('slow_repeats', 3)}. The bound is issue 12's: at most 1.10x on MLP, CNN "
             "and the ResNets, 1.5x on RNN, LSTM and the transformer.", "",
             "| model | batch | BP ms | fast / BP | bound | full dynamics / BP | IL (T = 20) "
             "/ BP |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def q(times: dict[str, list], rule: str, spec: str) -> str:
        lo, med, hi = ratio_quartiles(times, rule)
        return f"{med:{spec}} [{lo:{spec}}, {hi:{spec}}]" if med == med else "not measured"

    for name in names:
        t = cost.get(name)
        if not t:
            lines.append(f"| {name} | not measured | | | | | |")
            continue
        lines.append(f"| {name} | {_batches(st, name)[1]} | "
                     f"{statistics.median(t['backprop']) * 1e3:.2f} | {q(t, 'zil', '.2f')} | "
                     f"{COST_BOUND.get(name, float('nan')):.2f} | "
                     f"{q(t, 'zil full dynamics', '.0f')} | {q(t, 'predictive_coding', '.1f')} |")
    lines += ["", "CPU only: " + ("no GPU was available to this run, so P5's GPU timings are "
                                  "not compared here." if not torch.cuda.is_available() else
                                  "a GPU was available, but this table times the CPU only."),
              "", "## Stored measurements", "",
              "Each number above is read from `_measurements/NAME.json` in "
              f"`{ctx.measurements_dir}` (written by `Context.measure`, keyed by what it depends "
              "on, with the hardware it ran on).", "",
              "| measurement | measured at | seconds |", "| --- | --- | ---: |"]
    for name, rec in sorted(ctx.measured.items()):
        lines.append(f"| {name} | {rec.get('measured_at', '-')} | {rec.get('seconds', '-')} |")
    return lines + [""]


def _claims(names: list[str], exact: dict[str, list[dict]], cost: dict[str, dict[str, list]],
            n_seeds: int) -> tuple[list[Claim], str]:
    spread = f"mean ± std over {n_seeds} seeds in the tables" if n_seeds > 1 else "one seed"
    missing = [n for n in names if n not in exact]
    untested = f" Not measured: {', '.join(missing)}." if missing else ""

    def within(col: str) -> tuple[list[str], list[str], float, str]:
        """cases (arch dtype) held and failed against the rounding threshold; the worst
        difference / threshold ratio. A case whose threshold reaches 1 on some seed (rounding
        may swamp the update) is neither: :func:`vague` lists it."""
        held, failed, worst, where = [], [], 0.0, "-"
        for name, rows in exact.items():
            for tag in DTYPES:
                if any(threshold(r, tag) >= 1 for r in rows):
                    continue
                ratios = [_num(r[f"{col} {tag}"]) / threshold(r, tag) for r in rows]
                ok = all(x <= 1 for x in ratios)
                (held if ok else failed).append(f"{name} {tag}")
                top = max((x if x == x else math.inf) for x in ratios)
                if top > worst:
                    worst, where = top, f"{name} {tag}"
        return held, failed, worst, where

    vague = [f"{n} {tag}" for n, rows in exact.items() for tag in DTYPES
             if any(threshold(r, tag) >= 1 for r in rows)]
    precision = ""
    if vague:
        precision = (f" Not testable at this precision (rounding threshold >= 1: the PC errors "
                    f"lie below the dtype's resolution of the value nodes): {', '.join(vague)}.")
    held, failed, worst, where = within("full vs bp")
    claims = [Claim(
        "Z-IL's parameter updates equal backprop's exactly on every architecture (the full "
        "predictive-coding dynamics under C1-C3 on a levelled graph, P5 Thm. 1).",
        verdict_of(len(held), len(held) + len(failed)),
        f"{len(held)} of {len(held) + len(failed)} (architecture, dtype) cases within rounding"
        + (f"; outside: {', '.join(failed)}" if failed else "") + "." + precision + untested,
        statistic=f"max relative difference, full dynamics vs autograd, per architecture and "
                  f"dtype; largest difference / threshold {worst:.2g} ({where})",
        spread=spread, threshold=f"{C_ROUND:g} eps sum_t w_t K_t per seed (float rounding of "
                                 "the PC errors; table 'Exactness')")]
    held_u, failed_u, worst_u, where_u = within("fast vs full")
    held_w, failed_w, worst_w, where_w, blind = [], [], 0.0, "-", []
    for name, rows in exact.items():
        for tag in DTYPES:
            if f"{name} {tag}" in vague:
                continue
            checks = [wave_check(r, tag) for r in rows]
            top = max(c[1] for c in checks)
            (held_w if top <= 1 else failed_w).append(f"{name} {tag}")
            if top > worst_w:
                worst_w, where_w = top, f"{name} {tag}"
            if max(c[2] for c in checks):
                blind.append(f"{name} {tag} {max(c[2] for c in checks)} of "
                             f"{rows[0]['depth'] + 1} steps")
    both = [c for c in held_u if c in held_w]
    bad = sorted(set(failed_u) | set(failed_w))
    claims.append(Claim(
        "The fast path is the same dynamics: its updates and the energy of its error wave "
        "equal the full dynamics' on every architecture (where C1-C3 and levelling hold; it is "
        "not evidence against autograd, which it equals by construction).",
        verdict_of(len(both), len(both) + len(bad)),
        f"{len(both)} of {len(both) + len(bad)} (architecture, dtype) cases within rounding"
        + (f"; outside: {', '.join(bad)}" if bad else "") + "."
        + (" Steps whose errors lie below the dtype's resolution of the value nodes, not "
           f"tested: {', '.join(blind)}." if blind else "") + precision + untested,
        statistic=f"max relative difference fast vs full; largest difference / threshold: "
                  f"updates {worst_u:.2g} ({where_u}), wave energy {worst_w:.2g} ({where_w})",
        spread=spread, threshold="updates: the exactness check's rounding threshold; wave "
                                 "energy: 2 C eps K_t per step"))
    broken_ok, broken_bad = [], []
    for name, rows in exact.items():
        skip = _skips(rows[0])
        for label in ("gamma = 0.5 (C3 breaks)", "perturbed start (C1 breaks)"):
            vals = [_num(r[label]) for r in rows]
            ok = all(not v <= BROKEN for v in vals)  # nan (overflow) counts as broken
            (broken_ok if ok else broken_bad).append(f"{name} {label.split(' (')[0]}")
        vals = [_num(r["no levelling"]) for r in rows]
        ok = (all(not v <= BROKEN for v in vals) if skip else
              all(v <= threshold(r, "f64") for v, r in zip(vals, rows, strict=True)))
        (broken_ok if ok else broken_bad).append(f"{name} no levelling")
    claims.append(Claim(
        "The conditions are needed: gamma != 1 or a perturbed start breaks exactness on every "
        "architecture; without levelling, exactly the graphs with skip edges lose it.",
        verdict_of(len(broken_ok), len(broken_ok) + len(broken_bad)),
        f"{len(broken_ok)} of {len(broken_ok) + len(broken_bad)} (architecture, ablation) "
        "cases as stated" + (f"; not as stated: {', '.join(broken_bad)}" if broken_bad else "")
        + " (table 'Ablations'; nan is an overflow of the dynamics, counted as broken)."
        + untested,
        statistic="max relative difference of the ablated full dynamics vs autograd (float64)",
        spread=spread, threshold=f"broken: > {BROKEN:g} on every seed; no levelling on a graph "
                                 "without skip edges: within the float64 rounding threshold"))
    fast = {n: ratio_quartiles(t, "zil") for n, t in cost.items()}
    full = {n: ratio_quartiles(t, "zil full dynamics") for n, t in cost.items()}
    il = {n: ratio_quartiles(t, "predictive_coding") for n, t in cost.items()}
    cheap = [n for n, (_, m, _) in fast.items() if m <= COST_BOUND.get(n, 1.10)]
    dear = [f"{n} {m:.2f}x > {COST_BOUND.get(n, 1.10):.2f}x" for n, (_, m, _) in fast.items()
            if not m <= COST_BOUND.get(n, 1.10)]
    not_cost = [n for n in names if n not in cost]
    claims.append(Claim(
        "Z-IL costs about one backprop (P5: within about 5 % on GPU).",
        verdict_of(len(cheap), len(fast)),
        (f"Above the bound: {', '.join(dear)}. " if dear else "")
        + "This holds for the fast path only: the full dynamics, the evidence for exactness, "
        "evaluate every vertex at each of the depth steps: "
        + ", ".join(f"{n} {m:.0f}x" for n, (_, m, _) in full.items())
        + " backprop (median). The fast path is compiled per graph: a generated feed-forward "
        "sweep, then one autograd call for the output error and one per group of up to 8 "
        "inference steps (docs/algorithms/pc_zil.md, Cost). CPU only."
        + (f" Not measured: {', '.join(not_cost)}." if not_cost else ""),
        statistic="fast path / BP time per update, median [quartiles] over rounds: "
                  + ", ".join(f"{n} {m:.2f} [{lo:.2f}, {hi:.2f}]"
                              for n, (lo, m, hi) in fast.items()),
        spread="quartiles of the paired per-round ratios, seed-0 model",
        threshold="<= 1.10x on MLP, CNN, ResNets; <= 1.5x on RNN, LSTM, transformer "
                  "(issue 12)"))
    slow = [n for n, (_, m, _) in il.items() if m >= 10]
    claims.append(Claim(
        "Standard inference learning is far slower than backprop (P5: ~100-200x).",
        verdict_of(len(slow), len(il)),
        "T = 20 inference steps, each an energy gradient over the whole graph; P5's IL ran "
        "more steps, which scales the cost linearly.",
        statistic="IL / BP time per update, median [quartiles]: "
                  + ", ".join(f"{n} {m:.1f}x [{lo:.1f}, {hi:.1f}]"
                              for n, (lo, m, hi) in il.items()),
        spread="quartiles of the paired per-round ratios, seed-0 model",
        threshold=">= 10x"))
    f64 = [_num(r["full vs bp f64"]) for rows in exact.values() for r in rows]
    f32 = [_num(r["full vs bp f32"]) for rows in exact.values() for r in rows]
    meds = [m for _, m, _ in fast.values()]
    key = ((f"full dynamics max rel. diff f64 {max(f64):.0e}, f32 {max(f32):.0e}"
            if f64 else "exactness not measured")
           + (f"; Z-IL/BP time {min(meds):.2f}-{max(meds):.2f}x (median)" if meds else "")
           + (f"; IL/BP {min(m for _, m, _ in il.values()):.0f}-"
              f"{max(m for _, m, _ in il.values()):.0f}x" if il else ""))
    return claims, key
