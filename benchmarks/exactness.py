"""Z-IL's exactness table (P5, Table 1): max relative difference between Z-IL's parameter
updates and autograd's gradients, max over parameters of max|dW_zil - dW_bp| / max|dW_bp|.

Columns: the default frontier schedule in float32 / float64; the full PC dynamics under
C1-C3 (every vertex relaxed every step, exact_shortcut=False); and two broken conditions
(no levelling; gamma = 0.5 instead of 1), which run the full dynamics too. The gamma = 1
dynamics grow without bound behind the error wave, so on long graphs (LSTM, transformer)
they can overflow to inf/nan; the frontier schedule never evaluates those vertices.

Run: OMP_NUM_THREADS=1 python benchmarks/exactness.py [--batch 16]
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

import biograd
from biograd.metrics.alignment import max_relative_difference
from biograd.models.sequence import lstm_classifier, rnn_classifier, transformer_block_classifier

Maker = Callable[[], tuple[nn.Module, Tensor, Tensor]]


def _batch(shape: tuple[int, ...], n_classes: int = 10, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randint(0, n_classes, (shape[0],), generator=g)


def models(batch: int = 64) -> dict[str, Maker]:
    """name -> () -> (model, x, y); seeded, so every call builds the same model and batch."""

    def mk(build: Callable[[], nn.Module], shape: tuple[int, ...]) -> Maker:
        def make() -> tuple[nn.Module, Tensor, Tensor]:
            torch.manual_seed(0)
            return (build(), *_batch((batch, *shape)))
        return make

    return {
        "MLP": mk(lambda: biograd.models.mlp(784, [256, 256], 10, activation="tanh"), (784,)),
        "CNN": mk(lambda: biograd.models.lenet(1, 10, 28, channels=(8, 16), hidden=128),
                  (1, 28, 28)),
        "RNN": mk(lambda: rnn_classifier(28, 64, 10, 28), (28, 28)),
        "LSTM": mk(lambda: lstm_classifier(28, 64, 10, 28), (28, 28)),
        "ResNet": mk(lambda: biograd.models.ResNet((1, 1), 3, 10, width=8), (3, 16, 16)),
        "transformer": mk(lambda: transformer_block_classifier(28, 32, 4, 10, 28), (28, 28)),
    }


def max_rel_diff(maker, dtype: torch.dtype, **hparams) -> float:
    model, x, y = maker()
    model, x = model.to(dtype), x.to(dtype)
    ref = copy.deepcopy(model)
    biograd.create_rule("backprop", ref).step(x, y)
    biograd.create_rule("zil", model, **hparams).step(x, y)
    return max(max_relative_difference(p.grad, q.grad)
               for p, q in zip(model.parameters(), ref.parameters(), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | float32 | float64 | float64, full PC dynamics | float64, levelling=False | "
          "float64, gamma=0.5 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, maker in models(args.batch).items():
        f32 = max_rel_diff(maker, torch.float32)
        f64 = max_rel_diff(maker, torch.float64)
        full = max_rel_diff(maker, torch.float64, exact_shortcut=False)
        nolev = max_rel_diff(maker, torch.float64, levelling=False)
        gam = max_rel_diff(maker, torch.float64, gamma=0.5)
        print(f"| {name} | {f32:.2e} | {f64:.2e} | {full:.2e} | {nolev:.2e} | {gam:.2e} |",
              flush=True)


if __name__ == "__main__":
    main()
