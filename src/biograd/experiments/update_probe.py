"""The update probe: what a stored run's rule computes, measured instead of read off its code
(issue 16 item 2, and issue 15: "every speed change keeps each rule's update identical").

A stored run's fingerprint hashes the code that decides its rule's update
(:func:`biograd.experiments.store.code_files`), so any edit of that code, a speed change that
leaves every update as it was included, makes the run stale and sends it back to training
(P1's equilibrium-prop runs alone are hours). The probe tells the two apart. It replays the
start of the run's own training, with the run's model, rule, rule arguments, loss,
optimizer, warm-up and seed, for :data:`STEPS` steps on fixed synthetic batches of the
dataset's shape (one feedback-only step first for a rule that has a feedback-only phase), in
float64 and in float32, and keeps a sketch of everything the rule holds afterwards: for each
tensor of ``rule.state_dict()`` (network, feedback weights, buffers), its norm and its dot
product with a fixed random vector, and the loss of each step. The store writes it into the
run's fingerprint when the run finishes (or is first reused); a run whose code changed since
stays current when the probe recomputed with the new code equals the stored one (relative
:data:`TOLERANCE`: 1e-9 in float64, where only reordered floating-point sums differ (measured:
at most 1e-14 between 1 and 2 threads on P1's depth-8 MLP, equilibrium prop included), and
1e-2 in float32, loose enough for the rounding of another thread count or CPU (up to 2e-4
there) and tight enough for a dtype-specific path that computes something else).

What the probe does not see: behaviour first reached after its few steps (a schedule inside
a rule that switches later, a guard that fires only on large values), on other inputs than
its batches, or on another device. A change of that kind is not a speed change, and the
store still treats every run without a probe, with a probe of another :data:`VERSION` or
procedure, or whose probe failed, as stale on any code change.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch

from biograd.core.registry import create_rule
from biograd.runner.config import Config
from biograd.runner.models import build_model
from biograd.runner.train import feedback_schedule, make_optimizer, rule_args_of, warmed_step

#: the probe's procedure; a stored probe of another version is not compared
VERSION = 1
#: training steps replayed, and samples per synthetic batch
STEPS = 3
BATCH = 8
#: relative tolerance per dtype: the difference of each sketched number against the tensor's
#: norm (or the loss's size, at least 1)
TOLERANCE = {"float64": 1e-9, "float32": 1e-2}
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _shape(cfg: Config) -> tuple[tuple[int, ...], int]:
    """The sample shape and class count a run of ``cfg`` builds its model for (as
    :func:`biograd.runner.data.load_data` reports them), without loading the data."""
    import biograd.data

    info = biograd.data.dataset_info(cfg.dataset)
    args = dict(cfg.dataset_args)
    shape = tuple(int(d) for d in args.get("input_shape", info.input_shape))
    return shape, max(info.num_classes, int(args.get("num_classes", info.num_classes)))


def _sketch(state: dict[str, Any]) -> dict[str, list[float]]:
    """``{name: [norm, dot with a fixed random vector]}`` of each floating tensor of ``state``
    (``[sum]`` of an integer one), in float64."""
    out: dict[str, list[float]] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().to("cpu", torch.float64).flatten()
        if not value.is_floating_point():
            out[name] = [float(t.sum())]
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        r = torch.randn(t.numel(), generator=gen, dtype=torch.float64)
        out[name] = [float(t.norm()), float(t @ r)]
    return out


def _replay(cfg: Config, dtype: torch.dtype) -> dict[str, Any]:
    """The probe's steps of ``cfg``'s run in ``dtype`` (see the module docstring)."""
    shape, classes = _shape(cfg)
    before = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(dtype)
        try:
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.model, shape, classes, cfg.model_args)
            rule = create_rule(cfg.rule, model, loss=cfg.loss, **rule_args_of(cfg))
            opt = make_optimizer(cfg, rule)
            gen = torch.Generator().manual_seed(20_261_207)
            xs = torch.randn(STEPS, BATCH, *shape, generator=gen, dtype=dtype)
            ys = torch.arange(STEPS * BATCH).remainder(classes).reshape(STEPS, BATCH)
            ys = ys[:, torch.randperm(BATCH, generator=gen)]
            if any(feedback_schedule(cfg, rule)):
                rule.feedback_only_step(xs[0], ys[0])
            losses = []
            for t in range(STEPS):
                opt.zero_grad(set_to_none=True)
                losses.append(float(rule.step(xs[t], ys[t]).loss))
                warmed_step(opt, t, cfg.warmup_steps)
            return {"losses": losses, "state": _sketch(rule.state_dict())}
        finally:
            torch.set_default_dtype(before)


def probe(cfg: Config) -> dict[str, Any]:
    """The update probe of a run of ``cfg`` (see the module docstring): ``{"version",
    "steps", "batch", "float64": {...}, "float32": {...}}``, a dtype's entry ``{"error":
    message}`` when the rule cannot run in it."""
    out: dict[str, Any] = {"version": VERSION, "steps": STEPS, "batch": BATCH}
    for name, dtype in _DTYPES.items():
        try:
            out[name] = _replay(cfg, dtype)
        except Exception as exc:  # a rule that cannot run in this dtype: no probe there
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def usable(stored: Any) -> bool:
    """Whether ``stored`` is a probe this version can compare: same procedure, and at least
    one dtype that ran."""
    return (isinstance(stored, dict) and stored.get("version") == VERSION
            and stored.get("steps") == STEPS and stored.get("batch") == BATCH
            and any(isinstance(stored.get(d), dict) and "state" in stored[d] for d in _DTYPES))


def _close(a: float, b: float, scale: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= tol * scale


def difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """None when the probes ``old`` and ``new`` agree within :data:`TOLERANCE` in every dtype
    (a dtype must have run in both or failed in both), else what differs first."""
    if not (usable(old) and usable(new)):
        return "no comparable probe"
    for dname, tol in TOLERANCE.items():
        a, b = old.get(dname), new.get(dname)
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return f"{dname}: probe missing"
        if ("state" in a) != ("state" in b):
            return f"{dname}: the rule ran in one probe only ({a.get('error') or b.get('error')})"
        if "state" not in a:
            continue
        la, lb = a.get("losses", []), b.get("losses", [])
        if len(la) != len(lb):
            return f"{dname}: {len(la)} vs {len(lb)} losses"
        for t, (x, y) in enumerate(zip(la, lb, strict=True)):
            if not _close(x, y, max(1.0, abs(x), abs(y)), tol):
                return f"{dname}: loss of step {t + 1} {x:.10g} vs {y:.10g}"
        sa, sb = a["state"], b["state"]
        if set(sa) != set(sb):
            extra = sorted(set(sa) ^ set(sb))
            return f"{dname}: the rule holds other tensors ({', '.join(extra[:3])})"
        for key in sa:
            va, vb = sa[key], sb[key]
            if len(va) != len(vb):
                return f"{dname}: {key} changed kind"
            scale = max(abs(va[0]), abs(vb[0]), 1e-30)
            for x, y in zip(va, vb, strict=True):
                if not _close(x, y, scale, tol):
                    return (f"{dname}: {key} after {STEPS} steps differs by "
                            f"{abs(x - y) / scale:.1e} of its norm")
    return None
