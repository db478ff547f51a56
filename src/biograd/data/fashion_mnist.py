"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60k/10k 28x28 grey clothing images, 10 classes.

Sources in order: the Debian package ``dataset-fashion-mnist`` (gzipped IDX files under
``usr/share/datasets/fashion-mnist/``), then the authors' public download. Checksums: SHA-256
of the uncompressed IDX content (the Debian gzip files differ byte-wise, their content not).
"""

from __future__ import annotations

from biograd.data.idx_dataset import IdxDataset
from biograd.data.mnist import SPLITS
from biograd.data.registry import DatasetInfo, register_dataset
from biograd.data.sources import AptSource, UrlSource

FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

FASHION_MNIST = register_dataset(IdxDataset(
    info=DatasetInfo("fashion_mnist", (1, 28, 28), 10, True,
                     "Fashion-MNIST clothing images, 60000 train / 10000 test, 28x28 grey"),
    files=FILES,
    split_files=SPLITS,
    sources=[
        AptSource("dataset-fashion-mnist", "usr/share/datasets/fashion-mnist/"),
        UrlSource("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    ],
))
