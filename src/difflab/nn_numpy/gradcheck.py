"""Gradient checking: compare a hand-written backward with central finite differences.

For an upstream gradient dy, the backward pass claims to compute the gradient of the scalar
L = sum(forward(x) * dy). Finite differences compute the same thing without any calculus,
(L(x + h e_i) - L(x - h e_i)) / 2h for every entry i, which is slow but obviously right. Use a
random dy (all-ones hides errors that cancel) and float64 (float32 differences are noise).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from difflab.nn_numpy.layers import Layer


def relative_error(a: np.ndarray, b: np.ndarray, tiny: float = 1e-30) -> float:
    """max |a - b| / max(max |a|, max |b|, tiny): one number per tensor, 0 when equal."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), tiny)
    return float(np.abs(a - b).max(initial=0.0)) / scale


def numerical_gradient(
    fn: Callable[[], np.ndarray], array: np.ndarray, dy: np.ndarray, h: float = 1e-6
) -> np.ndarray:
    """Central differences of sum(fn() * dy) with respect to ``array``.

    ``fn`` recomputes the output from the current contents of ``array``, which is perturbed in
    place one entry at a time (and restored).
    """
    if array.dtype != np.float64:
        raise ValueError(f"finite differences need float64 arrays, got {array.dtype}")
    grad = np.zeros_like(array)
    flat, grad_flat = array.reshape(-1), grad.reshape(-1)  # views: writes reach ``array``
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(fn() * dy)
        flat[i] = old - h
        minus = np.sum(fn() * dy)
        flat[i] = old
        grad_flat[i] = (plus - minus) / (2 * h)
    return grad


def check_layer(
    layer: Layer,
    x: np.ndarray,
    rng: np.random.Generator | None = None,
    h: float = 1e-6,
) -> dict[str, float]:
    """Relative errors of ``layer.backward`` against finite differences, for dx and every parameter.

    ``x`` must be float64 (an integer ``x`` -- an embedding's indices -- gets no dx check). The
    upstream gradient is random. Returns ``{"x": err, "weight": err, ...}``.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(dy)

    def fn() -> np.ndarray:
        return layer.forward(x, cache=False)

    errors: dict[str, float] = {}
    if np.issubdtype(x.dtype, np.floating):
        errors["x"] = relative_error(dx, numerical_gradient(fn, x, dy, h))
    for name, param, grad in layer.named_parameters():
        errors[name] = relative_error(grad, numerical_gradient(fn, param, dy, h))
    return errors
