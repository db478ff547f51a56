"""Reader and writer of the IDX format of LeCun et al.'s MNIST distribution.

Format (http://yann.lecun.com/exdb/mnist/): 2 zero bytes, one type byte (0x08 uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), one byte ``ndim``, then
``ndim`` big-endian uint32 sizes, then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from biograd.core.errors import DataError
from biograd.data.storage import is_gzip

_CODES: dict[int, str] = {
    0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"
}
_DTYPES: dict[str, int] = {np.dtype(v).newbyteorder(">").str[1:]: k for k, v in _CODES.items()}


def _header(head: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse an IDX header; returns (dtype, shape, header length in bytes)."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _CODES:
        raise DataError(f"{path}: not an IDX file (bad magic {head[:4].hex()!r})")
    ndim = head[3]
    end = 4 + 4 * ndim
    if len(head) < end:
        raise DataError(f"{path}: truncated IDX header ({len(head)} bytes, need {end})")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.dtype(_CODES[head[2]]), shape, end


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (uncompressed or gzipped) into a native-endian numpy array.

    Raises :class:`DataError` on a bad magic number or a length that does not match the
    header (a truncated or padded file).
    """
    path = Path(path)
    body: memoryview | None = None
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as f:
                raw = f.read()
            dtype, shape, start = _header(raw[: 4 + 4 * 255], path)
            body = memoryview(raw)[start:]
            size = len(body)
        else:
            with open(path, "rb") as f:
                dtype, shape, start = _header(f.read(4 + 4 * 255), path)
            size = path.stat().st_size - start
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read IDX file: {e}") from e
    count = int(np.prod(shape, dtype=np.int64))
    if size != count * dtype.itemsize:
        raise DataError(
            f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} data bytes) but "
            f"the file holds {size}; the file is truncated or corrupt (fetch it again)"
        )
    if body is not None:
        data = np.frombuffer(body, dtype=dtype, count=count).copy()
    else:
        data = np.fromfile(path, dtype=dtype, count=count, offset=start)
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (gzipped with ``compress``); returns the path."""
    array = np.asarray(array)
    key = array.dtype.newbyteorder(">").str[1:]
    if key not in _DTYPES:
        raise DataError(f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, "
                        "int16, int32, float32, float64")
    if array.ndim > 255:
        raise DataError(f"IDX cannot store {array.ndim} dimensions (at most 255)")
    head = bytes([0, 0, _DTYPES[key], array.ndim])
    head += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    body = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes()
    path = Path(path)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(head + body)
    return path
