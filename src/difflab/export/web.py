"""A static folder that draws a checkpoint's images in the visitor's browser, with no server code:
the network as ONNX run by onnxruntime-web (WebAssembly, one thread), the sampler loop in a few
dozen lines of plain JavaScript (``page/sampler.js``). ``difflab export --web DIR``;
docs/export.md, "In the browser".

DIR holds, written together or not at all (into a temporary sibling, renamed into place)::

    index.html, page.js   the page: seed, class or prompt, steps (and guidance), frames, a grid
                          of 16
    sampler.js            the seeded noise, the timestep grid, a text model's tokenizer and the
                          sampler loop
    model.onnx.gz         ``export_onnx``'s network, gzipped, with its float32 weights moved to
    model.weights.gz      one file, byte-shuffled (byte 0 of every value, then byte 1, ...) and
                          gzipped: 9% smaller than the gzipped .onnx, which is what keeps the
                          MNIST page under 5 MiB
    model.json            ``export_onnx``'s JSON: schedule, prediction, plan, classes or text
    page.json             the page's own facts: its files, the runtime, steps, the noise, a text
                          model's default prompt and guidance
    ort.wasm.min.js, ort-wasm-simd-threaded.mjs, ort-wasm-simd-threaded.wasm.gz
                          onnxruntime-web ``ORT_WEB_VERSION`` from its npm package (pinned by
                          sha512), the .wasm gzipped (11 MB -> 2.9 MB) and unzipped by the
                          browser (DecompressionStream), handed to onnxruntime as wasmBinary
    THIRD_PARTY.txt       onnxruntime-web's licence notice

The runtime is taken from the npm package at build time and cached (``npm_cache_dir``); an export
without it fetches it with ``npm pack`` (``fetch_runtime``; ``make web-runtime``) or says, in one
line, which command does. Nothing is fetched when the page runs: every URL is relative.

The page draws what Python draws for the same seed. Its noise is ``page_noise`` (a counter-based
hash and Box-Muller, written identically in sampler.js), and ``sample_page`` runs sampler.js's
loop in NumPy (float64 per element, stored as float32, in the same order) with onnxruntime on the
folder's files. ``sample_page`` in turn is difflab's own DDIM and consistency sampling for that
noise (tests/test_export_web.py checks both).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.resources
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import difflab
from difflab.data import EXAMPLE_PROMPTS, default_cache_dir
from difflab.export.onnx import _import_extra, export_onnx
from difflab.models.text import tokenize
from difflab.samplers import timestep_sequence
from difflab.sampling.plan import TEXT_GUIDANCE
from difflab.viz import make_grid

PAGE_FORMAT = "difflab-web-1"  # page.json's format name
ORT_WEB_VERSION = "1.22.0"  # onnxruntime-web, pinned: newer ones' .wasm is larger (1.23: +0.2 MB
# gzipped, 1.31: +0.9 MB), which would take the MNIST page over 5 MiB
ORT_WEB_INTEGRITY = (  # the npm registry's dist.integrity of onnxruntime-web@1.22.0
    "sha512-Ud/+EBo6mhuaQWt/OjaOk0iNWjXqJoeeMFr6xQEERZdIZH2OWpGzuujz7lfuOBjUa6TEE/sc4nb7Da5dNL34fg=="
)
ORT_WEB_PACKAGE = f"onnxruntime-web@{ORT_WEB_VERSION}"
FETCH_COMMAND = "make web-runtime"
WASM = "ort-wasm-simd-threaded.wasm"  # the one WebAssembly build the page loads (numThreads 1)
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", f"{WASM}.gz")
ASSETS = ("index.html", "page.js", "sampler.js")  # page/ in this package
NUM_IMAGES, NROW = 16, 4  # the page draws a 4 x 4 grid
DEFAULT_DDIM_STEPS = 20  # a diffusion model's DDIM steps on the page unless changed there
DEFAULT_TEXT_GUIDANCE = TEXT_GUIDANCE  # a text model's guidance at first: the library's default
MAX_SEED = 2**32 - 1
EXTERNAL_MIN_BYTES = 1024  # float32 initializers this large go to model.weights; smaller stay
WEIGHTS = "model.weights"  # the weights' name in model.onnx (what the page hands onnxruntime)
NOISE = (
    "element j (row-major over (N, C, H, W)) of stream s for seed S: u_k = (h(k) + 0.5) / 2^32 "
    "with h(k) = mix32(mix32(k) ^ key), key = mix32(mix32(s) ^ S), k = 2j and 2j + 1; "
    "z = sqrt(-2 ln u_2j) cos(2 pi u_2j+1) in float64, stored as float32. mix32 is lowbias32: "
    "x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16 (mod 2^32). "
    "Stream 0 is x_T, stream i the fresh noise of a consistency student's step i"
)


@dataclass(frozen=True)
class WebExportResult:
    """What ``export_web`` wrote."""

    out_dir: Path
    kind: str  # the checkpoint's kind
    sampler: str  # ddim or consistency
    step_choices: list[int] | None  # a distilled student's steps; None: DDIM in 1..max_steps
    max_steps: int  # T
    total_bytes: int  # every file of the folder
    model_bytes: int  # model.onnx.gz + model.weights.gz
    runtime_bytes: int  # onnxruntime-web's files
    max_abs_diff: float  # export_onnx's |onnxruntime - PyTorch|


@dataclass(frozen=True)
class PagePlan:
    """What a draw of some steps does on the page (sampler.js ``pagePlan``)."""

    sampler: str  # ddim or consistency
    timesteps: list[int]  # noisiest first
    clip_x0: bool  # DDIM clips the predicted x0 to [-1, 1]


def export_web(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ema: bool = True,
    overwrite: bool = False,
    fetch: bool = True,
    note: Callable[[str], None] | None = None,
) -> WebExportResult:
    """Write the static page folder ``out_dir`` for ``checkpoint`` (its EMA weights unless ``ema``
    is False). A diffusion, flow matching, consistency or progressive model draws; other kinds
    are refused in one line. An existing non-empty folder is refused unless ``overwrite`` (and
    then only one that holds a page). onnxruntime-web is fetched with npm pack when it is not
    cached yet (``note`` is told so first), unless ``fetch`` is False."""
    out = Path(out_dir)
    _check_target(out, overwrite)
    _, ort = _import_extra()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise ValueError(f"cannot write {out}: {err.strerror or err}") from None
    try:
        # Export: the network and its JSON, checked against PyTorch; then what the page draws.
        exported = export_onnx(checkpoint, work / "onnx" / "model.onnx", ema=ema)
        meta = json.loads(exported.metadata.read_text(encoding="utf-8"))
        _check_drawable(meta, checkpoint)
        runtime = ensure_runtime(fetch=fetch, note=note)

        # Write the page into the temporary folder.
        page = work / "page"
        page.mkdir()
        graph, weights = split_weights(exported.network.read_bytes())
        (page / "model.onnx.gz").write_bytes(gzip.compress(graph, 9, mtime=0))
        (page / "model.weights.gz").write_bytes(gzip.compress(shuffle_bytes(weights), 9, mtime=0))
        shutil.copyfile(exported.metadata, page / "model.json")
        assets = importlib.resources.files("difflab.export") / "page"
        for name in ASSETS:
            (page / name).write_bytes((assets / name).read_bytes())
        for name in RUNTIME_FILES:
            shutil.copyfile(runtime / name, page / name)
        (page / "THIRD_PARTY.txt").write_text(THIRD_PARTY, encoding="utf-8")
        steps = _steps_info(meta)
        info = _page_info(meta, steps, len(weights), _prompt_info(meta))
        (page / "page.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

        # Check: the page's files give the exported network's outputs.
        _check_page(page, exported.network, ort)
        sizes = {p.name: p.stat().st_size for p in page.iterdir()}
        _move_into_place(page, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return WebExportResult(
        out_dir=out, kind=meta["kind"], sampler=meta["sampling"]["sampler"],
        step_choices=steps["choices"], max_steps=steps["max"], total_bytes=sum(sizes.values()),
        model_bytes=sizes["model.onnx.gz"] + sizes["model.weights.gz"],
        runtime_bytes=sum(sizes[name] for name in RUNTIME_FILES),
        max_abs_diff=exported.max_abs_diff,
    )  # fmt: skip


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a file, or a non-empty folder (unless ``overwrite`` and it holds
    a page)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return  # an empty folder: taken
    if not overwrite:
        raise ValueError(
            f"{out} already exists and is not empty; pass --overwrite to replace a page"
        )
    if not _is_page(out):
        raise ValueError(f"{out} exists and holds no difflab page (page.json): not replacing it")


def _is_page(folder: Path) -> bool:
    try:
        return json.loads((folder / "page.json").read_text(encoding="utf-8"))["format"] == (
            PAGE_FORMAT
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _made_public(folder: Path) -> Path:
    """``folder`` (from mkdtemp, 0700) with a folder's usual permissions, as a web host needs."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    return folder


def _move_into_place(page: Path, out: Path) -> None:
    """Rename the finished folder onto ``out``; an old page or empty folder is moved aside first
    and removed after."""
    _made_public(page)
    if not out.exists():
        os.replace(page, out)
        return
    old = page.parent / "old"
    os.replace(out, old)
    os.replace(page, out)
    shutil.rmtree(old, ignore_errors=True)


def _check_drawable(meta: dict[str, Any], checkpoint: str | os.PathLike[str]) -> None:
    """The page draws pixels with DDIM or consistency steps: what export_onnx's plan says."""
    if meta["sampling"]["sampler"] not in ("ddim", "consistency") or meta["latent"] is not None:
        raise ValueError(
            f"checkpoint {checkpoint} is a {meta['kind']} model; the web page draws diffusion, "
            "flow matching, consistency and progressive models (pixel space)"
        )


def _steps_info(meta: dict[str, Any]) -> dict[str, Any]:
    """The steps the page offers: a distilled student's own (its step_choices), or DDIM in any of
    1..T steps, DEFAULT_DDIM_STEPS first."""
    T, sampling = meta["schedule"]["T"], meta["sampling"]
    if sampling.get("step_choices"):
        choices = sorted(int(s) for s in sampling["step_choices"])
        return {"default": sampling["steps"], "choices": choices, "max": T}
    return {"default": min(DEFAULT_DDIM_STEPS, T), "choices": None, "max": T}


def _prompt_info(meta: dict[str, Any]) -> dict[str, Any] | None:
    """A text model's prompt box at first: the first of the data sets' ``EXAMPLE_PROMPTS`` whose
    words the model knows (else the empty prompt), and ``DEFAULT_TEXT_GUIDANCE``; None for a
    model without text."""
    text = meta.get("text")
    if not text:
        return None
    known = set(text["vocabulary"][1:])
    prompts = [p for p in EXAMPLE_PROMPTS.values() if len(p.split()) <= text["length"]]
    prompt = next((p for p in prompts if known.issuperset(p.split())), "")
    return {"default": prompt, "guidance": DEFAULT_TEXT_GUIDANCE}


def _page_info(
    meta: dict[str, Any], steps: dict[str, Any], weight_bytes: int, prompt: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "format": PAGE_FORMAT,
        "difflab_version": difflab.__version__,
        "title": meta["title"],
        "checkpoint": meta["checkpoint"],
        "metadata": "model.json",
        "model": {
            "file": "model.onnx.gz",
            "encoding": "gzip of the ONNX graph; its float32 initializers are external data",
            "opset": meta["network"]["opset"],
        },
        "weights": {
            "file": "model.weights.gz",
            "location": WEIGHTS,
            "bytes": weight_bytes,
            "encoding": "the graph's external data (float32, little-endian), byte-shuffled: "
            "byte k of every value for k = 0..3, one plane after another; then gzip",
        },
        "onnxruntime_web": {
            "version": ORT_WEB_VERSION,
            "package": ORT_WEB_PACKAGE,
            "integrity": ORT_WEB_INTEGRITY,
            "files": list(RUNTIME_FILES),
            "wasm": f"{WASM}.gz",
            "threads": 1,
        },
        "num_images": NUM_IMAGES,
        "nrow": NROW,
        "steps": steps,
        "prompt": prompt,  # a text model's default prompt and guidance; None without text
        "noise": NOISE,
        "pixels": "round((x + 1) * 127.5) in float32, half to even, clipped to 0..255 "
        "(difflab.viz.make_grid, nrow 4, 1 px of black between)",
    }


THIRD_PARTY = f"""\
This folder holds files of onnxruntime-web {ORT_WEB_VERSION} (npm package onnxruntime-web,
https://github.com/microsoft/onnxruntime), unchanged except that the .wasm file is gzipped:
ort.wasm.min.js, ort-wasm-simd-threaded.mjs, ort-wasm-simd-threaded.wasm.gz.

MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


# The weights file -------------------------------------------------------------------------------


def split_weights(model_bytes: bytes) -> tuple[bytes, bytes]:
    """An ONNX model as (the graph with its float32 initializers of at least EXTERNAL_MIN_BYTES
    stored as external data at ``WEIGHTS``, those initializers' bytes one after another)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(model_bytes)
    chunks, offset = [], 0
    for tensor in model.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        data = numpy_helper.to_array(tensor).astype("<f4").tobytes()
        if len(data) < EXTERNAL_MIN_BYTES:
            continue
        for field in ("float_data", "raw_data"):
            tensor.ClearField(field)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", WEIGHTS), ("offset", offset), ("length", len(data))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        chunks.append(data)
        offset += len(data)
    return model.SerializeToString(), b"".join(chunks)


def join_weights(graph_bytes: bytes, weights: bytes) -> bytes:
    """``split_weights`` undone: the ONNX model with the external initializers put back inline."""
    import onnx

    model = onnx.load_from_string(graph_bytes)
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = {entry.key: entry.value for entry in tensor.external_data}
        assert where["location"] == WEIGHTS, where
        start = int(where["offset"])
        tensor.raw_data = weights[start : start + int(where["length"])]
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model.SerializeToString()


def shuffle_bytes(weights: bytes) -> bytes:
    """float32 values as 4 planes, byte k of every value in plane k: the sign-and-exponent plane
    then compresses to a third (page.js's ``unshuffle`` undoes it)."""
    if len(weights) % 4:
        raise ValueError(f"weights of {len(weights)} bytes are not float32 values")
    return np.frombuffer(weights, np.uint8).reshape(-1, 4).T.tobytes()


def unshuffle_bytes(planes: bytes) -> bytes:
    return np.frombuffer(planes, np.uint8).reshape(4, -1).T.tobytes()


# The page's noise and sampler, in Python --------------------------------------------------------


def _mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 (C. Wellons' integer hash) on a uint32 array, wrapping mod 2^32."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def page_noise(seed: int, shape: Sequence[int], stream: int = 0) -> np.ndarray:
    """The page's standard normal noise (float32, ``shape``) for ``seed`` (0 .. 2^32 - 1): the
    same numbers sampler.js's ``pageNoise`` draws (``NOISE`` spells the formula out). Element j
    depends on j, the seed and the stream only, so image i is the same in any batch size."""
    if not (isinstance(seed, int | np.integer) and 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    if not (isinstance(stream, int | np.integer) and 0 <= stream <= MAX_SEED):
        raise ValueError(f"noise stream must be an integer in 0..{MAX_SEED}, got {stream!r}")
    size = math.prod(shape)
    if size >= 2**31:
        raise ValueError(f"noise of shape {tuple(shape)} has too many elements for the page")
    key = _mix32(_mix32(np.array([stream], np.uint32)) ^ np.uint32(seed))
    counters = 2 * np.arange(size, dtype=np.uint32)
    u1 = (_mix32(_mix32(counters) ^ key).astype(np.float64) + 0.5) / 4294967296
    u2 = (_mix32(_mix32(counters + np.uint32(1)) ^ key).astype(np.float64) + 0.5) / 4294967296
    z = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
    return z.astype(np.float32).reshape(tuple(shape))


def page_plan(meta: dict[str, Any], steps: int) -> PagePlan:
    """What ``steps`` means on the page for the model of ``meta`` (its model.json): a distilled
    student's own steps, with their timesteps from the JSON; else DDIM on difflab's trailing grid
    (``samplers.timestep_sequence``), clipped as the JSON's plan says."""
    sampling = meta["sampling"]
    if sampling.get("step_choices"):
        grid = sampling["step_choices"].get(str(steps))
        if grid is None:
            choices = ", ".join(sorted(sampling["step_choices"], key=int))
            raise ValueError(f"steps must be one of {choices} for this model, got {steps}")
        clip = sampling["sampler"] == "ddim" and bool(sampling.get("clip_x0"))
        return PagePlan(sampling["sampler"], [int(t) for t in grid], clip)
    T = meta["schedule"]["T"]
    if not (isinstance(steps, int) and 1 <= steps <= T):
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
    return PagePlan("ddim", timestep_sequence(T, steps), bool(sampling["clip_x0"]))


class PageNetwork:
    """The network of a page folder, run by onnxruntime on the CPU from the folder's own files
    (model.onnx.gz with model.weights.gz put back), called as sampler.js calls onnxruntime-web."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        _, ort = _import_extra()
        self.folder = Path(folder)
        try:
            self.page = json.loads((self.folder / "page.json").read_text(encoding="utf-8"))
            self.meta = json.loads((self.folder / "model.json").read_text(encoding="utf-8"))
            graph = gzip.decompress((self.folder / "model.onnx.gz").read_bytes())
            planes = gzip.decompress((self.folder / "model.weights.gz").read_bytes())
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.folder} is not a readable difflab page: {err}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the page's single WebAssembly thread
        self.session = ort.InferenceSession(
            join_weights(graph, unshuffle_bytes(planes)), options,
            providers=["CPUExecutionProvider"],
        )  # fmt: skip
        self.t_dtype = np.dtype(self.meta["network"]["inputs"]["t"]["dtype"])

    def __call__(
        self,
        x: np.ndarray,
        t: float,
        labels: Sequence[int] | None = None,
        tokens: np.ndarray | None = None,
    ) -> np.ndarray:
        """The network's raw output (float32) for the batch ``x`` at one ``t`` for every image,
        with a class-conditional model's ``labels`` (N,) or a text model's prompt ``tokens``
        (N, L); the other kind of conditioning is refused in one line."""
        _check_conditioning(self.meta, labels is not None, tokens is not None)
        feed = {"x": x, "t": np.full(len(x), t, dtype=self.t_dtype)}
        if labels is not None:
            feed["label"] = np.asarray(labels, dtype=np.int64)
        if tokens is not None:
            feed["tokens"] = np.asarray(tokens, dtype=np.int64)  # (N, L)
        return self.session.run(None, feed)[0]


def _check_conditioning(meta: dict[str, Any], label: bool, prompt: bool) -> None:
    """Refuse, in one line, a class label for a model without classes (a text model takes a
    prompt) and a prompt for a model without text conditioning."""
    text, classes = meta.get("text"), meta["classes"]
    if prompt and not text:
        what = "class-conditional" if classes else "unconditional"
        raise ValueError(
            f"a prompt was given, but this page's model is {what}, without text conditioning"
        )
    if label and not classes:
        if text:
            raise ValueError(
                "a class label was given, but this page's model is text-conditioned: give a "
                "prompt instead"
            )
        raise ValueError("a class label was given, but this page's model is unconditional")


def sample_page(
    page: PageNetwork | str | os.PathLike[str],
    *,
    seed: int = 0,
    steps: int | None = None,
    class_label: int | None = None,
    prompt: str | None = None,
    guidance: float | None = None,
    num_images: int = NUM_IMAGES,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> np.ndarray:
    """The images (float32 (N, C, H, W), not clipped) the page draws for these settings: its
    noise, its sampler loop (sampler.js ``sample``, line for line) and its network.

    ``steps`` defaults to the page's (page.json); ``class_label`` None gives image i the class
    i mod K (a conditional model); ``prompt`` is a text model's, for every image (None: the
    page's default prompt; tokenised by ``models.text.tokenize`` with the model's vocabulary,
    as sampler.js's ``tokenize`` does); a class label for a text model and a prompt for a model
    without text are refused in one line. ``guidance`` is a plain conditional or text model's
    classifier-free scale against the null label or the empty prompt (None: the page's, 1 but
    for a text model; a distilled student's is baked in). ``callback`` gets (i, t, x, x0) at
    each step. ``page`` is a page folder or a network with its ``meta`` and ``page`` JSON
    (``PageNetwork``).
    """
    net = PageNetwork(page) if isinstance(page, str | os.PathLike) else page
    meta = net.meta
    plan = page_plan(meta, net.page["steps"]["default"] if steps is None else steps)
    shape = (num_images, *meta["input_shape"])
    alpha_bar = meta["schedule"]["alpha_bar"]
    classes, text = meta["classes"], meta.get("text")
    _check_conditioning(meta, class_label is not None, prompt is not None)
    # The conditioning of N images, and of 2N for guidance: conditional, then unconditional.
    labels = labels2 = tokens = tokens2 = None
    if classes:
        k = classes["num_classes"]
        if class_label is not None and not 0 <= class_label < k:
            raise ValueError(f"class label {class_label} out of range; expected 0..{k - 1}")
        labels = [i % k if class_label is None else class_label for i in range(num_images)]
        labels2 = labels + [classes["null_label"]] * num_images  # the null label
    if text:
        words = net.page["prompt"]["default"] if prompt is None else prompt
        ids = tokenize([words], text["vocabulary"], text["length"]).numpy()  # (1, L)
        tokens = np.repeat(ids, num_images, 0)  # (N, L): the prompt for every image
        tokens2 = np.concatenate([tokens, np.zeros_like(tokens)])  # (2N, L): the empty prompt
    if guidance is None:
        guidance = net.page["prompt"]["guidance"] if text else 1.0
    w = guidance if (classes or text) and not meta["sampling"].get("step_choices") else 1.0
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")

    def predict(x: np.ndarray, t: float) -> np.ndarray:
        if w == 1:
            return net(x, t, labels, tokens).astype(np.float64)
        out = net(np.concatenate([x, x]), t, labels2, tokens2).astype(np.float64)
        cond, uncond = out[:num_images], out[num_images:]
        return uncond + w * (cond - uncond)

    f32, ts = np.float32, plan.timesteps
    x = page_noise(seed, shape, 0)
    for i, t in enumerate(ts):
        if plan.sampler == "consistency":
            # Song et al. 2023, Alg. 1: re-noise with stream i, then x0 = c_skip x + c_out F.
            if i > 0:
                r = alpha_bar[t] / alpha_bar[0]
                z = page_noise(seed, shape, i).astype(np.float64)
                x = (math.sqrt(r) * x.astype(np.float64) + math.sqrt(1 - r) * z).astype(f32)
            out = predict(x, t)
            c_skip, c_out = meta["sampling"]["c_skip"][t], meta["sampling"]["c_out"][t]
            x0 = (c_skip * x.astype(np.float64) + c_out * out).astype(f32)
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "x0": x0})
            x = x0
            continue
        # DDIM (eta 0) from t to the next timestep, or to the data after the last.
        a, s = math.sqrt(alpha_bar[t]), math.sqrt(1 - alpha_bar[t])
        ab_next = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        a_next, s_next = math.sqrt(ab_next), math.sqrt(1 - ab_next)
        x64 = x.astype(np.float64)
        if meta["prediction"] == "flow":  # the flow point with x_t's SNR (difflab.flow)
            k, t_flow = 1 / (a + s), float(f32(s / (a + s)))
            xf = (k * x64).astype(f32).astype(np.float64)
            v = predict(xf.astype(f32), float(f32(t_flow * 1000)))
            eps, x0 = xf + (1 - t_flow) * v, xf - t_flow * v
        else:
            out = predict(x, t)
            if meta["prediction"] == "eps":
                eps, x0 = out, (x64 - s * out) / a
            elif meta["prediction"] == "x0":
                x0, eps = out, (x64 - a * out) / s
            else:  # v
                x0, eps = a * x64 - s * out, s * x64 + a * out
        if plan.clip_x0:
            x0 = np.minimum(1, np.maximum(-1, x0))
            eps = (x64 - a * x0) / s
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0.astype(f32)})
        x = (a_next * x0 + s_next * eps).astype(f32)
    return x


def page_grid(images: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 grid the page's canvas shows for ``images``: ``viz.make_grid`` with 4
    images a row (sampler.js ``gridPixels`` is the same)."""
    return make_grid(images, nrow=NROW)


def _check_page(page: Path, network: Path, ort: Any) -> float:
    """The page folder's network (weights put back) gives the exported file's outputs."""
    net = PageNetwork(page)
    meta = net.meta
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    exported = ort.InferenceSession(str(network), options, providers=["CPUExecutionProvider"])
    x = page_noise(1, (3, *meta["input_shape"]))
    T = meta["schedule"]["T"]
    t = 0.5 * 1000 if meta["prediction"] == "flow" else T // 2
    labels = [0, 1, 0] if meta["classes"] else None
    tokens = None
    if meta.get("text"):
        tokens = np.zeros((3, meta["text"]["length"]), np.int64)  # the empty prompt, then words
        tokens[1, 0], tokens[2] = 1, len(meta["text"]["vocabulary"]) - 1
    feed = {"x": x, "t": np.full(3, t, dtype=net.t_dtype)}
    if labels is not None:
        feed["label"] = np.asarray(labels, np.int64)
    if tokens is not None:
        feed["tokens"] = tokens
    diff = float(np.abs(net(x, t, labels, tokens) - exported.run(None, feed)[0]).max())
    if not diff <= 1e-6:
        raise RuntimeError(f"the page's model differs from the exported network by {diff:.3g}")
    return diff


# onnxruntime-web: fetched once with npm pack, cached ---------------------------------------------


def npm_cache_dir() -> Path:
    """Where npm packages for the page are kept: $DIFFLAB_NPM_CACHE, else difflab's cache
    (``data.default_cache_dir``, ~/.cache/difflab by default) /npm."""
    if os.environ.get("DIFFLAB_NPM_CACHE"):
        return Path(os.environ["DIFFLAB_NPM_CACHE"]).expanduser()
    return default_cache_dir() / "npm"


def runtime_dir() -> Path:
    """The prepared runtime files (``RUNTIME_FILES``) of the pinned onnxruntime-web."""
    return npm_cache_dir() / f"onnxruntime-web-{ORT_WEB_VERSION}"


def runtime_tarball() -> Path:
    return npm_cache_dir() / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"


def runtime_ready() -> bool:
    """Whether the pinned runtime's files are prepared in the cache."""
    folder = runtime_dir()
    try:
        source = json.loads((folder / "SOURCE.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return source.get("integrity") == ORT_WEB_INTEGRITY and all(
        (folder / name).is_file() for name in RUNTIME_FILES
    )


def ensure_runtime(*, fetch: bool = True, note: Callable[[str], None] | None = None) -> Path:
    """The folder of the page's onnxruntime-web files, prepared from the pinned npm package the
    first time (fetched with ``npm pack`` unless ``fetch`` is False or it lies in the cache;
    ``note`` is told before it is)."""
    if runtime_ready():
        return runtime_dir()
    tarball = runtime_tarball()
    if not tarball.is_file():
        if not fetch:
            raise ValueError(
                f"onnxruntime-web {ORT_WEB_VERSION} is not in {npm_cache_dir()}; fetch it with "
                f"`{FETCH_COMMAND}` (npm pack {ORT_WEB_PACKAGE}) where the npm registry is "
                "reachable"
            )
        fetch_runtime(note)
    _check_integrity(tarball)
    _prepare_runtime(tarball, runtime_dir())
    return runtime_dir()


def fetch_runtime(note: Callable[[str], None] | None = None) -> Path:
    """Fetch the pinned onnxruntime-web package with ``npm pack`` into the cache (a build step;
    the page itself fetches nothing; ``note`` is told first) and check its sha512. Returns the
    .tgz."""
    cache = npm_cache_dir()
    hint = (
        f"fetch it with `{FETCH_COMMAND}` (npm pack {ORT_WEB_PACKAGE} --pack-destination {cache})"
        " where the npm registry is reachable"
    )
    npm = shutil.which("npm")
    if npm is None:
        raise ValueError(
            f"onnxruntime-web {ORT_WEB_VERSION} is not in {cache} and npm is not installed "
            f"(install Node.js's npm); then {hint}"
        )
    if note is not None:
        note(f"fetching {ORT_WEB_PACKAGE} with npm pack into {cache} (once)")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".npm-pack.", dir=cache) as tmp:
            try:
                done = subprocess.run(
                    [npm, "pack", ORT_WEB_PACKAGE, "--pack-destination", tmp, "--silent"],
                    capture_output=True, text=True, timeout=900, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise ValueError(f"npm pack {ORT_WEB_PACKAGE} timed out; {hint}") from None
            packed = sorted(Path(tmp).glob("*.tgz"))
            if done.returncode != 0 or len(packed) != 1:
                lines = [line for line in done.stderr.splitlines() if line.strip()]
                said = next((line for line in lines if "error" in line.lower()), None)
                said = said or (lines[-1] if lines else f"exit code {done.returncode}")
                raise ValueError(
                    f"could not fetch onnxruntime-web {ORT_WEB_VERSION} ({said.strip()}); {hint}"
                )
            _check_integrity(packed[0])
            os.replace(packed[0], runtime_tarball())
    except OSError as err:
        raise ValueError(f"cannot write {cache}: {err.strerror or err}") from None
    return runtime_tarball()


def _check_integrity(tarball: Path) -> None:
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != ORT_WEB_INTEGRITY:
        raise ValueError(
            f"{tarball} is not {ORT_WEB_PACKAGE} as the npm registry publishes it (its sha512 "
            f"differs); delete it and run `{FETCH_COMMAND}`"
        )


def _prepare_runtime(tarball: Path, folder: Path) -> None:
    """Take the page's files out of the npm package (gzipping the .wasm) into ``folder``, whole
    or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for name in RUNTIME_FILES:
                source = name.removesuffix(".gz")
                member = tar.extractfile(f"package/dist/{source}")
                if member is None:
                    raise ValueError(f"{tarball} holds no dist/{source}")
                data = member.read()
                if name.endswith(".gz"):
                    data = gzip.compress(data, 9, mtime=0)
                (tmp / name).write_bytes(data)
        source_info = {"package": ORT_WEB_PACKAGE, "integrity": ORT_WEB_INTEGRITY}
        (tmp / "SOURCE.json").write_text(json.dumps(source_info) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(_made_public(tmp), folder)
    except (KeyError, tarfile.TarError) as err:
        raise ValueError(f"{tarball} is not a readable npm package: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_runtime_command() -> int:
    """``make web-runtime``: make the pinned runtime ready (fetching it if needed); one line."""
    try:
        folder = ensure_runtime(fetch=True, note=print)
    except ValueError as err:
        print(f"web-runtime: error: {err}", file=sys.stderr)
        return 2
    print(f"onnxruntime-web {ORT_WEB_VERSION} is ready in {folder}")
    return 0
