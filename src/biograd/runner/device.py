"""Where a run computes: the ``device`` and ``dist_backend`` config keys.

``device`` is ``cpu`` (the default), ``cuda`` (under torchrun: ``cuda:LOCAL_RANK``, one GPU per
process), ``cuda:N`` or ``auto`` (``cuda`` when a GPU is visible, else ``cpu``). The model and
the rule live on that device; the training set is moved there once when it fits
(:func:`biograd.runner.data.on_device_if_it_fits`), else each batch is moved when it is used.
``dist_backend`` ``auto`` picks NCCL for CUDA runs and gloo for CPU runs (gloo also reduces CUDA
tensors, e.g. for several processes sharing one GPU).

Rules draw their randomness from their own CPU generator and move it to the device, so a run
draws the same noise on every device and resumes identically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from biograd.core.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
BACKENDS = ("auto", "gloo", "nccl")


def check_device_name(name: str) -> None:
    """ConfigError unless ``name`` is ``cpu``, ``auto``, ``cuda`` or ``cuda:N``."""
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(
            f"config key 'device': unknown device {name!r}. Valid: cpu, cuda, cuda:N "
            f"(a GPU index), auto (cuda if a GPU is visible, else cpu)."
        )


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` a run uses (ConfigError if a GPU is asked for and none is usable).

    Under torchrun (``local_rank`` given) plain ``cuda`` means this process's GPU,
    ``cuda:LOCAL_RANK``.
    """
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'device' is {name!r} but PyTorch sees no CUDA device "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
            f"use --device=cpu, or install a CUDA build of PyTorch on a machine with a GPU"
        )
    index = int(name.split(":")[1]) if ":" in name else (local_rank or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"config key 'device' is {name!r} (GPU {index}) but only {count} CUDA device(s) "
            f"are visible" + (f" (LOCAL_RANK={local_rank}: use at most {count} processes per "
                              f"node)" if local_rank is not None else "")
        )
    return torch.device("cuda", index)


def backend_for(device: torch.device, requested: str) -> str:
    """The process-group backend: ``requested`` unless ``auto`` (NCCL on CUDA, else gloo)."""
    if requested not in BACKENDS:
        raise ConfigError(f"config key 'dist_backend': unknown backend {requested!r}. "
                          f"Valid: {', '.join(BACKENDS)}.")
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise ConfigError("config key 'dist_backend' is 'nccl' but device is 'cpu': NCCL "
                          "reduces GPU tensors only; use --dist_backend=gloo or --device=cuda")
    return requested


#: environment variable a parallel grid sets in each worker: how many runs share the machine
JOBS_ENV = "BIOGRAD_JOBS"


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_count(threads: int) -> int:
    """torch's thread count for a run: ``threads`` if set, else the cores given to this process
    divided among the runs sharing them: ``BIOGRAD_JOBS`` parallel grid runs (``--jobs``)
    times torchrun's ``LOCAL_WORLD_SIZE`` processes on this node (at least 1)."""
    if threads:
        return threads
    share = 1
    for var in (JOBS_ENV, "LOCAL_WORLD_SIZE"):
        value = os.environ.get(var, "1")
        share *= int(value) if value.isdigit() and int(value) > 0 else 1
    return max(1, available_cores() // share)


def local_rank() -> int | None:
    """torchrun's ``LOCAL_RANK`` (None outside torchrun)."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None and value.isdigit() else None


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (CPU if it has none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """``torch.random.fork_rng`` over the CPU generator and, on CUDA, ``device``'s generator:
    what runs inside leaves the run's random streams untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        yield
