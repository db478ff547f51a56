"""The run directory: config.yaml, metrics.csv, checkpoint.pt, summary.json.

Checkpoints are written atomically (temp file + fsync + ``os.replace``), so an interrupted
write never leaves a truncated ``checkpoint.pt``; they hold only tensors and plain Python values
and are read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from biograd.core.errors import CheckpointError, ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.csv"
ALIGNMENT = "alignment.csv"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"


def prepare(run_dir: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Create ``run_dir``; an existing one is an error unless ``overwrite`` (replace it) or
    ``resume`` (keep it)."""
    if run_dir.exists() and not resume:
        if not overwrite:
            raise ConfigError(
                f"run directory {str(run_dir)!r} already exists; pass --overwrite to replace it, "
                f"--resume {run_dir} to continue it, or choose another --run_name"
            )
        if run_dir.is_dir():
            shutil.rmtree(run_dir)
        else:
            run_dir.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` to ``run_dir/checkpoint.pt``."""
    _atomic_write(run_dir / CHECKPOINT, lambda fh: torch.save(state, fh))


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read ``run_dir/checkpoint.pt`` (weights_only); a missing or corrupt file is an error."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {str(path)!r} does not exist")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # truncated, tampered with, or not a torch file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None
    if not isinstance(state, dict) or "epoch" not in state or "rule" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a biograd run checkpoint")
    return state


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
