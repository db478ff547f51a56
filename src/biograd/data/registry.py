"""The dataset registry: each dataset is a :class:`Dataset` object registered by name.

A dataset module (``mnist.py``, ``cifar10.py``, ...) builds one object and calls
:func:`register_dataset`; :mod:`biograd.data` imports every such module.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import TensorDataset

from biograd.core.errors import ConfigError, DataError, unknown_name
from biograd.data.storage import data_dir as data_dir_

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its samples' shape ``(C, H, W)``, classes, and whether
    :func:`biograd.data.fetch` can obtain it."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    fetchable: bool
    description: str


class Dataset(ABC):
    """A named dataset: ``load`` returns a split as a TensorDataset (x float32, y int64)."""

    info: DatasetInfo
    splits: tuple[str, ...] = ("train", "test")

    @property
    def name(self) -> str:
        return self.info.name

    def fix_command(self) -> str:
        """The shell command that makes this dataset available."""
        return f"biograd data fetch {self.name}"

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigError(
                f"dataset {self.name!r} has no split {split!r}; choose one of "
                f"{', '.join(map(repr, self.splits))}"
            )

    @staticmethod
    def check_kwargs(name: str, kwargs: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
        bad = sorted(set(kwargs) - set(allowed))
        if bad:
            extra = f"; it accepts {', '.join(allowed)}" if allowed else ""
            raise ConfigError(f"dataset {name!r}: unknown option(s) {', '.join(bad)}{extra}")

    def user_folder(self, data_dir: PathLike | None, path: PathLike | None) -> Path:
        """``path`` if given, else ``data_dir()/name`` (datasets read from the user's files)."""
        return Path(path).expanduser() if path is not None else data_dir_(data_dir) / self.name

    def fetch(self, data_dir: PathLike | None = None, force: bool = False, *,
              source_dir: PathLike | None = None) -> Path:
        """Obtain the files into ``data_dir/name`` (only fetchable datasets)."""
        raise DataError(f"dataset {self.name!r} cannot be fetched: {self.info.description}")

    @abstractmethod
    def load(self, split: str, *, data_dir: PathLike | None, flatten: bool, download: bool,
             **kwargs: Any) -> TensorDataset:
        """The split as a TensorDataset of (x float32 normalised, y int64)."""


_REGISTRY: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    """Add ``dataset`` under ``dataset.info.name`` (a name may be registered once)."""
    if dataset.name in _REGISTRY and _REGISTRY[dataset.name] is not dataset:
        raise ConfigError(f"dataset {dataset.name!r} is already registered")
    _REGISTRY[dataset.name] = dataset
    return dataset


def get_dataset(name: str | Dataset) -> Dataset:
    """The registered dataset called ``name`` (a :class:`Dataset` is returned unchanged)."""
    if isinstance(name, Dataset):
        return name
    if name not in _REGISTRY:
        raise unknown_name("dataset", str(name), _REGISTRY)
    return _REGISTRY[name]


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name``."""
    return get_dataset(name).info
