"""What a trained U-Net computes inside: the numbers behind ``difflab inspect``'s pictures.

- :func:`feature_maps`: the output of every U-Net level (the last block at each resolution, on the
  way down, in the middle, on the way up) for one image noised to several timesteps, captured with
  forward hooks on the real forward pass.
- :func:`bottleneck_attention`: the softmax(q k^T / sqrt(C)) weights of the middle block's
  self-attention (Vaswani et al. 2017, Eq. 1), recomputed from the attention layer's own input.
- :func:`cross_attention_maps`: a text model's cross-attention weights from each image position
  to each token of the prompt, recomputed from every SpatialTransformer's cross-attention input,
  averaged over heads and blocks and brought to the image's resolution (the maps of
  Prompt-to-Prompt, Hertz et al. 2022, Sec. 3.1).
- :func:`time_embedding_similarity`: cosine similarities between the learned time embeddings (the
  MLP after the sinusoid of Vaswani et al., Sec. 3.5), and between the sinusoids themselves.
- :func:`class_embedding_projection`: a conditional model's label embeddings projected onto their
  two principal axes (the null label of classifier-free guidance included).

The pictures are drawn by ``viz.plot_feature_maps`` and friends; this module only computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from difflab.diffusion import network_inputs, q_sample
from difflab.models.text import Attention
from difflab.models.unet import (
    Block,
    Downsample,
    SelfAttention,
    SpatialTransformer,
    UNet,
    timestep_embedding,
)
from difflab.schedules import Schedule


@dataclass
class Level:
    """One U-Net level's output for each timestep asked for."""

    name: str  # e.g. "down 14x14", "mid 7x7", "up 28x28"
    features: torch.Tensor  # (len(t), C, h, w)


Reading = tuple[Schedule, str]  # (schedule, prediction): how the network is called at a DDPM t
# (``diffusion.network_inputs``: a flow network at the flow point with the same SNR); None: as is


def noised(
    x0: torch.Tensor, timesteps: Sequence[int], schedule: Schedule, generator: torch.Generator
) -> torch.Tensor:
    """One image ``x0`` (C, H, W) noised to each timestep with the same eps: (len(t), C, H, W)."""
    eps = torch.randn(x0.shape, generator=generator).expand(len(timesteps), *x0.shape)
    t = torch.tensor(list(timesteps), dtype=torch.long)
    return q_sample(x0.expand_as(eps), t, eps, schedule)


def check_timesteps(timesteps: Sequence[int], schedule: Schedule) -> None:
    top = schedule.num_timesteps - 1
    bad = [t for t in timesteps if not 0 <= t <= top]
    if bad or not timesteps:
        raise ValueError(f"timesteps {list(timesteps)} must lie in 0..{top} (this schedule's t)")


def _on(value: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if value is None else value.to(device)


def _stage_modules(model: UNet) -> list[tuple[str, torch.nn.Module]]:
    """(stage, module) for every block whose output is a level's output candidate, in order."""
    out: list[tuple[str, torch.nn.Module]] = [("down", model.conv_in)]
    out += [("down", m) for m in model.down if isinstance(m, Block | Downsample)]
    out += [("mid", model.mid2)]
    out += [("up", m) for m in model.up if isinstance(m, Block)]
    return out


@torch.no_grad()
def feature_maps(
    model: UNet,
    x_t: torch.Tensor,
    timesteps: Sequence[int],
    y: torch.Tensor | None = None,
    reading: Reading | None = None,
    tokens: torch.Tensor | None = None,
) -> list[Level]:
    """Each level's output for the batch ``x_t`` (B, C, H, W) at ``timesteps`` (one per image).

    A level is the last output at one resolution within one stage, so ``down 28x28`` is the last
    block before the first downsampling (a Downsample's output starts the next level), and the
    up levels are read before each upsampling. Captured by forward hooks during ``model(x_t, t)``.
    ``y``: a conditional model's labels; ``tokens`` (B, L): a text model's prompt (None: empty).
    """
    captured: list[tuple[str, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(
            lambda _m, _inp, out, stage=stage: captured.append((stage, out.detach().cpu()))
        )
        for stage, module in _stage_modules(model)
    ]
    device = next(model.parameters()).device
    try:
        t = torch.tensor(list(timesteps), dtype=torch.long, device=device)
        x, t = network_inputs(x_t.to(device), t, *reading) if reading else (x_t.to(device), t)
        model(x, t, _on(y, device), tokens=_on(tokens, device))
    finally:
        for hook in hooks:
            hook.remove()
    levels: dict[str, torch.Tensor] = {}  # insertion order is the order of the forward pass
    for stage, h in captured:
        levels[f"{stage} {h.shape[-2]}x{h.shape[-1]}"] = h  # later blocks replace earlier ones
    return [Level(name, h) for name, h in levels.items()]


@torch.no_grad()
def bottleneck_attention(
    model: UNet,
    x_t: torch.Tensor,
    timesteps: Sequence[int],
    y: torch.Tensor | None = None,
    reading: Reading | None = None,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The middle block's attention weights, (B, h*w queries, h*w keys); rows sum to 1.

    Recomputed from the input the attention layer saw in the real forward pass:
    A = softmax(q k^T / sqrt(C)) with q, k the first two thirds of its 1x1 qkv convolution of
    the group-normed input, as ``SelfAttention.forward`` computes them.
    """
    attn = model.mid1.attn
    if not isinstance(attn, SelfAttention):
        raise ValueError(
            "this model has no attention in its middle block (trained with mid_attention off), "
            "so there is no attention map to draw"
        )
    seen: list[torch.Tensor] = []
    hook = attn.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
    device = next(model.parameters()).device
    try:
        t = torch.tensor(list(timesteps), dtype=torch.long, device=device)
        x, t = network_inputs(x_t.to(device), t, *reading) if reading else (x_t.to(device), t)
        model(x, t, _on(y, device), tokens=_on(tokens, device))
    finally:
        hook.remove()
    x = seen[0]
    b, c, h, w = x.shape
    qkv = attn.qkv(attn.norm(x)).reshape(b, 3, c, h * w)  # (B, 3, C, HW)
    q, k = qkv[:, 0].transpose(1, 2), qkv[:, 1].transpose(1, 2)  # (B, HW, C)
    return torch.softmax(q @ k.transpose(1, 2) / c**0.5, dim=-1).cpu()  # (B, HW, HW)


@dataclass
class CrossAttention:
    """Where each image position looks in the prompt: a text model's cross-attention weights."""

    tokens: list[str]  # the attended tokens' names: "<start>" then the words (transformer), or
    # "<bag of words>" (the bag encoder's single state)
    maps: torch.Tensor  # (B, len(tokens), H, W): the weight of each token at each pixel, the
    # mean over heads and blocks, at the image's resolution; sums to 1 over tokens
    blocks: list[str]  # the blocks averaged, e.g. "down 8x8", "mid 8x8", "up 8x8"


@torch.no_grad()
def cross_attention_maps(
    model: UNet,
    x_t: torch.Tensor,
    timesteps: Sequence[int],
    tokens: torch.Tensor,
    words: Sequence[str],
    reading: Reading | None = None,
) -> CrossAttention:
    """The cross-attention of ``x_t`` (B, C, H, W) at ``timesteps`` to the prompt ``tokens``
    (B, L), one prompt for the whole batch (its ``words``, as tokenised).

    Each SpatialTransformer's weights softmax(q k^T / sqrt(d_head)) over the unmasked tokens are
    recomputed from its cross-attention's own inputs in the real forward pass (queries from the
    image positions, keys from the text states), averaged over heads, upsampled (nearest) to
    H x W and averaged over the blocks.
    """
    blocks = [
        (name, m.cross.cross_attn)
        for name, m in _named_blocks(model)
        if isinstance(m, Block) and isinstance(m.cross, SpatialTransformer)
    ]
    if not blocks:
        raise ValueError("this model has no cross-attention (it was not trained with --text)")
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    hooks = [
        attn.register_forward_hook(lambda _m, inp, _o: seen.append(tuple(i.detach() for i in inp)))
        for _, attn in blocks
    ]
    device = next(model.parameters()).device
    try:
        t = torch.tensor(list(timesteps), dtype=torch.long, device=device)
        x, t = network_inputs(x_t.to(device), t, *reading) if reading else (x_t.to(device), t)
        model(x, t, tokens=tokens.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    size = x_t.shape[-2:]
    total = None
    for (_, attn), (queries, states, mask) in zip(blocks, seen, strict=True):
        weights = attention_weights(attn, queries, states, mask).mean(1)  # (B, HW, S)
        b, hw, n = weights.shape
        side = math.isqrt(hw)
        grid = weights.transpose(1, 2).reshape(b, n, side, side)
        grid = F.interpolate(grid, size=size, mode="nearest")  # (B, S, H, W)
        total = grid if total is None else total + grid
    assert total is not None
    mask = seen[0][2][0].cpu()  # (S,): one prompt for the batch
    names = ["<start>", *words] if len(mask) > 1 else ["<bag of words>"]
    maps = (total / len(blocks))[:, mask.to(total.device)].cpu()
    return CrossAttention(names[: maps.shape[1]], maps, [name for name, _ in blocks])


def _named_blocks(model: UNet) -> list[tuple[str, torch.nn.Module]]:
    """The U-Net's blocks named by stage and resolution, in the order of the forward pass."""
    size = model.config.image_size
    named: list[tuple[str, torch.nn.Module]] = []
    for m in model.down:
        if isinstance(m, Downsample):
            size //= 2
        named.append((f"down {size}x{size}", m))
    named.append((f"mid {size}x{size}", model.mid1))
    for m in model.up:
        named.append((f"up {size}x{size}", m))
        if not isinstance(m, Block):  # Upsample
            size *= 2
    return named


def attention_weights(
    attn: Attention, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``Attention``'s softmax weights per head for queries ``x`` (B, N, D) and keys from
    ``context`` (B, S, C), masked keys at 0: (B, heads, N, S), as its forward computes them."""
    b, _, d = x.shape
    h = attn.heads

    def split(z: torch.Tensor) -> torch.Tensor:
        return z.reshape(b, -1, h, d // h).transpose(1, 2)  # (B, heads, N or S, D / heads)

    q, k = split(attn.to_q(x)), split(attn.to_k(context))
    logits = q @ k.transpose(-1, -2) / (d // h) ** 0.5  # (B, heads, N, S)
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(logits.float(), dim=-1)  # (B, heads, N, S)


@torch.no_grad()
def time_embeddings(model: UNet, timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sinusoids, learned embeddings) of ``timesteps``: (N, base) and (N, 4 base), no label."""
    device = next(model.parameters()).device
    t = torch.tensor(list(timesteps), dtype=torch.long, device=device)
    sinusoid = timestep_embedding(t, model.config.base_channels).to(model.time_in.weight.dtype)
    learned = model.time_out(F.silu(model.time_in(sinusoid)))
    return sinusoid.cpu(), learned.cpu()


def cosine_similarity_matrix(vectors: torch.Tensor) -> np.ndarray:
    """(N, N) cosine similarities of the rows of ``vectors`` (N, D)."""
    unit = F.normalize(vectors.double(), dim=1)
    return (unit @ unit.T).numpy()


def time_embedding_similarity(
    model: UNet, num_timesteps: int, points: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, similarity of the sinusoids, similarity of the learned embeddings) at ``points`` t."""
    t = np.unique(np.linspace(0, num_timesteps - 1, points).round().astype(np.int64))
    sinusoid, learned = time_embeddings(model, t.tolist())
    return t, cosine_similarity_matrix(sinusoid), cosine_similarity_matrix(learned)


def principal_projection(vectors: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``vectors`` (N, D) on their first ``dims`` principal axes, and the share of the
    variance each axis explains (PCA by the SVD of the centred rows)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / max(float(np.sum(s**2)), 1e-300)
    return u[:, :dims] * s[:dims], share[:dims]


def class_embedding_projection(model: UNet) -> tuple[np.ndarray, np.ndarray]:
    """A conditional model's label embeddings (classes, then the null label) in 2-D, and the
    variance share of the two axes."""
    if model.label_emb is None:
        raise ValueError(
            "this model is unconditional (no class embeddings); train with --conditional"
        )
    weights = model.label_emb.weight.detach().double().cpu().numpy()  # (K + 1, E)
    return principal_projection(weights)


def query_index(row: int, col: int, image_size: int, grid: int) -> int:
    """The bottleneck position (flattened, row-major) under image pixel (row, col)."""
    if not (0 <= row < image_size and 0 <= col < image_size):
        raise ValueError(
            f"query pixel ({row}, {col}) is outside the {image_size}x{image_size} image"
        )
    return (row * grid // image_size) * grid + col * grid // image_size
