"""Text encoders for a prompt-conditioned U-Net, trained with it from scratch, and their tokenizer.

    prompt --tokenize--> ids (B, L), 0 = pad
        transformer: [start] + token embeddings + learned positions
                     --> pre-norm layers (self-attention over non-pad tokens, MLP) --> LayerNorm
                     --> states (B, 1 + L, D), mask (B, 1 + L): the start token and the words
        bag:         mean of the words' embeddings (no positions, no attention)
                     --> states (B, 1, D), mask (B, 1); the empty prompt is a learned null vector

The U-Net's cross-attention blocks (``models.unet.SpatialTransformer``, Rombach et al. 2022)
attend to the states where the mask is True, so a pad token changes nothing. The transformer's
start token is always attended (Vaswani et al.'s pre-norm layers need one key at least), so the
empty prompt, all pad, which classifier-free guidance trains by prompt dropout, has a state of
its own: the unconditional model. The bag of words is the ablation: it sees which words a prompt
has, not their order, so "a red 3 left of a blue 7" and "a blue 7 left of a red 3" are one bag.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from difflab.config import ModelConfig

TextStates = tuple[torch.Tensor, torch.Tensor]  # (B, S, D) states, (B, S) bool: attend to it


def tokenize(prompts: Sequence[str], vocabulary: Sequence[str], length: int) -> torch.Tensor:
    """Prompts -> (N, length) int64 token ids, indices into ``vocabulary`` (whose entry 0 is the
    pad token), padded with 0. Words are split on whitespace; a word outside the vocabulary or a
    prompt of more than ``length`` words is a one-line ValueError."""
    ids = {word: i for i, word in enumerate(vocabulary) if i > 0}
    out = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        words = prompt.split()
        if len(words) > length:
            raise ValueError(f"prompt {prompt!r} has {len(words)} words; at most {length} fit")
        for j, word in enumerate(words):
            if word not in ids:
                raise ValueError(
                    f"unknown word {word!r} in prompt {prompt!r}; this model knows: "
                    f"{' '.join(vocabulary[1:])}"
                )
            out[i, j] = ids[word]
    return out


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B, N, D) to ``context`` (B, S, C) (itself if None), keys
    where ``mask`` (B, S) is False left out (Vaswani et al. 2017, Eq. 1)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        h = self.heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(b, -1, h, d // h).transpose(1, 2)  # (B, heads, N or S, D / heads)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        keep = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, S): True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, heads, N, D / heads)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, 4x wide in the middle."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """A pre-norm transformer layer: x + attn(LN(x)) over the non-pad tokens, then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)  # (B, S, D)
        return x + self.mlp(self.norm2(x))


class TransformerTextEncoder(nn.Module):
    """Token embeddings and learned positions through ``layers`` pre-norm transformer layers, a
    learned start token first; states (B, 1 + L, D) and their mask (start and words True)."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, length: int) -> None:
        super().__init__()
        self.token_emb = nn.Embedding(vocab, width)
        self.start = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(1, length + 1, width) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> TextStates:
        b, n = tokens.shape
        x = torch.cat([self.start.expand(b, -1, -1), self.token_emb(tokens)], 1)  # (B, 1 + L, D)
        x = x + self.pos_emb[:, : n + 1]
        mask = torch.cat([tokens.new_ones(b, 1, dtype=torch.bool), tokens != 0], 1)  # (B, 1 + L)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x), mask


class BagOfWordsEncoder(nn.Module):
    """The ablation: the mean of the prompt's word embeddings (pad left out), one state (B, 1, D);
    no positions and no attention, so word order is invisible. The empty prompt gets a learned
    null vector."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.token_emb = nn.Embedding(vocab, width)
        self.null = nn.Parameter(torch.randn(1, width) * 0.02)

    def forward(self, tokens: torch.Tensor) -> TextStates:
        words = (tokens != 0).to(self.token_emb.weight.dtype)[..., None]  # (B, L, 1)
        count = words.sum(1)  # (B, 1)
        # Pad rows are replaced by 0 (torch.where, not a product): no pad embedding leaks in.
        emb = torch.where(words.bool(), self.token_emb(tokens), 0.0)  # (B, L, D)
        mean = emb.sum(1) / count.clamp(min=1)  # (B, D)
        state = torch.where(count > 0, mean, self.null)  # (B, D): the null vector for ""
        mask = tokens.new_ones(tokens.shape[0], 1, dtype=torch.bool)  # (B, 1); not len(): traced
        return state[:, None], mask


def make_text_encoder(config: ModelConfig) -> TransformerTextEncoder | BagOfWordsEncoder:
    """The text encoder ``config`` asks for (``ModelConfig.text_encoder``)."""
    if config.text_encoder == "bag":
        return BagOfWordsEncoder(config.text_vocab, config.text_width)
    return TransformerTextEncoder(
        config.text_vocab, config.text_width, config.text_layers, config.text_heads,
        config.text_length,
    )  # fmt: skip
