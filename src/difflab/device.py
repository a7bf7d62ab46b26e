"""Where and how a network runs: the device, the training precision, the memory layout.

Shared by sampling (``pick_device``) and training (``check_precision``, ``auto_precision``,
``default_channels_last``), so neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    return device


AMP_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

# The CPU features the precision rule looks at, under the names of Linux's /proc/cpuinfo flags
# (torch.cpu.get_capabilities() uses the same names).
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")


def cpu_flags() -> frozenset[str]:
    """Which of ``CPU_FLAGS`` this CPU has: torch's cpuinfo probe (``torch.cpu.get_capabilities``,
    in recent torch), else the flags line of /proc/cpuinfo (Linux), else none."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        capabilities = get_capabilities()
        return frozenset(name for name in CPU_FLAGS if capabilities.get(name) is True)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(set(line.split(":", 1)[1].split()) & set(CPU_FLAGS))
    return frozenset()


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``--precision auto`` trains in on ``device``, and why: ``(precision, reason)``.

    bf16 autocast where it was measured faster than fp32 for difflab's networks:

    - a CPU with Intel AMX (``amx_bf16`` and ``amx_tile``), whose tiles oneDNN uses for bf16
      convolutions and matrix products; fp32 on every other CPU, AVX512-BF16 without AMX included
      (on an AMD EPYC with AVX-512 and no AMX the default U-Net's bf16 step ran at 0.81x of fp32:
      docs/training.md);
    - not on a GPU, measured: the default MNIST U-Net leaves even an H200 waiting on the host,
      and there its bf16 step ran at 0.81x of fp32 at batch 256 and 0.90x at 1024
      (docs/training.md, "Speed flags"); older GPUs emulate bf16. ``--precision bf16`` is for a
      network wide enough to keep the tensor cores busy.
    - fp32 on anything else (mps: ``check_precision`` refuses bf16 there).

    A fixed rule, not a start-up timing, like ``default_channels_last``: the same machine and
    seed must give the same weights. benchmarks/precision.py measures what it rests on.
    """
    if device.type == "cpu":
        flags = cpu_flags()
        if {"amx_bf16", "amx_tile"} <= flags:
            return "bf16", "auto: this CPU has AMX bf16 matrix units"
        if "avx512_bf16" in flags:
            return "fp32", "auto: this CPU has AVX512-BF16 but no AMX"
        return "fp32", "auto: this CPU has no AMX bf16 matrix units"
    if device.type == "cuda":
        return (
            "fp32",
            "auto: on a GPU the default network's bf16 step was slower (0.81x on an H200)",
        )
    return "fp32", f"auto: fp32 on {device.type}"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision that this device cannot train in, before anything is written.

    ``auto`` is always possible: ``auto_precision`` picks one the device can do."""
    if precision == "auto":
        return
    if precision not in AMP_DTYPES:
        raise ValueError(
            f"unknown precision {precision!r}; expected auto or one of {', '.join(AMP_DTYPES)}"
        )
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"--precision fp16 needs a CUDA GPU (it scales the loss with a CUDA GradScaler), "
            f"not device {device}; use --precision bf16 or fp32"
        )
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"--precision bf16 runs on cpu or cuda, not {device}; use fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16 is not supported by this GPU; use fp16 or fp32")


def default_channels_last(device: torch.device) -> bool:
    """The memory layout when --channels-last is not given: NHWC on a CPU with AVX-512, else NCHW.

    oneDNN's NHWC convolutions pay off where it has AVX-512 kernels: 1.03x of NCHW on an AMD EPYC
    with AVX-512 and 1.31x on an Intel Xeon, but 0.97x on an AMD Zen3 without it
    (docs/benchmarks.md). A rule, not a start-up timing: timing noise must not pick the layout,
    since the two layouts sum in different orders and the same seed must give the same weights.
    On a GPU NCHW, as PyTorch's default (pass --channels-last with --precision bf16/fp16).
    """
    if device.type != "cpu":
        return False
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
