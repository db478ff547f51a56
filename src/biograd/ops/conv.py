"""``nn.Conv2d`` under a feedback backward: the weight gradient is backprop's; the input
gradient is the transposed convolution of the output error with the feedback kernel ``B``
(``W``'s shape), honouring stride, padding, dilation and groups, so ``B = W`` is exact backprop.

Both come from one ``aten.convolution_backward`` call with ``B`` in the weight slot: that op
uses the weight only for the input gradient (the weight gradient depends on its shape alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biograd.ops.feedback import FeedbackHandler, LayerOp, register_feedback_handler


class Conv2dOp(LayerOp):
    """``F.conv2d`` with fixed integer stride / padding / dilation / groups."""

    def __init__(
        self,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> None:
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def backward(
        self, grad_out: Tensor, x: Tensor, feedback: Tensor, need_input: bool, need_bias: bool
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out, x, feedback, [feedback.shape[0]] if need_bias else None,
            list(self.stride), list(self.padding), list(self.dilation), False, [0, 0],
            self.groups, [need_input, True, need_bias],
        )
        return gx, gw, gb

    def feedback_grad(self, grad_weight: Tensor) -> Tensor:
        return grad_weight.clone()


class Conv2dHandler(FeedbackHandler):
    """Feedback kernel ``B`` of ``W``'s shape (out, in/groups, kh, kw).

    Non-zero padding modes and string padding (``"same"``) are applied explicitly to the input
    (differentiably, by ordinary autograd) and the op then runs with zero padding.
    """

    def _explicit_padding(self, module: nn.Conv2d) -> bool:
        return module.padding_mode != "zeros" or isinstance(module.padding, str)

    def op(self, module: nn.Module) -> LayerOp:
        m: nn.Conv2d = module  # type: ignore[assignment]
        padding = (0, 0) if self._explicit_padding(m) else tuple(m.padding)
        return Conv2dOp(tuple(m.stride), padding, tuple(m.dilation), m.groups)  # type: ignore[arg-type]

    def prepare_input(self, module: nn.Module, x: Tensor) -> Tensor:
        m: nn.Conv2d = module  # type: ignore[assignment]
        if not self._explicit_padding(m):
            return x
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        return F.pad(x, m._reversed_padding_repeated_twice, mode=mode)

    def swappable(self, module: nn.Module) -> bool:
        """A module running ``nn.Conv2d``'s own forward (the convolution saves ``W`` for the
        input gradient; non-zero padding modes pad first) on a weight of its own."""
        cls = type(module)
        return cls.forward is nn.Conv2d.forward and \
            cls._conv_forward is nn.Conv2d._conv_forward and \
            isinstance(module._parameters.get("weight"), nn.Parameter)

    def transposed_weight(self, module: nn.Module) -> Tensor:
        return module.weight  # type: ignore[return-value]

    def fan_in(self, module: nn.Module) -> int:
        w: Tensor = module.weight  # type: ignore[assignment]
        return int(w.shape[1] * w.shape[2] * w.shape[3])

    #: Output pixels per side of a mirror-mode noise image.
    MIRROR_POSITIONS = 4

    def _noise_shape(self, m: nn.Conv2d) -> tuple[int, int, int]:
        """Noise images just large enough for MIRROR_POSITIONS^2 output pixels without
        padding, so that every patch is pure noise (zero padding would bias the border taps'
        correlation and hence the direction of ``B``)."""
        kh, kw = m.weight.shape[2], m.weight.shape[3]
        (sh, sw), (dh, dw), p = m.stride, m.dilation, self.MIRROR_POSITIONS
        return (m.in_channels, dh * (kh - 1) + 1 + sh * (p - 1), dw * (kw - 1) + 1 + sw * (p - 1))

    def _unit_correlation(self, m: nn.Conv2d, x: Tensor) -> Tensor:
        """``sum_k x_k y_k^T`` over samples and output pixels (through the conv's weight
        gradient, W's shape) divided by the pixel count: for unit noise it estimates ``n W``."""
        op = Conv2dOp(m.stride, (0, 0), m.dilation, m.groups)  # type: ignore[arg-type]
        y = op.forward(x, m.weight, None)
        _, gw, _ = op.backward(y, x, m.weight, False, False)
        return gw.div_(y.shape[2] * y.shape[3])

    @torch.no_grad()
    def mirror_correlation(
        self, module: nn.Module, n: int, std: float, generator: torch.Generator
    ) -> Tensor:
        m: nn.Conv2d = module  # type: ignore[assignment]
        w = m.weight
        x = torch.randn(n, *self._noise_shape(m), generator=generator, dtype=w.dtype)
        x = x.to(w.device).mul_(std)
        return self._unit_correlation(m, x).div_(n)

    def mirror_noise_features(self, module: nn.Module) -> int | None:
        c, h, w = self._noise_shape(module)  # type: ignore[arg-type]
        return c * h * w

    @torch.no_grad()
    def mirror_update_from(
        self, module: nn.Module, feedback: Tensor, noise: Tensor, alpha: float, beta: float
    ) -> None:
        m: nn.Conv2d = module  # type: ignore[assignment]
        corr = self._unit_correlation(m, noise.view(noise.shape[0], *self._noise_shape(m)))
        feedback.mul_(beta).add_(corr, alpha=alpha)


register_feedback_handler(nn.Conv2d, Conv2dHandler())
