"""A learnable synthetic classification set: class-dependent Gaussian clusters.

Each class ``k`` has a mean ``mu_k ~ N(0, I)`` drawn from ``seed``; a sample of class ``k`` is
``x = (separation * mu_k + eps) / sqrt(1 + separation**2)`` with ``eps ~ N(0, I)``, so every
coordinate has unit variance over the data distribution and the Bayes classifier is linear.
Labels are balanced (``n // num_classes`` or one more per class) and shuffled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import TensorDataset

from biograd.core.errors import ConfigError
from biograd.data.registry import Dataset, DatasetInfo, PathLike, register_dataset

_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}
_MIX = 0x9E3779B97F4A7C15  # odd constant decorrelating the means' and samples' generators


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"dataset 'synthetic': {name} must be an integer >= {low}, "
                          f"got {value!r}")
    return value


def synthetic(n: int = 512, input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 4,
              seed: int = 0, flatten: bool = False, *, sample_seed: int | None = None,
              separation: float = 1.0) -> TensorDataset:
    """``n`` samples of ``num_classes`` Gaussian clusters in ``input_shape``.

    ``seed`` fixes the class means (the task); ``sample_seed`` (default ``seed``) fixes the
    samples, so different splits of one task share means and differ in samples.
    """
    n, num_classes = _int("n", n, 1), _int("num_classes", num_classes, 2)
    seed = _int("seed", seed, 0)
    sample_seed = seed if sample_seed is None else _int("sample_seed", sample_seed, 0)
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ConfigError(f"dataset 'synthetic': input_shape must be positive integers, "
                          f"got {input_shape!r}")
    if isinstance(separation, bool) or not isinstance(separation, (int, float)) or separation < 0:
        raise ConfigError(f"dataset 'synthetic': separation must be a number >= 0, "
                          f"got {separation!r}")
    dim = math.prod(shape)
    means = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed((sample_seed * _MIX + 1) % 2**63)
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    x = (separation * means[y] + torch.randn(n, dim, generator=g)) / math.sqrt(1 + separation**2)
    return TensorDataset(x if flatten else x.reshape(n, *shape), y)


class Synthetic(Dataset):
    """``load("synthetic", split, n=..., seed=..., ...)``: a fixed sample seed per split."""

    info = DatasetInfo("synthetic", (1, 8, 8), 4, False,
                       "Gaussian clusters generated in memory (no files); options: n, "
                       "input_shape, num_classes, seed, separation")
    splits = tuple(_SPLIT_OFFSETS)

    def load(self, split: str, *, data_dir: PathLike | None = None, flatten: bool = False,
             download: bool = True, **kwargs: Any) -> TensorDataset:
        self.check_split(split)
        self.check_kwargs(self.name, kwargs, ("n", "input_shape", "num_classes", "seed",
                                              "separation"))
        seed = _int("seed", kwargs.pop("seed", 0), 0)
        return synthetic(seed=seed, flatten=flatten,
                         sample_seed=seed + 1_000_003 * _SPLIT_OFFSETS[split], **kwargs)


SYNTHETIC = register_dataset(Synthetic())
