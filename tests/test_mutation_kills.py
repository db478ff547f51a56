"""Tests added because a mutant of scripts/mutation_check.py survived the rules' own tests.

Target propagation (P2, Meulemans et al. 2020 Eq. 2-4): the top target is
``t_L = z_L - beta * dl/dz_L`` (per-sample gradient) and the layer loss is
``mean_b ||z_L - t_L||^2 / (2 beta)``, whose gradient w.r.t. z_L is ``dl/dz_L / B``: the last
layer's update is exactly backprop's gradient of the batch-mean loss, for every beta.
"""

from __future__ import annotations

import pytest
import torch

import biograd

CASES = [(r, loss) for r in ("dtp", "drl", "ldrl") for loss in ("cross_entropy", "mse")]
CASES += [("dtp_sigma", "cross_entropy")]  # its top nudge is the softmax error (CE's gradient)


@pytest.mark.parametrize("rule, loss", CASES)
@pytest.mark.parametrize("beta", [0.3, 1.7])
def test_target_prop_top_layer_update_is_the_backprop_gradient(
    rule: str, loss: str, beta: float
) -> None:
    if rule not in biograd.list_rules():
        pytest.skip(f"{rule} is not registered")
    torch.manual_seed(0)
    model = biograd.models.mlp(12, [10, 8], 4, activation="tanh")
    r = biograd.create_rule(rule, model, loss=loss, beta=beta)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 12, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    if loss == "mse":
        y = torch.nn.functional.one_hot(y, 4).float()
    top = model[-1]
    expected = torch.autograd.grad(r.loss_fn(model(x), y), [top.weight, top.bias])
    r.step(x, y)
    for want, p in zip(expected, (top.weight, top.bias), strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)


def test_every_mutant_still_targets_code_that_exists() -> None:
    """scripts/mutants.py edits code by exact text: a mutant whose original text no longer
    occurs exactly once (after a refactor) would silently stop testing anything."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "mutants.py"
    if not script.is_file():  # the mutation check's own working copy holds src/ and tests/ only
        pytest.skip("scripts/mutants.py is not in this tree")
    spec = importlib.util.spec_from_file_location("mutants", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["mutants"]
    assert len({m.name for m in module.MUTANTS}) == len(module.MUTANTS), "duplicate names"
    for m in module.MUTANTS:
        count = (root / m.file).read_text().count(m.original)
        assert count == 1, f"mutant {m.name!r}: its original text occurs {count} times in {m.file}"
