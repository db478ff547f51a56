"""Speed work keeps every backward-replacement rule's update (issue 15): each step of feedback
alignment, sign symmetry (both magnitudes), DFA, Kolen-Pollack and weight mirror equals a
reference computed from the rule's equations, on fixed batches, over several optimizer steps
(so state carried between steps, such as the signs of W, the mirror's B or KP's decay, is
checked at every step, not only at the first).

The reference runs the model module by module and builds the backward by hand: a converted
layer (``nn.Linear``, ``nn.Conv2d``) gets backprop's weight and bias gradients and sends its
input ``delta B^T`` (Linear) or the transposed convolution of ``delta`` with the kernel ``B``
(``torch.nn.grad.conv2d_input``), DFA's layers ``B_k e`` with ``e`` the loss gradient at the
output; every other module passes the error through its own vector-Jacobian product. ``B`` is
the rule's stored feedback (FA, KP, WM, DFA), ``g sign(W)^T`` with ``g = 1/sqrt(3 fan_in)``
or ``|R| * sign(W)^T`` (sign symmetry). Kolen-Pollack adds ``lam W`` to W's gradient and
``B.grad = W's gradient^T + lam B`` for every layer whose input needs a gradient (P3); weight
mirror then moves ``B <- (1 - eta lam) B + eta sigma^2 x^T (x W^T) / n`` with the rule's noise
(``x`` redrawn here from a copy of the rule's generator). Float64, tolerances at rounding.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import biograd
from biograd.rules.weight_mirror import MIRROR_NOISES
from tests.conftest import make_model

TOL = {"rtol": 1e-10, "atol": 1e-13}
InputGrad = Callable[[int, nn.Module, Tensor, Tensor, Tensor], Tensor]


def _reference(
    model: nn.Sequential, x: Tensor, y: Tensor, input_grad: InputGrad
) -> dict[Tensor, Tensor]:
    """The gradient of every parameter of ``model`` (a Sequential) with the converted layers'
    input gradients given by ``input_grad(index, module, delta, layer input, output error)``."""
    inputs, h = [], x
    with torch.no_grad():
        for m in model:
            inputs.append(h)
            h = m(h)
    out = h.detach().requires_grad_()
    (e,) = torch.autograd.grad(F.cross_entropy(out, y), out)
    grads: dict[Tensor, Tensor] = {}
    g = e
    for i in reversed(range(len(model))):
        m, xin = model[i], inputs[i]
        if isinstance(m, nn.Linear):
            grads[m.weight] = g.t() @ xin
            grads[m.bias] = g.sum(0)
        elif isinstance(m, nn.Conv2d):
            grads[m.weight] = torch.nn.grad.conv2d_weight(
                xin, m.weight.shape, g, m.stride, m.padding, m.dilation, m.groups)
            grads[m.bias] = g.sum((0, 2, 3))
        if i == 0:
            break
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            g = input_grad(i, m, g, xin, e)
        else:
            xr = xin.detach().requires_grad_()
            (g,) = torch.autograd.grad(m(xr), xr, g)
    return grads


def _through(feedback: Callable[[int, nn.Module], Tensor]) -> InputGrad:
    """Layer-to-layer feedback: ``delta B^T`` or the transposed convolution with ``B``."""

    def input_grad(i: int, m: nn.Module, g: Tensor, xin: Tensor, e: Tensor) -> Tensor:
        b = feedback(i, m)
        if isinstance(m, nn.Linear):
            return g @ b.t()
        return torch.nn.grad.conv2d_input(xin.shape, b, g, m.stride, m.padding, m.dilation,
                                          m.groups)

    return input_grad


def _direct(feedback: Callable[[int, nn.Module], Tensor]) -> InputGrad:
    """DFA: every converted layer's input gets ``B_k e`` (Nokland 2016)."""

    def input_grad(i: int, m: nn.Module, g: Tensor, xin: Tensor, e: Tensor) -> Tensor:
        return (e.reshape(e.shape[0], -1) @ feedback(i, m).t()).reshape(xin.shape)

    return input_grad


def _stored(rule: biograd.LearningRule) -> Callable[[int, nn.Module], Tensor]:
    return lambda i, m: rule.feedback.get(str(i)).detach().clone()


def _signs(rule: biograd.LearningRule, magnitudes: str) -> Callable[[int, nn.Module], Tensor]:
    def feedback(i: int, m: nn.Module) -> Tensor:
        w = m.weight.detach()
        s = torch.sign(w.t() if isinstance(m, nn.Linear) else w)
        if magnitudes == "random":
            return s * rule.feedback.get(str(i)).detach()
        fan_in = w[0].numel()
        return s / math.sqrt(3 * fan_in)

    return feedback


def _batches(x: Tensor, y: Tensor, n: int) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [(x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype), y.roll(k))
            for k in range(n)]


def _converted(model: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(model) if isinstance(m, (nn.Linear, nn.Conv2d))]


def _mirrored(rule: biograd.LearningRule, model: nn.Sequential) -> dict[int, Tensor]:
    """Weight mirror's B after one mirror step of every layer whose input needs a gradient
    (every converted layer but the first), from a copy of the rule's generator."""
    conv = [i for i in _converted(model)][1:]
    gen = torch.Generator().set_state(rule.generator.get_state())
    n, std, lr, lam = (rule.mirror_batch_size, rule.mirror_noise_std, rule.mirror_lr,
                       rule.mirror_decay)
    shapes = {}
    for i in conv:
        m = model[i]
        if isinstance(m, nn.Linear):
            shapes[i] = (m.in_features,)
        else:
            p = 4  # Conv2dHandler.MIRROR_POSITIONS output pixels per side, no padding
            kh, kw = m.weight.shape[2:]
            shapes[i] = (m.in_channels, kh + p - 1, kw + p - 1)
    sizes = [n * math.prod(shapes[i]) for i in conv]
    noise = MIRROR_NOISES[rule.mirror_noise]().draw(sum(sizes), gen, torch.float64)
    out = {}
    for i, chunk in zip(conv, noise.split(sizes), strict=True):
        m, b = model[i], rule.feedback.get(str(i)).detach()
        xs = chunk.view(n, *shapes[i])
        w = m.weight.detach()
        if isinstance(m, nn.Linear):
            corr = xs.t() @ (xs @ w.t())  # x^T y with y = W x: n std^2 W^T in expectation
        else:
            yc = F.conv2d(xs, w, None, m.stride, 0, m.dilation, m.groups)
            corr = torch.nn.grad.conv2d_weight(xs, w.shape, yc, m.stride, 0, m.dilation,
                                               m.groups) / (yc.shape[2] * yc.shape[3])
        out[i] = (1 - lr * lam) * b + lr * std * std / n * corr
    return out


CASES = [
    ("feedback_alignment", {}),
    ("sign_symmetry", {}),
    ("sign_symmetry", {"magnitudes": "random"}),
    ("direct_feedback_alignment", {}),
    ("direct_feedback_alignment", {"skips": "propagate"}),
    ("kolen_pollack", {"weight_decay": 0.05}),
    ("weight_mirror", {}),
]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize(("name", "hparams"), CASES)
def test_every_step_equals_the_rule_equations(kind: str, name: str, hparams: dict) -> None:
    model, x, y = make_model(kind)
    model.double()
    x = x.double()
    rule = biograd.create_rule(name, model, **hparams)
    opt = torch.optim.SGD(rule.parameters(), lr=0.5, momentum=0.9)
    signs = []
    for xb, yb in _batches(x, y, 3):
        opt.zero_grad(set_to_none=True)
        if name in ("direct_feedback_alignment", "weight_mirror"):
            rule.prepare(xb)  # DFA builds its B, weight mirror warms up at the first step
        if name == "sign_symmetry":
            feedback = _signs(rule, hparams.get("magnitudes", "unit"))
            signs.append([torch.sign(model[i].weight) for i in _converted(model)[1:]])
        else:
            feedback = _stored(rule)
        maker = _direct if name == "direct_feedback_alignment" else _through
        expected = _reference(model, xb, yb, maker(feedback))
        lam = hparams.get("weight_decay", 0.0)
        b_expected = {}
        if name == "kolen_pollack":
            for i in _converted(model)[1:]:
                b = rule.feedback.get(str(i)).detach()
                gw = expected[model[i].weight]
                b_expected[i] = (gw.t() if isinstance(model[i], nn.Linear) else gw) + lam * b
            for i in _converted(model):
                expected[model[i].weight] = expected[model[i].weight] + lam * model[i].weight
        if name == "weight_mirror":
            b_expected = _mirrored(rule, model)
        rule.step(xb, yb)
        for p in model.parameters():
            torch.testing.assert_close(p.grad, expected[p].detach(), **TOL)
        if name == "kolen_pollack":
            assert rule.feedback.get(str(_converted(model)[0])).grad is None  # unused B
            for i, b in b_expected.items():
                torch.testing.assert_close(rule.feedback.get(str(i)).grad, b, **TOL)
        if name == "weight_mirror":
            for i, b in b_expected.items():
                torch.testing.assert_close(rule.feedback.get(str(i)), b, **TOL)
        opt.step()
    if name == "sign_symmetry":  # some used B's signs changed: a stale sign(W) would fail
        assert any(not torch.equal(a, b) for a, b in zip(signs[0], signs[-1], strict=True))


class SharedLayer(nn.Module):
    """One Linear called twice per step: first on the data (its input needs no gradient),
    then on a hidden state (its input does)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.shared = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = self.shared(x[:, :5])  # data: no error through B here
        h = torch.tanh(self.inp(x) + a)
        return self.out(torch.tanh(self.shared(h)))


def test_kolen_pollack_shared_layer_decays_once_and_b_learns_from_the_call_with_error() -> None:
    torch.manual_seed(0)
    model = SharedLayer().double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    lam = 0.05
    rule = biograd.create_rule("kolen_pollack", model, weight_decay=lam)
    b_shared = rule.feedback.get("shared").detach().clone()
    b_out = rule.feedback.get("out").detach().clone()
    w, fc, out_l = model.shared.weight.detach(), model.shared, model.out
    # by hand: forward, then the backward through B
    a = x[:, :5] @ w.t() + fc.bias
    h = torch.tanh(x @ model.inp.weight.t() + model.inp.bias + a)
    h2 = torch.tanh(h @ w.t() + fc.bias)
    o = (h2 @ out_l.weight.t() + out_l.bias).detach().requires_grad_()
    (e,) = torch.autograd.grad(F.cross_entropy(o, y), o)
    d2 = (e @ b_out.t()) * (1 - h2 ** 2)          # delta of the shared layer's second call
    d1 = (d2 @ b_shared.t()) * (1 - h ** 2)        # delta of the first call and of inp
    gw_second, gw_first = d2.t() @ h, d1.t() @ x[:, :5]
    rule.step(x, y)
    torch.testing.assert_close(fc.weight.grad, gw_first + gw_second + lam * w, **TOL)
    torch.testing.assert_close(rule.feedback.get("shared").grad,
                               gw_second.t() + lam * b_shared, **TOL)
    torch.testing.assert_close(out_l.weight.grad, e.t() @ h2 + lam * out_l.weight.detach(),
                               **TOL)
    assert rule.feedback.get("inp").grad is None


def test_kolen_pollack_updates_accumulate_over_steps_without_zero_grad() -> None:
    """Two steps on one batch without zero_grad and no optimizer step: every W.grad and B.grad
    is twice one step's (the decay counted once per step)."""
    model, x, y = make_model("mlp")
    model.double()
    x = x.double()
    rule = biograd.create_rule("kolen_pollack", model, weight_decay=0.05)
    rule.step(x, y)
    once = [p.grad.clone() for p in rule.parameters() if p.grad is not None]
    rule.step(x, y)
    twice = [p.grad for p in rule.parameters() if p.grad is not None]
    assert len(once) == len(twice) == 8  # 3 layers: W, b each; the B of all but the first
    for a, b in zip(once, twice, strict=True):
        torch.testing.assert_close(b, 2 * a, **TOL)


class ModifiesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)  # saved by fc2's op alone (fc1's backward does not need its output)
        out = self.fc2(h)
        h.mul_(2)  # changes fc2's saved input before the backward
        return out


@pytest.mark.parametrize("name", ["feedback_alignment", "kolen_pollack", "sign_symmetry"])
def test_an_input_modified_in_place_before_backward_is_an_error(name: str) -> None:
    """As autograd does for its own saved tensors (backprop raises here too): the weight
    gradient would use the new values."""
    torch.manual_seed(0)
    rule = biograd.create_rule(name, ModifiesInput())
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        rule.step(torch.randn(3, 4), torch.tensor([0, 1, 1]))


# ---------------------------------------------------------------- the weight swap
def _run(name: str, hparams: dict, kind: str, swap: bool, steps: int = 2,
         prepare: Callable[[nn.Module], None] | None = None) -> list[Tensor]:
    """Gradients and feedback after ``steps`` SGD steps (float32), swap on or off."""
    model, x, y = make_model(kind)
    if prepare is not None:
        prepare(model)
    torch.manual_seed(0)
    rule = biograd.create_rule(name, model, **hparams)
    rule.swap_weights = swap
    opt = torch.optim.SGD(rule.parameters(), lr=0.1, momentum=0.9)
    out = []
    for xb, yb in _batches(x, y, steps):
        opt.zero_grad(set_to_none=True)
        rule.step(xb, yb)
        out += [p.grad.clone() for p in rule.parameters() if p.grad is not None]
        out += [t.clone() for t in rule.feedback.buffers()]
        opt.step()
    return out


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet", "graph"])
@pytest.mark.parametrize(("name", "hparams"), [
    ("feedback_alignment", {}), ("weight_mirror", {}), ("weight_mirror", {"mirror_steps": 0}),
    ("weight_mirror", {"train_unused_feedback": True}), ("sign_symmetry", {"magnitudes": "random"}),
    ("sign_symmetry", {}), ("kolen_pollack", {}), ("direct_feedback_alignment", {}),
])
def test_the_weight_swap_gives_the_feedback_op_update_bit_for_bit(
    kind: str, name: str, hparams: dict
) -> None:
    """Plain Linear / Conv2d layers run their own forward with B swapped into the weight view
    autograd saves; the update equals the feedback op's (the previous implementation) exactly,
    in float32, at every step (the rules that never swap: the same by construction)."""
    fast, ref = _run(name, hparams, kind, True), _run(name, hparams, kind, False)
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref, strict=True):
        assert torch.equal(a, b)


def _count_swaps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from biograd.ops.feedback import WeightSwap

    served = [0, 0]  # calls served by the swap, calls it could not serve
    call = WeightSwap.call

    def counting(self, *args):  # type: ignore[no-untyped-def]
        y = call(self, *args)
        served[y is None] += 1
        return y

    monkeypatch.setattr(WeightSwap, "call", counting)
    return served


def test_plain_layers_with_fixed_feedback_take_the_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    """FA, weight mirror and sign symmetry (both magnitudes: the unit gain is in B itself) swap
    on the layers after the data layer; DFA (its input gradient is no layer's B) and
    Kolen-Pollack (B's own gradient comes from the op) use the feedback ops."""
    served = _count_swaps(monkeypatch)
    for name, hparams, swaps in [
        ("feedback_alignment", {}, 2), ("weight_mirror", {}, 2),
        ("sign_symmetry", {"magnitudes": "random"}, 2), ("sign_symmetry", {}, 2),
        ("direct_feedback_alignment", {}, 0), ("kolen_pollack", {}, 0),
    ]:
        served[:] = [0, 0]
        model, x, y = make_model("mlp")
        biograd.create_rule(name, model, **hparams).step(x, y)
        assert served == [swaps, 0], name


class Doubled(nn.Linear):
    """A Linear subclass with its own forward: converted through the feedback op."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


def _swap_off_and_on(
    model_fn: Callable[[], nn.Module], x: Tensor, y: Tensor, name: str = "feedback_alignment"
) -> tuple[list[Tensor], list[Tensor]]:
    runs = []
    for swap in (False, True):
        torch.manual_seed(0)
        rule = biograd.create_rule(name, model_fn())
        rule.swap_weights = swap
        rule.step(x, y)
        rule.step(x, y)
        runs.append([p.grad.clone() for p in rule.parameters() if p.grad is not None])
    return runs[0], runs[1]


def _seq(*mods: nn.Module) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(*[m() for m in mods])  # type: ignore[operator]

    return build


@pytest.mark.filterwarnings("ignore:.*weight_norm")
@pytest.mark.parametrize("case", ["subclass", "3d input", "no bias", "weight_norm"])
def test_layers_the_swap_cannot_serve_fall_back_with_the_same_update(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    if case == "subclass":
        build = _seq(lambda: nn.Linear(6, 5), nn.Tanh, lambda: Doubled(5, 3))
    elif case == "3d input":
        x = torch.randn(5, 2, 6)
        build = _seq(lambda: nn.Linear(6, 5), nn.Tanh, lambda: nn.Linear(5, 4), nn.Flatten,
                     lambda: nn.Linear(8, 3))
    elif case == "no bias":
        build = _seq(lambda: nn.Linear(6, 5), nn.Tanh, lambda: nn.Linear(5, 3, bias=False))
    else:
        build = _seq(lambda: nn.Linear(6, 5), nn.Tanh,  # W recomputed by a pre-hook
                     lambda: nn.utils.weight_norm(nn.Linear(5, 3)))
    served = _count_swaps(monkeypatch)
    ref, fast = _swap_off_and_on(build, x, y)
    assert len(ref) == len(fast) > 0
    for a, b in zip(ref, fast, strict=True):
        assert torch.equal(a, b)
    expect = {"subclass": [0, 0], "3d input": [4, 0], "no bias": [2, 0], "weight_norm": [0, 0]}
    assert served == expect[case]


def test_outer_saved_tensor_hooks_turn_the_swap_off_and_still_apply() -> None:
    """A user's saved-tensor hooks around a step (e.g. ``save_on_cpu``) keep their effect on
    every tensor the step saves: the step uses the feedback ops, with the same update."""
    model, x, y = make_model("mlp")
    xb, yb = _batches(x, y, 1)[0]
    runs = []
    for swap in (False, True):
        packed = [0]

        def pack(t: Tensor, packed: list[int] = packed) -> Tensor:
            packed[0] += 1
            return t

        torch.manual_seed(0)
        rule = biograd.create_rule("feedback_alignment", copy.deepcopy(model))
        rule.swap_weights = swap
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            rule.step(xb, yb)
        runs.append((packed[0], [p.grad for p in rule.parameters()]))
    (n_op, ref), (n_swap, got) = runs
    assert n_swap == n_op > 0
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)
