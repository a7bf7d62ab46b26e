"""The noise-prediction U-Net (Ho et al. 2020, Appendix B; Nichol & Dhariwal 2021), in PyTorch.

    t --sinusoidal--> MLP --> time embedding (+ label embedding) ---------------------+
                                                                                     | added in
    x --conv_in--> [ResBlock (+attn)] x n, Downsample --> ... --> mid --> ... -->   | every block
                   each output kept as a skip         [concat skip, ResBlock (+attn)] x (n+1), Upsample
                                                                        --> GroupNorm, SiLU, conv_out

The NumPy backend (``difflab.nn_numpy``) builds the same graph with the same parameter names and
shapes, so one state dict loads into either.

With ``ModelConfig.learn_variance`` (Nichol & Dhariwal 2021) conv_out has twice the image's
channels: the prediction, then the variance output v of each pixel (``diffusion.split_variance``).
``forward`` returns the prediction alone unless asked for both (``with_variance=True``), so every
reader of the prediction (DDIM and the other samplers, distillation teachers, export, inspect)
runs such a network unchanged.

With ``ModelConfig.text_vocab`` (``train --text``) a text encoder (``models.text``) turns the
prompt's tokens into states, and a ``SpatialTransformer`` after the residual block (and its
self-attention) of each block at ``ModelConfig.cross_levels`` attends to them; its output
projection starts at zero, so an untrained text U-Net computes exactly what the same U-Net
without those blocks computes. ``forward(..., tokens=)`` takes the prompt's ids (B, L); none is
the empty prompt (all pad), the unconditional model of classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from difflab.config import ModelConfig
from difflab.models.text import Attention, FeedForward, TextStates, make_text_encoder


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. 2017 sinusoidal embedding of timesteps: [sin(t w_i), cos(t w_i)].

    w_i = max_period^(-i / half) for i = 0 .. half-1; ``t`` is the code timestep 0 .. T-1
    (or, for a flow network, 1000 times its continuous time: ``difflab.flow``).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, add the projected time embedding, GroupNorm -> SiLU -> dropout -> conv, plus a skip."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # time (and label) enter every block
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, h * w)  # (B, 3, C, HW)
        q, k, v = (qkv[:, i].transpose(1, 2) for i in range(3))  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v, (B, HW, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


def position_code(side: int, dim: int) -> torch.Tensor:
    """A fixed code of the cells of a side x side map, (side * side, dim), row-major: the first
    half of the channels is the sinusoid of the column (``timestep_embedding`` of x = 0 ..
    side - 1), the second half that of the row (the 2-D sin-cos code of ViT-style models)."""
    quarter = dim // 4  # sin and cos of quarter frequencies per axis; a remainder stays 0
    coords = torch.arange(side, dtype=torch.float32)
    axis = timestep_embedding(coords, 2 * quarter, max_period=2.0 * side)  # (side, dim / 2)
    code = torch.zeros(side, side, dim)
    code[..., : 2 * quarter] = axis[None, :]  # the column x, along each row
    code[..., 2 * quarter : 4 * quarter] = axis[:, None]  # the row y, down each column
    return code.reshape(side * side, dim)


class SpatialTransformer(nn.Module):
    """Cross-attention of image features to text states (Rombach et al. 2022, Sec. 3.3, the
    SpatialTransformer of Latent Diffusion): GroupNorm, 1x1 conv in, then on the H*W positions
    as tokens x + self-attention(LN(x)), x + cross-attention(LN(x), text), x + MLP(LN(x)), and a
    1x1 conv out that starts at zero, added to the input: an untrained block is the identity."""

    def __init__(
        self, ch: int, context_dim: int, heads: int, groups: int, side: int | None = None
    ) -> None:
        super().__init__()
        # side: the feature map's width, for a fixed code of each cell's position (None: none)
        positions = None if side is None else position_code(side, ch)  # (side * side, C)
        self.register_buffer("positions", positions, persistent=False)
        self.norm = nn.GroupNorm(groups, ch)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.norm1 = nn.LayerNorm(ch)
        self.self_attn = Attention(ch, heads)
        self.norm2 = nn.LayerNorm(ch)
        self.cross_attn = Attention(ch, heads, context_dim)  # keys and values from the text
        self.norm3 = nn.LayerNorm(ch)
        self.mlp = FeedForward(ch)
        self.proj_out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, text: TextStates) -> torch.Tensor:
        states, mask = text  # (B, S, D), (B, S): pad tokens are False, left out of the keys
        b, c, h, w = x.shape
        z = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.positions is not None:
            z = z + self.positions.to(z.dtype)  # each cell's (row, column), the same in a batch
        z = z + self.self_attn(self.norm1(z))
        z = z + self.cross_attn(self.norm2(z), states, mask)  # each position reads the prompt
        z = z + self.mlp(self.norm3(z))
        return x + self.proj_out(z.transpose(1, 2).reshape(b, c, h, w))  # (B, C, H, W)


class Block(nn.Module):
    """A residual block, optionally followed by self-attention and by cross-attention to text."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        groups: int,
        dropout: float,
        attention: bool,
        cross: tuple[int, int, int | None] | None = None,  # (text width, heads, side or None
        # for no position code): a SpatialTransformer
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, groups, dropout)
        self.attn = SelfAttention(out_ch, groups) if attention else None
        self.cross = None
        if cross is not None:
            width, heads, side = cross
            self.cross = SpatialTransformer(out_ch, width, heads, groups, side)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, text: TextStates | None = None
    ) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None:
            assert text is not None, "a block with cross-attention needs the text states"
            x = self.cross(x, text)
        return x


class Downsample(nn.Module):
    """Halve height and width with a stride-2 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour repeat, then a 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Predicts eps (or x0, or v) from a noised image x_t, its timestep t and an optional label y."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        base, groups, drop = config.base_channels, config.norm_groups, config.dropout
        emb_dim = 4 * base

        self.time_in = nn.Linear(base, emb_dim)
        self.time_out = nn.Linear(emb_dim, emb_dim)
        # MeanFlow's interval t - r (ModelConfig.interval_input): its own MLP, whose last layer
        # starts at zero, so a flow matching network it is added to starts as u(z, r, t) = v(z, t).
        self.interval_in = self.interval_out = None
        if config.interval_input:
            self.interval_in = nn.Linear(base, emb_dim)
            self.interval_out = nn.Linear(emb_dim, emb_dim)
            nn.init.zeros_(self.interval_out.weight)
            nn.init.zeros_(self.interval_out.bias)
        # Index num_classes is the learned null label used for classifier-free guidance.
        self.label_emb = (
            nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes > 0 else None
        )
        # A text model: the prompt's encoder, and cross-attention at config.cross_levels.
        self.text = make_text_encoder(config) if config.text_vocab else None
        text_levels = config.cross_levels

        def cross(level: int) -> tuple[int, int, int | None] | None:
            if level not in text_levels:
                return None
            side = config.image_size >> level if config.cross_positions else None
            return config.text_width, config.text_heads, side

        self.conv_in = nn.Conv2d(config.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base]
        ch = base
        levels = len(config.channel_mults)
        for level, mult in enumerate(config.channel_mults):
            attention = level in config.attention_levels
            for _ in range(config.num_res_blocks):
                self.down.append(
                    Block(ch, base * mult, emb_dim, groups, drop, attention, cross(level))
                )
                ch = base * mult
                skip_channels.append(ch)
            if level < levels - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid1 = Block(ch, ch, emb_dim, groups, drop, config.mid_attention, cross(levels - 1))
        self.mid2 = Block(ch, ch, emb_dim, groups, drop, False)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            attention = level in config.attention_levels
            for _ in range(config.num_res_blocks + 1):
                in_ch = ch + skip_channels.pop()
                self.up.append(
                    Block(in_ch, base * mult, emb_dim, groups, drop, attention, cross(level))
                )
                ch = base * mult
            if level > 0:
                self.up.append(Upsample(ch))
        assert not skip_channels, "every skip must be consumed"

        self.norm_out = nn.GroupNorm(groups, ch)
        out_channels = config.in_channels * (2 if config.learn_variance else 1)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def embed(
        self, t: torch.Tensor, y: torch.Tensor | None, interval: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Time embedding through the MLP, plus the label embedding (and, for a network with
        ``interval_input``, the interval's: none given is an interval of 0); shape (B, 4 * base)."""
        sinusoid = timestep_embedding(t, self.config.base_channels).to(self.time_in.weight.dtype)
        emb = self.time_out(F.silu(self.time_in(sinusoid)))  # (B, E)
        if self.interval_in is not None and self.interval_out is not None:
            h = torch.zeros_like(t) if interval is None else interval
            sinusoid = timestep_embedding(h, self.config.base_channels).to(emb.dtype)
            emb = emb + self.interval_out(F.silu(self.interval_in(sinusoid)))
        if self.label_emb is not None:
            if y is None:  # unconditional call of a conditional model: use the null label
                y = torch.full(t.shape, self.config.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.label_emb(y)
        return emb

    def encode_text(self, tokens: torch.Tensor | None, batch: int) -> TextStates | None:
        """A text model's states of the prompts ``tokens`` (B, L) (None: the empty prompt, all
        pad); None for a model without text conditioning, which refuses tokens in one line."""
        if self.text is None:
            if tokens is not None:
                raise ValueError(
                    "this U-Net has no text conditioning (it was not trained with --text): "
                    "it takes no prompt"
                )
            return None
        if tokens is None:
            device = self.conv_in.weight.device
            tokens = torch.zeros(batch, self.config.text_length, dtype=torch.long, device=device)
        return self.text(tokens)  # (B, S, D), (B, S)

    def encode(
        self, x: torch.Tensor, emb: torch.Tensor, text: TextStates | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The down path and the middle blocks: the lowest-resolution features, and the skips (the
        input of every down module, then the last one's output) that the up path consumes."""
        h = self.conv_in(x)  # (B, base, H, W)
        skips = [h]
        for module in self.down:
            h = module(h, emb, text) if isinstance(module, Block) else module(h)
            skips.append(h)  # (B, C_level, H / 2^level, W / 2^level)
        return self.mid2(self.mid1(h, emb, text), emb), skips  # (B, C_low, H_low, W_low)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        with_variance: bool = False,
        interval: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prediction (eps, x0 or v), (B, C, H, W); with ``with_variance`` (a network with
        ``learn_variance``) the prediction and the variance output, (B, 2C, H, W). ``interval``
        (B,): a MeanFlow network's t - r, in the units of ``t`` (ModelConfig.interval_input).
        ``tokens`` (B, L): a text model's prompts (``models.text.tokenize``; None: the empty
        prompt)."""
        emb = self.embed(t, y, interval)  # (B, E)
        text = self.encode_text(tokens, x.shape[0])  # (B, S, D) and (B, S), or None
        h, skips = self.encode(x, emb, text)
        for module in self.up:
            if isinstance(module, Block):
                h = module(torch.cat([h, skips.pop()], dim=1), emb, text)  # concat skip
            else:
                h = module(h)  # Upsample
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W), or (B, 2C, H, W)
        if not self.config.learn_variance:
            if with_variance:
                raise ValueError(
                    "this U-Net has no variance output (it was not trained with --learn-variance)"
                )
            return out
        return out if with_variance else out[:, : self.config.in_channels]  # prediction first


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
