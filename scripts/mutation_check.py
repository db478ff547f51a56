"""Mutation check: inject one-line defects into the rules and count how many the tests catch.

Each mutant is ``(file, original text, replacement, tests)``: the original text must occur
exactly once in the file (else the mutant is reported as invalid), ``tests`` is the targeted
pytest selection that should catch it (the rule's own test file(s) plus the contract tests of
the rule, via ``-k``). Kinds: flipped sign, dropped factor, transposed feedback, skipped update,
skipped check, stale state (a value kept across steps or copies that must be refreshed).

The shared checkout is never modified: ``src/``, ``tests/`` and ``pyproject.toml`` are copied to
a temporary folder, each mutant is applied there (and restored in a ``finally``), and pytest
runs in that folder with ``PYTHONPATH`` pointing at the copy (checked: ``biograd`` must import
from the copy). A mutant is *killed* when its tests fail or time out, and *survives* when they
pass. The unmutated selections are run first: a selection that fails unmutated is reported and
its mutants are not counted.

    python scripts/mutation_check.py [--timeout 300] [--only SUBSTRING] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
R = "src/biograd/rules/"
O = "src/biograd/ops/"


def sel(files: list[str], rule: str | None = None) -> list[str]:
    """``files`` in full, plus the contract tests of ``rule`` (``-k`` on the test ids)."""
    if rule is None:
        return [*files]
    return [*files, "tests/test_contract.py", "-k", f"not test_contract or {rule}"]


BACKWARD = ["tests/test_backward_rules.py", "tests/test_feedback_ops.py"]
TP = ["tests/test_target_prop.py", "tests/test_inverse.py", "tests/test_mutation_kills.py"]


@dataclass(frozen=True)
class Mutant:
    name: str
    kind: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant("backprop: loss sign", "flipped sign", R + "backprop.py",
           "loss.backward()", "(-loss).backward()",
           tuple(sel(["tests/test_runner.py::test_train_writes_the_run_directory"], "backprop"))),
    Mutant("linear feedback: input grad sign", "flipped sign", O + "linear.py",
           "gx = grad_out.mm(feedback.t())", "gx = -grad_out.mm(feedback.t())",
           tuple(sel(BACKWARD, "feedback_alignment"))),
    Mutant("sign_symmetry: sign(W) not transposed", "transposed feedback",
           R + "sign_symmetry.py",
           "wt = layer.handler.transposed_weight(layer.module)",
           "wt = layer.module.weight", tuple(sel(BACKWARD, "sign_symmetry"))),
    Mutant("weight mirror: estimate not transposed", "transposed feedback", O + "linear.py",
           "return (y.t() @ x).div_(n).t()", "return (y.t() @ x).div_(n)",
           tuple(sel(BACKWARD, "weight_mirror"))),
    Mutant("linear feedback: KP's B.grad skipped", "skipped update", O + "linear.py",
           "gfb = gw.t().clone() if (need_fb and need_x) else None",
           "gfb = torch.zeros_like(gw.t()) if (need_fb and need_x) else None",
           tuple(sel(BACKWARD, "kolen_pollack"))),
    Mutant("linear feedback: unused B trained anyway", "skipped check", O + "linear.py",
           "gfb = gw.t().clone() if (need_fb and need_x) else None",
           "gfb = gw.t().clone() if need_fb else None",
           tuple(sel(BACKWARD, "kolen_pollack"))),
    Mutant("weight mirror: unused B mirrored anyway", "skipped check", R + "weight_mirror.py",
           "if every or self.feedback_in_use(lay)]", "if True]",
           tuple(sel(BACKWARD, "weight_mirror"))),
    Mutant("backward rules: unused-feedback leaf not made", "skipped update",
           R + "_backward.py", "x = x.detach().requires_grad_()", "pass",
           tuple(sel(BACKWARD, "kolen_pollack"))),
    Mutant("backward rules: feedback fetched once, not per step", "stale state",
           R + "_backward.py", "if memo[0] != state.step:", "if memo[1] is None:",
           tuple(sel(BACKWARD, "feedback_alignment"))),
    Mutant("backward rules: a copy keeps the original's forwards", "stale state",
           R + "_backward.py", 'state["_forwards"] = None', "pass",
           tuple(sel(BACKWARD, "feedback_alignment"))),
    Mutant("linear feedback: bias grad mean", "dropped factor", O + "linear.py",
           "gb = grad_out.sum(0) if need_b else None", "gb = grad_out.mean(0) if need_b else None",
           tuple(sel(BACKWARD, "feedback_alignment"))),
    Mutant("weight mirror: estimate not divided by n", "dropped factor", O + "linear.py",
           "return (y.t() @ x).div_(n).t()", "return (y.t() @ x).t()",
           tuple(sel(BACKWARD, "weight_mirror"))),
    Mutant("weight mirror: decay sign", "flipped sign", R + "weight_mirror.py",
           "beta = lr * std * std / n, 1.0 - lr * self.mirror_decay",
           "beta = lr * std * std / n, 1.0 + lr * self.mirror_decay",
           tuple(sel(BACKWARD, "weight_mirror"))),
    Mutant("kolen_pollack: weight decay sign", "flipped sign", R + "kolen_pollack.py",
           "p.grad.add_(p, alpha=self.weight_decay)", "p.grad.add_(p, alpha=-self.weight_decay)",
           tuple(sel(BACKWARD, "kolen_pollack"))),
    Mutant("kolen_pollack: B not decayed", "skipped update", R + "kolen_pollack.py",
           "for p in (layer.module.weight, self.feedback.get(layer.key)):",
           "for p in (layer.module.weight,):", tuple(sel(BACKWARD, "kolen_pollack"))),
    Mutant("sign_symmetry: sign flipped", "flipped sign", R + "sign_symmetry.py",
           "torch.sign(wt, out=buf)", "torch.sign(wt, out=buf).neg_()",
           tuple(sel(BACKWARD, "sign_symmetry"))),
    Mutant("dfa: zero feedback", "skipped update", R + "direct_feedback_alignment.py",
           "b = uniform((n_in, n_out), 1.0 / math.sqrt(n_in), self.generator)",
           "b = uniform((n_in, n_out), 1.0 / math.sqrt(n_in), self.generator) * 0",
           tuple(sel(BACKWARD, "direct_feedback_alignment"))),
    Mutant("conv mirror: not normalised", "dropped factor", O + "conv.py",
           "return gw.div_(y.shape[2] * y.shape[3])", "return gw",
           tuple(sel(BACKWARD, "weight_mirror"))),
    Mutant("activation_relaxation: batch mean dropped", "dropped factor",
           R + "activation_relaxation.py",
           "delta = post[i](acts[i]) / batch", "delta = post[i](acts[i])",
           tuple(sel(["tests/test_activation_relaxation.py"], "activation_relaxation"))),
    Mutant("activation_relaxation: update sign", "flipped sign", R + "activation_relaxation.py",
           "self.accumulate_grad(p, grads[k])", "self.accumulate_grad(p, -grads[k])",
           tuple(sel(["tests/test_activation_relaxation.py"], "activation_relaxation"))),
    Mutant("activation_relaxation: f' dropped", "dropped factor", R + "_ar_variants.py",
           "return lambda v: d * v", "return lambda v: v",
           tuple(sel(["tests/test_activation_relaxation.py"], "activation_relaxation"))),
    Mutant("activation_relaxation: psi not transposed", "transposed feedback",
           R + "_ar_variants.py", "g = update.detach().transpose(0, 1).to(p.dtype)",
           "g = update.detach().to(p.dtype).reshape(p.shape)",
           tuple(sel(["tests/test_activation_relaxation.py"], "activation_relaxation"))),
    Mutant("equilibrium_prop: reference gradient of the feed-forward net", "skipped update",
           R + "equilibrium_prop.py",
           "return self.blocks[-1].activation(self.free_phase(x, differentiable=True).states[-1])",
           "return self.model(x)", tuple(sel(["tests/test_equilibrium_prop.py"],
                                             "equilibrium_prop"))),
    Mutant("relax: reference phase not differentiable", "skipped update",
           "src/biograd/core/relax.py",
           "with torch.enable_grad() if differentiable else torch.no_grad():",
           "with torch.no_grad():", tuple(sel(["tests/test_equilibrium_prop.py"],
                                             "equilibrium_prop"))),
    Mutant("equilibrium_prop: contrast scale", "dropped factor", R + "equilibrium_prop.py",
           "            ) / scale\n", "            ) * scale\n",
           tuple(sel(["tests/test_equilibrium_prop.py"], "equilibrium_prop"))),
    Mutant("equilibrium_prop: contrast sign", "flipped sign", R + "equilibrium_prop.py",
           "- hopfield_energy(s_b, x.detach(), weights, biases, acts).mean()",
           "+ hopfield_energy(s_b, x.detach(), weights, biases, acts).mean()",
           tuple(sel(["tests/test_equilibrium_prop.py"], "equilibrium_prop"))),
    Mutant("target prop: top target sign", "flipped sign", R + "_target_prop.py",
           "targets = [top - beta * nudge]", "targets = [top + beta * nudge]",
           tuple(sel(TP, "dtp"))),
    Mutant("target prop: difference correction sign", "flipped sign", R + "_target_prop.py",
           "targets.insert(0, trace.inputs[l] + g_t - g_z)",
           "targets.insert(0, trace.inputs[l] + g_z - g_t)", tuple(sel(TP, "dtp"))),
    Mutant("target prop: 1/(2 beta) factor", "dropped factor", R + "_target_prop.py",
           ") / (2 * self.beta)", ") / self.beta", tuple(sel(TP, "dtp"))),
    Mutant("target prop: feedback step guard ignored", "dropped factor", R + "_target_prop.py",
           "p.grad = None if g is None else g.detach() * scale",
           "p.grad = None if g is None else g.detach()", tuple(sel(TP, "dtp"))),
    Mutant("weight mirror: Rademacher noise off zero mean", "dropped factor",
           R + "weight_mirror.py", "(self._BITS * 2 - 1).to(dtype)", "(self._BITS * 2).to(dtype)",
           tuple(sel(BACKWARD, "weight_mirror"))),
    Mutant("target prop: feedback never trained", "skipped update", R + "_target_prop.py",
           "                opt.step()\n", "                pass\n", tuple(sel(TP, "ldrl"))),
    Mutant("ldrl loss: lambda term sign", "flipped sign", O + "tp_losses.py",
           "return (-2.0 * (dx * dr_x).flatten(1).sum(1) + _sq(dr_y)).mean()",
           "return (2.0 * (dx * dr_x).flatten(1).sum(1) + _sq(dr_y)).mean()",
           tuple(sel(TP, "ldrl"))),
    Mutant("predictive_coding: no inference", "skipped update", R + "predictive_coding.py",
           "res = relax(states, inf.dynamics, steps=self.T, step_size=self.gamma)",
           "res = relax(states, inf.dynamics, steps=0, step_size=self.gamma)",
           tuple(sel(["tests/test_predictive_coding.py"], "predictive_coding"))),
    Mutant("predictive_coding: 1/beta dropped", "dropped factor", R + "predictive_coding.py",
           "scale=1.0 / self.beta)", "scale=1.0)",
           tuple(sel(["tests/test_predictive_coding.py"], "predictive_coding"))),
    Mutant("lra_e: batch mean dropped", "dropped factor", R + "lra_e.py",
           "dw = e.T @ z / batch", "dw = e.T @ z",
           tuple(sel(["tests/test_lra_e.py"], "lra_e"))),
    Mutant("lra_e: error weights update sign", "flipped sign", R + "lra_e.py",
           "self.accumulate_grad(self.error_weights[i - 1], self.gamma * dw.T)",
           "self.accumulate_grad(self.error_weights[i - 1], -self.gamma * dw.T)",
           tuple(sel(["tests/test_lra_e.py"], "lra_e"))),
    Mutant("zil: PC output error scaled", "dropped factor", "src/biograd/graph/inference.py",
           "(g,) = torch.autograd.grad(self.beta * self.loss_fn(m, self.y), m)",
           "(g,) = torch.autograd.grad(2 * self.beta * self.loss_fn(m, self.y), m)",
           tuple(sel(["tests/test_zil.py", "tests/test_predictive_coding.py"], "zil"))),
]


def _pytest(work: Path, args: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """Run pytest in ``work``; 'pass', 'fail' or 'timeout' and the seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(work / "src"), "OMP_NUM_THREADS": "1",
           "BIOGRAD_TEST_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             "-c", str(work / "pyproject.toml"), "--rootdir", str(work), *args],
            cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0
    return ("pass" if done.returncode == 0 else "fail"), time.perf_counter() - t0


def _copy_repo(work: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(work / "src")}
    where = subprocess.run([sys.executable, "-c", "import biograd; print(biograd.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    if not where.stdout.strip().startswith(str(work)):
        raise SystemExit(f"biograd imports from {where.stdout.strip()}, not the copy in {work}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
    parser.add_argument("--only", default=None, help="run mutants whose name contains this")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only is None or args.only in m.name]
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="biograd-mutants-") as tmp:
        work = Path(tmp)
        _copy_repo(work)
        baseline: dict[tuple[str, ...], str] = {}
        for m in mutants:
            if m.tests not in baseline:
                baseline[m.tests], secs = _pytest(work, m.tests, args.timeout)
                print(f"baseline {' '.join(m.tests)}: {baseline[m.tests]} ({secs:.0f}s)",
                      flush=True)
        for m in mutants:
            path = work / m.file
            text = path.read_text()
            if text.count(m.original) != 1:
                outcome, secs = f"invalid (original found {text.count(m.original)} times)", 0.0
            elif baseline[m.tests] != "pass":
                outcome, secs = "invalid (tests fail unmutated)", 0.0
            else:
                try:
                    path.write_text(text.replace(m.original, m.replacement))
                    outcome, secs = _pytest(work, m.tests, args.timeout)
                    outcome = "survived" if outcome == "pass" else f"killed ({outcome})"
                finally:
                    path.write_text(text)
            results.append({"name": m.name, "kind": m.kind, "file": m.file,
                            "outcome": outcome, "seconds": round(secs, 1)})
            print(f"{outcome:>18}  {m.name}  [{m.kind}] ({secs:.0f}s)", flush=True)
    valid = [r for r in results if not str(r["outcome"]).startswith("invalid")]
    killed = [r for r in valid if str(r["outcome"]).startswith("killed")]
    survivors = [r["name"] for r in valid if r["outcome"] == "survived"]
    score = len(killed) / len(valid) if valid else float("nan")
    print(f"\nmutation score: {len(killed)}/{len(valid)} killed = {100 * score:.1f}%"
          f" ({len(results) - len(valid)} invalid)")
    for name in survivors:
        print(f"  survivor: {name}")
    if args.json:
        Path(args.json).write_text(json.dumps({"score": score, "results": results}, indent=2))
    return 0 if not survivors else 1


if __name__ == "__main__":
    sys.exit(main())
