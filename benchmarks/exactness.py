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

import torch

from biograd.papers.p5_measure import architectures, max_rel_diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | float32 | float64 | float64, full PC dynamics | float64, levelling=False | "
          "float64, gamma=0.5 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, maker in architectures(args.batch).items():
        f32 = max_rel_diff(maker, torch.float32)
        f64 = max_rel_diff(maker, torch.float64)
        full = max_rel_diff(maker, torch.float64, exact_shortcut=False)
        nolev = max_rel_diff(maker, torch.float64, levelling=False)
        gam = max_rel_diff(maker, torch.float64, gamma=0.5)
        print(f"| {name} | {f32:.2e} | {f64:.2e} | {full:.2e} | {nolev:.2e} | {gam:.2e} |",
              flush=True)


if __name__ == "__main__":
    main()
