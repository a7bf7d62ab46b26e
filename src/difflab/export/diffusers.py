"""A pixel diffusion checkpoint as a diffusers folder that ``DDPMPipeline.from_pretrained`` loads.

    DIR/model_index.json                         DDPMPipeline: unet + scheduler
    DIR/unet/config.json                         a UNet2DModel configuration ...
    DIR/unet/diffusion_pytorch_model.safetensors ... holding difflab's weights, renamed
    DIR/scheduler/scheduler_config.json          a DDPMScheduler with difflab's schedule
    DIR/README.md                                a model card (hub front matter, data, training)

The U-Net maps onto diffusers' ``UNet2DModel`` module for module (``models/unet.py``):

    difflab                                     UNet2DModel
    timestep_embedding [sin, cos], w_i =        Timesteps(flip_sin_to_cos=False, freq_shift=0):
      10000^(-i / half)                           exponent -log(10000) i / (half - 0)
    time_in, SiLU, time_out                     time_embedding.linear_1, SiLU, linear_2
    label_emb (K + 1 rows, K = null label)      class_embedding (num_class_embeds = K + 1)
    conv_in (-> base channels)                  conv_in (-> block_out_channels[0])
    level l: n Blocks (+attn), Downsample       down_blocks[l]: DownBlock2D / AttnDownBlock2D,
      (stride-2 3x3 conv)                         downsamplers.0 (conv, padding 1)
    ResBlock norm1 conv1 emb_proj norm2         resnets[j]: norm1 conv1 time_emb_proj norm2
      conv2 skip                                  conv2 conv_shortcut (time_scale_shift default)
    SelfAttention norm, qkv (1x1 conv, q|k|v    attentions[j]: group_norm, to_q | to_k | to_v
      stacked on channels), proj (1x1 conv),      (Linear), to_out.0; one head
      one head, scale 1/sqrt(C)                   (attention_head_dim None: head dim = channels)
    mid1 (ResBlock + attn), mid2 (ResBlock)     mid_block: resnets.0, attentions.0, resnets.1
                                                  (add_attention = mid_attention)
    up: n + 1 Blocks (concat skip), Upsample    up_blocks: UpBlock2D / AttnUpBlock2D, upsamplers.0
      (nearest x2, 3x3 conv)                      (nearest x2, conv); the same skip order
    norm_out, SiLU, conv_out                    conv_norm_out, conv_act, conv_out

What does not map, refused in one line: a first level with channel_mults[0] != 1 (UNet2DModel's
conv_in and time embedding are sized by the first level's channels, difflab's by base_channels),
and every kind but pixel diffusion (latent diffusion needs difflab's autoencoder, flow matching
its own time and ODE, the distilled students their own samplers). A class-conditional model
exports its label embedding as ``class_embedding``; DDPMPipeline passes no labels, so it is
drawn with a loop of one's own (docs/export.md).

The schedule is diffusers' own named one: linear with beta_start and beta_end scaled by 1000 / T
(``schedules.linear_betas``) or ``squaredcos_cap_v2`` (Nichol & Dhariwal's cosine with s = 0.008
and betas clipped at 0.999, the same formula as ``schedules.cosine_betas``); diffusers computes
it in float32, so alpha_bar agrees to float32 rounding. x0 is clipped to [-1, 1] as difflab
clips it, timesteps are spaced "trailing" as difflab's default, and the DDPM variance is
"fixed_large" (difflab's default ``--variance beta``).

Before anything is written the exported UNet2DModel is run beside difflab's U-Net; the folder is
written to a temporary sibling and renamed into place, so it appears whole or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import difflab
from difflab.checkpoint import Checkpoint, load_checkpoint
from difflab.config import ModelConfig, RunConfig
from difflab.data import EMOJI_DATASOURCE, dataset_attribution
from difflab.kinds import load_model
from difflab.models.unet import Block, Downsample, UNet, Upsample
from difflab.sampling import PixelSpace

# difflab's prediction -> diffusers' prediction_type
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
TOLERANCE = 1e-4  # the largest |UNet2DModel - difflab| accepted, times max(1, |output|)
CHECK_BATCH = 3  # images in the check batch, at timesteps T-1, ~T/2 and 0
# The data sets' terms as far as they are known: (the hub's license id, a sentence for the card).
DATA_LICENSES = {
    "mnist": ("other", "MNIST (Yann LeCun, Corinna Cortes, Christopher Burges): commonly cited "
              "as CC BY-SA 3.0; see the data set's terms."),
    "fashion-mnist": ("mit", "Fashion-MNIST (Zalando Research) is released under the MIT "
                      "licence."),
    "emoji": ("mit", "difflab's built-in 8x8 emoji set, drawn by difflab (MIT)."),
    "shapes": ("mit", "difflab's generated shapes (MIT)."),
}  # fmt: skip
UNKNOWN_TERMS = ("other", "see the data set's terms.")


@dataclass(frozen=True)
class DiffusersExportResult:
    """What ``export_diffusers`` wrote."""

    out_dir: Path  # the folder DDPMPipeline.from_pretrained loads
    prediction_type: str  # diffusers' name of what the network predicts
    beta_schedule: str  # diffusers' name of the schedule
    num_classes: int  # 0: unconditional; else class_embedding has num_classes + 1 rows
    max_abs_diff: float  # the largest |UNet2DModel - difflab U-Net| on the check batch


def export_diffusers(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ema: bool = True,
    overwrite: bool = False,
) -> DiffusersExportResult:
    """Export the pixel diffusion model ``checkpoint`` (its EMA weights unless ``ema`` is False)
    as the diffusers folder ``out_dir`` (module docstring). A configuration or kind with no
    diffusers equivalent is refused in one line; an existing folder unless ``overwrite`` (and
    then only one that holds a model_index.json)."""
    diffusers = _import_diffusers()
    out = Path(out_dir)
    _check_target(out, overwrite)

    # Load: the kind table decides what the checkpoint is; only pixel diffusion maps.
    ckpt = load_checkpoint(checkpoint)
    loaded = load_model(ckpt, "cpu", ema=ema)
    config = loaded.config
    if loaded.kind != "diffusion" or not isinstance(loaded.space, PixelSpace):
        raise ValueError(
            f"checkpoint {ckpt.path} is a {loaded.kind} model; a diffusers export is made of a "
            "pixel diffusion model (kind diffusion) only"
        )
    assert isinstance(loaded.model, UNet) and loaded.schedule is not None
    prediction = config.diffusion.prediction
    if prediction not in PREDICTION_TYPES:
        raise ValueError(
            f"checkpoint {ckpt.path} predicts {prediction!r}; diffusers' schedulers read "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    check_mappable(config.model)

    # Build: a UNet2DModel holding difflab's weights, checked against difflab's U-Net.
    model = loaded.model.eval()
    unet = diffusers.UNet2DModel(**unet_config(config.model)).eval()
    unet.load_state_dict(diffusers_state_dict(model), strict=True)
    max_diff = _check_parity(model, unet, loaded.schedule.num_timesteps)
    scheduler = diffusers.DDPMScheduler(**scheduler_config(config, clip=loaded.space.clip_x0))
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)

    # Write: into a temporary sibling, renamed into place when complete.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise ValueError(f"cannot write {out}: {err.strerror or err}") from None
    try:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        card = model_card(ckpt, config, scheduler.config, ema=ema, max_abs_diff=max_diff)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return DiffusersExportResult(
        out_dir=out, prediction_type=PREDICTION_TYPES[prediction],
        beta_schedule=scheduler.config.beta_schedule, num_classes=config.model.num_classes,
        max_abs_diff=max_diff,
    )  # fmt: skip


def _import_diffusers() -> ModuleType:
    try:
        import diffusers
    except ImportError:
        raise ValueError(
            'a diffusers export needs the diffusers package: pip install "diffusers>=0.30"'
        ) from None
    return diffusers


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a target that exists (unless ``overwrite`` and it is an export)."""
    if not out.exists():
        return
    if not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace an export")
    if not (out / "model_index.json").is_file():
        raise ValueError(f"{out} exists and holds no model_index.json: not replacing it")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``out``, moving an old export aside first."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old)


# The mapping ------------------------------------------------------------------------------------


def check_mappable(mc: ModelConfig) -> None:
    """Refuse, in one line, a U-Net configuration with no UNet2DModel equivalent."""
    if mc.text_vocab:
        raise ValueError("a text-conditioned U-Net (train --text) is not exported to diffusers yet")
    if mc.learn_variance:
        raise ValueError(
            "a U-Net trained with --learn-variance is not exported to diffusers yet (its "
            "scheduler would need variance_type learned_range and a parity check of its steps)"
        )
    if mc.channel_mults[0] != 1:
        raise ValueError(
            f"a U-Net with channel_mults[0] = {mc.channel_mults[0]} has no UNet2DModel "
            "equivalent: UNet2DModel's conv_in and time embedding take the first level's "
            f"channels, difflab's take base_channels ({mc.base_channels})"
        )


def unet_config(mc: ModelConfig) -> dict[str, Any]:
    """The UNet2DModel arguments that build difflab's U-Net ``mc`` module for module."""
    levels = range(len(mc.channel_mults))
    attn = [level in mc.attention_levels for level in levels]
    return {
        "sample_size": mc.image_size,
        "in_channels": mc.in_channels,
        "out_channels": mc.in_channels,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": False,  # difflab's embedding is [sin, cos]
        "freq_shift": 0,  # w_i = 10000^(-i / half)
        "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        "block_out_channels": tuple(mc.base_channels * m for m in mc.channel_mults),
        "layers_per_block": mc.num_res_blocks,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": mc.dropout,
        "act_fn": "silu",
        "attention_head_dim": None,  # one head of all the block's channels
        "norm_num_groups": mc.norm_groups,
        "norm_eps": 1e-5,  # torch's GroupNorm default, which difflab uses
        "resnet_time_scale_shift": "default",
        "add_attention": mc.mid_attention,
        "class_embed_type": None,
        "num_class_embeds": mc.num_classes + 1 if mc.num_classes else None,
    }


def diffusers_state_dict(model: UNet) -> dict[str, torch.Tensor]:
    """difflab's weights under UNet2DModel's names (module docstring's table)."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str) -> None:  # a conv, linear, norm or embedding: same layout
        for name in ("weight", "bias"):
            if f"{src}.{name}" in sd:
                out[f"{dst}.{name}"] = sd[f"{src}.{name}"]

    def block(src: str, resnet: str, attention: str | None) -> None:
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("emb_proj", "time_emb_proj"),
                     ("norm2", "norm2"), ("conv2", "conv2"), ("skip", "conv_shortcut")):  # fmt: skip
            take(f"{src}.res.{a}", f"{resnet}.{b}")
        if f"{src}.attn.qkv.weight" not in sd:
            return
        assert attention is not None
        take(f"{src}.attn.norm", f"{attention}.group_norm")
        qkv_w = sd[f"{src}.attn.qkv.weight"].flatten(1)  # (3C, C): q, k, v stacked
        qkv_b = sd[f"{src}.attn.qkv.bias"]  # (3C,)
        for name, w, b in zip(
            ("to_q", "to_k", "to_v"), qkv_w.chunk(3), qkv_b.chunk(3), strict=True
        ):
            out[f"{attention}.{name}.weight"], out[f"{attention}.{name}.bias"] = w, b
        out[f"{attention}.to_out.0.weight"] = sd[f"{src}.attn.proj.weight"].flatten(1)  # (C, C)
        out[f"{attention}.to_out.0.bias"] = sd[f"{src}.attn.proj.bias"]

    take("conv_in", "conv_in")
    take("time_in", "time_embedding.linear_1")
    take("time_out", "time_embedding.linear_2")
    take("label_emb", "class_embedding")
    for src, dst, modules in (("down", "down_blocks", model.down), ("up", "up_blocks", model.up)):
        level, j = 0, 0  # diffusers numbers blocks per level, difflab runs them in one list
        for i, module in enumerate(modules):
            prefix = f"{dst}.{level}"
            if isinstance(module, Block):
                block(f"{src}.{i}", f"{prefix}.resnets.{j}", f"{prefix}.attentions.{j}")
                j += 1
            else:
                assert isinstance(module, (Downsample, Upsample))
                resampler = "downsamplers" if isinstance(module, Downsample) else "upsamplers"
                take(f"{src}.{i}.conv", f"{prefix}.{resampler}.0.conv")
                level, j = level + 1, 0
    block("mid1", "mid_block.resnets.0", "mid_block.attentions.0")
    block("mid2", "mid_block.resnets.1", None)
    take("norm_out", "conv_norm_out")
    take("conv_out", "conv_out")
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values()), (
        "every difflab weight must be mapped once"
    )
    return out


def scheduler_config(config: RunConfig, *, clip: bool) -> dict[str, Any]:
    """DDPMScheduler (and DDIMScheduler) arguments that reproduce difflab's schedule and sampling
    defaults: named betas, the prediction, x0 clipped to [-1, 1], trailing timesteps."""
    dc = config.diffusion
    T = dc.timesteps
    if dc.schedule == "linear":  # schedules.linear_betas: the endpoints scaled by 1000 / T
        betas: dict[str, Any] = {
            "beta_schedule": "linear", "beta_start": 1e-4 * 1000 / T, "beta_end": 0.02 * 1000 / T,
        }  # fmt: skip
    else:
        assert dc.schedule == "cosine"  # schedules.cosine_betas: s = 0.008, max_beta 0.999
        betas = {"beta_schedule": "squaredcos_cap_v2"}
    return {
        "num_train_timesteps": T,
        **betas,
        "prediction_type": PREDICTION_TYPES[dc.prediction],
        "variance_type": "fixed_large",  # difflab's default DDPM variance, beta
        "clip_sample": clip,
        "clip_sample_range": 1.0,
        "thresholding": False,
        "timestep_spacing": "trailing",
        "steps_offset": 0,
    }


@torch.no_grad()
def _check_parity(model: UNet, unet: torch.nn.Module, num_timesteps: int) -> float:
    """max |UNet2DModel - difflab| on one batch; a mismatch beyond TOLERANCE is a bug here."""
    mc = model.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(CHECK_BATCH, mc.in_channels, mc.image_size, mc.image_size, generator=gen)
    t = torch.tensor([num_timesteps - 1, num_timesteps // 2, 0])  # (B,)
    labels = torch.arange(CHECK_BATCH) % (mc.num_classes + 1) if mc.num_classes else None
    ours = model(x, t, labels)
    theirs = unet(x, t, class_labels=labels).sample
    diff = float((ours - theirs).abs().max())
    assert diff <= TOLERANCE * max(1.0, float(ours.abs().max())), (
        f"UNet2DModel differs from difflab's U-Net by {diff:.2e}"
    )
    return diff


# The model card ---------------------------------------------------------------------------------


def model_card(
    ckpt: Checkpoint, config: RunConfig, scheduler: Any, *, ema: bool, max_abs_diff: float
) -> str:
    """README.md: the front matter the hubs read, then what the model is and how it was trained."""
    tc, dc, mc = config.train, config.diffusion, config.model
    vendors = tc.vendors if tc.data == EMOJI_DATASOURCE else None
    attribution = dataset_attribution(tc.data, vendors)
    if attribution is not None:
        license_id, terms = "cc-by-4.0", attribution
    else:
        license_id, terms = DATA_LICENSES.get(tc.data, UNKNOWN_TERMS)
    task = "class-conditional" if mc.num_classes else "unconditional"
    tags = "class-conditional" if mc.num_classes else "unconditional-image-generation"
    steps = ckpt.state.get("step")
    weights = "EMA" if ema and ckpt.ema is not None else "raw"  # load_model's sampling weights
    lines = [
        "---",
        "library_name: diffusers",
        f"license: {license_id}",
        f"tags: [difflab, diffusion, {tags}]",
        f"datasets: [{tc.data}]",
        "---",
        "",
        f"# difflab {task} pixel diffusion model ({tc.data})",
        "",
        f"Images of {mc.image_size}x{mc.image_size} pixels, {mc.in_channels} channel(s), in "
        f"[-1, 1]. Trained with difflab {difflab.__version__}; exported with `difflab export "
        f"--diffusers` from `{Path(str(ckpt.path)).name}` ({weights} weights).",
        "",
    ]
    if mc.num_classes:
        lines += [
            f"Classes: {mc.num_classes} ({', '.join(config.label_names)}); label "
            f"{mc.num_classes} is the null label (classifier-free guidance). DDPMPipeline passes "
            "no labels: call the UNet with `class_labels=` in a loop of your own (difflab's "
            "docs/export.md).",
        ]
    else:
        lines += [
            "```python",
            "from diffusers import DDPMPipeline",
            'pipe = DDPMPipeline.from_pretrained("PATH")',
            f"images = pipe(num_inference_steps={min(50, dc.timesteps)}, batch_size=4).images",
            "```",
        ]
    lines += [
        "",
        "## Training",
        "",
        f"- data: {tc.data}" + (f" ({tc.vendors})" if vendors else ""),
        f"- steps: {steps if steps is not None else 'not recorded'}, batch size {tc.batch_size}, "
        f"lr {tc.lr}, EMA decay {tc.ema_decay}",
        f"- diffusion: T = {dc.timesteps}, {dc.schedule} schedule "
        f"(diffusers `{scheduler.beta_schedule}`), prediction {dc.prediction} "
        f"(`{scheduler.prediction_type}`)",
        f"- U-Net: base channels {mc.base_channels}, channel mults {list(mc.channel_mults)}, "
        f"residual blocks per level {mc.num_res_blocks}, attention at levels "
        f"{list(mc.attention_levels)}{' and in the middle' if mc.mid_attention else ''}",
        f"- the exported UNet2DModel matches difflab's U-Net to {max_abs_diff:.1e} (max |diff|)",
    ]
    lines += ["", "## Data and licence", "", terms, ""]
    return "\n".join(lines)
