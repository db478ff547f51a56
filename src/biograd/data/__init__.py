"""biograd.data: datasets by name, fetched with checksums, loaded as normalised tensors.

Usage::

    from biograd import data
    data.list_datasets()                         # ['cifar10', 'fashion_mnist', 'mnist', ...]
    train = data.load("mnist", "train")          # fetches into data_dir()/mnist on first use
    train, val = data.train_val_split(train, 5000)
    test = data.load("cifar10", "test", path="~/cifar-10-batches-py")
    toy = data.load("synthetic", "train", n=256, seed=1)

See docs/data.md for the sources, the cache folder and the checksum policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import TensorDataset

from biograd.data import (  # noqa: F401 (importing a dataset module registers it)
    cifar10,
    fashion_mnist,
    gaussian_clusters,
    imagenet32,
    mnist,
)
from biograd.data.cifar10 import read_cifar_batch
from biograd.data.gaussian_clusters import synthetic
from biograd.data.idx import read_idx, write_idx
from biograd.data.idx_dataset import IdxDataset
from biograd.data.imagenet32 import read_imagenet32_batch
from biograd.data.normalise import uint8_stats
from biograd.data.registry import (
    Dataset,
    DatasetInfo,
    PathLike,
    dataset_info,
    get_dataset,
    list_datasets,
    register_dataset,
)
from biograd.data.safe_pickle import safe_load
from biograd.data.sources import (
    AptSource,
    LocalDirSource,
    NpmSource,
    Source,
    SourceUnavailable,
    UrlSource,
)
from biograd.data.split import train_val_split
from biograd.data.storage import data_dir


def fetch(name: str | Dataset, data_dir: PathLike | None = None, force: bool = False, *,
          source_dir: PathLike | None = None) -> Path:
    """Download and verify dataset ``name`` into ``data_dir()/name``; return that folder.

    Idempotent: files already there with the right SHA-256 are kept (``force=True`` fetches
    them again). ``source_dir`` takes the files from a local folder instead of the network.
    Raises DataError (naming the fix) when no source gives verified files.
    """
    return get_dataset(name).fetch(data_dir, force, source_dir=source_dir)


def load(name: str | Dataset, split: str = "train", *, data_dir: PathLike | None = None,
         flatten: bool = False, download: bool = True, **kwargs: Any) -> TensorDataset:
    """Split ``split`` of dataset ``name`` as a TensorDataset ``(x float32, y int64)``.

    ``x`` is ``(x / 255 - mean) / std`` with the dataset's own train statistics, shaped
    ``(N, C, H, W)`` or ``(N, C*H*W)`` with ``flatten``. Fetchable datasets are fetched when
    missing if ``download``. Extra options go to the dataset (``path=`` for cifar10 and
    imagenet32; ``n=``, ``seed=`` ... for synthetic). Loaded tensors are cached per process
    and shared between calls: do not modify them in place.
    """
    return get_dataset(name).load(split, data_dir=data_dir, flatten=flatten,
                                  download=download, **kwargs)


__all__ = [
    "AptSource",
    "Dataset",
    "DatasetInfo",
    "IdxDataset",
    "LocalDirSource",
    "NpmSource",
    "Source",
    "SourceUnavailable",
    "UrlSource",
    "data_dir",
    "dataset_info",
    "fetch",
    "get_dataset",
    "list_datasets",
    "load",
    "read_cifar_batch",
    "read_idx",
    "read_imagenet32_batch",
    "register_dataset",
    "safe_load",
    "synthetic",
    "train_val_split",
    "uint8_stats",
    "write_idx",
]
