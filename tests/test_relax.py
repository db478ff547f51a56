"""biograd.core.relax: Euler steps of ``ds/dt = delta(s)``, stopped by ``tol`` on max |delta|."""

from __future__ import annotations

import math

import torch

from biograd.core.relax import relax


def test_decay_stops_at_the_first_step_whose_largest_delta_is_below_tol() -> None:
    """``ds/dt = -s`` from s0 = 1 with step h: the delta at step t is -(1 - h)^(t-1), so the
    loop stops after the first t with (1 - h)^(t-1) < tol, leaving s = (1 - h)^t."""
    h, tol = 0.5, 1e-3
    res = relax([torch.ones(3, dtype=torch.float64)], lambda s: ([-s[0]], float(s[0].sum())),
                steps=100, step_size=h, tol=tol)
    t = next(k for k in range(1, 101) if (1 - h) ** (k - 1) < tol)
    assert t == 1 + math.ceil(math.log(tol) / math.log(1 - h))
    assert res.converged and res.steps == t and len(res.energies) == t
    torch.testing.assert_close(res.states[0], torch.full((3,), (1 - h) ** t, dtype=torch.float64))


def test_without_tol_every_step_runs() -> None:
    res = relax([torch.ones(2)], lambda s: ([-s[0]], None), steps=7, step_size=0.5)
    assert not res.converged and res.steps == 7
    torch.testing.assert_close(res.states[0], torch.full((2,), 0.5**7))
