"""The mutants of scripts/mutation_check.py: one-line defects in the rules and their ops.

A mutant is ``(name, kind, file, original text, replacement, targeted tests, core)``. The
original text must occur exactly once in the file; ``tests`` is the pytest selection that
should catch it (the rule's own test file(s) first, then the rule's contract tests via ``-k``);
``core`` marks a defect in a rule's core equation (its update, target, error, nudge, energy or
dynamics), which the CI gate never lets survive. Kinds: flipped sign, dropped factor, wrong
operand (transposed or swapped feedback, the wrong state or tensor), skipped update, skipped
check, stale state.

Adding mutants for another area is one :func:`group` call: a file, a selection and rows of
``(name, kind, core, original, replacement)``. An equivalent mutant (one that cannot change
behaviour) is left out with a comment saying why, so it is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

R = "src/biograd/rules/"
O = "src/biograd/ops/"
CORE, AUX = True, False


@dataclass(frozen=True)
class Mutant:
    name: str
    kind: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    core: bool = False


def sel(files: list[str], rule: str | None = None) -> tuple[str, ...]:
    """``files`` in full, plus the contract tests of ``rule`` (``-k`` on the test ids)."""
    if rule is None:
        return (*files,)
    return (*files, "tests/test_contract.py", "-k", f"not test_contract or {rule}")


def group(file: str, tests: tuple[str, ...],
          rows: list[tuple[str, str, bool, str, str]]) -> list[Mutant]:
    """Mutants of one file sharing one selection; rows: (name, kind, core, original, new)."""
    return [Mutant(name, kind, file, old, new, tests, core) for name, kind, core, old, new in rows]


BACKWARD = ["tests/test_backward_rules.py", "tests/test_feedback_ops.py"]
TP = ["tests/test_target_prop.py", "tests/test_inverse.py", "tests/test_mutation_kills.py",
      "tests/test_iterative_speed_equivalence.py"]
AR = sel(["tests/test_activation_relaxation.py", "tests/test_iterative_speed_equivalence.py"],
         "activation_relaxation")
EP = sel(["tests/test_equilibrium_prop.py", "tests/test_iterative_speed_equivalence.py"],
         "equilibrium_prop")
PC = sel(["tests/test_predictive_coding.py", "tests/test_pc_fast_path.py",
          "tests/test_pc_stacked.py"], "predictive_coding")
LRA = sel(["tests/test_lra_e.py"], "lra_e")

# ---------------------------------------------------------------------- backward replacement
RUNNER = ["tests/test_runner.py::test_train_writes_the_run_directory"]
MUTANTS = group(R + "backprop.py", sel(RUNNER, "backprop"), [
    ("backprop: loss sign", "flipped sign", CORE, "loss.backward()", "(-loss).backward()"),
])
MUTANTS += group(O + "linear.py", sel(BACKWARD, "feedback_alignment"), [
    ("linear feedback: input grad sign", "flipped sign", CORE,
     "gx = grad_out.mm(feedback.t())", "gx = -grad_out.mm(feedback.t())"),
    ("linear feedback: bias grad mean", "dropped factor", CORE,
     "gb = grad_out.sum(0) if need_b else None", "gb = grad_out.mean(0) if need_b else None"),
])
MUTANTS += group(O + "linear.py", sel(BACKWARD, "kolen_pollack"), [
    ("linear feedback: KP's B.grad skipped", "skipped update", CORE,
     "if need_fb and need_x:", "if False:"),
    ("linear feedback: unused B trained anyway", "skipped check", AUX,
     "if need_fb and need_x:", "if need_fb and gw is not None:"),
    ("kolen_pollack: B not decayed", "skipped update", CORE,
     "gfb = torch.add(gw.t(), feedback, alpha=decay.lam)", "gfb = gw.t().clone()"),
])
MUTANTS += group(O + "linear.py", sel(BACKWARD, "weight_mirror"), [
    ("weight mirror: estimate not transposed", "wrong operand", CORE,
     "return (y.t() @ x).div_(n).t()", "return (y.t() @ x).div_(n)"),
    ("weight mirror: estimate not divided by n", "dropped factor", CORE,
     "return (y.t() @ x).div_(n).t()", "return (y.t() @ x).t()"),
])
MUTANTS += group(O + "conv.py", sel(BACKWARD, "weight_mirror"), [
    ("conv mirror: not normalised", "dropped factor", CORE,
     "return gw.div_(y.shape[2] * y.shape[3])", "return gw"),
])
MUTANTS += group(R + "sign_symmetry.py", sel(BACKWARD, "sign_symmetry"), [
    ("sign_symmetry: sign(W) not transposed", "wrong operand", CORE,
     "wt = layer.handler.transposed_weight(layer.module)", "wt = layer.module.weight"),
    ("sign_symmetry: sign flipped", "flipped sign", CORE,
     "torch.sign(wt, out=buf)", "torch.sign(wt, out=buf).neg_()"),
    ("sign_symmetry: unit gain dropped", "dropped factor", CORE,
     "return sign_wt.mul_(rule.gains[layer.key]), 1.0", "return sign_wt, 1.0"),
])
MUTANTS += group(R + "weight_mirror.py", sel(BACKWARD, "weight_mirror"), [
    ("weight mirror: unused B mirrored anyway", "skipped check", AUX,
     "if every or self.feedback_in_use(lay)]", "if True]"),
    ("weight mirror: decay sign", "flipped sign", CORE,
     "beta = lr * std * std / n, 1.0 - lr * self.mirror_decay",
     "beta = lr * std * std / n, 1.0 + lr * self.mirror_decay"),
    ("weight mirror: Rademacher noise off zero mean", "dropped factor", CORE,
     "(self._BITS * 2 - 1).to(dtype)", "(self._BITS * 2).to(dtype)"),
    ("weight mirror: P3's warm-up mirror pass skipped", "skipped update", AUX,
     "self.mirror_warmup(self.mirror_warmup_steps)", "self.mirror_warmup(0)"),
])
MUTANTS += group(R + "kolen_pollack.py", sel(BACKWARD, "kolen_pollack"), [
    ("kolen_pollack: weight decay sign", "flipped sign", CORE,
     "return self._decays[layer.key].reset(self.weight_decay)",
     "return self._decays[layer.key].reset(-self.weight_decay)"),
])
MUTANTS += group(R + "_backward.py", sel(BACKWARD, "kolen_pollack"), [
    ("backward rules: unused-feedback leaf not made", "skipped update", AUX,
     "x = x.detach().requires_grad_()", "pass"),
])
MUTANTS += group(R + "_backward.py", sel(BACKWARD, "feedback_alignment"), [
    ("backward rules: feedback fetched once, not per step", "stale state", AUX,
     "if memo[0] != state.step:", "if memo[1] is None:"),
    ("backward rules: a copy keeps the original's forwards", "stale state", AUX,
     'state["_forwards"] = None', "pass"),
])
MUTANTS += group(O + "feedback.py", sel(BACKWARD, "direct_feedback_alignment"), [
    ("dfa: direct signal sign", "flipped sign", CORE,
     "return (e @ feedback.t()).reshape(x_shape)", "return (-e @ feedback.t()).reshape(x_shape)"),
    ("dfa: per-sample error instead of the loss gradient", "dropped factor", CORE,
     "self.error = grad", "self.error = grad * grad.shape[0]"),
    ("dfa: bias gradient skipped", "skipped update", CORE,
     "_, gw, gb = ctx.op.backward(grad_out, x, weight, False, need_b)",
     "_, gw, gb = ctx.op.backward(grad_out, x, weight, False, False)"),
])
MUTANTS += group(O + "feedback.py", sel(BACKWARD, "feedback_alignment"), [
    ("weight swap: W^T kept instead of B (silent backprop)", "wrong operand", CORE,
     "return _Saved(self.feedback)  # type: ignore[arg-type]", "return _Saved(t)"),
])
MUTANTS += group(O + "feedback.py", sel(BACKWARD, "sign_symmetry"), [
    ("feedback: input-gradient scale ignored", "dropped factor", AUX,
     "if gx is not None and ctx.scale != 1.0:", "if False:"),
])
MUTANTS += group(R + "direct_feedback_alignment.py", sel(BACKWARD, "direct_feedback_alignment"), [
    ("dfa: zero feedback", "skipped update", CORE,
     "b = uniform((n_in, n_out), 1.0 / math.sqrt(n_in), self.generator)",
     "b = uniform((n_in, n_out), 1.0 / math.sqrt(n_in), self.generator) * 0"),
])

# ---------------------------------------------------------------------- activation relaxation
MUTANTS += group(R + "activation_relaxation.py", AR, [
    ("activation_relaxation: batch mean dropped", "dropped factor", CORE,
     "delta = post[i](acts[i]) / batch", "delta = post[i](acts[i])"),
    ("activation_relaxation: update sign", "flipped sign", CORE,
     "self.accumulate_grad(p, grads[k])", "self.accumulate_grad(p, -grads[k])"),
    ("activation_relaxation: f' dropped from the relaxation only", "dropped factor", CORE,
     "lambda a, d=down[i + 1], p=post[i + 1]: d(p(a))",
     "lambda a, d=down[i + 1], p=post[i + 1]: d(a)"),
    ("activation_relaxation: top held at the batch-mean gradient", "dropped factor", CORE,
     "top = per_sample_output_grad(self.loss_fn, out, y)",
     "top = per_sample_output_grad(self.loss_fn, out, y) / x.shape[0]"),
])
MUTANTS += group(R + "_ar_variants.py", AR, [
    ("activation_relaxation: f' dropped", "dropped factor", CORE,
     "return lambda v: d * v", "return lambda v: v"),
    ("activation_relaxation: psi not transposed", "wrong operand", CORE,
     "g = update.detach().transpose(0, 1).to(p.dtype)",
     "g = update.detach().to(p.dtype).reshape(p.shape)"),
    ("activation_relaxation: psi's grad overwritten, not accumulated", "stale state", AUX,
     "p.grad = g.clone() if p.grad is None else p.grad.add_(g)", "p.grad = g.clone()"),
    ("activation_relaxation: random variant uses W^T", "wrong operand", CORE,
     "return self._b(index).detach().transpose(0, 1)", "return block.layer.weight.detach()"),
    ("activation_relaxation: down message sign", "flipped sign", CORE,
     "return lambda delta: (delta @ weight).reshape(shape)",
     "return lambda delta: (-delta @ weight).reshape(shape)"),
    ("activation_relaxation: dropped variant drops f' from the update", "dropped factor", CORE,
     "return self.adjoint(block, h), super().adjoint(block, h)",
     "return self.adjoint(block, h), self.adjoint(block, h)"),
    ("activation_relaxation: dropped variant keeps f' in the relaxation", "skipped update", CORE,
     "return pool if pool is not None else (lambda v: v)", "return super().adjoint(block, h)"),
])
MUTANTS += group(O + "energy.py", AR, [
    ("activation_relaxation: leak halved", "dropped factor", CORE,
     "return target - state", "return target - 0.5 * state"),
])
MUTANTS += group(O + "linear_relax.py", AR, [  # the closed form of the Euler steps (default)
    ("activation_relaxation: closed-form leak halved", "dropped factor", CORE,
     "keep, eps = 1.0 - step_size, step_size", "keep, eps = 1.0 - 0.5 * step_size, step_size"),
    ("activation_relaxation: closed form without the coupled error terms", "skipped update",
     CORE, "vecs.append([maps[i](prev[i + 1]) for i in range(n - k)])",
     "vecs.append([0 * prev[i] for i in range(n - k)])"),
    ("activation_relaxation: closed form from the fixed point", "wrong operand", CORE,
     "vecs = [[s - f for s, f in zip(start, fixed, strict=True)]]",
     "vecs = [[0 * s for s, f in zip(start, fixed, strict=True)]]"),
    ("activation_relaxation: residual energy without the leak", "dropped factor", AUX,
     "a[:, 0] = -c[:, 0]", "a[:, 0] = 0 * c[:, 0]"),
])

# ---------------------------------------------------------------------- equilibrium propagation
MUTANTS += group(R + "equilibrium_prop.py", EP, [
    ("equilibrium_prop: reference gradient of the feed-forward net", "skipped update", AUX,
     "return self.blocks[-1].activation(self.free_phase(x, differentiable=True).states[-1])",
     "return self.model(x)"),
    ("equilibrium_prop: contrast scale", "dropped factor", CORE,
     "alpha = 1.0 / (x.shape[0] * scale)", "alpha = 1.0 / x.shape[0] * scale"),
    ("equilibrium_prop: symmetric estimator is one-sided", "wrong operand", CORE,
     "return beta, -beta", "return beta, 0.0"),
    ("equilibrium_prop: nudged phase starts from the init", "wrong operand", CORE,
     "start = [s.repeat(k, 1) for s in free.states] if k > 1 else free.states",
     "start = [s.repeat(k, 1) for s in self.init(self.blocks, xf)] if k > 1 else "
     "self.init(self.blocks, xf)"),
    ("equilibrium_prop: nudge by the batch-mean gradient", "dropped factor", CORE,
     "nudge = Nudge(beta, grad_t=grad) if fused else Nudge(beta, grad=grad)",
     "nudge = Nudge(beta, grad_t=lambda o: grad(o) / o.shape[1]) if fused else "
     "Nudge(beta, grad=grad)"),
    ("equilibrium_prop: nudged phase runs free_steps", "wrong operand", AUX,
     "self.nudged_steps, \"all\" if self.trace", "self.free_steps, \"all\" if self.trace"),
    ("equilibrium_prop: input drive without the first bias", "skipped update", CORE,
     "drive = nn.functional.linear(x, weights[0], biases[0])",
     "drive = nn.functional.linear(x, weights[0])"),
    ("equilibrium_prop: contrast against the free state", "wrong operand", CORE,
     "self._write_update(xf, fixed[a], fixed[b], a - b)",
     "self._write_update(xf, fixed[a], fixed[0.0], a - b)"),
])
MUTANTS += group(O + "energy.py", EP, [
    ("hopfield: state gradient without top-down input", "skipped update", CORE,
     "drive = up + rates[i + 1] @ weights[i + 1] if i + 1 < n else up", "drive = up"),
    ("hopfield: state gradient without rho'", "dropped factor", CORE,
     "grads.append(states[i] - derivs[i] * drive)", "grads.append(states[i] - drive)"),
    ("hopfield: energy coupling sign", "flipped sign", CORE,
     "energy = energy - (r * F.linear(prev, w, b)).sum(-1)",
     "energy = energy + (r * F.linear(prev, w, b)).sum(-1)"),
    ("energy ops: tanh derivative", "dropped factor", CORE,
     "return r, 1.0 - r * r", "return r, 1.0 - r"),
    ("energy ops: mse output error sign", "flipped sign", CORE,
     "return lambda out: out - target", "return lambda out: target - out"),
    ("energy ops: generic per-sample gradient not times the batch", "dropped factor", AUX,
     "return lambda out: losses.output_error(loss, out, y) * out.shape[0]",
     "return lambda out: losses.output_error(loss, out, y)"),
    ("equilibrium_prop: contrast sign", "flipped sign", CORE,
     "gw.addmm_(rb.t(), rates_b[i - 1], alpha=alpha)",
     "gw.addmm_(rb.t(), rates_b[i - 1], alpha=-alpha)"),
    ("equilibrium_prop: contrast of the first layer and biases summed", "flipped sign", CORE,
     "diff = ra - rb", "diff = ra + rb"),
])
# the relaxation loops of equilibrium_prop: the in-place one (the rule's step) and the
# functional one (predict, reference_output, _relax)
MUTANTS += group(O + "hopfield_dynamics.py", EP, [
    ("equilibrium_prop: nudge sign", "flipped sign", CORE,
     "top.addcmul_(beta, grad_t(out), value=-1.0)",
     "top.addcmul_(beta, grad_t(out), value=1.0)"),
    ("equilibrium_prop: one-sided nudge sign", "flipped sign", CORE,
     "strength = -float(beta)", "strength = float(beta)"),
    ("equilibrium_prop: nudge without rho'(s_L)", "dropped factor", CORE,
     "g = nudge.grad(rates[-1])",
     "g = nudge.grad(rates[-1]) / times_derivative(acts[-1], states[-1], rates[-1], "
     "torch.ones_like(rates[-1]))"),
    ("equilibrium_prop: functional nudge sign", "flipped sign", CORE,
     "drives[-1] = drives[-1] - nudge.beta * g", "drives[-1] = drives[-1] + nudge.beta * g"),
    ("hopfield: block coupling W^T dropped", "skipped update", CORE,
     "                a_eo[blo:bhi, alo - split:ahi - split] = w[i].t()\n",
     "                a_eo[blo:bhi, alo - split:ahi - split] = 0.0\n"),
    ("hopfield: per-coupling top-down product dropped", "skipped update", CORE,
     "self.drive_ops += [partial(self.drives[i - 1].addmm_, w[i].t(), self.rates[i]),",
     "self.drive_ops += [partial(self.drives[i - 1].mul_, 1.0),"),
    ("hopfield: tanh derivative dropped from the in-place step", "dropped factor", CORE,
     "self.derivative_ops.append(partial(_TANH_BACKWARD, d, r, grad_input=d))",
     "self.derivative_ops.append(partial(d.mul_, 1.0))"),
    ("hopfield: sigmoid derivative", "dropped factor", CORE,
     "return torch.addcmul(t, t, r, value=-1.0)", "return t"),
    ("hopfield: sigmoid derivative dropped from the in-place step", "dropped factor", CORE,
     "self.derivative_ops.append(partial(_SIGMOID_BACKWARD, d, r, grad_input=d))",
     "self.derivative_ops.append(partial(d.mul_, r))"),
    ("hopfield: tanh rate as 2 sigmoid(s) - 1 (the 2 s dropped)", "dropped factor", CORE,
     "partial(torch.add, s, s, out=r)", "partial(torch.add, s, 0.0, out=r)"),
    ("hopfield: tanh rate without its offset -1", "skipped update", CORE,
     "partial(torch.add, minus_one, r, alpha=2, out=r)", "partial(r.mul_, 2)"),
    ("hopfield: in-place Euler step doubled", "dropped factor", CORE,
     "buf.S.lerp_(buf.D, step_size)", "buf.S.lerp_(buf.D, 2 * step_size)"),
    ("hopfield: functional top-down term dropped", "skipped update", CORE,
     "d = d.addmm_(rates[i + 1], self.weights[i + 1])", "d = d"),
    ("hopfield: energy coupling counted once", "dropped factor", AUX,
     "return half.sub_(T.sum(0)).mul_(0.5)", "return half.sub_(0.5 * T.sum(0)).mul_(0.5)"),
])
MUTANTS += group("src/biograd/core/relax.py", sel(["tests/test_relax.py", *AR[:1]]), [
    ("relax: tolerance test inverted", "skipped check", AUX,
     "if tol is not None and biggest < tol:", "if tol is not None and biggest > tol:"),
])

# ---------------------------------------------------------------------- predictive coding
MUTANTS += group(R + "predictive_coding.py", PC, [  # chains: the closed-form fast path
    ("predictive_coding: no inference", "skipped update", CORE,
     "res = relax(self._initial(inf.initial), inf.dynamics, steps=self.T,",
     "res = relax(self._initial(inf.initial), inf.dynamics, steps=0,"),
    ("predictive_coding: inference rate doubled", "dropped factor", CORE,
     "step_size=self.gamma, momentum=self.momentum)",
     "step_size=2 * self.gamma, momentum=self.momentum)"),
    ("predictive_coding: 1/beta dropped", "dropped factor", CORE,
     "final = inf.write_updates(res.states, self._write_owned, scale=1.0 / self.beta)",
     "final = inf.write_updates(res.states, self._write_owned, scale=1.0)"),
    ("predictive_coding: energy's beta ignored", "dropped factor", CORE,
     "inf = chain(self._stages, x, y, self.loss_fn, beta=self.beta)",
     "inf = chain(self._stages, x, y, self.loss_fn, beta=1.0)"),
    ("predictive_coding: update at the unrelaxed state", "wrong operand", CORE,
     "final = inf.write_updates(res.states, self._write_owned, scale=1.0 / self.beta)",
     "final = inf.write_updates(inf.initial, self._write_owned, scale=1.0 / self.beta)"),
])
MUTANTS += group(R + "predictive_coding.py", PC, [  # other graphs: biograd.graph.inference
    ("predictive_coding graph: no inference", "skipped update", CORE,
     "res = relax(states, inf.dynamics, steps=self.T, step_size=self.gamma,",
     "res = relax(states, inf.dynamics, steps=0, step_size=self.gamma,"),
    ("predictive_coding graph: 1/beta dropped", "dropped factor", CORE,
     "inf.write_updates(ops, res.states, self._write, scale=1.0 / self.beta)",
     "inf.write_updates(ops, res.states, self._write, scale=1.0)"),
    ("predictive_coding graph: energy's beta ignored", "dropped factor", CORE,
     "inf = PCInference(graph, x, y, self.loss_fn, beta=self.beta)",
     "inf = PCInference(graph, x, y, self.loss_fn, beta=1.0)"),
])
MUTANTS += group(O + "pc_stacked.py", PC, [  # the stacked uniform-width chain
    ("pc stacked: state update error sign", "flipped sign", CORE,
     "torch.baddbmm(e[lo:-1], d, self.w[lo:], beta=-1, out=delta[lo:-1])",
     "torch.baddbmm(e[lo:-1], d, self.w[lo:], beta=1, out=delta[lo:-1])"),
    ("pc stacked: a moved node's error skipped", "wrong operand", CORE,
     "lo = max(k - 1, 0)", "lo = k"),
    ("pc stacked: start reused after a move", "wrong operand", CORE,
     "while k < len(start) and torch.equal(state[k], start[k]):",
     "while k < len(start) and state[k].shape == start[k].shape:"),
    ("pc stacked: GELU derivative misses sigmoid(z)", "dropped factor", CORE,
     "return torch.ops.aten.sigmoid_backward(slope, s).add_(s).mul_(e)",
     "return torch.ops.aten.sigmoid_backward(slope, s).mul_(e)"),
    ("pc stacked: middle weight update sign", "flipped sign", CORE,
     "gw = torch.bmm(d.transpose(1, 2), state[:-1]).mul_(-scale)",
     "gw = torch.bmm(d.transpose(1, 2), state[:-1]).mul_(scale)"),
])
MUTANTS += group(O + "pc_compiled.py", sel(["tests/test_pc_compiled.py"]), [  # compiled step
    ("pc compiled: momentum dropped", "dropped factor", CORE,
     "vel = delta if vel is None else delta + momentum * vel", "vel = delta"),
    ("pc compiled: state update error sign", "flipped sign", CORE,
     "parts = [torch.bmm(d, w[lo:]) - e[lo:-1],", "parts = [torch.bmm(d, w[lo:]) + e[lo:-1],"),
    ("pc compiled: a moved node treated as unmoved", "wrong operand", CORE,
     "return 0 if noise is not None else max(n - t, 0)",
     "return 0 if noise is not None else max(n - t, 1)"),
    ("pc compiled: 1/beta dropped", "dropped factor", CORE,
     "s = -1.0 / beta", "s = -1.0"),
    ("pc compiled: output error at the start's output", "wrong operand", CORE,
     "e_out, out_term = out_node.error(F.linear(s[-1], wo, bo))",
     "e_out, out_term = out_node.error(output)"),
    ("pc compiled: start noise ignored", "skipped update", CORE,
     "state = state + noise", "state = state"),
])
MUTANTS += group(O + "pc_chain.py", PC, [  # the chain's closed-form energy gradients
    ("pc chain: state update error sign", "flipped sign", CORE,
     "torch.addmm(e, d, layer.weight, beta=-1)", "torch.addmm(e, d, layer.weight, beta=1)"),
    ("pc chain: mse output error sign", "flipped sign", CORE,
     "diff = self._target - mu", "diff = mu - self._target"),
    ("pc chain: mse output error not a batch mean", "dropped factor", CORE,
     "scale = self.beta / mu.shape[0]", "scale = self.beta"),
    ("pc chain: soft-target mass dropped", "dropped factor", AUX,
     "return torch.log_softmax(mu, -1).exp() * (t.sum(-1, keepdim=True) * s) - t * s",
     "return torch.log_softmax(mu, -1).exp() * s - t * s"),
    ("pc chain: cross-entropy output error sign", "flipped sign", CORE,
     "return torch.log_softmax(mu, -1).exp() * s - g",
     "return torch.log_softmax(mu, -1).exp() * s + g"),
    ("pc chain: weight update sign", "flipped sign", CORE,
     "write(st.layer.weight, (d.T @ u) * -scale)", "write(st.layer.weight, (d.T @ u) * scale)"),
    ("pc chain: bias update a mean", "dropped factor", CORE,
     "write(st.layer.bias, d.sum(0) * -scale)", "write(st.layer.bias, d.mean(0) * -scale)"),
    ("pc chain: energy's 1/2 dropped", "dropped factor", AUX,
     "energy = torch.stack(terms).sum() * 0.5 + out_term",
     "energy = torch.stack(terms).sum() + out_term"),
])
MUTANTS += group("src/biograd/core/relax.py", PC, [
    ("relax: Euler step sign", "flipped sign", CORE,
     "cur[i] = cur[i] + step_size * d", "cur[i] = cur[i] - step_size * d"),
])

# ---------------------------------------------------------------------- LRA-E
MUTANTS += group(R + "lra_e.py", LRA, [
    ("lra_e: batch mean dropped", "dropped factor", CORE,
     "dw = e.T @ z / batch", "dw = e.T @ z"),
    ("lra_e: error weights update sign", "flipped sign", CORE,
     "self.accumulate_grad(self.error_weights[i - 1], self.gamma * dw.T)",
     "self.accumulate_grad(self.error_weights[i - 1], -self.gamma * dw.T)"),
    ("lra_e: error weights update without gamma", "dropped factor", CORE,
     "self.accumulate_grad(self.error_weights[i - 1], self.gamma * dw.T)",
     "self.accumulate_grad(self.error_weights[i - 1], dw.T)"),
    ("lra_e: target from W^T instead of E", "wrong operand", CORE,
     "d = errors[0] @ self.error_weights[i - 1].T",
     "d = errors[0] @ self.blocks[i].layer.weight.detach()"),
    ("lra_e: target from the post-activation", "wrong operand", CORE,
     "lra_target(self.blocks[i - 1].activation, trace.pre[i - 1], d, self.beta)",
     "lra_target(self.blocks[i - 1].activation, trace.outputs[i - 1], d, self.beta)"),
    ("lra_e: error sign", "flipped sign", CORE,
     "errors.insert(0, trace.outputs[i - 1] - t)", "errors.insert(0, t - trace.outputs[i - 1])"),
    ("lra_e: error weights not scaled by init_std", "dropped factor", AUX,
     "(torch.randn(w.T.shape, generator=g, dtype=w.dtype) * self.init_std).to(w.device)",
     "(torch.randn(w.T.shape, generator=g, dtype=w.dtype)).to(w.device)"),
    ("lra_e: bias update summed", "dropped factor", CORE,
     "self.accumulate_grad(b.layer.bias, e.mean(0))",
     "self.accumulate_grad(b.layer.bias, e.sum(0))"),
])
MUTANTS += group(O + "energy.py", LRA, [
    ("lra_e: target nudge sign", "flipped sign", CORE,
     "return act(h - beta * d)", "return act(h + beta * d)"),
    ("lra_e: target without beta", "dropped factor", CORE,
     "return act(h - beta * d)", "return act(h - d)"),
])

# ---------------------------------------------------------------------- target propagation
MUTANTS += group(R + "_target_prop.py", sel(TP, "dtp"), [
    ("target prop: top target sign", "flipped sign", CORE,
     "targets = [top - beta * nudge]", "targets = [top + beta * nudge]"),
    ("target prop: difference correction sign", "flipped sign", CORE,
     "targets.insert(0, trace.inputs[l] + g_t - g_z)",
     "targets.insert(0, trace.inputs[l] + g_z - g_t)"),
    ("target prop: difference correction dropped", "skipped update", CORE,
     "targets.insert(0, trace.inputs[l] + g_t - g_z)", "targets.insert(0, trace.inputs[l] + g_t)"),
    ("target prop: 1/(2 beta) factor", "dropped factor", CORE,
     ") / (2 * self.beta)", ") / self.beta"),
    ("target prop: layer loss summed over the batch", "dropped factor", CORE,
     "(z - t).pow(2).flatten(1).sum(1).mean()", "(z - t).pow(2).flatten(1).sum(1).sum()"),
    ("target prop: feedback step guard ignored", "dropped factor", AUX,
     "p.grad = None if g is None else g.detach() * scale",
     "p.grad = None if g is None else g.detach()"),
])
MUTANTS += group(R + "_target_prop.py", sel(TP, "ldrl"), [
    ("target prop: feedback never trained", "skipped update", CORE,
     "                opt.step()\n", "                pass\n"),
    ("target prop: the first layer's sigma everywhere", "wrong operand", AUX,
     "sigma, steps = self.sigma[l - 1], self.feedback_steps[l - 1]",
     "sigma, steps = self.sigma[0], self.feedback_steps[l - 1]"),
])
MUTANTS += group(O + "tp_losses.py", sel(TP, "ldrl"), [
    ("ldrl loss: lambda term sign", "flipped sign", CORE,
     "return (-2.0 * (dx * dr_x).flatten(1).sum(1) + _sq(dr_y)).mean()",
     "return (2.0 * (dx * dr_x).flatten(1).sum(1) + _sq(dr_y)).mean()"),
    ("ldrl loss: factor 2 of the cross term", "dropped factor", CORE,
     "return (-2.0 * (dx * dr_x).flatten(1).sum(1) + _sq(dr_y)).mean()",
     "return (-1.0 * (dx * dr_x).flatten(1).sum(1) + _sq(dr_y)).mean()"),
    ("tp losses: noise std ignored", "dropped factor", CORE,
     "return sigma * noise.to(t.device)", "return noise.to(t.device)"),
    ("tp losses: differences swapped", "wrong operand", CORE,
     "dr_x, dr_y = dr.chunk(2)", "dr_y, dr_x = dr.chunk(2)"),
    ("tp losses: forward noise sign", "flipped sign", CORE,
     "torch.cat([f(x + dx), y + dy, y])", "torch.cat([f(x - dx), y + dy, y])"),
])
MUTANTS += group(O + "tp_losses.py", sel(TP, "drl"), [
    ("drl loss: damping term sign", "flipped sign", CORE,
     "return (_sq(dr_x - dx) + self.lam * _sq(dr_y)).mean() / sigma**2",
     "return (_sq(dr_x - dx) - self.lam * _sq(dr_y)).mean() / sigma**2"),
    ("drl loss: 1/sigma^2 dropped", "dropped factor", AUX,
     "return (_sq(dr_x - dx) + self.lam * _sq(dr_y)).mean() / sigma**2",
     "return (_sq(dr_x - dx) + self.lam * _sq(dr_y)).mean()"),
    ("drl loss: reconstruction sign", "flipped sign", CORE,
     "return (_sq(dr_x - dx) + self.lam * _sq(dr_y)).mean() / sigma**2",
     "return (_sq(dr_x + dx) + self.lam * _sq(dr_y)).mean() / sigma**2"),
])
# the closed-form feedback gradients the TP rules use for Linear blocks (by default)
MUTANTS += group(O + "tp_quadratic.py", sel(TP, "ldrl"), [
    ("dtp closed form: residual sign", "flipped sign", CORE,
     "r = torch.addmm(g.bias, u, g.weight.t()) - xn.flatten(1)",
     "r = torch.addmm(g.bias, u, g.weight.t()) + xn.flatten(1)"),
    ("drl closed form: damping term sign", "flipped sign", CORE,
     ".addmm_(dr_y.t(), du_y, alpha=loss.lam)", ".addmm_(dr_y.t(), du_y, alpha=-loss.lam)"),
    ("drl closed form: 1/sigma^2 dropped", "dropped factor", AUX,
     "k = 2.0 / (x.shape[0] * sigma**2)", "k = 2.0 / x.shape[0]"),
    ("drl closed form: reconstruction sign", "flipped sign", CORE,
     "e = dr_x - dx.flatten(1)", "e = dr_x + dx.flatten(1)"),
    ("ldrl closed form: cross term sign", "flipped sign", CORE,
     ".addmm_(dxf.t(), du_x, alpha=-1.0)", ".addmm_(dxf.t(), du_x, alpha=1.0)"),
    ("ldrl closed form: guard curvature ignored", "skipped check", AUX,
     "return k * float(_sum_sq(torch.mm(du_y, d[0].t())))", "return 0.0"),
])
MUTANTS += group(O + "tp_losses.py", sel(TP, "dtp"), [
    ("dtp loss: no noise", "skipped update", CORE,
     "xn = x + gaussian_like(x, sigma, generator) if sigma > 0 else x", "xn = x"),
    ("dtp loss: reconstructs the clean input", "wrong operand", CORE,
     "return _sq(g(yn, ctx) - xn).mean()", "return _sq(g(yn, ctx) - x).mean()"),
    ("tp losses: top nudge is the batch-mean gradient", "dropped factor", CORE,
     "return loss_grad * output.shape[0]", "return loss_grad"),
])

# DTP-sigma (P1, our linear-inverse reading) and the DDTP baselines of P2
DTPS = sel(["tests/test_dtp_sigma.py", "tests/test_mutation_kills.py"], "dtp_sigma")
MUTANTS += group(O + "tp_activations.py", DTPS, [
    ("dtp_sigma: identity inverse keeps the layer nonlinearity", "wrong operand", CORE,
     '    "identity": identity_activation,', '    "identity": same_activation,'),
])
MUTANTS += group(R + "dtp_sigma.py", DTPS, [
    ("dtp_sigma: default inverse is DTP's", "wrong operand", CORE,
     'feedback_activation: str = "identity"', 'feedback_activation: str = "same"'),
])
MUTANTS += group(O + "tp_losses.py", DTPS, [
    ("dtp_sigma: output error sign", "flipped sign", CORE,
     "    return p - torch.nn.functional.one_hot(y.long(), output.shape[-1]).to(p.dtype)",
     "    return torch.nn.functional.one_hot(y.long(), output.shape[-1]).to(p.dtype) - p"),
])
DDTP = sel(["tests/test_ddtp.py", "tests/test_feedback_epochs.py"], "ddtp")
MUTANTS += group(O + "direct_feedback_tp.py", DDTP, [
    ("ddtp: target shift sign", "flipped sign", CORE,
     "    shift = top - outputs[-1]", "    shift = outputs[-1] - top"),
    ("ddtp: DRL reconstructs minus the noise", "flipped sign", CORE,
     "    residual = q(da, z) - eps", "    residual = q(da, z) + eps"),
    ("ddtp: DRL without 1/sigma^2", "dropped factor", CORE,
     "    value = residual.pow(2).flatten(1).sum(1).mean() / sigma**2",
     "    value = residual.pow(2).flatten(1).sum(1).mean()"),
    ("ddtp: damping sign", "flipped sign", CORE,
     "    return value + damping * q.weight.pow(2).sum() if damping else value",
     "    return value - damping * q.weight.pow(2).sum() if damping else value"),
])
MUTANTS += group(R + "_ddtp.py", DDTP, [
    ("ddtp: feedback trained once whatever K", "skipped update", AUX,
     "            for _ in range(self.feedback_steps[l]):", "            for _ in range(1):"),
])
MUTANTS += group(R + "s_ddtp.py", DDTP, [
    ("s_ddtp: no feedback-only epochs", "skipped update", CORE,
     "    FEEDBACK_EPOCHS = (10, 1)", "    FEEDBACK_EPOCHS = (0, 0)"),
])
MUTANTS += group("src/biograd/runner/train.py", DDTP, [
    ("runner: feedback-only epochs skipped", "skipped update", AUX,
     "    for k in range(count):", "    for k in range(0):"),
])

# no silent backprop: the first-step walk over the autograd graph (ops/autograd_paths.py)
NSB = sel(["tests/test_no_silent_backprop.py"], "feedback_alignment")
MUTANTS += group(O + "autograd_paths.py", NSB, [
    ("silent backprop: a reached parameter is not refused", "skipped check", CORE,
     "                raise UnsupportedModelError(self._silent_message(rule, name, node, parent))",
     "                pass"),
    ("silent backprop: the walk enters the converted op's parameter edges", "wrong operand",
     CORE, "                nexts = [call.inp[0]] if call.inp is not None else []",
     "                nexts = [f for f, _ in node.next_functions if f is not None]"),
    ("silent backprop: a weight recomputed per call is not traced", "skipped check", AUX,
     "                    self._derived.setdefault(t.grad_fn, "
     "f\"{layer.path}.{name}\".lstrip(\".\"))",
     "                    pass"),
])

# ---------------------------------------------------------------------- exact PC on graphs
MUTANTS += group("src/biograd/graph/inference.py",
                 sel(["tests/test_zil.py", "tests/test_predictive_coding.py"], "zil"), [
    ("zil: PC output error scaled", "dropped factor", CORE,  # write_updates' (20 spaces)
     "\n                    (g,) = torch.autograd.grad(self.beta * self.loss_fn(m, self.y), m)",
     "\n                    (g,) = torch.autograd.grad(2 * self.beta * self.loss_fn(m, self.y),"
     " m)"),
])

GRAPH = sel(["tests/test_zil.py", "tests/test_graph.py"], "zil")
MUTANTS += group("src/biograd/graph/levels.py", GRAPH, [
    ("levels: shortest path to the output instead of the longest", "wrong operand", CORE,
     "            level[i] = max(live) + 1", "            level[i] = min(live) + 1"),
    ("levelling: long edges left as they are", "skipped update", CORE,
     "            if g.vertices[u].kind in CLAMPED or lu is None or lu == lc + 1:",
     "            if True:"),
    ("levelling: identity chain one vertex short", "dropped factor", CORE,
     "        for k in range(top - 1, lv - 1, -1):", "        for k in range(top - 1, lv, -1):"),
])
GRAPH_IN = sel(["tests/test_zil.py", "tests/test_graph.py", "tests/test_bad_input.py"], "zil")
MUTANTS += group("src/biograd/graph/guards.py", GRAPH_IN, [
    ("capture: composite modules accepted", "skipped check", CORE,
     "    if advice is not None:\n        cls = type(mod)",
     "    if False:\n        cls = type(mod)"),
    ("capture: a leaf with parts accepted", "skipped check", AUX,
     "    if kids and leaf:", "    if False:"),
])
MUTANTS += group("src/biograd/graph/capture.py", GRAPH, [
    ("capture: a vertex does not recompute its inline inputs", "skipped update", CORE,
     "            if kinds[a] == INLINE and a not in seen:",
     "            if False:"),
])
# the full PC dynamics (RelaxSchedule over PCInference): the evidence of P5's report
MUTANTS += group("src/biograd/graph/inference.py", GRAPH, [
    ("PC dynamics: energy without the 1/2", "dropped factor", CORE,
     "                total = total + 0.5 * (vals[i] - mu).pow(2).sum()  # type: ignore[operator]",
     "                total = total + (vals[i] - mu).pow(2).sum()  # type: ignore[operator]"),
    ("PC dynamics: value nodes climb the energy", "flipped sign", CORE,
     "            None if g is None else -g for g in grads",
     "            None if g is None else g for g in grads"),
    ("PC update: local error sign", "flipped sign", CORE,
     "                    g = mu.detach() - vals[i]  # type: ignore[operator]",
     "                    g = vals[i] - mu.detach()  # type: ignore[operator]"),
])
MUTANTS += group(R + "zil.py", GRAPH, [
    ("Z-IL full dynamics: C2 one step late (level t - 1 updated at step t)", "wrong operand",
     CORE, "            inf.write_updates(levels[t], s, rule.accumulate_grad)",
     "            inf.write_updates(levels[max(t - 1, 0)], s, rule.accumulate_grad)"),
])
# Z-IL's fast path: the event-driven schedule compiled per graph (graph/plan.py)
MUTANTS += group("src/biograd/graph/plan.py", GRAPH, [
    ("Z-IL fast path: output error sign", "flipped sign", CORE,
     "        (e_out,) = _vjp((loss,), (torch.ones_like(loss),), (out,))",
     "        (e_out,) = _vjp((loss,), (-torch.ones_like(loss),), (out,))"),
    ("Z-IL fast path: a tied weight keeps only its last level's update", "skipped update", CORE,
     "                        u[1].add_(d)", "                        u[1].copy_(d)"),
    ("Z-IL fast path: errors of a group not carried to the next", "skipped update", CORE,
     "                    err[i] = e", "                    pass"),
    ("Z-IL fast path: an aliased update taken without a copy", "stale state", AUX,
     "                        updates[id(p)] = [p, d, shared[_storage(d)] == 1]",
     "                        updates[id(p)] = [p, d, True]"),
    ("Z-IL fast path: group boundary not at the narrowest level", "wrong operand", AUX,
     "key=lambda t: (sizes[t], -t)))", "key=lambda t: (-sizes[t], -t)))"),
])

# ---------------------------------------------------------------------- left out
# Equivalent mutants, not counted (they cannot change behaviour on any input the rules accept):
# - core/relax.py ``differentiable`` branch -> no_grad: no caller passes differentiable=True
#   since EqProp's free phase for reference_output runs its own loop (dead path, not a defect).
# - ops/energy.py rate_and_derivative, ReLU ``(s > 0)`` -> ``(s >= 0)``: differs only where a
#   state is exactly 0, where the derivative is a convention.
# - rules/_target_prop.py ``trace.inputs[l]`` -> ``trace.outputs[l - 1].detach()``: the same
#   tensor by construction (forward_trace feeds each block the detached previous output).
# - rules/activation_relaxation.py INITS "forward" -> zeros: the same fixed point (the tests
#   relax from both starts), only the path to it differs.
# Pending areas (add one group() each): ops/convert.py,
# and more of rules/_backward.py.
