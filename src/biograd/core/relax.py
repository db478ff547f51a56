"""The one relaxation loop shared by energy-based and relaxation rules (P4, P5, EqProp, PC).

A rule supplies ``dynamics(states) -> (deltas, energy)``; the loop applies
``s <- s + step_size * delta`` for ``steps`` iterations (or, with ``momentum > 0``, heavy-ball
steps ``v <- momentum * v + delta; s <- s + step_size * v`` from ``v = 0``: SGD with momentum on
the energy, as PCX relaxes its value nodes), stops early when every
``max |delta|`` falls below ``tol``, and records the energy (or residual) per step so that
rules can return it in ``StepResult.metrics`` and the runner can plot it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

Dynamics = Callable[[list[Tensor]], tuple[Sequence[Tensor | None], float | Tensor | None]]


@dataclass
class RelaxResult:
    """Final states, per-step energy trace, number of steps taken, whether ``tol`` was met."""

    states: list[Tensor]
    energies: list[float] = field(default_factory=list)
    steps: int = 0
    converged: bool = False


def relax(
    states: Sequence[Tensor],
    dynamics: Dynamics,
    *,
    steps: int,
    step_size: float,
    tol: float | None = None,
    callback: Callable[[int, list[Tensor]], None] | None = None,
    differentiable: bool = False,
    momentum: float = 0.0,
) -> RelaxResult:
    """Euler-integrate ``dynamics`` from ``states``; ``None`` deltas leave a state clamped.

    ``callback(t, states)`` runs after step ``t`` (1-based), e.g. for per-step weight updates
    (Z-IL's schedule) or convergence traces. The loop runs without autograd unless
    ``differentiable`` (then the final states are differentiable through every step, as
    backprop through time needs, e.g. for a reference gradient). ``momentum`` (0 = plain
    Euler steps) keeps its velocity for this call only: a fresh state for every batch.
    """
    with torch.enable_grad() if differentiable else torch.no_grad():
        return _relax(states, dynamics, steps, step_size, tol, callback, momentum)


def _relax(
    states: Sequence[Tensor], dynamics: Dynamics, steps: int, step_size: float,
    tol: float | None, callback: Callable[[int, list[Tensor]], None] | None,
    momentum: float = 0.0,
) -> RelaxResult:
    cur = [s.clone() for s in states]
    vel: list[Tensor | None] = [None] * len(cur)
    result = RelaxResult(cur)
    for t in range(1, steps + 1):
        deltas, energy = dynamics(cur)
        biggest = 0.0
        for i, d in enumerate(deltas):
            if d is None:
                continue
            if momentum:
                v = vel[i]
                v = vel[i] = d if v is None else torch.add(d, v, alpha=momentum)
                cur[i] = torch.add(cur[i], v, alpha=step_size)
            else:
                cur[i] = cur[i] + step_size * d
            if tol is not None and d.numel():
                biggest = max(biggest, float(d.abs().max()))
        if energy is not None:
            result.energies.append(float(energy.detach() if isinstance(energy, Tensor) else energy))
        result.steps = t
        if callback is not None:
            callback(t, cur)
        if tol is not None and biggest < tol:
            result.converged = True
            break
    result.states = cur
    return result
