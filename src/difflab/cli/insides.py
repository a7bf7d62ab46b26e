"""``difflab inspect``: pictures of a trained U-Net's insides (``difflab.insides`` computes them).

Writes into ``--out``: ``feature_maps.png`` (each level's feature energy for one image noised to
several t), ``attention.png`` (where chosen pixels look in the bottleneck's self-attention),
``time_embeddings.png`` (cosine similarities of the time embeddings), for a class-conditional
model ``class_embeddings.png`` (its label embeddings on their two principal axes), and for a text
model ``cross_attention.png`` (where the image looks at each word of ``--prompt``; the image is
the model's own drawing for the prompt unless --image or --from-data gives one).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from difflab import insides, viz
from difflab.cli.flags import add_command, add_input_flags, int_tuple
from difflab.data import EXAMPLE_PROMPTS
from difflab.kinds import load_model, plan_sampling
from difflab.models.unet import UNet
from difflab.sampling import SamplingRequest, class_labels, execute, load_input_images
from difflab.sampling.plan import prompt_tokens

# Where on the schedule the pictures look, as fractions of T (near the data .. near pure noise).
T_FRACTIONS = (0.02, 0.25, 0.5, 0.75, 0.98)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "inspect",
        "Pictures of a trained U-Net's insides: feature maps per level, the bottleneck's "
        "attention, the time embeddings' similarities, a conditional model's class embeddings "
        "and a text model's cross-attention to each word of its prompt.",
    )
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by difflab")
    add_input_flags(p)
    p.add_argument(
        "--t", type=int_tuple, metavar="T,T,...",
        help="timesteps to noise the input to (default: 2%%, 25%%, 50%%, 75%%, 98%% of T)",
    )  # fmt: skip
    p.add_argument(
        "--query", action="append", type=int_tuple, default=[], metavar="ROW,COL",
        help="a pixel whose attention to draw (repeatable; default: the centre and a quarter in)",
    )  # fmt: skip
    p.add_argument(
        "--class-label", metavar="LABEL",
        help="the label a conditional model is given (default: its null label)",
    )  # fmt: skip
    p.add_argument(
        "--prompt", metavar="TEXT",
        help="a text model's prompt, whose words' cross-attention maps to draw (default: "
        + ", ".join(f'"{p}" for {data}' for data, p in EXAMPLE_PROMPTS.items())
        + "); the image is the model's drawing for it unless --image or --from-data gives one",
    )  # fmt: skip
    p.add_argument("--raw-weights", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--seed", type=int, default=0, help="which noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", default="runs/inspect", help="output folder")


def cmd_inspect(args: argparse.Namespace) -> None:
    loaded = load_model(args.checkpoint, args.device, ema=not args.raw_weights, stepwise=True)
    if not loaded.space.pixels:
        raise ValueError(
            f"{args.checkpoint} is a latent diffusion model: inspect shows the insides of a U-Net "
            "on images, and its U-Net works on latents; inspect a pixel model"
        )
    model, config, schedule = loaded.model, loaded.config, loaded.schedule
    assert isinstance(model, UNet)
    size = config.model.image_size
    timesteps = args.t or tuple(round(f * (schedule.num_timesteps - 1)) for f in T_FRACTIONS)
    insides.check_timesteps(timesteps, schedule)
    queries = args.query or [(size // 2, size // 2), (size // 4, size // 4)]
    for query in queries:
        if len(query) != 2:
            raise ValueError(f"--query {query} must be two numbers, ROW,COL")
        insides.query_index(*query, size, 1)  # checks it lies in the image, before any work
    prompt = args.prompt or (EXAMPLE_PROMPTS[config.train.data] if config.takes_prompts else None)
    tokens = prompt_tokens(config, None if prompt is None else (prompt,))  # checked: (1, L)
    if tokens is not None and not (args.image or args.from_data):  # the model's own drawing
        request = SamplingRequest(num_images=1, seed=args.seed, prompts=(prompt,))
        image = execute(loaded, plan_sampling(loaded, request))[0]
    else:
        image = load_input_images(
            config, args.image, args.from_data or ([] if args.image else [0])
        )[0]
    label = class_labels(config, args.class_label, len(timesteps)) if args.class_label else None
    tokens = None if tokens is None else tokens.expand(len(timesteps), -1)

    x_t = insides.noised(image, timesteps, schedule, torch.Generator().manual_seed(args.seed))
    reading = (schedule, config.diffusion.prediction)  # a flow network: at its own inputs
    out = Path(args.out)
    paths = [
        viz.plot_feature_maps(
            x_t, timesteps, insides.feature_maps(model, x_t, timesteps, label, reading, tokens),
            out / "feature_maps.png",
        )
    ]  # fmt: skip
    if config.model.mid_attention:
        weights = insides.bottleneck_attention(model, x_t, timesteps, label, reading, tokens)
        grid = math.isqrt(weights.shape[-1])
        rows = [insides.query_index(r, c, size, grid) for r, c in queries]
        paths.append(
            viz.plot_attention(x_t, timesteps, weights, queries, rows, out / "attention.png")
        )
    else:
        print("no attention.png: this model has no attention in its middle block")
    if tokens is not None:
        assert prompt is not None
        cross = insides.cross_attention_maps(model, x_t, timesteps, tokens, prompt.split(), reading)
        paths.append(
            viz.plot_cross_attention(
                x_t, timesteps, cross.maps, cross.tokens, out / "cross_attention.png",
                prompt=prompt, blocks=cross.blocks,
            )
        )  # fmt: skip
    t, sinusoid, learned = insides.time_embedding_similarity(model, schedule.num_timesteps)
    paths.append(
        viz.plot_similarity(
            t, [("sinusoid (the input)", sinusoid), ("learned embedding", learned)],
            out / "time_embeddings.png",
        )
    )  # fmt: skip
    if config.model.num_classes > 0:
        points, share = insides.class_embedding_projection(model)
        names = [*config.label_names, "null"]
        paths.append(viz.plot_embedding_2d(points, names, share, out / "class_embeddings.png"))
    for path in paths:
        print(f"wrote {path}")
