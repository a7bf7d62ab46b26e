"""The noise-prediction U-Net in NumPy: the same graph as ``difflab.models.unet.UNet``, by hand.

Same blocks, same parameter names and shapes (``down.0.res.conv1.weight``, ``time_in.weight``,
``label_emb.weight`` ...), same NCHW layout and ``(out, in, kh, kw)`` weights, so a state dict
of either backend loads into the other and their outputs agree number for number.

Every block has ``forward`` (caching what its backward needs) and ``backward``, which walks the
same graph in reverse: gradients of the skip connections are collected on the way back up and
added where the skips left the down path, and the time embedding, which enters every residual
block, collects the sum of the gradients from all of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from difflab.config import ModelConfig
from difflab.nn_numpy import functional as F
from difflab.nn_numpy.layers import (
    Concat,
    Conv2d,
    Embedding,
    GroupNorm,
    Layer,
    Linear,
    SelfAttention,
    SiLU,
    UpsampleNearest,
)


class ResBlock(Layer):
    """GroupNorm -> SiLU -> conv, add the projected time embedding, GroupNorm -> SiLU -> conv, plus a skip."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        groups: int,
        dtype: type,
        rng: np.random.Generator,
    ) -> None:
        super().__init__()
        self.norm1 = GroupNorm(groups, in_ch, dtype=dtype)
        self.act1 = SiLU()
        self.conv1 = Conv2d(in_ch, out_ch, 3, padding=1, dtype=dtype, rng=rng)
        self.act_emb = SiLU()
        self.emb_proj = Linear(emb_dim, out_ch, dtype=dtype, rng=rng)
        self.norm2 = GroupNorm(groups, out_ch, dtype=dtype)
        self.act2 = SiLU()
        self.conv2 = Conv2d(out_ch, out_ch, 3, padding=1, dtype=dtype, rng=rng)
        # a 1x1 conv matches the channels of the residual path; identity when they already agree
        self.skip = Conv2d(in_ch, out_ch, 1, dtype=dtype, rng=rng) if in_ch != out_ch else None

    def forward(self, x: np.ndarray, emb: np.ndarray, cache: bool = True) -> np.ndarray:
        h = self.norm1.forward(x, cache)
        h = self.act1.forward(h, cache)
        h = self.conv1.forward(h, cache)  # (B, out, H, W)
        e = self.act_emb.forward(emb, cache)
        e = self.emb_proj.forward(e, cache)  # (B, out)
        h = h + e[:, :, None, None]  # time (and label) enter every block
        h = self.norm2.forward(h, cache)
        h = self.act2.forward(h, cache)
        h = self.conv2.forward(h, cache)  # (B, out, H, W)
        skip = self.skip.forward(x, cache) if self.skip is not None else x  # (B, out, H, W)
        return skip + h

    def backward(self, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (dx, demb): the forward's steps in reverse, each layer's backward in turn.

        y = skip(x) + h, so dy flows unchanged into both paths and their dx add up.
        """
        dh = self.conv2.backward(dy)
        dh = self.act2.backward(dh)
        dh = self.norm2.backward(dh)  # (B, out, H, W): gradient of h after the embedding add
        # the embedding was broadcast over H, W: its gradient is the sum over positions
        de = self.emb_proj.backward(dh.sum(axis=(2, 3)))  # (B, E)
        demb = self.act_emb.backward(de)  # (B, E)
        dh = self.conv1.backward(dh)
        dh = self.act1.backward(dh)
        dx = self.norm1.backward(dh)  # (B, in, H, W)
        dx += self.skip.backward(dy) if self.skip is not None else dy
        return dx, demb


class Block(Layer):
    """A residual block, optionally followed by self-attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        groups: int,
        attention: bool,
        dtype: type,
        rng: np.random.Generator,
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, groups, dtype, rng)
        self.attn = SelfAttention(out_ch, groups, dtype=dtype, rng=rng) if attention else None

    def forward(self, x: np.ndarray, emb: np.ndarray, cache: bool = True) -> np.ndarray:
        x = self.res.forward(x, emb, cache)
        return self.attn.forward(x, cache) if self.attn is not None else x

    def backward(self, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (dx, demb): back through attention (if any), then the residual block."""
        if self.attn is not None:
            dy = self.attn.backward(dy)
        return self.res.backward(dy)


class Downsample(Layer):
    """Halve height and width with a stride-2 3x3 convolution."""

    def __init__(self, ch: int, dtype: type, rng: np.random.Generator) -> None:
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, stride=2, padding=1, dtype=dtype, rng=rng)

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        return self.conv.forward(x, cache)  # (B, C, H/2, W/2)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # the stride-2 conv's own backward: col2im puts dy back on every other pixel's patch
        return self.conv.backward(dy)  # (B, C, H, W)


class Upsample(Layer):
    """Double height and width: nearest-neighbour repeat, then a 3x3 convolution."""

    def __init__(self, ch: int, dtype: type, rng: np.random.Generator) -> None:
        super().__init__()
        self.upsample = UpsampleNearest(2)
        self.conv = Conv2d(ch, ch, 3, padding=1, dtype=dtype, rng=rng)

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        return self.conv.forward(self.upsample.forward(x, cache), cache)  # (B, C, 2H, 2W)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # chain rule through conv, then sum each 2x2 block of copies back onto its source pixel
        return self.upsample.backward(self.conv.backward(dy))  # (B, C, H/2, W/2)


class NumpyUNet(Layer):
    """Predicts eps (or x0, or v) from a noised image x_t, its timestep t and an optional label y.

    ``NumpyUNet(config, dtype=np.float32, seed=0)`` builds the network of ``config`` with
    PyTorch-style random weights drawn from ``np.random.default_rng(seed)``. Dropout and learned
    variances are not implemented: a config with ``dropout > 0`` or ``learn_variance`` is refused.
    """

    def __init__(self, config: ModelConfig, dtype: type = np.float32, seed: int = 0) -> None:
        super().__init__()
        config.validate()
        if config.dropout > 0:
            raise ValueError(
                f"the NumPy backend has no dropout; got dropout={config.dropout}, use 0 "
                "(or the torch backend)"
            )
        if config.learn_variance:
            raise ValueError(
                "the NumPy backend has no learned variances (--learn-variance): train and draw "
                "such a model with the torch backend"
            )
        self.config = config
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        base, groups = config.base_channels, config.norm_groups
        emb_dim = 4 * base

        self.time_in = Linear(base, emb_dim, dtype=dtype, rng=rng)
        self.act_time = SiLU()
        self.time_out = Linear(emb_dim, emb_dim, dtype=dtype, rng=rng)
        # Index num_classes is the learned null label used for classifier-free guidance.
        self.label_emb = (
            Embedding(config.num_classes + 1, emb_dim, dtype=dtype, rng=rng)
            if config.num_classes > 0
            else None
        )

        self.conv_in = Conv2d(config.in_channels, base, 3, padding=1, dtype=dtype, rng=rng)
        self.down: list[Layer] = []
        skip_channels = [base]
        ch = base
        levels = len(config.channel_mults)
        for level, mult in enumerate(config.channel_mults):
            attention = level in config.attention_levels
            for _ in range(config.num_res_blocks):
                self.down.append(Block(ch, base * mult, emb_dim, groups, attention, dtype, rng))
                ch = base * mult
                skip_channels.append(ch)
            if level < levels - 1:
                self.down.append(Downsample(ch, dtype, rng))
                skip_channels.append(ch)

        self.mid1 = Block(ch, ch, emb_dim, groups, config.mid_attention, dtype, rng)
        self.mid2 = Block(ch, ch, emb_dim, groups, False, dtype, rng)

        self.up: list[Layer] = []
        self.up_concat: list[Layer] = []  # one Concat per up Block (no parameters)
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            attention = level in config.attention_levels
            for _ in range(config.num_res_blocks + 1):
                in_ch = ch + skip_channels.pop()
                self.up.append(Block(in_ch, base * mult, emb_dim, groups, attention, dtype, rng))
                self.up_concat.append(Concat())
                ch = base * mult
            if level > 0:
                self.up.append(Upsample(ch, dtype, rng))
        assert not skip_channels, "every skip must be consumed"

        self.norm_out = GroupNorm(groups, ch, dtype=dtype)
        self.act_out = SiLU()
        self.conv_out = Conv2d(ch, config.in_channels, 3, padding=1, dtype=dtype, rng=rng)

    # -----------------------------------------------------------------------------------------
    # forward / backward
    # -----------------------------------------------------------------------------------------

    def embed(self, t: np.ndarray, y: np.ndarray | None, cache: bool = True) -> np.ndarray:
        """Time embedding through the MLP, plus the label embedding; shape (B, 4 * base)."""
        sinusoid = F.timestep_embedding(t, self.config.base_channels).astype(
            self.dtype
        )  # (B, base)
        h = self.act_time.forward(self.time_in.forward(sinusoid, cache), cache)  # (B, E)
        emb = self.time_out.forward(h, cache)  # (B, E)
        if self.label_emb is not None:
            if y is None:  # unconditional call of a conditional model: use the null label
                y = np.full(t.shape, self.config.num_classes, dtype=np.int64)
            emb = emb + self.label_emb.forward(y, cache)
        return emb

    def forward(
        self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None = None, cache: bool = True
    ) -> np.ndarray:
        """x (B, C, H, W), integer t (B,), optional integer labels y (B,) -> output (B, C, H, W).

        ``cache=False`` keeps nothing for a backward pass (inference, sampling).
        """
        x, t, y = self._check_inputs(x, t, y)
        emb = self.embed(t, y, cache)  # (B, E)
        h = self.conv_in.forward(x, cache)  # (B, base, H, W)
        skips = [h]
        for module in self.down:
            if isinstance(module, Block):
                h = module.forward(h, emb, cache)
            else:
                h = module.forward(h, cache)  # Downsample
            skips.append(h)  # (B, C_level, H / 2^level, W / 2^level)
        h = self.mid1.forward(h, emb, cache)
        h = self.mid2.forward(h, emb, cache)  # (B, C_low, H_low, W_low)
        concats = iter(self.up_concat)
        for module in self.up:
            if isinstance(module, Block):
                h = next(concats).forward([h, skips.pop()], cache)  # concat skip on channels
                h = module.forward(h, emb, cache)
            else:
                h = module.forward(h, cache)  # Upsample
        h = self.act_out.forward(self.norm_out.forward(h, cache), cache)
        self._cache = (len(self.down) + 1,) if cache else None  # number of skips
        return self.conv_out.forward(h, cache)  # (B, in_channels, H, W)

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Inference: ``forward`` without caching, so the model is a sampler's ``model_fn(x_t, t)``."""
        return self.forward(x, t, y, cache=False)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Back-propagate dL/doutput through the cached forward; ADDS every parameter's gradient
        into its ``grads`` entry and returns dL/dx (B, C, H, W)."""
        (num_skips,) = self._take_cache()
        dout = np.asarray(dout, dtype=self.dtype)
        dh = self.conv_out.backward(dout)
        dh = self.act_out.backward(dh)
        dh = self.norm_out.backward(dh)  # (B, base * mult_0, H, W)
        demb = np.zeros((dout.shape[0], 4 * self.config.base_channels), dtype=self.dtype)  # (B, E)
        dskips: list[np.ndarray | None] = [None] * num_skips  # gradients of the skip tensors
        next_skip = 0  # the up path popped skips from the end, so going back they return from 0
        concats = reversed(self.up_concat)
        for module in reversed(self.up):
            if isinstance(module, Block):
                dcat, demb_i = module.backward(dh)
                demb += demb_i
                # split the concat's gradient: (B, C_h, h, w) for h, (B, C_skip, h, w) for the skip
                dh, dskips[next_skip] = next(concats).backward(dcat)
                next_skip += 1
            else:
                dh = module.backward(dh)  # Upsample
        assert next_skip == num_skips, "every skip must receive its gradient"
        for block in (self.mid2, self.mid1):
            dh, demb_i = block.backward(dh)
            demb += demb_i
        # dskips[i] is the gradient of skips[i] = output of down[i - 1] (conv_in for i = 0); that
        # output also fed the next module, so both gradients add.
        for i in reversed(range(len(self.down))):
            dh = dh + dskips[i + 1]  # (B, C_level, H / 2^level, W / 2^level)
            module = self.down[i]
            if isinstance(module, Block):
                dh, demb_i = module.backward(dh)
                demb += demb_i
            else:
                dh = module.backward(dh)  # Downsample
        dx = self.conv_in.backward(dh + dskips[0])  # (B, C, H, W)

        if self.label_emb is not None:
            self.label_emb.backward(demb)  # emb = time + label: both receive demb
        dh_time = self.act_time.backward(self.time_out.backward(demb))  # (B, E)
        self.time_in.backward(dh_time)  # its input, the sinusoid of integer t, needs no gradient
        return dx

    def _check_inputs(
        self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        cfg = self.config
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must have shape (B, {cfg.in_channels}, H, W), got {x.shape}")
        factor = 2 ** (len(cfg.channel_mults) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"image height and width must be multiples of {factor}, got {x.shape}")
        x = x.astype(self.dtype, copy=False)
        t = np.asarray(t)
        if not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)):
            # integers: DDPM's code timesteps; floats: a flow network's 1000 t (difflab.flow)
            raise ValueError(f"timesteps t must be numbers, got dtype {t.dtype}")
        if t.ndim == 0:
            t = np.full(x.shape[0], t)
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {t.shape}")
        if y is not None:
            y = np.asarray(y)
            if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(
                    f"labels y must be integers of shape ({x.shape[0]},), got {y.shape}"
                )
        return x, t, y

    # -----------------------------------------------------------------------------------------
    # parameters
    # -----------------------------------------------------------------------------------------

    def children(self) -> Iterator[tuple[str, Layer]]:
        """Sub-layers; the parameter-free concat helpers are left out of the names."""
        for name, child in super().children():
            if not name.startswith("up_concat."):
                yield name, child

    def gradients(self) -> dict[str, np.ndarray]:
        """Every parameter's gradient by name (the live arrays, not copies)."""
        return {name: grad for name, _, grad in self.named_parameters()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all parameters, named and shaped exactly like ``UNet(config).state_dict()``."""
        return {name: param.copy() for name, param, _ in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` (NumPy arrays, or anything ``np.asarray`` takes) into the parameters, in place.

        Raises ValueError naming every missing, unexpected or wrongly shaped key.
        """
        params = {name: param for name, param, _ in self.named_parameters()}
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        arrays = {k: np.asarray(v) for k, v in state.items() if k in params}
        mismatched = [
            f"{k} {arrays[k].shape} (expected {params[k].shape})"
            for k in params
            if k in arrays and arrays[k].shape != params[k].shape
        ]
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch: {', '.join(mismatched)}")
        if problems:
            raise ValueError("state dict does not fit this NumpyUNet; " + "; ".join(problems))
        for name, param in params.items():
            param[...] = arrays[name]

    def to_dtype(self, dtype: np.dtype | type) -> NumpyUNet:
        """Cast every parameter and gradient (e.g. to float64 for gradient checks); returns self."""
        super().to_dtype(dtype)
        self.dtype = np.dtype(dtype)
        return self

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(param.size for _, param, _ in self.named_parameters())
