"""Where and how a network runs: the device, the training precision, the memory layout.

Shared by sampling (``pick_device``) and training (``check_precision``, ``default_channels_last``),
so neither imports the other for it.
"""

from __future__ import annotations

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


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision that this device cannot train in, before anything is written."""
    if precision not in AMP_DTYPES:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {', '.join(AMP_DTYPES)}"
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
