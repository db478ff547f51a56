"""The machine a run or a measurement ran on, as stored with it (results store fingerprints,
:meth:`biograd.experiments.paper_report.Context.measure`) and printed in reports."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch


def hardware_info() -> dict[str, Any]:
    """The machine a measurement runs on (stored with it): CPU, threads, CUDA device if any,
    library versions."""
    from biograd import __version__ as version

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": cuda,
            "python": sys.version.split()[0], "torch": torch.__version__,
            "biograd": version}


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu
