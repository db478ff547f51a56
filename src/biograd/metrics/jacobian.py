"""Feedback-vs-forward Jacobian alignment for target propagation (P2, Ernoult et al. 2022, fig. 3).

Per feedback layer: the angle between the feedback block's Jacobian J_g (taken at the forward
output y = f(x)) and the forward block's Jacobian transposed, J_f^T (taken at the input x), over
a batch (the per-sample Jacobians stacked):

    cos = sum_b tr(J_g^b J_f^b) / (||J_g||_F ||J_f||_F).

Frobenius products are computed with Jacobian-vector products (``torch.func.jvp``) on probe
vectors, stacked along the batch dimension (blocks act per sample):

- exact: when the input and output of a block have at most ``EXACT_MAX`` units per sample and no
  ``probes`` count is given, the probes are the standard basis (every column, exact);
- estimate: otherwise ``probes`` Rademacher vectors per sample (Hutchinson: E[u^T A u] = tr A,
  E||A u||^2 = ||A||_F^2), unbiased for each term; cheap for conv blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from biograd.ops.inverse import block_forward

#: largest per-sample width for which the exact (basis-probe) computation is used.
EXACT_MAX = 1024
#: default number of Rademacher probes per sample for the estimate.
DEFAULT_PROBES = 64
#: at most this many stacked samples per JVP call.
CHUNK = 4096


def _probe_chunks(shape: tuple[int, ...], batch: int, probes: int | None,
                  generator: torch.Generator, dtype: torch.dtype) -> Iterator[Tensor]:
    """Tangents of shape (k * batch, *shape): basis vectors (probes=None) or Rademacher."""
    n = math.prod(shape)
    total = n if probes is None else probes
    per = max(1, CHUNK // batch)
    for start in range(0, total, per):
        k = min(per, total - start)
        if probes is None:
            u = torch.zeros(k, n, dtype=dtype)
            u[torch.arange(k), torch.arange(start, start + k)] = 1.0
            u = u[:, None].expand(k, batch, n)
        else:
            u = torch.randint(0, 2, (k, batch, n), generator=generator).to(dtype) * 2 - 1
        yield u.reshape(k * batch, *shape)


def _jvp(fn: Callable[[Tensor], Tensor], at: Tensor, k: int, u: Tensor) -> Tensor:
    rep = at.repeat(k, *([1] * (at.dim() - 1)))
    return torch.func.jvp(fn, (rep,), (u.to(at.device),))[1]


@torch.no_grad()
def jacobian_alignment(rule: Any, x: Tensor, probes: int | None = None,
                       seed: int = 0) -> dict[str, float]:
    """``{layer: degrees}`` between J_g and J_f^T for each feedback block of a TP ``rule``.

    ``rule`` must offer ``forward_trace`` and ``feedback_blocks()`` (the target-propagation
    rules do). ``probes=None`` is exact for blocks up to ``EXACT_MAX`` units and uses
    ``DEFAULT_PROBES`` Rademacher probes beyond; an integer forces the estimate. Probes come
    from a generator seeded with ``seed``, so the rule's own RNG is untouched.
    """
    gen = torch.Generator().manual_seed(seed)
    trace = rule.forward_trace(x)
    out: dict[str, float] = {}
    for l, (name, block, fb) in enumerate(rule.feedback_blocks(), start=1):
        xin, y = trace.inputs[l], trace.outputs[l].detach()
        ctx, batch = trace.contexts[l], xin.shape[0]
        n_in, n_out = xin[0].numel(), y[0].numel()
        exact = probes is None and max(n_in, n_out) <= EXACT_MAX
        k_probes = None if exact else (probes or DEFAULT_PROBES)

        def f(t: Tensor, block: Any = block) -> Tensor:
            return block_forward(block, t)[0]

        tr = nf = ng = 0.0
        for u in _probe_chunks(tuple(xin.shape[1:]), batch, k_probes, gen, xin.dtype):
            k = u.shape[0] // batch
            ju = _jvp(f, xin, k, u)
            jgju = _jvp(lambda t, k=k, ctx=ctx, fb=fb: fb(t, ctx.repeat(k)), y, k, ju)
            tr += float((u.to(jgju.device) * jgju).double().sum())
            nf += float(ju.double().pow(2).sum())
        for v in _probe_chunks(tuple(y.shape[1:]), batch, k_probes, gen, y.dtype):
            k = v.shape[0] // batch
            ng += float(_jvp(lambda t, k=k, ctx=ctx, fb=fb: fb(t, ctx.repeat(k)), y, k, v)
                        .double().pow(2).sum())
        if nf == 0 or ng == 0:
            out[name] = 90.0
            continue
        cos = max(-1.0, min(1.0, tr / math.sqrt(nf * ng)))
        out[name] = math.degrees(math.acos(cos))
    return out
