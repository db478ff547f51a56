"""LRA-E: local representation alignment with learned error weights (Ororbia & Mali 2019,
AAAI, "Biologically motivated algorithms for propagating local target representations", P1;
code AnkurMali/LRA-E).

For an MLP ``z_l = f(h_l)``, ``h_l = W_l z_{l-1} + b_l`` (softmax output for cross-entropy)::

    e_L = dl_i/dh_L                      (= softmax(h_L) - y for cross-entropy, Eq. 3)
    for l = L..2:  d_{l-1} = E_l e_l     (E_l: learned error weights, n_{l-1} x n_l)
                   y_{l-1} = f(h_{l-1} - beta d_{l-1})         (Eq. 4, target)
                   e_{l-1} = z_{l-1} - y_{l-1}
    dW_l = e_l z_{l-1}^T,  db_l = e_l    (batch mean; no activation derivative)
    dE_l = gamma (dW_l)^T

Signs: ``.grad`` of ``W_l`` is ``dW_l`` (the optimizer subtracts it, Eq. 5) and ``.grad`` of
``E_l`` is ``gamma dW_l^T``, so ``E_l`` receives the transposed copy of ``W_l``'s step, as in
the authors' code (``E.grad = dW^T`` under the same optimizer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from biograd.core import checks
from biograd.core.blocks import as_blocks, forward_trace
from biograd.core.errors import UnsupportedModelError
from biograd.core.losses import LossFn
from biograd.core.registry import register_rule
from biograd.core.rule import LearningRule, StepResult
from biograd.ops.energy import lra_target, per_sample_output_grad


@register_rule(
    "lra_e",
    family="local_representation_alignment",
    paper="Ororbia & Mali 2019, AAAI 33:4651 (arXiv:1805.11703)",
    supports=("mlp",),
)
class LRAE(LearningRule):
    """LRA-E: layer-wise targets from learned error weights; updates without f'."""

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        *,
        beta: float = 0.1,
        gamma: float = 1.0,
        init_std: float = 0.05,
        init_model: bool = False,
    ) -> None:
        """``init_std``: std of the normal init of the error weights ``E_l`` (P1: 0.05).
        ``init_model=True`` also re-draws the model's weights from N(0, init_std^2) with zero
        biases, as P1 does; the default leaves the user's model as it is."""
        super().__init__(model, loss)
        n = self.name
        self.beta = checks.positive(n, "beta", beta)
        self.gamma = checks.positive(n, "gamma", gamma, allow_zero=True)
        self.init_std = checks.positive(n, "init_std", init_std)
        checks.flag(n, "init_model", init_model)
        self.blocks = as_blocks(model, n)
        for i, b in enumerate(self.blocks):
            if not isinstance(b.layer, nn.Linear) or b.pool is not None or (i and b.flatten):
                raise UnsupportedModelError(
                    f"rule {n!r} supports MLPs only (Flatten? then Linear -> activation "
                    f"blocks); block {i} is {b.layer!r} with pool {b.pool!r}. Use "
                    f"biograd.models.mlp."
                )
        g = self.generator
        if init_model:
            with torch.no_grad():
                for b in self.blocks:
                    w = b.layer.weight
                    w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * self.init_std)
                    if b.layer.bias is not None:
                        b.layer.bias.zero_()
        ws = [b.layer.weight for b in self.blocks[1:]]
        self.error_weights = nn.ParameterList(
            nn.Parameter(
                (torch.randn(w.T.shape, generator=g, dtype=w.dtype) * self.init_std).to(w.device)
            )
            for w in ws
        )

    def feedback_weight_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {
            f"layer{i + 1}": (e.detach(), b.layer.weight.detach().T)
            for i, (e, b) in enumerate(zip(self.error_weights, self.blocks[1:], strict=True))
        }

    @torch.no_grad()
    def targets(
        self, x: Tensor, y: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """Per-sample errors ``[e_1..e_L]``, targets ``[y_1..y_{L-1}]``, block inputs and the
        model's output."""
        trace = forward_trace(self.blocks, x)
        out = trace.outputs[-1]
        self.check_labels(out, y)
        errors = [per_sample_output_grad(self.loss_fn, out, y)]
        targets: list[Tensor] = []
        for i in range(len(self.blocks) - 1, 0, -1):
            d = errors[0] @ self.error_weights[i - 1].T
            t = lra_target(self.blocks[i - 1].activation, trace.pre[i - 1], d, self.beta)
            targets.insert(0, t)
            errors.insert(0, trace.outputs[i - 1] - t)
        inputs = [b.pre(z) for b, z in zip(self.blocks, trace.inputs, strict=True)]
        return errors, targets, inputs, out

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self.check_batch(x, y)
        errors, _, inputs, out = self.targets(x, y)
        batch = x.shape[0]
        for i, (b, e, z) in enumerate(zip(self.blocks, errors, inputs, strict=True)):
            dw = e.T @ z / batch
            if b.layer.weight.requires_grad:
                self.accumulate_grad(b.layer.weight, dw)
            if b.layer.bias is not None and b.layer.bias.requires_grad:
                self.accumulate_grad(b.layer.bias, e.mean(0))
            if i:
                self.accumulate_grad(self.error_weights[i - 1], self.gamma * dw.T)
        metrics = {f"error_norm_{i}": float(e.norm(dim=1).mean()) for i, e in enumerate(errors)}
        return StepResult(float(self.loss_fn(out, y)), out, metrics)
