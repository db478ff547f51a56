"""Downsampled ImageNet 32x32 (Chrabaszcz, Loshchilov & Hutter 2017) from the user's npz files.

``load("imagenet32", split, path=DIR)``: ``train`` reads every ``train_data_batch_*.npz`` in
DIR, ``test`` reads ``val_data.npz`` (the official validation set). Each npz holds ``data``
uint8 (N, 3072) in CIFAR's channel-major layout and ``labels`` in 1..1000 (shifted here to
0..999). Files are opened with ``allow_pickle=False``. Normalisation is per channel with the
statistics of all train batches found.
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

URL = "https://image-net.org/download-images.php"


def read_imagenet32_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One ImageNet32 npz batch -> (uint8 images (N, 3, 32, 32), int64 labels 0..999)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data, labels = np.asarray(z["data"]), np.asarray(z["labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not an ImageNet32 npz batch with 'data' and 'labels': {e}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 1 or labels.max() > 1000)):
        raise DataError(f"{path}: 'labels' must be N integers in 1..1000")
    return data.reshape(-1, 3, 32, 32), labels - 1


def _files(root: Path, split: str) -> list[Path]:
    found = sorted(root.glob("train_data_batch_*.npz"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[-1]) if p.stem[-1].isdigit() else 0)
    if split == "test":
        found = [root / "val_data.npz"] if (root / "val_data.npz").is_file() else []
    if not found:
        raise DataError(
            f"ImageNet32 {split} files not found in {root} (need train_data_batch_*.npz for "
            f"train, val_data.npz for test). Download 'Imagenet32' npz files from {URL} and "
            "call load('imagenet32', split, path=DIR)"
        )
    return found


def _key(paths: list[Path]) -> tuple:
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


@lru_cache(maxsize=2)
def _stats(key: tuple) -> tuple[np.ndarray, np.ndarray]:
    return stats_from_counts(sum(channel_counts(read_imagenet32_batch(p)[0]) for p, _, _ in key))


@lru_cache(maxsize=2)
def _load(key: tuple, train_key: tuple, flatten: bool) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_imagenet32_batch(p) for p, _, _ in key]
    images = np.concatenate([p[0] for p in parts])
    x = normalise_uint8(images, *_stats(train_key))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return (x.reshape(len(x), -1) if flatten else x), y


class ImageNet32(Dataset):
    """ImageNet 32x32 read from a user-given folder of npz batches (not fetchable)."""

    info = DatasetInfo("imagenet32", (3, 32, 32), 1000, False,
                       "ImageNet downsampled to 32x32, 1.28M train / 50000 val (split 'test'); "
                       "read from your npz files: load('imagenet32', split, path=DIR)")

    def load(self, split: str, *, data_dir: PathLike | None = None, flatten: bool = False,
             download: bool = True, path: PathLike | None = None,
             **kwargs: Any) -> TensorDataset:
        self.check_split(split)
        self.check_kwargs(self.name, kwargs, ("path",))
        root = self.user_folder(data_dir, path)
        x, y = _load(_key(_files(root, split)), _key(_files(root, "train")), bool(flatten))
        return TensorDataset(x, y)


IMAGENET32 = register_dataset(ImageNet32())
