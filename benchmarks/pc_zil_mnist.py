"""MNIST, 3 epochs, seed 0: backprop vs zil vs predictive_coding (T=20) on a tanh MLP.

Usage: python benchmarks/pc_zil_mnist.py backprop zil predictive_coding
Z-IL's updates equal backprop's, so for the same seed its accuracy must match backprop's.
"""

from __future__ import annotations

import sys
import time

import torch

import biograd
import biograd.data as D


def main(rules: list[str], epochs: int = 3) -> None:
    torch.set_num_threads(1)
    xtr, ytr = D.load("mnist", "train", flatten=True).tensors
    xte, yte = D.load("mnist", "test", flatten=True).tensors
    for name in rules:
        torch.manual_seed(0)
        model = biograd.models.mlp(784, [256, 256], 10, activation="tanh")
        rule = biograd.create_rule(name, model)
        opt = torch.optim.Adam(rule.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        t0 = time.time()
        for ep in range(epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), 64):
                idx = perm[i : i + 64]
                opt.zero_grad(set_to_none=True)
                rule.step(xtr[idx], ytr[idx])
                opt.step()
            acc = (rule.predict(xte).argmax(1) == yte).float().mean().item() * 100
            print(f"{name} epoch {ep + 1} test_acc {acc:.2f} elapsed {time.time() - t0:.0f}s",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["backprop", "zil", "predictive_coding"])
