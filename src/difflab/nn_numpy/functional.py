"""The math of every layer: stateless forward / backward function pairs on NumPy arrays.

Each ``*_forward`` returns ``(y, cache)``: the output and a tuple of exactly what the matching
``*_backward`` needs. Each ``*_backward(dy, cache)`` takes the upstream gradient dL/dy and returns
the gradients of the inputs and parameters, in the order the forward takes them. Nothing here
accumulates or keeps state; ``difflab.nn_numpy.layers`` wraps these pairs into layers that own
their parameters and gradients.

Conventions are PyTorch's: images NCHW, convolution weights ``(out, in, kh, kw)``, transposed
convolution weights ``(in, out, kh, kw)``, linear weights ``(out, in)``.

Convolutions are lowered onto one matrix multiplication (im2col): every receptive field becomes a
column, so ``y = W @ cols``. The columns are filled, and scattered back in the backward pass, by
a loop over the kh*kw kernel offsets (9 for a 3x3 kernel), each moving one strided slice of the
whole batch; there is no loop over pixels.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------------------------
# im2col / col2im: the bridge between convolution and matrix multiplication
# ---------------------------------------------------------------------------------------------


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(
    x: np.ndarray, kh: int, kw: int, stride: int, padding: int
) -> tuple[np.ndarray, int, int]:
    """Unfold every receptive field of ``x`` (B, C, H, W) into a column.

    Returns ``cols`` of shape (C * kh * kw, Ho * Wo * B), rows ordered (c, i, j) like a flattened
    ``(out, in, kh, kw)`` weight, columns ordered (ho, wo, b); and the output size Ho, Wo.
    The batch is the last (fastest) axis so that each kernel offset's copy moves long contiguous
    runs of Wo * B numbers instead of short image rows: 2-4x faster for small images.
    """
    b, c, h, w = x.shape
    ho = conv_output_size(h, kh, stride, padding)
    wo = conv_output_size(w, kw, stride, padding)
    xp = np.zeros((c, h + 2 * padding, w + 2 * padding, b), dtype=x.dtype)
    xp[:, padding : padding + h, padding : padding + w] = x.transpose(1, 2, 3, 0)  # (C, Hp, Wp, B)
    cols = np.empty((c, kh, kw, ho, wo, b), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # input pixel under kernel offset (i, j) for every output position, whole batch at once
            cols[:, i, j] = xp[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
    return cols.reshape(c * kh * kw, ho * wo * b), ho, wo


def col2im(
    cols: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: int,
    padding: int,
    ho: int,
    wo: int,
) -> np.ndarray:
    """The adjoint of ``im2col``: add every column entry back onto the pixel it was read from.

    ``cols`` is (C * kh * kw, ho * wo * B); returns an array of ``x_shape`` (B, C, H, W). Pixels
    that lie in several receptive fields receive the sum of their entries.
    """
    b, c, h, w = x_shape
    cols6 = cols.reshape(c, kh, kw, ho, wo, b)
    xp = np.zeros((c, h + 2 * padding, w + 2 * padding, b), dtype=cols.dtype)  # (C, Hp, Wp, B)
    for i in range(kh):
        for j in range(kw):
            xp[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ] += cols6[:, i, j]  # (C, ho, wo, B)
    x = xp[:, padding : padding + h, padding : padding + w]  # (C, H, W, B)
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # (B, C, H, W)


def _to_nchw(y2d: np.ndarray, b: int, ho: int, wo: int) -> np.ndarray:
    """(C, Ho * Wo * B) matrix, columns ordered like ``im2col``'s -> contiguous (B, C, Ho, Wo)."""
    return np.ascontiguousarray(y2d.reshape(-1, ho, wo, b).transpose(3, 0, 1, 2))


def _from_nchw(x: np.ndarray) -> np.ndarray:
    """(B, C, H, W) image batch -> (C, H * W * B) matrix, columns ordered like ``im2col``'s."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).reshape(x.shape[1], -1)


# ---------------------------------------------------------------------------------------------
# Convolution and transposed convolution
# ---------------------------------------------------------------------------------------------


def conv2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int = 1, padding: int = 0
) -> tuple[np.ndarray, tuple]:
    """2-D cross-correlation (``torch.nn.functional.conv2d``): y = W @ im2col(x) + b.

    x (B, C, H, W), weight (O, C, kh, kw), bias (O,) or None -> y (B, O, Ho, Wo).
    """
    b = x.shape[0]
    o, _, kh, kw = weight.shape
    cols, ho, wo = im2col(x, kh, kw, stride, padding)  # (C*kh*kw, Ho*Wo*B)
    y2d = weight.reshape(o, -1) @ cols  # (O, Ho*Wo*B)
    if bias is not None:
        y2d += bias[:, None]
    cache = (x.shape, cols, weight, bias is not None, stride, padding, ho, wo)
    return _to_nchw(y2d, b, ho, wo), cache  # (B, O, Ho, Wo)


def conv2d_backward(
    dy: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of y = W @ cols + b: dW = dy @ cols^T, db = sum of dy, dcols = W^T @ dy, dx = col2im(dcols).

    Returns (dx, dweight, dbias); dbias is None when the forward had no bias.
    """
    x_shape, cols, weight, has_bias, stride, padding, ho, wo = cache
    o, _, kh, kw = weight.shape
    dy2d = _from_nchw(dy)  # (O, Ho*Wo*B)
    dweight = (dy2d @ cols.T).reshape(weight.shape)  # (O, C, kh, kw)
    dbias = dy2d.sum(axis=1) if has_bias else None  # (O,)
    dcols = weight.reshape(o, -1).T @ dy2d  # (C*kh*kw, Ho*Wo*B)
    dx = col2im(dcols, x_shape, kh, kw, stride, padding, ho, wo)  # (B, C, H, W)
    return dx, dweight, dbias


def conv_transpose2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
) -> tuple[np.ndarray, tuple]:
    """Transposed convolution (``torch.nn.functional.conv_transpose2d``): y = col2im(W^T @ x) + b.

    It is the input-gradient of a convolution with the same weight: every input pixel spreads
    its value, weighted by the kernel, over a kh x kw patch of the output, patches ``stride``
    apart. x (B, C_in, H, W), weight (C_in, C_out, kh, kw), bias (C_out,) ->
    y (B, C_out, (H - 1) * stride - 2 * padding + kh + output_padding, ... for W).
    """
    b, c_in, h, w = x.shape
    _, c_out, kh, kw = weight.shape
    h_out = (h - 1) * stride - 2 * padding + kh + output_padding
    w_out = (w - 1) * stride - 2 * padding + kw + output_padding
    x2d = _from_nchw(x)  # (C_in, H*W*B)
    cols = weight.reshape(c_in, -1).T @ x2d  # (C_out*kh*kw, H*W*B)
    y = col2im(cols, (b, c_out, h_out, w_out), kh, kw, stride, padding, h, w)  # (B, C_out, Ho, Wo)
    if bias is not None:
        y += bias[None, :, None, None]
    cache = (x2d, x.shape, weight, bias is not None, stride, padding)
    return y, cache


def conv_transpose2d_backward(
    dy: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of y = col2im(W^T @ x2d): dcols = im2col(dy), dx = W @ dcols, dW = x2d @ dcols^T.

    (col2im's adjoint is im2col, so the input gradient is an ordinary convolution of dy.)
    Returns (dx, dweight, dbias).
    """
    x2d, x_shape, weight, has_bias, stride, padding = cache
    b, c_in, h, w = x_shape
    _, _, kh, kw = weight.shape
    dcols, ho, wo = im2col(dy, kh, kw, stride, padding)  # (C_out*kh*kw, H*W*B)
    assert (ho, wo) == (h, w), "im2col of the output must give back the input grid"
    dx = _to_nchw(weight.reshape(c_in, -1) @ dcols, b, h, w)  # (B, C_in, H, W)
    dweight = (x2d @ dcols.T).reshape(weight.shape)  # (C_in, C_out, kh, kw)
    dbias = dy.sum(axis=(0, 2, 3)) if has_bias else None  # (C_out,)
    return dx, dweight, dbias


# ---------------------------------------------------------------------------------------------
# Linear, embedding
# ---------------------------------------------------------------------------------------------


def linear_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, tuple]:
    """y = x W^T + b, x (B, in), weight (out, in), bias (out,) -> y (B, out)."""
    y = x @ weight.T  # (B, out)
    if bias is not None:
        y += bias
    return y, (x, weight, bias is not None)


def linear_backward(
    dy: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """dL/dx = dy W, dL/dW = dy^T x, dL/db = sum over the batch of dy. Returns (dx, dW, db)."""
    x, weight, has_bias = cache
    return dy @ weight, dy.T @ x, (dy.sum(axis=0) if has_bias else None)


def embedding_forward(idx: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Row lookup y = weight[idx], idx int (B,), weight (num, dim) -> y (B, dim)."""
    return weight[idx], (idx, weight.shape)


def embedding_backward(dy: np.ndarray, cache: tuple) -> np.ndarray:
    """dL/dweight[k] = sum of dy over the positions where idx == k (np.add.at sums repeats)."""
    idx, shape = cache
    dweight = np.zeros(shape, dtype=dy.dtype)
    np.add.at(dweight, idx, dy)
    return dweight


def timestep_embedding(t: np.ndarray, dim: int, max_period: float = 10000.0) -> np.ndarray:
    """Vaswani et al. 2017 sinusoidal embedding of timesteps: [sin(t w_i), cos(t w_i)].

    w_i = max_period^(-i / half), i = 0 .. half-1, exactly as ``difflab.models.unet``; float32
    like the PyTorch backend, so both backends feed the network the same numbers. No parameters
    and a constant input, so there is no backward. t (B,) -> (B, dim).
    """
    half = dim // 2
    exponent = (-math.log(max_period) * np.arange(half, dtype=np.float32)) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)  # (half,), correctly rounded
    args = np.asarray(t).astype(np.float32)[:, None] * freqs[None, :]  # (B, half)
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)  # (B, dim)


# ---------------------------------------------------------------------------------------------
# Normalisation and activations
# ---------------------------------------------------------------------------------------------


def group_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, groups: int, eps: float = 1e-5
) -> tuple[np.ndarray, tuple]:
    """Wu & He 2018: normalise each sample's channel groups to mean 0, variance 1, then scale and shift.

    x (B, C, ...) -> y = x_hat * weight[c] + bias[c], x_hat = (x - mean_g) / sqrt(var_g + eps),
    with the (biased) mean and variance over a group's C / groups channels and all positions.
    """
    b, c = x.shape[:2]
    xg = x.reshape(b, groups, -1)  # (B, G, C/G * H * W)
    mean = xg.mean(axis=-1, keepdims=True)  # (B, G, 1)
    centred = xg - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)  # (B, G, 1)
    rstd = 1.0 / np.sqrt(var + eps)  # (B, G, 1)
    x_hat = (centred * rstd).reshape(x.shape)  # (B, C, ...)
    per_channel = (1, c) + (1,) * (x.ndim - 2)
    y = x_hat * weight.reshape(per_channel) + bias.reshape(per_channel)
    return y, (x_hat, rstd, weight, groups)


def group_norm_backward(dy: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of y = gamma x_hat + beta; within each group of n values
    dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)), with dx_hat = dy * gamma.

    Returns (dx, dweight, dbias).
    """
    x_hat, rstd, weight, groups = cache
    b, c = dy.shape[:2]
    reduce_axes = (0, *range(2, dy.ndim))
    dweight = np.sum(dy * x_hat, axis=reduce_axes)  # (C,)
    dbias = np.sum(dy, axis=reduce_axes)  # (C,)
    per_channel = (1, c) + (1,) * (dy.ndim - 2)
    dx_hat = (dy * weight.reshape(per_channel)).reshape(b, groups, -1)  # (B, G, n)
    xg_hat = x_hat.reshape(b, groups, -1)  # (B, G, n)
    dx = rstd * (
        dx_hat
        - dx_hat.mean(axis=-1, keepdims=True)
        - xg_hat * np.mean(dx_hat * xg_hat, axis=-1, keepdims=True)
    )
    return dx.reshape(dy.shape), dweight, dbias


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)); exp overflowing to inf for very negative x correctly gives 0."""
    with np.errstate(over="ignore"):
        s = np.exp(-x)
    s += 1.0
    return np.reciprocal(s, out=s)


def silu_forward(x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """SiLU / swish (Elfwing et al. 2018): y = x * sigmoid(x)."""
    s = sigmoid(x)
    return x * s, (x, s)


def silu_backward(dy: np.ndarray, cache: tuple) -> np.ndarray:
    """d/dx [x sigmoid(x)] = sigmoid(x) * (1 + x * (1 - sigmoid(x)))."""
    x, s = cache
    return dy * s * (1.0 + x * (1.0 - s))


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """y = max(x, 0)."""
    mask = x > 0
    return x * mask, (mask,)


def relu_backward(dy: np.ndarray, cache: tuple) -> np.ndarray:
    """d/dx max(x, 0) = 1 where x > 0, else 0 (0 at x = 0, like PyTorch)."""
    (mask,) = cache
    return dy * mask


# ---------------------------------------------------------------------------------------------
# Resampling and skips
# ---------------------------------------------------------------------------------------------


def upsample_nearest_forward(x: np.ndarray, scale: int = 2) -> tuple[np.ndarray, tuple]:
    """Nearest-neighbour upsampling: every pixel becomes a scale x scale block. (B, C, H, W) -> (B, C, sH, sW)."""
    b, c, h, w = x.shape
    blocks = np.broadcast_to(x[:, :, :, None, :, None], (b, c, h, scale, w, scale))
    return blocks.reshape(b, c, h * scale, w * scale), (scale,)


def upsample_nearest_backward(dy: np.ndarray, cache: tuple) -> np.ndarray:
    """Each input pixel was copied into a scale x scale block, so its gradient is that block's sum."""
    (scale,) = cache
    b, c, hs, ws = dy.shape
    return dy.reshape(b, c, hs // scale, scale, ws // scale, scale).sum(axis=(3, 5))


def concat_forward(xs: list[np.ndarray], axis: int = 1) -> tuple[np.ndarray, tuple]:
    """Concatenate along ``axis`` (channels for U-Net skips)."""
    sizes = [x.shape[axis] for x in xs]
    return np.concatenate(xs, axis=axis), (sizes, axis)


def concat_backward(dy: np.ndarray, cache: tuple) -> list[np.ndarray]:
    """Concatenation only moves values, so each input gets its own slice of dy back."""
    sizes, axis = cache
    return np.split(dy, np.cumsum(sizes)[:-1], axis=axis)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def softmax(s: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(s) / sum exp(s), computed after subtracting the maximum so exp cannot overflow."""
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Scaled dot-product attention (Vaswani et al. 2017): softmax(q k^T / sqrt(d)) v.

    q, k, v (B, N, d) -> out (B, N, d); N positions attend to each other.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = softmax((q @ k.transpose(0, 2, 1)) * scale)  # (B, N, N) attention weights
    out = p @ v  # (B, N, d)
    return out, (q, k, v, p, scale)


def attention_backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of out = P v, P = softmax(S), S = q k^T * scale.

    dv = P^T dout, dP = dout v^T, softmax Jacobian dS = P * (dP - sum_j dP P),
    dq = dS k * scale, dk = dS^T q * scale. Returns (dq, dk, dv).
    """
    q, k, v, p, scale = cache
    dv = p.transpose(0, 2, 1) @ dout  # (B, N, d)
    dp = dout @ v.transpose(0, 2, 1)  # (B, N, N)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))  # (B, N, N)
    ds *= scale
    dq = ds @ k  # (B, N, d)
    dk = ds.transpose(0, 2, 1) @ q  # (B, N, d)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def mse_forward(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Per-sample mean squared error, shape (B,): mean over every axis but the first."""
    diff = pred - target
    per_sample = np.mean((diff * diff).reshape(diff.shape[0], -1), axis=1)  # (B,)
    return per_sample, (diff,)


def mse_backward(dloss: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray]:
    """d/dpred of mean_i (pred_i - target_i)^2 = 2 (pred - target) / n, scaled by each sample's dloss.

    ``dloss`` (B,) is the upstream gradient of the per-sample losses (1 / B each for a batch
    mean). Returns (dpred, dtarget), dtarget = -dpred.
    """
    (diff,) = cache
    n = diff[0].size
    dpred = diff * (2.0 / n * dloss).reshape((-1,) + (1,) * (diff.ndim - 1)).astype(diff.dtype)
    return dpred, -dpred
