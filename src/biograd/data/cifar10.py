"""CIFAR-10 (Krizhevsky 2009) from the user's copy of the python version.

``load("cifar10", split, path=DIR)`` reads ``data_batch_1`` .. ``data_batch_5`` (train) or
``test_batch`` (test) from DIR (the ``cifar-10-batches-py`` folder, or its parent), or from
``data_dir()/cifar10`` when no path is given. Each batch is a pickled dict with bytes keys:
``b"data"`` uint8 (N, 3072) rows of 1024 red, 1024 green, 1024 blue values (32x32, row-major)
and ``b"labels"`` a list of ints in 0..9. Batches are unpickled with a restricted unpickler.
Images are normalised per channel with the train batches' mean and std.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from biograd.core.errors import DataError
from biograd.data.normalise import channel_counts, normalise_uint8, stats_from_counts
from biograd.data.registry import Dataset, DatasetInfo, PathLike, register_dataset
from biograd.data.safe_pickle import safe_load

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    batch = safe_load(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch)[:6] if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: not a CIFAR-10 batch (need keys b'data', b'labels'; "
                        f"got {keys})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} "
                        f"{data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def find_batches(root: Path, names: tuple[str, ...]) -> list[Path]:
    """Paths of ``names`` in ``root`` or ``root/cifar-10-batches-py``; DataError if absent."""
    for folder in (root, root / "cifar-10-batches-py"):
        if all((folder / n).is_file() for n in names):
            return [folder / n for n in names]
    raise DataError(
        f"CIFAR-10 batches {', '.join(names)} not found in {root} (nor in "
        f"{root / 'cifar-10-batches-py'}). CIFAR-10 is not fetched automatically: download "
        f"'CIFAR-10 python version' from {URL}, extract it, and call "
        f"load('cifar10', split, path='.../cifar-10-batches-py')"
    )


def _key(paths: list[Path]) -> tuple:
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


@lru_cache(maxsize=4)
def _stats(key: tuple) -> tuple[np.ndarray, np.ndarray]:
    counts = sum(channel_counts(read_cifar_batch(p)[0]) for p, _, _ in key)
    return stats_from_counts(counts)


@lru_cache(maxsize=4)
def _load(key: tuple, train_key: tuple, flatten: bool) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_cifar_batch(p) for p, _, _ in key]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = normalise_uint8(images, *_stats(train_key))
    return (x.reshape(len(x), -1) if flatten else x), torch.from_numpy(labels)


class Cifar10(Dataset):
    """CIFAR-10 read from a user-given folder (not fetchable)."""

    info = DatasetInfo("cifar10", (3, 32, 32), 10, False,
                       "CIFAR-10, 50000 train / 10000 test, 32x32 RGB; read from your copy of "
                       "the python version: load('cifar10', split, path=DIR)")
    batches = {"train": TRAIN_BATCHES, "test": TEST_BATCHES}

    def load(self, split: str, *, data_dir: PathLike | None = None, flatten: bool = False,
             download: bool = True, path: PathLike | None = None,
             **kwargs: Any) -> TensorDataset:
        self.check_split(split)
        self.check_kwargs(self.name, kwargs, ("path",))
        root = self.user_folder(data_dir, path)
        files = find_batches(root, self.batches[split])
        train_files = find_batches(root, self.batches["train"])
        x, y = _load(_key(files), _key(train_files), bool(flatten))
        return TensorDataset(x, y)


CIFAR10 = register_dataset(Cifar10())
