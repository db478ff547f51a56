"""Turn the config's dataset keys into in-memory tensors (train, val, test).

Datasets come from :mod:`biograd.data`; the runner batches plain tensors itself (a seeded
permutation per epoch), which makes mid-epoch resume exact and keeps the loop short.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

import biograd.data
from biograd.runner.config import Config


@dataclass
class RunData:
    """Tensors of every split, plus the dataset's input shape and class count."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    val_x: Tensor | None
    val_y: Tensor | None
    input_shape: tuple[int, ...]
    num_classes: int


def tensors(ds: Dataset) -> tuple[Tensor, Tensor]:
    """(inputs, labels) of a TensorDataset, a Subset of one, or any map-style dataset."""
    if hasattr(ds, "tensors"):
        return ds.tensors[0], ds.tensors[1]
    if isinstance(ds, Subset):
        x, y = tensors(ds.dataset)
        idx = torch.as_tensor(list(ds.indices), dtype=torch.long)
        return x[idx], y[idx]
    items = [ds[i] for i in range(len(ds))]  # type: ignore[arg-type]
    return torch.stack([a for a, _ in items]), torch.as_tensor([int(b) for _, b in items])


def load_data(cfg: Config) -> RunData:
    """Load train/test, carve ``val_size`` out of train (seeded), then keep the first
    ``train_subset`` training samples and the first ``test_subset`` test samples."""
    info = biograd.data.dataset_info(cfg.dataset)
    kwargs = dict(data_dir=cfg.data_dir, **cfg.dataset_args)
    train = biograd.data.load(cfg.dataset, "train", **kwargs)
    test = biograd.data.load(cfg.dataset, "test", **kwargs)
    val_x = val_y = None
    if cfg.val_size:
        train, val = biograd.data.train_val_split(train, cfg.val_size, seed=cfg.seed)
        val_x, val_y = tensors(val)
    train_x, train_y = tensors(train)
    test_x, test_y = tensors(test)
    if cfg.train_subset is not None:
        train_x, train_y = train_x[: cfg.train_subset], train_y[: cfg.train_subset]
    if cfg.test_subset is not None:
        test_x, test_y = test_x[: cfg.test_subset], test_y[: cfg.test_subset]
    # shapes from the tensors themselves (dataset_args may change them, e.g. for synthetic)
    num_classes = max(info.num_classes, int(train_y.max()) + 1 if len(train_y) else 0)
    return RunData(train_x, train_y, test_x, test_y, val_x, val_y, tuple(train_x.shape[1:]),
                   num_classes)


#: share of the GPU's free memory the training set may take to be kept on the device
DEVICE_SHARE = 0.25


def on_device_if_it_fits(x: Tensor, y: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """The training set moved to ``device`` once when it takes at most ``DEVICE_SHARE`` of the
    GPU's free memory (batches are then indexed there, with no copy per step); otherwise, and
    on the CPU, the host tensors as they are (each batch is moved when it is used)."""
    if device.type != "cuda":
        return x, y
    free, _ = torch.cuda.mem_get_info(device)
    size = x.numel() * x.element_size() + y.numel() * y.element_size()
    if size > DEVICE_SHARE * free:
        return x, y
    return x.to(device), y.to(device)
