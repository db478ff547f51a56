"""The machine a run or a measurement ran on, as stored with it (results store fingerprints,
:meth:`biograd.experiments.paper_report.Context.measure`) and printed in reports, and how fast
it was at the time (:func:`machine_speed`, stored with timing measurements)."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from biograd.metrics.cost import device_sync


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


def _per_call(fn: Callable[[], object], sync: Callable[[], None], repeats: int,
              block: float = 0.01) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` blocks of about ``block`` seconds."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    n = max(1, min(10_000, round(block / max(time.perf_counter() - t0, 1e-7))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def machine_speed(device: str = "cpu", repeats: int = 5) -> dict[str, float]:
    """How fast this machine runs, at the current torch thread count, the three kinds of work a
    learning rule's step is made of, so that cost ratios measured on different days or machines
    can be read against each other (a rule dominated by large products moves with the GEMM
    speed, backprop's small-product step with latency; see docs/results.md, issue 15):

    - ``gemm_gflops``: a 256 x 256 by 256 x 64 product (an MLP layer at batch 64), GFLOP/s;
    - ``gemm_peak_gflops``: a 512 x 512 by 512 x 512 product, GFLOP/s;
    - ``tanh_ns``: ``tanh`` over 256 x 256 floats, nanoseconds per element;
    - ``small_op_us``: an in-place add on 64 floats, microseconds per call (dispatch latency).

    Medians of ``repeats`` blocks of about 10 ms each (about 0.3 s in all), float32."""
    dev = torch.device(device)
    sync = device_sync(dev) or (lambda: None)
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=dev)

    a, b, c, out = rand(256, 256), rand(256, 64), rand(256, 64), rand(256, 64)
    p, q, r = rand(512, 512), rand(512, 512), rand(512, 512)
    t, t_out, s = rand(256, 256), rand(256, 256), rand(64)
    with torch.no_grad():
        small = _per_call(lambda: torch.addmm(c, a, b, out=out), sync, repeats)
        peak = _per_call(lambda: torch.mm(p, q, out=r), sync, repeats)
        tanh = _per_call(lambda: torch.tanh(t, out=t_out), sync, repeats)
        add = _per_call(lambda: s.add_(1.0), sync, repeats)
    return {"gemm_gflops": round(2 * 256 * 256 * 64 / small / 1e9, 1),
            "gemm_peak_gflops": round(2 * 512**3 / peak / 1e9, 1),
            "tanh_ns": round(tanh / t.numel() * 1e9, 3),
            "small_op_us": round(add * 1e6, 2), "threads": torch.get_num_threads()}


def speed_line(speed: dict[str, Any] | None) -> str:
    """``speed`` (:func:`machine_speed`) as one phrase for reports and benchmark headers."""
    if not speed:
        return "machine speed not recorded"
    return (f"GEMM 256x256x64 {speed['gemm_gflops']:g} GFLOP/s, 512^3 "
            f"{speed['gemm_peak_gflops']:g} GFLOP/s, tanh {speed['tanh_ns']:g} ns/element, "
            f"small op {speed['small_op_us']:g} us ({speed['threads']} "
            f"thread{'s' * (speed['threads'] != 1)})")
