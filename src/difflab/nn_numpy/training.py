"""Training helpers for the NumPy U-Net: the diffusion loss with its gradients, clipping, one step.

The loss is the one of ``difflab.diffusion.diffusion_loss`` (Ho et al. 2020, Eq. 14, with x0 / v
targets and optional min-SNR weights), built from the same ``q_sample`` and ``training_target``,
which work on NumPy arrays; only the network and its backward pass are NumPy's own.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from difflab.diffusion import min_snr_weight, q_sample, training_target
from difflab.nn_numpy import functional as F
from difflab.nn_numpy.optim import Optimizer
from difflab.nn_numpy.unet import NumpyUNet
from difflab.schedules import Schedule


def loss_and_grads(
    model: NumpyUNet,
    x0: np.ndarray,
    t: np.ndarray,
    eps: np.ndarray,
    schedule: Schedule,
    prediction: str = "eps",
    y: np.ndarray | None = None,
    min_snr_gamma: float | None = None,
) -> np.ndarray:
    """Per-sample loss (B,), and the gradients of its batch mean ADDED into the model's grads.

    Like ``loss.backward()`` in PyTorch this accumulates: call ``model.zero_grad()`` first (or use
    ``train_step``). ``t`` and ``eps`` are drawn by the caller, so the same randomness gives the
    same loss in either backend.
    """
    x0 = np.asarray(x0, dtype=model.dtype)
    eps = np.asarray(eps, dtype=model.dtype)
    x_t = q_sample(x0, t, eps, schedule)  # (B, C, H, W)
    target = training_target(x0, t, eps, schedule, prediction)  # (B, C, H, W)
    output = model.forward(x_t, t, y)  # (B, C, H, W)
    per_sample, cache = F.mse_forward(output, target)  # (B,)
    weight = min_snr_weight(torch.as_tensor(np.asarray(t)), schedule, prediction, min_snr_gamma)
    weight = weight.numpy().astype(model.dtype)  # (B,), ones without min-SNR
    b = per_sample.shape[0]
    doutput, _ = F.mse_backward(weight / b, cache)  # d(mean_b weight_b loss_b) / doutput
    model.backward(doutput)
    return per_sample * weight


def global_grad_norm(grads: Iterable[np.ndarray]) -> float:
    """sqrt of the sum of squares of every gradient entry (the L2 norm of all of them as one vector)."""
    return float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads)))


def clip_grad_norm(grads: Iterable[np.ndarray], max_norm: float) -> float:
    """Scale the gradients in place so their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: factor min(1, max_norm / (norm + 1e-6)). Returns the
    norm before clipping.
    """
    grads = list(grads)
    total = global_grad_norm(grads)
    factor = max_norm / (total + 1e-6)
    if factor < 1.0:
        for g in grads:
            g *= factor
    return total


def train_step(
    model: NumpyUNet,
    optimizer: Optimizer,
    x0: np.ndarray,
    t: np.ndarray,
    eps: np.ndarray,
    schedule: Schedule,
    prediction: str = "eps",
    y: np.ndarray | None = None,
    grad_clip: float = 0.0,
    min_snr_gamma: float | None = None,
) -> float:
    """zero_grad -> loss and gradients -> clip (if grad_clip > 0) -> optimiser step; returns the mean loss."""
    model.zero_grad()
    per_sample = loss_and_grads(model, x0, t, eps, schedule, prediction, y, min_snr_gamma)
    if grad_clip > 0:
        clip_grad_norm((g for _, _, g in model.named_parameters()), grad_clip)
    optimizer.step()
    return float(per_sample.mean())
