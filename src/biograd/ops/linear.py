"""``nn.Linear`` under a feedback backward: ``y = x W^T + b``; ``dW = delta^T x``, ``db = sum
delta`` as in backprop; the input gradient is ``delta B^T`` with ``B`` of ``W^T``'s shape
(in, out), so ``B = W^T`` is exact backprop (Lillicrap et al. 2016)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biograd.ops.feedback import (
    ZERO_INPUT,
    DirectSignal,
    FeedbackHandler,
    LayerDecay,
    LayerOp,
    fast_apply,
    modified_in_place,
    register_feedback_handler,
    uniform,
)


class LinearOp(LayerOp):
    """Maths of ``F.linear`` with leading batch dimensions flattened for the weight gradient."""

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def backward(
        self, grad_out: Tensor, x: Tensor, feedback: Tensor, need_input: bool, need_bias: bool
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        gx = grad_out @ feedback.t() if need_input else None
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        gw = g2.t() @ x.reshape(-1, x.shape[-1])
        gb = g2.sum(0) if need_bias else None
        return gx, gw, gb

    def feedback_grad(self, grad_weight: Tensor) -> Tensor:
        # A copy (never a view of W's grad) laid out like B (see LinearHandler.init_feedback).
        return grad_weight.t().clone()


_LINEAR_OP = LinearOp()


class LinearFeedbackFunction(torch.autograd.Function):
    """Fast path of :class:`~biograd.ops.feedback.FeedbackFunction` for 2-D inputs (every rule
    on MLPs): the same maths with less Python per call, which matters at MLP sizes where a
    layer's matmuls take tens of microseconds.

    Called through :func:`~biograd.ops.feedback.fast_apply` (the C++ ``apply``). The input and
    the feedback are kept on ``ctx`` rather than through ``save_for_backward`` (cheaper to
    store and to read back); their version counters are checked in the backward, so modifying
    either in place before the backward is an error, as it is for autograd's saved tensors.
    The weight is read only for ``decay`` (whose ``lam W`` term uses the weight's value at
    the backward, as the rule's own decay after the backward did)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        feedback: Tensor,
        scale: float,
        direct: DirectSignal | None,
        decay: LayerDecay | None,
    ) -> Tensor:
        ctx.x, ctx.fb, ctx.w, ctx.versions = x, feedback, weight, (x._version, feedback._version)
        ctx.scale, ctx.direct, ctx.decay = scale, direct, decay
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, feedback = ctx.x, ctx.fb
        if (x._version, feedback._version) != ctx.versions:
            raise modified_in_place("input or feedback")
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        gx = None
        if need_x:
            if ctx.direct is not None:
                gx = ctx.direct.input_grad(feedback, x.shape)
            else:
                gx = grad_out.mm(feedback.t())
                if ctx.scale != 1.0:
                    gx.mul_(ctx.scale)
        gw = grad_out.t().mm(x) if (need_w or (need_fb and need_x)) else None
        gb = grad_out.sum(0) if need_b else None
        # B carries no error when x needs no gradient: then it gets no update (see
        # BackwardReplacementRule's "unused feedback"). B.grad is a fresh tensor laid out like
        # B (LinearHandler.init_feedback), never a view of W.grad.
        gfb = None
        decay: LayerDecay | None = ctx.decay
        if need_fb and need_x:
            if decay is None:
                gfb = gw.t().clone()  # type: ignore[union-attr]
            else:  # W.grad^T + lam B in the one pass that copies it
                gfb = torch.add(gw.t(), feedback, alpha=decay.lam)  # type: ignore[union-attr]
                decay.feedback_done = True
        if decay is not None and need_w:
            gw.add_(ctx.w, alpha=decay.lam)  # type: ignore[union-attr]
            decay.weight_done = True
        return gx, (gw if need_w else None), gb, gfb, None, None, None


_apply = fast_apply(LinearFeedbackFunction)


class LinearHandler(FeedbackHandler):
    """Feedback ``B`` of shape (in_features, out_features), i.e. ``W^T``'s."""

    def op(self, module: nn.Module) -> LayerOp:
        return _LINEAR_OP

    def forward(
        self,
        module: nn.Module,
        x: Tensor,
        feedback: Tensor,
        direct: DirectSignal | None = None,
        scale: float = 1.0,
        decay: LayerDecay | None = None,
    ) -> Tensor:
        if x.dim() == 2:  # the fast path, called directly
            if direct is not None and direct.cut_inputs:  # pure DFA: B e_L at a cut point
                direct.inject(x, feedback)
                direct = ZERO_INPUT
            weight, bias = module.weight, module.bias  # type: ignore[union-attr]
            y: Tensor = _apply(x, weight, bias, feedback, scale, direct, decay)
            return y
        return super().forward(module, x, feedback, direct, scale, decay)

    def swappable(self, module: nn.Module) -> bool:
        """A module running ``nn.Linear``'s own forward (``F.linear``, whose ``addmm`` / ``mm``
        saves ``W^T`` for the input gradient) on a weight that is a parameter of its own."""
        return type(module).forward is nn.Linear.forward and \
            isinstance(module._parameters.get("weight"), nn.Parameter)

    def swap_forward(self, module: nn.Module) -> Callable[[Tensor], Tensor]:
        """``nn.Linear.forward`` itself, reading the parameters without ``Module.__getattr__``."""
        params = module._parameters
        return lambda x: F.linear(x, params["weight"], params["bias"])  # type: ignore[arg-type]

    def transposed_weight(self, module: nn.Module) -> Tensor:
        return module.weight.t()  # type: ignore[union-attr,operator]

    def fan_in(self, module: nn.Module) -> int:
        return int(module.weight.shape[1])  # type: ignore[union-attr,index]

    def init_feedback(self, module: nn.Module, generator: torch.Generator) -> Tensor:
        """FA's default init with W^T's shape (in, out) but W's memory layout (a transposed
        view of an (out, in) tensor): Kolen-Pollack's transposed weight gradient then lands in
        B.grad with a plain copy instead of a transposing one."""
        w: Tensor = module.weight  # type: ignore[assignment]
        bound = 1.0 / math.sqrt(self.fan_in(module))
        return uniform(w.shape, bound, generator).to(device=w.device, dtype=w.dtype).t()

    @torch.no_grad()
    def mirror_correlation(
        self, module: nn.Module, n: int, std: float, generator: torch.Generator
    ) -> Tensor:
        w: Tensor = module.weight  # type: ignore[assignment]
        x = torch.randn(n, w.shape[1], generator=generator, dtype=w.dtype).to(w.device)
        x.mul_(std)
        y = x @ w.t()
        return (y.t() @ x).div_(n).t()  # laid out like B

    @torch.no_grad()
    def mirror_update(
        self,
        module: nn.Module,
        feedback: Tensor,
        n: int,
        std: float,
        lr: float,
        decay: float,
        generator: torch.Generator,
    ) -> None:
        """The same update fused into one ``addmm_``, with unit noise and ``std^2`` folded
        into the step size (``x y^T`` scales as ``std^2``)."""
        w: Tensor = module.weight  # type: ignore[assignment]
        x = torch.randn(n, w.shape[1], generator=generator, dtype=w.dtype).to(w.device)
        self.mirror_update_from(module, feedback, x, lr * std * std / n, 1.0 - lr * decay)

    def mirror_noise_features(self, module: nn.Module) -> int | None:
        return int(module.weight.shape[1])  # type: ignore[union-attr,index]

    def mirror_update_from(
        self, module: nn.Module, feedback: Tensor, noise: Tensor, alpha: float, beta: float
    ) -> None:
        """``B <- beta B + alpha x^T (x W^T)``: two matrix products (``F.linear`` without bias
        gives ``x W^T``), the second accumulated into ``B`` in place. (``W`` is detached rather
        than the call wrapped in ``no_grad``: the same, with less overhead per layer.)"""
        y = F.linear(noise, module.weight.detach())  # type: ignore[operator]
        feedback.addmm_(noise.t(), y, beta=beta, alpha=alpha)


register_feedback_handler(nn.Linear, LinearHandler())
