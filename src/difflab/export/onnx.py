"""A checkpoint's network as ONNX, with a JSON of what a sampler around it needs.

What is exported is the network alone, called as every difflab sampler calls it::

    x (N, C, H, W) float32, t (N,) int64[, label (N,) int64 | tokens (N, L) int64]
        ->  prediction (N, C, H, W) float32

``t`` is the code timestep 0 .. T-1 (``schedules.py``: the paper's step t + 1), one per image (a
flow network's is float32, 1000 times its flow time: ``FLOW_CONVENTION``, ``difflab.flow``);
``label`` (a class-conditional model only) is a class 0 .. K-1 or K, the null label the network
learned under label dropout (``models/unet.py``), which classifier-free guidance runs beside the
class; ``tokens`` (a text-conditioned model only) are a prompt's token ids, L = the model's
text_length, padded with 0, all pad being the empty prompt that guidance runs beside the prompt
(``models.text.tokenize``; the JSON holds the vocabulary). The output is the raw eps, x0 or v
the network was trained to predict (the JSON says which). A GAN's generator is exported as
``z (N, z_dim) -> image (N, C, S, S)``; a latent model's decoder beside its U-Net as
OUT.decoder.onnx, ``latent (N, c, l, l) -> image (N, C, S, S)``, which is
``LatentSpace.to_images`` (divide by the latent scale, decode, clamp to [-1, 1]).

The sampler (DDIM, consistency steps, guidance, clipping) is the caller's; OUT.json gives it as
data: the schedule's alpha_bar, the plan ``kinds.plan_sampling`` makes for the model (a
distilled student's steps and timesteps, a diffusion model's DDIM grid), a consistency student's
boundary scalings c_skip and c_out, the class names and the null label, a text model's vocabulary
and prompt length, the latent scale.

The exporter is ``torch.onnx.export``'s TorchScript path (``dynamo=False``) at opset 17. The
torch.export-based one (the default since torch 2.9) needs onnxscript, and with torch 2.13 and
onnxscript 0.7.2 it fails on the U-Net's attention (its scaled_dot_product_attention takes 4-D
q, k, v only; ours are (B, HW, C)). The TorchScript path traces the eval-mode network and writes
GroupNorm as Reshape -> InstanceNormalization -> Reshape -> per-channel Mul and Add, which is
right at every opset; opset 18's GroupNormalization op takes a scale and bias per group, not per
channel (fixed in opset 21), and runtimes differ on it. Opset 17 is the lowest that is asked
for, and everything here needs nothing newer (onnxruntime and onnxruntime-web run it).

Each file is checked before anything is written: no value read from a tensor by difflab's code
was frozen into the graph (the tracer's warning is an error here), no GroupNormalization op, and
onnxruntime agrees with PyTorch on a batch of another size than the traced one, at other
timesteps and labels (or prompts). The files are written atomically, together: all of them or
none.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

import difflab
from difflab.consistency import boundary_scalings
from difflab.flow import FLOW_TIME_SCALE
from difflab.io import atomic_path, file_sha256
from difflab.kinds import kind_of, load_model, plan_sampling
from difflab.models.gan import Generator
from difflab.models.unet import UNet
from difflab.samplers import SAMPLERS, default_steps
from difflab.sampling import LatentSpace, LoadedModel, SamplingPlan, SamplingRequest
from difflab.sampling.plan import CONSISTENCY

OPSET = 17  # the ONNX operator set written (see the module docstring)
FORMAT = "difflab-onnx-1"  # the JSON's format name
PREDICTIONS = ("eps", "x0", "v", "flow")  # the network outputs a sampler reads with the JSON
TOLERANCE = 1e-3  # the largest |onnxruntime - PyTorch| accepted, times max(1, |output|)
TRACED_BATCH, CHECK_BATCH = 2, 3  # the example batch traced, and the other one checked
EXTRA = 'pip install -e ".[export]"'
SRC = Path(difflab.__file__).resolve().parent
FLOW_CONVENTION = (
    "a flow network (prediction 'flow'): x_t = (1 - s) x0 + s eps with flow time s in [0, 1] "
    "(s = 1 noise), the output is the velocity v = eps - x0, and t (float32) is 1000 s. A sampler "
    "on the DDPM grid calls it at the point with alpha_bar[k]'s SNR: x / (sqrt(ab) + sqrt(1 - ab)) "
    "and s = sqrt(1 - ab) / (sqrt(ab) + sqrt(1 - ab)), then eps = x_flow + (1 - s) v and x0 = "
    "x_flow - s v (difflab.flow, docs/flow.md)"
)
TIMESTEP_CONVENTION = (
    "t is the code timestep 0 .. T-1, the paper's step t + 1: alpha_bar[t] is the paper's "
    "alpha_bar_{t+1}; the data (after the last step) has alpha_bar 1"
)


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote."""

    network: Path  # OUT.onnx: the denoising network (a GAN: its generator)
    metadata: Path  # OUT.json: what a sampler needs
    decoder: Path | None  # OUT.decoder.onnx: a latent model's decoder; None for a pixel model
    kind: str  # the checkpoint's kind (config.KINDS)
    output: str  # what the network outputs: eps, x0, v, or image for a GAN's generator
    max_abs_diff: float  # the largest |onnxruntime - PyTorch| over the files' check batches


@dataclass(frozen=True)
class _Graph:
    """One network to export: the module, its inputs by name (batch first) and its output's name."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]  # the example batch it is traced with
    check: dict[str, torch.Tensor]  # another batch size and values, run in both runtimes
    output: str


def export_onnx(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    ema: bool = True,
    overwrite: bool = False,
) -> ExportResult:
    """Export the network of ``checkpoint`` (its EMA weights unless ``ema`` is False) to ``out``
    (a .onnx path), with ``out`` .json beside it and, for a latent model, ``out`` .decoder.onnx.

    Any kind that draws with a network exports; an autoencoder is refused in one line by the
    kind table. An existing output is refused unless ``overwrite``.
    """
    onnx, ort = _import_extra()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"ONNX output {out} must end in .onnx")

    # Load: the kind table decides what the checkpoint is and refuses what draws no images.
    loaded = load_model(checkpoint, "cpu", ema=ema)
    graphs = {out: _network(loaded)}
    decoder = out.with_suffix(".decoder.onnx") if isinstance(loaded.space, LatentSpace) else None
    if decoder is not None:
        graphs[decoder] = _decoder(loaded.space)
    metadata = out.with_suffix(".json")
    paths = [*graphs, metadata]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{existing[0]} already exists; pass --overwrite to replace the files of an export"
        )

    with contextlib.ExitStack() as stack:
        # Temporary files beside the outputs first: an unwritable place fails before the work.
        try:
            tmp = {path: stack.enter_context(atomic_path(path)) for path in paths}
        except OSError as err:
            raise ValueError(f"cannot write {out}: {err.strerror or err}") from None
        # Export and check each network; nothing is renamed into place unless all succeed.
        diffs = {}
        for path, graph in graphs.items():
            data = _to_onnx(graph)
            diffs[path] = _check(data, graph, onnx, ort)
            tmp[path].write_bytes(data)
        info = _metadata(loaded, graphs, diffs)
        tmp[metadata].write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return ExportResult(
        network=out, metadata=metadata, decoder=decoder, kind=loaded.kind,
        output=info["prediction"] or "image", max_abs_diff=max(diffs.values()),
    )  # fmt: skip


def _import_extra() -> tuple[ModuleType, ModuleType]:
    """onnx (to check the graph) and onnxruntime (to compare it with PyTorch): the export extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ValueError(
            f"ONNX export needs the export extra ({err.name or err} is missing): {EXTRA}"
        ) from None
    return onnx, onnxruntime


# What is exported -------------------------------------------------------------------------------


def _network(loaded: LoadedModel) -> _Graph:
    """The loaded network with example inputs: a U-Net's (x, t[, label | tokens]) or a
    generator's z."""
    model = loaded.model
    if isinstance(model, Generator):
        return _Graph(
            model, {"z": _normal(TRACED_BATCH, model.z_dim, seed=0)},
            {"z": _normal(CHECK_BATCH, model.z_dim, seed=1)}, "image",
        )  # fmt: skip
    assert isinstance(model, UNet) and loaded.schedule is not None  # load_model's torch U-Net
    prediction = loaded.config.diffusion.prediction
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"checkpoint {loaded.path} predicts {prediction!r}; the ONNX export knows networks "
            f"that predict {', '.join(PREDICTIONS)}"
        )
    T = loaded.schedule.num_timesteps
    flow = prediction == "flow"
    return _Graph(
        _Denoiser(model), _unet_inputs(model, T, TRACED_BATCH, seed=0, flow=flow),
        _unet_inputs(model, T, CHECK_BATCH, 1, flow=flow), "prediction",
    )  # fmt: skip


class _Denoiser(nn.Module):
    """The U-Net as every sampler calls it, ``(x, t[, label | tokens]) -> prediction``: the
    conditioning ``c`` is a class-conditional model's labels (N,) or a text model's prompt
    tokens (N, L). The TorchScript exporter passes every parameter of ``forward`` it is not
    given, keyword-only ones too, as positional arguments: the U-Net's own options
    (``with_variance``, ``tokens``, ...) must stay out of it."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet
        self.text = bool(unet.config.text_vocab)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.text:
            return self.unet(x, t, None, tokens=c)  # (N, C, H, W)
        return self.unet(x, t, c)  # (N, C, H, W)


def _unet_inputs(
    model: UNet, num_timesteps: int, n: int, seed: int, *, flow: bool = False
) -> dict[str, torch.Tensor]:
    """A batch of ``n`` inputs: noise, timesteps from T-1 down to 0 (all different, so none is
    mistaken for a constant; a flow network's: 1000 times flow times from 1 down to 0, float32),
    and for a conditional model the null label, then classes; for a text model the empty prompt,
    then prompts of random words (``_prompts``)."""
    mc = model.config
    t = (
        FLOW_TIME_SCALE * torch.linspace(1, 0, n)
        if flow
        else torch.linspace(num_timesteps - 1, 0, n).round().long()
    )  # (N,)
    inputs = {
        "x": _normal(n, mc.in_channels, mc.image_size, mc.image_size, seed=seed),  # (N, C, H, W)
        "t": t,
    }
    if mc.num_classes:
        k = mc.num_classes
        inputs["label"] = (torch.arange(n) + k) % (k + 1)  # (N,): k (null), 0, 1, ...
    if mc.text_vocab:
        inputs["tokens"] = _prompts(mc.text_vocab, mc.text_length, n, seed=seed)  # (N, L)
    return inputs


def _prompts(vocab: int, length: int, n: int, seed: int) -> torch.Tensor:
    """``n`` prompts as token ids (N, L): prompt i holds 3 i mod (L + 1) random words (ids
    1 .. vocab - 1), then pad (0); prompt 0 is the empty one."""
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(1, vocab, (n, length), generator=gen)  # (N, L)
    count = (3 * torch.arange(n) % (length + 1))[:, None]  # (N, 1)
    return torch.where(torch.arange(length) < count, words, 0)  # (N, L)


class _Decoder(nn.Module):
    """A latent model's last step, ``LatentSpace.to_images`` without its conversions to a CPU
    float tensor: scaled latents -> images in [-1, 1]."""

    def __init__(self, space: LatentSpace) -> None:
        super().__init__()
        self.ae, self.scale = space.ae, space.scale

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(latent / self.scale).clamp(-1, 1)  # (N, C, S, S)


def _decoder(space: LatentSpace) -> _Graph:
    c, size = space.ae.cfg.latent_channels, space.ae.cfg.latent_size
    return _Graph(
        _Decoder(space), {"latent": _normal(TRACED_BATCH, c, size, size, seed=2)},
        {"latent": _normal(CHECK_BATCH, c, size, size, seed=3)}, "image",
    )  # fmt: skip


def _normal(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# Export and check -------------------------------------------------------------------------------


def _to_onnx(graph: _Graph) -> bytes:
    """``graph`` traced and exported (TorchScript path, opset ``OPSET``, a dynamic batch axis).

    A value that difflab's code reads out of a tensor while tracing (a timestep turned into a
    Python number, a batch size) would be frozen into the graph: the tracer's warning about it
    is an error here. Its deprecation notice about the exporter is expected and silenced.
    """
    names = [*graph.inputs, graph.output]
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", category=torch.jit.TracerWarning, module=r"difflab\.")
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(
                graph.module, tuple(graph.inputs.values()), buffer, dynamo=False,
                opset_version=OPSET, input_names=names[:-1], output_names=names[-1:],
                dynamic_axes={name: {0: "batch"} for name in names},
            )  # fmt: skip
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif _in_difflab(w.filename):
            raise RuntimeError(
                f"tracing froze a tensor's value into the graph at {Path(w.filename).name}:"
                f"{w.lineno} ({str(w.message).splitlines()[0]}); the export would be wrong"
            )
        # else torch's own: GroupNorm's training-time batch check, which the graph leaves out
    return buffer.getvalue()


def _in_difflab(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(SRC)


def _check(data: bytes, graph: _Graph, onnx: ModuleType, ort: ModuleType) -> float:
    """Check an exported file: a valid ONNX graph without GroupNormalization whose output under
    onnxruntime matches PyTorch's on the check batch. Returns the largest |difference|."""
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    if any(node.op_type == "GroupNormalization" for node in model.graph.node):
        raise RuntimeError(
            "the exported graph uses GroupNormalization, whose opset 18 form is wrong"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a small batch; spares shared cores the spin-waits
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {name: v.numpy() for name, v in graph.check.items()})[0]
    with torch.no_grad():
        want = graph.module(*graph.check.values()).numpy()
    if got.shape != want.shape:
        raise RuntimeError(f"the exported network gives shape {got.shape}, PyTorch {want.shape}")
    diff = float(np.abs(got - want).max())
    bound = TOLERANCE * max(1.0, float(np.abs(want).max()))
    if not diff <= bound:  # NaN fails too
        raise RuntimeError(
            f"the exported network disagrees with PyTorch (max |diff| {diff:.3g} > {bound:.3g})"
        )
    return diff


# What a sampler needs ---------------------------------------------------------------------------


def _metadata(
    loaded: LoadedModel, graphs: dict[Path, _Graph], diffs: dict[Path, float]
) -> dict[str, Any]:
    """OUT.json: the files, their inputs, the prediction, the schedule, the sampling plan, the
    classes or the text, and the latent space, with difflab's version."""
    config, schedule = loaded.config, loaded.schedule
    kind = kind_of(config)
    (path, network), *rest = graphs.items()
    mc = config.model
    channels, size = config.image_shape
    info: dict[str, Any] = {
        "format": FORMAT,
        "difflab_version": difflab.__version__,
        "kind": config.kind,
        "title": kind.title(config),
        "checkpoint": _checkpoint_info(loaded.path),
        "network": _file_info(path, network, diffs[path]),
        "prediction": None if schedule is None else config.diffusion.prediction,
        "input_shape": list(next(iter(network.inputs.values())).shape[1:]),  # x or z
        "image_shape": [channels, size, size],
        "timesteps": None
        if schedule is None
        else (FLOW_CONVENTION if config.diffusion.prediction == "flow" else TIMESTEP_CONVENTION),
        "schedule": None,
        "sampling": _sampling(loaded),
        "classes": None,
        "text": None,
        "latent": None,
    }
    if schedule is not None:
        info["schedule"] = {
            "name": schedule.name,
            "T": schedule.num_timesteps,
            "alpha_bar": [float(v) for v in schedule.alpha_bar],  # float64, exact in JSON
        }
    if mc.num_classes and schedule is not None:
        info["classes"] = {
            "num_classes": mc.num_classes,
            "names": config.label_names,
            "null_label": mc.num_classes,  # UNet.label_emb's last row, learned for guidance
            "guidance": "classifier-free: out = u + w (c - u), c at the class, u at null_label "
            "(w = 1: one pass with the class; a distilled student's guidance is baked in)",
        }
    if mc.text_vocab and schedule is not None:
        info["text"] = {
            "vocabulary": list(config.vocabulary),  # token id = index; 0 is the pad token
            "length": mc.text_length,  # L: the tokens input's second axis
            "pad": 0,
            "tokenizer": "split the prompt on whitespace (Python's str.split()); word j is token "
            "j, its index in vocabulary (no lowercasing; the pad token's name is no word); the "
            "rest of the L tokens are 0 (pad). A word outside the vocabulary, or more than L "
            "words, is an error (difflab.models.text.tokenize)",
            "guidance": "classifier-free: out = u + w (c - u), c at the prompt's tokens, u at the "
            "empty prompt, all pad (w = 1: one pass with the prompt)",
        }
    if isinstance(loaded.space, LatentSpace):
        (decoder_path, decoder), *_ = rest
        info["latent"] = {
            "scale": loaded.space.scale,
            "decoder": _file_info(decoder_path, decoder, diffs[decoder_path]),
            "note": "x is a scaled latent z * scale; the decoder takes the sampler's final x "
            "and gives images in [-1, 1] (it divides by the scale and clamps)",
        }
    if isinstance(loaded.model, Generator):
        info["z"] = "z ~ N(0, I), one row per image; the generator's output is the image"
    return info


def _file_info(path: Path, graph: _Graph, diff: float) -> dict[str, Any]:
    return {
        "file": path.name,
        "inputs": {
            name: {"shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype).removeprefix("torch.")}
            for name, v in graph.inputs.items()
        },
        "output": graph.output,
        "opset": OPSET,
        "exporter": f"torch.onnx.export TorchScript (dynamo=False), torch {torch.__version__}",
        "max_abs_diff": diff,  # onnxruntime against PyTorch on the check batch, at export
    }


def _checkpoint_info(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    return {"file": path.name, "sha256": file_sha256(path)}


def _sampling(loaded: LoadedModel) -> dict[str, Any]:
    """How ``difflab sample`` draws this model, as data (``kinds.plan_sampling``): a distilled
    student's own plan and its timesteps for each of its step counts; for a diffusion model, DDIM
    (the sampler docs/export.md writes out) in its default steps; a GAN's one evaluation."""
    kind, schedule = kind_of(loaded.config), loaded.schedule
    request = SamplingRequest(num_images=1)
    if kind.step_choices is None and schedule is not None:
        T = schedule.num_timesteps
        request = SamplingRequest(
            num_images=1, sampler="ddim", steps=min(default_steps("ddim", T), T)
        )
    plan = plan_sampling(loaded, request)
    info = _plan_info(plan, distilled=kind.step_choices is not None)
    if kind.step_choices is not None:
        info["step_choices"] = {
            str(steps): list(
                plan_sampling(loaded, SamplingRequest(num_images=1, steps=steps)).timesteps
            )
            for steps in kind.step_choices(loaded.config)
        }
    if plan.sampler == CONSISTENCY:
        assert schedule is not None
        c_skip, c_out = boundary_scalings(schedule, loaded.config.diffusion.prediction)
        info["c_skip"], info["c_out"] = [float(v) for v in c_skip], [float(v) for v in c_out]
        info["consistency"] = (
            "x0 = c_skip[t] x + c_out[t] prediction at each step's t; before every step but the "
            "first, x = sqrt(alpha_bar[t] / alpha_bar[0]) x0 + sqrt(1 - alpha_bar[t] / "
            "alpha_bar[0]) z with fresh noise z (difflab.consistency)"
        )
    return info


def _plan_info(plan: SamplingPlan, *, distilled: bool) -> dict[str, Any]:
    info = {
        "sampler": plan.sampler,
        "steps": plan.steps,
        "timesteps": list(plan.timesteps),  # noisiest first
        "guidance": plan.shown_guidance if distilled else None,  # baked in; None: the caller's
    }
    if plan.sampler in SAMPLERS:  # what a diffusion sampler reads (consistency's never clips)
        info["clip_x0"], info["eta"] = plan.clip_x0, plan.eta
    return info
