"""The machine a benchmark ran on, for the record beside its numbers.

Machines differ from session to session (the same training step has run 3.6x faster on one than
on another), so every benchmark records this rate and compares only within its own run.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

MATMUL_N = 2048


def matmul_gflops(repeats: int = 5) -> float:
    """This machine's fp32 matmul rate: 2 n^3 / the median time of an (n, n) @ (n, n) product."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_N, MATMUL_N, generator=gen) for _ in range(2))
    out = torch.empty(MATMUL_N, MATMUL_N)
    torch.mm(a, b, out=out)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * MATMUL_N**3 / statistics.median(times) / 1e9


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what Python's platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The device's name for the record: the GPU's model, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
