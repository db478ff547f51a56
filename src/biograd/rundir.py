"""The run directory: config.yaml, metrics.csv, checkpoint.pt, summary.json.

Checkpoints are written atomically (temp file + fsync + ``os.replace``), so an interrupted
write never leaves a truncated ``checkpoint.pt``; the last k are kept (``checkpoint.1.pt``, ...)
and their SHA-256 digests listed in ``checkpoints.json``. They hold only tensors and plain Python
values and are read back with ``torch.load(weights_only=True)``; resuming falls back to the
newest file that reads and verifies (:func:`load_latest_checkpoint`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biograd.core.errors import CheckpointError, ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.csv"
ALIGNMENT = "alignment.csv"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
MANIFEST = "checkpoints.json"


def prepare(run_dir: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Create ``run_dir``; an existing one is an error unless ``overwrite`` (replace it) or
    ``resume`` (keep it)."""
    check_prepare(run_dir, overwrite=overwrite, resume=resume)
    if run_dir.exists() and not resume:
        if run_dir.is_dir():
            shutil.rmtree(run_dir)
        else:
            run_dir.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def check_prepare(run_dir: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """The error :func:`prepare` would raise, without touching the disk."""
    if run_dir.exists() and not resume and not overwrite:
        raise ConfigError(
            f"run directory {str(run_dir)!r} already exists; pass --overwrite to replace it, "
            f"--resume {run_dir} to continue it, or choose another --run_name"
        )


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, newest first: ``checkpoint.pt``, ``checkpoint.1.pt``, ..."""
    older = sorted((p for p in run_dir.glob("checkpoint.*.pt") if p.stem[11:].isdigit()),
                   key=lambda p: int(p.stem[11:]))
    return [p for p in [run_dir / CHECKPOINT, *older] if p.is_file()]


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _manifest(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"digests": []}
    ok = isinstance(data, dict) and isinstance(data.get("digests"), list)
    return data if ok else {"digests": []}


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int = 1) -> None:
    """Write ``state`` as ``run_dir/checkpoint.pt``, keeping the ``keep - 1`` previous ones as
    ``checkpoint.1.pt`` (newest) ... ``checkpoint.<keep-1>.pt``.

    Crash-safe order: the new file is written and fsynced under a temporary name, its SHA-256
    is added to ``checkpoints.json`` (the digests of the files kept, checked on load), the older
    files are shifted down, and the temporary file is renamed into place. A kill at any point
    leaves every kept file intact and listed.
    """
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    _atomic_write(tmp, lambda fh: torch.save(state, fh))
    digest = _digest(tmp)
    files = checkpoint_files(run_dir)[: max(keep - 1, 0)]
    old = (_manifest(run_dir) or {"digests": []})["digests"]
    # newest first; a few extra entries cover a kill between this write and the renames
    write_json(run_dir / MANIFEST, {"digests": [digest, *old][: 2 * keep + 1]})
    for path in checkpoint_files(run_dir)[len(files):]:
        if path.name != CHECKPOINT:
            path.unlink()  # beyond the last k
    for i in range(len(files) - 1, -1, -1):  # oldest first, so no rename overwrites a kept file
        os.replace(files[i], run_dir / f"checkpoint.{i + 1}.pt")
    os.replace(tmp, run_dir / CHECKPOINT)
    _fsync_dir(run_dir)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: Path, digests: list[str] | None = None) -> dict[str, Any]:
    """Read one checkpoint file (``weights_only``) and check it; CheckpointError if it is
    truncated, tampered with (its SHA-256 is not among ``digests``, when given) or not a
    biograd run checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {str(path)!r} does not exist")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # truncated, tampered with, or not a torch file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {msg}") from None
    if digests is not None and _digest(path) not in digests:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was modified after it was written "
            f"(its SHA-256 is not in {MANIFEST}; delete that file to skip this check if "
            f"you trust the checkpoint)"
        )
    if not isinstance(state, dict) or "epoch" not in state or "rule" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a biograd run checkpoint")
    return state


def load_latest_checkpoint(
    run_dir: Path,
) -> tuple[dict[str, Any], Path, list[tuple[Path, str]]]:
    """The newest good checkpoint of ``run_dir``: ``(state, path, refused)`` where ``refused``
    lists each newer file that was skipped and why. CheckpointError if none is good."""
    files = checkpoint_files(run_dir)
    if not files:
        raise CheckpointError(
            f"no checkpoint to resume from: {str(run_dir / CHECKPOINT)!r} does not exist")
    manifest = _manifest(run_dir)
    digests = None if manifest is None else manifest["digests"]
    refused: list[tuple[Path, str]] = []
    for path in files:
        try:
            return read_checkpoint(path, digests), path, refused
        except CheckpointError as exc:
            refused.append((path, str(exc)))
    raise CheckpointError(f"no usable checkpoint in {str(run_dir)!r}: "
                          + "; ".join(why for _, why in refused))


def set_aside(paths: list[Path]) -> None:
    """Rename refused checkpoints to ``NAME.refused`` so rotation never keeps them."""
    for path in paths:
        if path.is_file():
            os.replace(path, path.with_name(path.name + ".refused"))


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The newest good checkpoint of ``run_dir`` (see :func:`load_latest_checkpoint`)."""
    return load_latest_checkpoint(run_dir)[0]


def host_rng_state() -> dict[str, Any]:
    """Python's and NumPy's global RNG states in a ``weights_only``-loadable form."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python_rng": random.getstate(),
            "numpy_rng": [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                          int(has_gauss), float(gauss)]}


def set_host_rng_state(python: Any, numpy: list[Any]) -> None:
    """Restore what :func:`host_rng_state` saved."""
    version, internal, gauss = python
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = numpy
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as indented JSON."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str).encode()
    _atomic_write(path, lambda fh: fh.write(text))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV; columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_rows`; numeric cells become floats, blanks None."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _num(value: str) -> Any:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value
