"""Deterministic train/validation split of a TensorDataset."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from biograd.core.errors import ConfigError


def train_val_split(dataset: TensorDataset, val_size: int | float,
                    seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Split ``dataset`` into disjoint (train, val) TensorDatasets.

    ``val_size`` is a count (int, 1..N-1) or a fraction (float in (0, 1), rounded to the
    nearest count, which must be 1..N-1). The validation indices are the first ``val_size`` of a
    permutation drawn from ``seed``; both parts keep the original order of their samples.
    """
    if not isinstance(dataset, TensorDataset):
        raise ConfigError(f"train_val_split needs a TensorDataset, got {type(dataset).__name__}")
    n = len(dataset)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ConfigError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ConfigError(f"val_size as a fraction must lie in (0, 1), got {val_size!r}")
        k = round(n * val_size)
    else:
        k = val_size
    if not 1 <= k <= n - 1:
        raise ConfigError(f"val_size={val_size!r} gives {k} validation samples out of {n}; "
                          f"both parts need at least one sample (1 <= count <= {n - 1})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:k].sort().values, perm[k:].sort().values
    return (TensorDataset(*(t[train_idx] for t in dataset.tensors)),
            TensorDataset(*(t[val_idx] for t in dataset.tensors)))
