"""A restricted unpickler for dataset files in pickle format (CIFAR-10's python batches).

Unpickling can run arbitrary code through the globals a pickle names. This unpickler resolves
only the few globals that rebuild numpy arrays (``_reconstruct``, ``ndarray``, ``dtype``,
``scalar``, ``_frombuffer``) and ``_codecs.encode`` (how protocol-2 pickles written by Python 3
store bytes); any other global is refused with a :class:`DataError` naming it.
"""

from __future__ import annotations

import _codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from biograd.core.errors import DataError

try:  # numpy >= 2 moved numpy.core to numpy._core (old pickles still name numpy.core)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _numeric._frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only resolves the numpy globals listed in ``_ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is forbidden (only numpy array reconstruction is "
                "allowed)"
            ) from None


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, so the
    Python 2 era CIFAR batches give ``bytes`` keys such as ``b"data"``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: refused to unpickle: {e}") from e
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: not a readable pickle file: {e}") from e
