"""biograd.runner: config (defaults <- YAML <- --key=value), the training loop, comparisons,
run directories and the ``biograd`` command line.

Use ``from biograd.runner.train import train`` and ``from biograd.experiments.compare import
compare`` (the functions share their modules' names, so the package does not re-export them).
Names are imported lazily so ``biograd --help`` does not pay for matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Config": "config", "load_config": "config", "MODELS": "models", "ModelEntry": "models",
    "build_model": "models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'biograd.runner' has no attribute {name!r}")
    return getattr(importlib.import_module(f"biograd.runner.{_EXPORTS[name]}"), name)
