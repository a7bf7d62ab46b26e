"""Layers of the NumPy backend: each owns its parameters and gradients and wraps one forward /
backward pair from ``difflab.nn_numpy.functional``.

The layer contract
------------------
* Shapes are given in the constructor (``Conv2d(in_ch, out_ch, kernel_size, ...)``), and the
  parameters are created there, in PyTorch's layouts and with PyTorch's names (``weight``,
  ``bias``), initialised like PyTorch's defaults from the ``rng`` passed in.
* ``params`` and ``grads`` are dicts of ``np.ndarray`` with the same keys. An optimiser updates
  ``params`` in place and reads ``grads``; it lives outside the layers (``nn_numpy.optim``).
* ``forward(x, cache=True)`` returns the output and, when ``cache`` is true, keeps exactly what
  ``backward`` needs (``cache=False`` is for inference: nothing is kept).
* ``backward(dy)`` takes dL/dy of the last cached forward, returns dL/dx and ADDS the parameter
  gradients into ``grads`` (``+=``), so gradients of several backward passes accumulate until
  ``zero_grad()`` -- as in PyTorch.
* Layers made of layers (``SelfAttention`` here, the U-Net blocks in ``nn_numpy.unet``) keep
  their sub-layers as attributes; ``named_parameters`` walks them in definition order and names
  parameters by attribute path, ``"qkv.weight"``, as PyTorch's ``state_dict`` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from difflab.nn_numpy import functional as F


class Layer:
    """Base class: parameter / gradient bookkeeping shared by every layer."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self._cache: tuple | None = None

    def _add_param(self, name: str, value: np.ndarray) -> None:
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def _accumulate(self, dweight: np.ndarray, dbias: np.ndarray | None) -> None:
        """Add this backward's weight (and bias) gradients into ``grads`` (they accumulate)."""
        self.grads["weight"] += dweight
        if dbias is not None:
            self.grads["bias"] += dbias

    def _take_cache(self) -> tuple:
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward needs a preceding forward(..., cache=True)"
            )
        return self._cache

    def children(self) -> Iterator[tuple[str, Layer]]:
        """Sub-layers held as attributes (or in lists of layers, named by index), in order."""
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                yield name, value
            elif isinstance(value, list) and value and all(isinstance(v, Layer) for v in value):
                for i, layer in enumerate(value):
                    yield f"{name}.{i}", layer

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(name, param, grad)`` for this layer and every sub-layer, PyTorch-style names."""
        for name, param in self.params.items():
            yield prefix + name, param, self.grads[name]
        for child_name, child in self.children():
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def zero_grad(self) -> None:
        """Set every gradient to zero (in place, so optimisers keep valid references)."""
        for _, _, grad in self.named_parameters():
            grad.fill(0.0)

    def to_dtype(self, dtype: np.dtype | type) -> Layer:
        """Cast parameters and gradients to ``dtype`` (new arrays: build optimisers afterwards)."""
        for name in self.params:
            self.params[name] = self.params[name].astype(dtype)
            self.grads[name] = self.grads[name].astype(dtype)
        for _, child in self.children():
            child.to_dtype(dtype)
        self._cache = None
        return self


def _uniform(
    rng: np.random.Generator, shape: tuple[int, ...], bound: float, dtype: type
) -> np.ndarray:
    """U(-bound, bound) samples: PyTorch's default init uses bound = 1 / sqrt(fan_in)."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Layers with parameters
# ---------------------------------------------------------------------------------------------


class Conv2d(Layer):
    """2-D convolution like ``torch.nn.Conv2d``: weight (out, in, k, k), bias (out,).

    (B, in, H, W) -> (B, out, floor((H + 2p - k) / s) + 1, ...).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = _default_rng(rng)
        self.stride, self.padding = stride, padding
        fan_in = in_channels * kernel_size * kernel_size
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)), PyTorch's default
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self._add_param("weight", _uniform(rng, shape, bound, dtype))
        if bias:
            self._add_param("bias", _uniform(rng, (out_channels,), bound, dtype))

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        y, c = F.conv2d_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding
        )
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # dW = dy @ cols^T, db = sum dy, dx = col2im(W^T @ dy)  (functional.conv2d_backward)
        dx, dweight, dbias = F.conv2d_backward(dy, self._take_cache())
        self._accumulate(dweight, dbias)
        return dx


class ConvTranspose2d(Layer):
    """Transposed convolution like ``torch.nn.ConvTranspose2d``: weight (in, out, k, k), bias (out,).

    (B, in, H, W) -> (B, out, (H - 1) s - 2p + k + output_padding, ...). Not used by the U-Net
    (which upsamples by nearest repeat + conv), kept as the learnable alternative.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        bias: bool = True,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= output_padding < stride:
            raise ValueError(
                f"output_padding must lie in 0 .. stride - 1 = {stride - 1}, got {output_padding}"
            )
        rng = _default_rng(rng)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        # PyTorch computes fan_in from weight.shape[1] * k * k, i.e. from out_channels here.
        bound = 1.0 / math.sqrt(out_channels * kernel_size * kernel_size)
        shape = (in_channels, out_channels, kernel_size, kernel_size)
        self._add_param("weight", _uniform(rng, shape, bound, dtype))
        if bias:
            self._add_param("bias", _uniform(rng, (out_channels,), bound, dtype))

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        y, c = F.conv_transpose2d_forward(
            x,
            self.params["weight"],
            self.params.get("bias"),
            self.stride,
            self.padding,
            self.output_padding,
        )
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # dcols = im2col(dy), dx = W @ dcols, dW = x @ dcols^T (functional.conv_transpose2d_backward)
        dx, dweight, dbias = F.conv_transpose2d_backward(dy, self._take_cache())
        self._accumulate(dweight, dbias)
        return dx


class Linear(Layer):
    """Fully connected layer like ``torch.nn.Linear``: y = x W^T + b, weight (out, in)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = _default_rng(rng)
        bound = 1.0 / math.sqrt(in_features)
        self._add_param("weight", _uniform(rng, (out_features, in_features), bound, dtype))
        if bias:
            self._add_param("bias", _uniform(rng, (out_features,), bound, dtype))

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        y, c = F.linear_forward(x, self.params["weight"], self.params.get("bias"))
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # dx = dy W, dW = dy^T x, db = sum over the batch of dy
        dx, dweight, dbias = F.linear_backward(dy, self._take_cache())
        self._accumulate(dweight, dbias)
        return dx


class Embedding(Layer):
    """Lookup table like ``torch.nn.Embedding``: int (B,) -> weight rows (B, dim), weight ~ N(0, 1)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = _default_rng(rng)
        self.num_embeddings = num_embeddings
        weight = rng.standard_normal((num_embeddings, embedding_dim)).astype(dtype)
        self._add_param("weight", weight)

    def forward(self, idx: np.ndarray, cache: bool = True) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(
                f"embedding indices must lie in 0 .. {self.num_embeddings - 1}, "
                f"got {idx.min()} .. {idx.max()}"
            )
        y, c = F.embedding_forward(idx, self.params["weight"])
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> None:
        # dL/dweight[k] = sum of dy rows looked up at k; integer input, so no dx
        self.grads["weight"] += F.embedding_backward(dy, self._take_cache())


class GroupNorm(Layer):
    """Group normalisation like ``torch.nn.GroupNorm``: weight = 1, bias = 0 per channel, eps 1e-5."""

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, dtype: type = np.float32
    ) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels do not divide into {num_groups} groups")
        self.num_groups, self.eps = num_groups, eps
        self._add_param("weight", np.ones(num_channels, dtype=dtype))
        self._add_param("bias", np.zeros(num_channels, dtype=dtype))

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        y, c = F.group_norm_forward(
            x, self.params["weight"], self.params["bias"], self.num_groups, self.eps
        )
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # dx = rstd (dx_hat - mean dx_hat - x_hat mean(dx_hat x_hat)) per group, dx_hat = dy gamma
        dx, dweight, dbias = F.group_norm_backward(dy, self._take_cache())
        self.grads["weight"] += dweight
        self.grads["bias"] += dbias
        return dx


# ---------------------------------------------------------------------------------------------
# Layers without parameters
# ---------------------------------------------------------------------------------------------


class SiLU(Layer):
    """y = x * sigmoid(x)."""

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        y, c = F.silu_forward(x)
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # dy/dx = sigmoid(x) (1 + x (1 - sigmoid(x)))
        return F.silu_backward(dy, self._take_cache())


class ReLU(Layer):
    """y = max(x, 0)."""

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        y, c = F.relu_forward(x)
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # dy/dx = 1 where x > 0, else 0
        return F.relu_backward(dy, self._take_cache())


class UpsampleNearest(Layer):
    """Nearest-neighbour upsampling by an integer factor: (B, C, H, W) -> (B, C, sH, sW)."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        y, c = F.upsample_nearest_forward(x, self.scale)
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # each input pixel was copied s x s times: its gradient is the sum over its block
        return F.upsample_nearest_backward(dy, self._take_cache())


class Concat(Layer):
    """Concatenate arrays along the channel axis (U-Net skip connections)."""

    def forward(self, xs: list[np.ndarray], cache: bool = True) -> np.ndarray:
        y, c = F.concat_forward(xs, axis=1)
        self._cache = c if cache else None
        return y

    def backward(self, dy: np.ndarray) -> list[np.ndarray]:
        # concatenation moves values: each input gets its own channel slice of dy
        return F.concat_backward(dy, self._take_cache())


class MSELoss(Layer):
    """Per-sample mean squared error (B,), the loss of Ho et al. Eq. 14; ``backward`` is of the batch mean.

    Losses return the unreduced per-sample loss; ``backward(dloss)`` takes dL/dloss (B,) and
    defaults to that of the batch mean, 1 / B each.
    """

    def forward(self, pred: np.ndarray, target: np.ndarray, cache: bool = True) -> np.ndarray:
        loss, c = F.mse_forward(pred, target)
        self._cache = c if cache else None
        return loss

    def backward(self, dloss: np.ndarray | None = None) -> np.ndarray:
        # d/dpred mean((pred - target)^2) = 2 (pred - target) / n per sample
        cache = self._take_cache()
        if dloss is None:
            b = cache[0].shape[0]
            dloss = np.full(b, 1.0 / b)
        dpred, _ = F.mse_backward(dloss, cache)
        return dpred


# ---------------------------------------------------------------------------------------------
# Self-attention (a layer made of layers)
# ---------------------------------------------------------------------------------------------


class SelfAttention(Layer):
    """Single-head self-attention over the H*W positions, with a residual connection.

    Mirrors ``difflab.models.unet.SelfAttention``: y = x + proj(attention(qkv(norm(x)))), with
    q, k, v each of C channels and attention softmax(q k^T / sqrt(C)) v.
    """

    def __init__(
        self,
        channels: int,
        groups: int,
        dtype: type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = _default_rng(rng)
        self.norm = GroupNorm(groups, channels, dtype=dtype)
        self.qkv = Conv2d(channels, 3 * channels, 1, dtype=dtype, rng=rng)
        self.proj = Conv2d(channels, channels, 1, dtype=dtype, rng=rng)

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        b, c, h, w = x.shape
        qkv = self.qkv.forward(self.norm.forward(x, cache), cache).reshape(b, 3, c, h * w)
        q, k, v = (qkv[:, i].transpose(0, 2, 1) for i in range(3))  # each (B, HW, C)
        out, attn_cache = F.attention_forward(q, k, v)  # (B, HW, C)
        self._cache = (attn_cache, x.shape) if cache else None
        out = np.ascontiguousarray(out.transpose(0, 2, 1)).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj.forward(out, cache)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # residual: dx = dy + (the path through norm, qkv, attention and proj)
        attn_cache, (b, c, h, w) = self._take_cache()
        dout = self.proj.backward(dy).reshape(b, c, h * w).transpose(0, 2, 1)  # (B, HW, C)
        dq, dk, dv = F.attention_backward(dout, attn_cache)  # each (B, HW, C)
        dqkv = np.stack([dq, dk, dv], axis=1).transpose(0, 1, 3, 2)  # (B, 3, C, HW)
        dqkv = dqkv.reshape(b, 3 * c, h, w)  # (B, 3C, H, W)
        return dy + self.norm.backward(self.qkv.backward(dqkv))
