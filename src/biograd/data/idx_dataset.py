"""Datasets distributed as IDX files (MNIST, Fashion-MNIST, or a user's own spec)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from biograd.core.errors import DataError
from biograd.data.fetching import fetch_files
from biograd.data.idx import read_idx
from biograd.data.normalise import normalise_uint8, uint8_stats
from biograd.data.registry import Dataset, DatasetInfo, PathLike
from biograd.data.sources import LocalDirSource, Source
from biograd.data.storage import data_dir as resolve_data_dir
from biograd.data.storage import stamp_key, stat_key


@lru_cache(maxsize=4)
def _train_stats(folder: str, train_images: str, key: tuple) -> tuple[np.ndarray, np.ndarray]:
    return uint8_stats(read_idx(Path(folder) / train_images))


@lru_cache(maxsize=8)
def _load_split(folder: str, images: str, labels: str, train_images: str, flatten: bool,
                key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Read, normalise and cache one split; ``key`` (the verification stamp) invalidates."""
    x = read_idx(Path(folder) / images)
    y = read_idx(Path(folder) / labels)
    if x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{folder}: {images} / {labels} are not uint8 images with one label "
                        f"each (got {x.dtype} {x.shape} and {y.shape})")
    mean, std = _train_stats(folder, train_images, key)
    if x.ndim == 3:
        x = x[:, None]
    xt = normalise_uint8(x, mean, std)
    if flatten:
        xt = xt.reshape(len(xt), -1)
    return xt, torch.from_numpy(y.astype(np.int64))


@dataclass(eq=False)
class IdxDataset(Dataset):
    """A dataset of IDX files: ``files`` maps each file name to the SHA-256 of its
    uncompressed content, ``split_files`` maps a split to its (images, labels) file names,
    ``sources`` are tried in order by :meth:`fetch`.

    Images are normalised with the ``"train"`` split's mean and std (one scalar each for
    (N, H, W) images, one per channel for (N, C, H, W)).
    """

    info: DatasetInfo
    files: Mapping[str, str]
    split_files: Mapping[str, tuple[str, str]]
    sources: Sequence[Source] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.splits = tuple(self.split_files)
        names = {f for pair in self.split_files.values() for f in pair}
        if not names <= set(self.files) or "train" not in self.split_files:
            raise ValueError(f"dataset {self.name!r}: split files must be listed in `files` "
                             "and a 'train' split is needed for the normalisation statistics")

    def folder(self, data_dir: PathLike | None = None) -> Path:
        return resolve_data_dir(data_dir) / self.name

    def _hint(self) -> str:
        return ("where one of the sources above can work (install the missing tool or get "
                f"network access), or `{self.fix_command()} --from DIR` / fetch({self.name!r}, "
                f"source_dir=DIR) with a folder holding {', '.join(self.files)}, "
                "plain or .gz")

    def fetch(self, data_dir: PathLike | None = None, force: bool = False, *,
              source_dir: PathLike | None = None) -> Path:
        sources = [LocalDirSource(source_dir)] if source_dir is not None else self.sources
        return fetch_files(self.name, dict(self.files), self.folder(data_dir), sources,
                           force=force, fix=self.fix_command(), hint=self._hint())

    def load(self, split: str, *, data_dir: PathLike | None = None, flatten: bool = False,
             download: bool = True, **kwargs: Any) -> TensorDataset:
        self.check_split(split)
        self.check_kwargs(self.name, kwargs)
        folder = self.folder(data_dir)
        key = stamp_key(folder, dict(self.files))
        if key is None:  # never verified, or changed since: verify (and download if allowed)
            if download:
                self.fetch(data_dir)
            else:
                fetch_files(self.name, dict(self.files), folder, [], fix=self.fix_command(),
                            hint="(or pass download=True)")
            key = stamp_key(folder, dict(self.files)) or stat_key(folder, dict(self.files))
        images, labels = self.split_files[split]
        x, y = _load_split(str(folder), images, labels, self.split_files["train"][0],
                           bool(flatten), key)
        return TensorDataset(x, y)
