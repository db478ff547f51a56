"""Fused Euler relaxation of the layered Hopfield energy (equilibrium propagation's loop).

One Euler step of ``ds/dt = -dF/ds``, ``F = E + beta C`` (:mod:`biograd.ops.energy`;
Scellier & Bengio 2017, Eq. 1-3), written with few tensor operations and no autograd::

    D_l  = W_l r_{l-1} + b_l + W_{l+1}^T r_{l+1}          (r_0 = x, r_l = rho_l(s_l))
    s_l <- lerp(s_l, rho_l'(s_l) * (D_l - [l = L] beta g), eps) = s_l - eps dF/ds_l

with ``g`` the per-sample ``dC/dr_L``; ``W_1 x + b_1`` is computed once per phase (``x`` is
clamped). The per-sample energy comes from the same drives, without another product::

    E = 1/2 sum_l ||s_l||^2 - 1/2 sum_l r_l . (D_l + c_l),   c_1 = W_1 x + b_1, c_l = b_l,

because ``sum_l r_l . D_l`` counts every coupling ``r_l . W_l r_{l-1}`` twice. Its cost is a few
reductions per step, so :func:`relax_hopfield` records it only at the steps asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from biograd.core.blocks import activation_derivative


def rate(act: nn.Module, s: Tensor) -> Tensor:
    """``rho(s)``: the activation, the state itself for the identity."""
    return s if isinstance(act, nn.Identity) else act(s)


def times_derivative(act: nn.Module, s: Tensor, r: Tensor, d: Tensor) -> Tensor:
    """``rho'(s) * d`` from ``r = rho(s)``: closed forms (tanh ``1 - r^2``, sigmoid
    ``r (1 - r)``, ReLU ``[s > 0]``, identity 1), autograd's derivative otherwise."""
    if isinstance(act, nn.Identity):
        return d
    if isinstance(act, nn.Tanh):
        return torch.addcmul(d, d * r, r, value=-1.0)
    if isinstance(act, nn.Sigmoid):
        t = d * r
        return torch.addcmul(t, t, r, value=-1.0)
    if isinstance(act, nn.ReLU):
        return d * (s > 0)
    return d * activation_derivative(act, s)


@dataclass
class Nudge:
    """The cost term of the nudged phases: ``beta`` (a float, or a ``(rows, 1)`` column when
    phases with different strengths are stacked along the batch) and ``grad(r_L)``, the
    per-sample ``dC/dr_L`` (``rows x classes``); ``grad_t``: the same on transposed
    (``classes x rows``) tensors, which the in-place loop uses when given."""

    beta: float | Tensor
    grad: Callable[[Tensor], Tensor] | None = None
    grad_t: Callable[[Tensor], Tensor] | None = None


@dataclass
class HopfieldChain:
    """The layered network a relaxation runs on: weights ``W_l`` (out x in), biases, the
    activations, and the clamped input's drive ``W_1 x + b_1`` (rows x n_1)."""

    weights: Sequence[Tensor]
    biases: Sequence[Tensor | None]
    acts: Sequence[nn.Module]
    input_drive: Tensor
    _transposed: list[Tensor | None] | None = field(default=None, init=False, repr=False)
    #: the block coupling matrices the in-place loop filled for this chain (by layout), so
    #: that :meth:`stacked` copies, which share this dict, fill them once
    couplings: dict[object, list[Tensor]] = field(default_factory=dict, init=False, repr=False)

    @property
    def transposed(self) -> list[Tensor | None]:
        """Contiguous ``W_l^T`` (``r @ W^T`` through a transposed view is the slower BLAS
        path), made on first use."""
        if self._transposed is None:
            self._transposed = [None] + [w.t().contiguous() for w in self.weights[1:]]
        return self._transposed

    def stacked(self, k: int) -> HopfieldChain:
        """The same network with ``k`` copies of the batch stacked (phases relaxed together)."""
        chain = copy.copy(self)
        chain.input_drive = self.input_drive.repeat(k, 1)
        return chain

    def drives(self, rates: Sequence[Tensor]) -> list[Tensor]:
        """``D_l = W_l r_{l-1} + b_l + W_{l+1}^T r_{l+1}`` for every layer."""
        n = len(rates)
        out: list[Tensor] = []
        for i in range(n):
            if i == 0:
                d = self.input_drive.clone() if n == 1 else torch.addmm(
                    self.input_drive, rates[1], self.weights[1])
            else:
                wt, b = self.transposed[i], self.biases[i]
                d = torch.mm(rates[i - 1], wt) if b is None else torch.addmm(b, rates[i - 1], wt)
                if i + 1 < n:
                    d = d.addmm_(rates[i + 1], self.weights[i + 1])
            out.append(d)
        return out

    def energy(self, states: Sequence[Tensor], rates: Sequence[Tensor],
               drives: Sequence[Tensor]) -> Tensor:
        """Per-sample ``E(s)`` (shape ``(rows,)``) from the drives at ``states``."""
        total = None
        for i, (s, r, d) in enumerate(zip(states, rates, drives, strict=True)):
            c = self.input_drive if i == 0 else self.biases[i]
            full = d if c is None else d + c
            term = 0.5 * (s * s).sum(-1) - 0.5 * (r * full).sum(-1)
            total = term if total is None else total + term
        assert total is not None
        return total


@dataclass
class HopfieldRelaxResult:
    """Final states, steps taken, whether ``tol`` was met, and the recorded steps: ``(t,
    per-sample energy, r_L)`` at the start of step ``t`` (before its update)."""

    states: list[Tensor]
    steps: int = 0
    converged: bool = False
    records: list[tuple[int, Tensor, Tensor]] = field(default_factory=list)
    #: ``max |dE/ds|`` at the start (without the nudge), when asked for
    start_residual: float = float("nan")


def _wanted(record: str, t: int, steps: int, tol: float | None) -> bool:
    """Whether step ``t`` is recorded; with ``tol`` the last step is not known in advance, so
    "ends" and "last" record every step and :func:`_keep` keeps the latest."""
    if record in ("all", "none"):
        return record == "all"
    return t == steps or tol is not None or (t == 1 and record == "ends")


def _keep(records: list, record: str, entry: tuple) -> None:
    if len(records) == {"ends": 2, "last": 1}.get(record):
        records.pop()  # "ends" keeps the first, both keep the latest
    records.append(entry)


def relax_hopfield(
    chain: HopfieldChain, start: Sequence[Tensor], *, steps: int, step_size: float,
    nudge: Nudge | None = None, tol: float | None = None, record: str = "ends",
) -> HopfieldRelaxResult:
    """``steps`` Euler steps of ``-dF/ds`` from ``start`` (stops early once every
    ``max |dF/ds| < tol``). ``record``: ``"all"`` steps, ``"ends"`` (the first and the last),
    ``"last"`` or ``"none"``. Differentiable when autograd is on (states are never written in
    place)."""
    states = list(start)
    acts = chain.acts
    result = HopfieldRelaxResult(states)
    for t in range(1, steps + 1):
        rates = [rate(a, s) for a, s in zip(acts, states, strict=True)]
        drives = chain.drives(rates)
        if _wanted(record, t, steps, tol):
            _keep(result.records, record, (t, chain.energy(states, rates, drives), rates[-1]))
        if nudge is not None:
            assert nudge.grad is not None, "the functional loop needs the row-major grad"
            g = nudge.grad(rates[-1])
            drives[-1] = drives[-1] - nudge.beta * g
        biggest = 0.0
        new = []
        for a, s, r, d in zip(acts, states, rates, drives, strict=True):
            target = times_derivative(a, s, r, d)  # s - dF/ds
            if tol is None:
                new.append(torch.lerp(s, target, step_size))
                continue
            delta = target - s
            if delta.numel():
                biggest = max(biggest, float(delta.abs().max()))
            new.append(torch.add(s, delta, alpha=step_size))
        states = new
        result.steps = t
        if tol is not None and biggest < tol:
            result.converged = True
            break
    result.states = states
    return result



# ---------------------------------------------------------------------- in-place loop
#: activations whose rate and ``rho' * d`` have in-place closed forms in :class:`_Buffers`
_FUSED = (nn.Tanh, nn.Sigmoid, nn.Identity)
_TANH_BACKWARD = torch.ops.aten.tanh_backward.grad_input  # (d, r) -> d (1 - r^2)
_SIGMOID_BACKWARD = torch.ops.aten.sigmoid_backward.grad_input  # (d, r) -> d r (1 - r)


class Workspace(dict):
    """What :func:`relax_hopfield_inplace` keeps between calls: its buffers and prepared
    loops. Allocating the large buffers afresh at every call costs page faults on every call
    (the allocator gives freed memory back to the system), a noticeable share of a
    relaxation on a CPU; preparing the loop costs Python time."""

    def __deepcopy__(self, memo: dict) -> Workspace:
        # buffers and loops are a cache (their calls are bound to these buffers): a copy of
        # the rule starts with an empty one rather than copies of them
        return Workspace()

    def __reduce__(self) -> tuple:
        return (Workspace, ())

    def get_buffer(self, name: str, shape: tuple[int, ...], like: Tensor, key: object = None,
                   zero: bool = False) -> Tensor:
        """The buffer ``name`` of this shape (and ``key``), made (zero-filled if ``zero``)
        when missing; its contents are whatever the last call left."""
        tag = (name, shape, like.dtype, like.device, key)
        buf = self.get(tag)
        if buf is None:
            buf = self[tag] = like.new_zeros(shape) if zero else like.new_empty(shape)
        return buf

    def loop(self, tag: str, chain: HopfieldChain, start: Sequence[Tensor]) -> _Buffers:
        """The prepared loop ``tag`` for this network and batch shape, loaded with ``start``
        and the chain's input drive and weights."""
        key = ("loop", tag, tuple(s.shape for s in start), start[0].dtype, start[0].device,
               tuple(id(t) for t in (*chain.weights, *chain.biases, *chain.acts)))
        buf = self.get(key)
        if buf is None:
            buf = self[key] = _Buffers(chain, start, self, tag)
        buf.load(chain, start)
        return buf


class _Buffers:
    """The states of every layer stacked in one ``N x rows`` buffer (feature-major: each
    layer's block is contiguous, as are the rates, drives and constant drives ``c_l`` laid out
    alike), so that the elementwise work of a step is a handful of operations on whole
    buffers (per run of layers sharing an activation) and the products are ``W r`` with the
    batch as the columns, ``d_l = c_l + W_l r_{l-1} + W_{l+1}^T r_{l+1}``.

    A layered network is bipartite: even layers are driven only by odd ones and vice versa.
    The buffer holds the even layers (last first), then the odd ones, so that (when the zero
    blocks cost little) all products of a step are two matrix products,
    ``D_even = C_even + A R_odd`` and ``D_odd = C_odd + A^T R_even`` with ``A`` the even-odd
    block of the symmetric coupling matrix (blocks ``W_l`` and ``W_l^T``); the hidden layers
    form one run (the output layer is at an end). Every view and kernel call is prepared
    once: a step only runs the prepared calls (:attr:`drive_ops`, :attr:`derivative_ops`)."""

    def __init__(self, chain: HopfieldChain, start: Sequence[Tensor], ws: Workspace,
                 tag: str = "") -> None:
        n = len(start)
        evens, odds = list(range(0, n, 2))[::-1], list(range(1, n, 2))
        widths = [s.shape[-1] for s in start]
        offset, bounds = 0, [(0, 0)] * n
        for i in evens + odds:
            bounds[i] = (offset, offset + widths[i])
            offset += widths[i]
        self.bounds, self.layout = bounds, tuple(widths)
        shape = (offset, start[0].shape[0])
        S, R, D, T, C = (ws.get_buffer(name, shape, start[0], (tag, self.layout))
                         for name in "SRDTC")
        self.S, self.R, self.D, self.T, self.C = S, R, D, T, C
        self.saved = ws.get_buffer("D0", shape, start[0], self.layout)
        # runs of consecutive layers with the same fused activation type; others one by one
        runs: list[tuple[int, int, nn.Module]] = []
        for i in evens + odds:
            (lo, hi), act = bounds[i], chain.acts[i]
            last = runs[-1] if runs else None
            if last and type(act) in _FUSED and type(last[2]) is type(act) and last[1] == lo:
                runs[-1] = (last[0], hi, last[2])
            else:
                runs.append((lo, hi, act))
        self.states = [S[lo:hi] for lo, hi in bounds]
        self.rates = [R[lo:hi] for lo, hi in bounds]
        self.drives = [D[lo:hi] for lo, hi in bounds]
        self.consts = [C[lo:hi] for lo, hi in bounds]
        #: rates, then ``D = C + products``
        self.drive_ops: list[Callable[[], object]] = []
        #: ``D <- rho'(S) * D``, i.e. ``S - dF/ds`` once the nudge is in ``D``
        self.derivative_ops: list[Callable[[], object]] = []
        for lo, hi, act in runs:
            s, r, d = S[lo:hi], R[lo:hi], D[lo:hi]
            self.drive_ops += _rate_ops(act, s, r)
            # autograd's own kernels for d (1 - r^2) and d r (1 - r), in place, one pass each
            if isinstance(act, nn.Tanh):
                self.derivative_ops.append(partial(_TANH_BACKWARD, d, r, grad_input=d))
            elif isinstance(act, nn.Sigmoid):
                self.derivative_ops.append(partial(_SIGMOID_BACKWARD, d, r, grad_input=d))
            elif not isinstance(act, nn.Identity):
                self.derivative_ops.append(partial(_derivative_in_place, act, s, r, d))
        w = chain.weights
        e_rows, o_rows = sum(widths[i] for i in evens), sum(widths[i] for i in odds)
        useful = sum(widths[i] * widths[i - 1] for i in range(1, n)) * 2
        self.blocks: list[Tensor] = []
        if not odds or 2 * e_rows * o_rows > 1.25 * useful:  # one product per coupling
            self.drive_ops.append(partial(D.copy_, C))
            for i in range(1, n):
                self.drive_ops += [partial(self.drives[i - 1].addmm_, w[i].t(), self.rates[i]),
                                   partial(self.drives[i].addmm_, w[i], self.rates[i - 1])]
            return
        split = e_rows  # even layers in rows [0, split), odd ones after
        self.blocks = [ws.get_buffer("A_eo", (e_rows, o_rows), S, self.layout, zero=True),
                       ws.get_buffer("A_oe", (o_rows, e_rows), S, self.layout, zero=True)]
        self.drive_ops += [
            partial(torch.addmm, C[:split], self.blocks[0], R[split:], out=D[:split]),
            partial(torch.addmm, C[split:], self.blocks[1], R[:split], out=D[split:])]

    def load(self, chain: HopfieldChain, start: Sequence[Tensor]) -> None:
        """Copy in the start states, the constant drives and (once per chain) the blocks."""
        for i, s in enumerate(start):
            self.states[i].copy_(s.t())
            c = chain.input_drive.t() if i == 0 else chain.biases[i]
            if c is None:
                self.consts[i].zero_()
            else:
                self.consts[i].copy_(c if i == 0 else c[:, None])
        if not self.blocks or chain.couplings.get(self.layout) is self.blocks:
            return
        a_eo, a_oe = self.blocks
        split, w = a_eo.shape[0], chain.weights
        for i in range(1, len(start)):  # d_i += W_i r_{i-1}, d_{i-1} += W_i^T r_i
            (alo, ahi), (blo, bhi) = self.bounds[i], self.bounds[i - 1]  # layers i, i - 1
            if i % 2:  # i odd, i - 1 even
                a_oe[alo - split:ahi - split, blo:bhi] = w[i]
                a_eo[blo:bhi, alo - split:ahi - split] = w[i].t()
            else:  # i even, i - 1 odd
                a_eo[alo:ahi, blo - split:bhi - split] = w[i]
                a_oe[blo - split:bhi - split, alo:ahi] = w[i].t()
        chain.couplings[self.layout] = self.blocks

    def energy(self) -> Tensor:
        """Per-sample ``E`` at the current states (after the drive ops; ``T`` as scratch)."""
        S, T = self.S, self.T
        half = torch.mul(S, S, out=T).sum(0)
        torch.add(self.D, self.C, out=T).mul_(self.R)
        return half.sub_(T.sum(0)).mul_(0.5)

    def residual(self) -> float:
        """``max |dE/ds| = max |rho'(S) D - S|`` (after the drive ops; D is kept)."""
        self.saved.copy_(self.D)
        for op in self.derivative_ops:
            op()
        value = float(self.D.sub_(self.S).abs().max()) if self.D.numel() else 0.0
        self.D.copy_(self.saved)
        return value


def _rate_ops(act: nn.Module, s: Tensor, r: Tensor) -> list[Callable[[], object]]:
    """The prepared calls that write ``r = rho(s)`` in place. tanh is computed as
    ``2 sigmoid(2 s) - 1`` (the same function; float32 difference < 2e-7, float64 < 1e-15):
    on the CPUs measured, ATen's tanh kernel costs about 4x these three passes (126 against
    31 us on a 512 x 64 float32 block, one thread), and it ran once per relaxation step. The
    constant -1 is a tensor made once: a Python number would be wrapped into a tensor (and
    converted) at every call."""
    if isinstance(act, nn.Identity):
        return [partial(r.copy_, s)]
    if isinstance(act, nn.Tanh):
        minus_one = r.new_full((), -1.0)
        return [partial(torch.add, s, s, out=r), partial(torch.sigmoid, r, out=r),
                partial(torch.add, minus_one, r, alpha=2, out=r)]
    if isinstance(act, nn.Sigmoid):
        return [partial(torch.sigmoid, s, out=r)]
    return [lambda: r.copy_(act(s))]


def _derivative_in_place(act: nn.Module, s: Tensor, r: Tensor, d: Tensor) -> None:
    d.copy_(times_derivative(act, s, r, d.clone()))


def relax_hopfield_inplace(
    chain: HopfieldChain, start: Sequence[Tensor], *, steps: int, step_size: float,
    nudge: Nudge | None = None, tol: float | None = None, record: str = "ends",
    start_residual: bool = False, workspace: Workspace | None = None, tag: str = "",
) -> HopfieldRelaxResult:
    """:func:`relax_hopfield` on preallocated buffers, updated in place (no autograd): the
    same Euler steps, equal within float rounding, in fewer tensor operations.
    ``start_residual``: also measure ``max |dE/ds|`` at ``start`` (the free phase's residual,
    read off the first nudged step for free). ``workspace``: where the buffers and the prepared
    loop ``tag`` are kept between calls (a fresh one if None); the returned states are
    (transposed) views of its buffers, valid until the next call with the same ``tag``."""
    buf = (Workspace() if workspace is None else workspace).loop(tag, chain, start)
    result = HopfieldRelaxResult([])
    out, top = buf.rates[-1], buf.drives[-1]  # feature-major: classes x rows
    beta = None if nudge is None else nudge.beta
    grad_t = None if nudge is None else nudge.grad_t
    if nudge is not None and grad_t is None:
        grad = nudge.grad
        assert grad is not None, "a nudge needs grad or grad_t"
        grad_t = lambda o: grad(o.t()).t()  # noqa: E731
    if isinstance(beta, Tensor):
        beta = beta.t()  # a row: one strength per column (sample)
    nudge_ops: list[Callable[[], object]] = []
    if nudge is not None:
        assert grad_t is not None
        if isinstance(beta, Tensor):
            nudge_ops.append(lambda: top.addcmul_(beta, grad_t(out), value=-1.0))
        else:
            strength = -float(beta)  # type: ignore[arg-type]
            nudge_ops.append(lambda: top.add_(grad_t(out), alpha=strength))
    first = buf.drive_ops
    second = nudge_ops + buf.derivative_ops  # then D = s - dF/ds
    # steps without a record, residual or tolerance check: one flat list of prepared calls
    plain = first + second + [partial(buf.S.lerp_, buf.D, step_size)]
    special = {"ends": {1, steps}, "last": {steps}}.get(record, set())
    if start_residual:
        special.add(1)
    result.steps = steps
    for t in range(1, steps + 1):
        if tol is None and record != "all" and t not in special:
            for op in plain:
                op()
            continue
        for op in first:
            op()
        if _wanted(record, t, steps, tol):
            _keep(result.records, record, (t, buf.energy(), out.t().clone()))
        if start_residual and t == 1:
            result.start_residual = buf.residual()
        for op in second:
            op()
        if tol is None:
            buf.S.lerp_(buf.D, step_size)
            continue
        delta = buf.D.sub_(buf.S)
        biggest = float(delta.abs().max()) if delta.numel() else 0.0
        buf.S.add_(delta, alpha=step_size)
        if biggest < tol:
            result.steps, result.converged = t, True
            break
    result.states = [s.t() for s in buf.states]
    return result
