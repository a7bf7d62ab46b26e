"""`difflab export --web DIR`: a static page folder that draws in the browser with onnxruntime-web.

Default suite (no browser, no network): the folder's files and JSON; the Python noise twin; the
JavaScript sampler and tokenizer (sampler.js, run by node when it is installed) against their
Python twins ``sample_page`` and ``models.text.tokenize`` on a stand-in network; ``sample_page``
against difflab's own samplers for the same noise (a text model's prompt and guidance too); npm
pack and its checks with a stand-in npm; bad input is one line and leaves nothing. The default
suite runs on a stand-in runtime (tiny files named as onnxruntime-web's).

Slow (`make web-runtime` first; Debian's chromium, driven by Playwright): the pages of tiny
checkpoints of each kind drawn in headless Chromium give the images ``sample_page`` gives for the
same seed (max |diff| <= 1e-3 as floats, <= 2/255 as pixels), a text model's for a prompt typed
in its box too, no request leaves 127.0.0.1; a bad prompt is one message in the page; the
default MNIST model's page is at most 5 MiB.

The checkpoints are test_export_onnx's tiny 8 px networks with every weight moved off its initial
value (its two text models: a diffusion one with the transformer encoder, a flow one with the bag
of words)."""

import base64
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import difflab.export.web as web
from difflab import compose
from difflab.checkpoint import write_checkpoint
from difflab.cli import main
from difflab.config import RunConfig, default_model_config
from difflab.export.web import (
    ORT_WEB_VERSION,
    RUNTIME_FILES,
    PageNetwork,
    export_web,
    page_grid,
    page_noise,
    page_plan,
    sample_page,
)
from difflab.kinds import load_model, plan_sampling
from difflab.models.text import tokenize
from difflab.models.unet import UNet
from difflab.sampling import SamplingRequest, execute
from test_export_onnx import configs, perturbed, text_configs

SAMPLER_JS = Path(web.__file__).parent / "page" / "sampler.js"
PAGE_FILES = {
    "index.html", "page.js", "sampler.js", "model.onnx.gz", "model.weights.gz", "model.json",
    "page.json", "THIRD_PARTY.txt", *RUNTIME_FILES,
}  # fmt: skip
DRAWN = ("diffusion", "flow", "consistency", "progressive")
TEXT = ("text", "text-bag-flow")  # test_export_onnx's text models: diffusion, flow
PROMPT = "a red 3 left of a blue 7"  # the page's default prompt
TOL = 1e-4  # sample_page against difflab's own samplers (float32 rounding, as test_export_onnx)
PAGE_TOL, PIXEL_TOL = 1e-3, 2  # the browser against sample_page: floats, and pixels of 255
FIVE_MIB = 5 * 2**20
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("web-ckpts")
    return {
        kind: write_checkpoint(root / f"{kind}.safetensors", config, networks)
        for kind, (config, networks) in {**configs(), **text_configs()}.items()
    }


def stand_in_runtime(cache):
    """A prepared runtime folder of tiny files in the npm cache ``cache``, as ensure_runtime
    leaves one (the default suite never fetches the real one)."""
    folder = cache / f"onnxruntime-web-{ORT_WEB_VERSION}"
    folder.mkdir(parents=True)
    for name in RUNTIME_FILES:
        (folder / name).write_bytes(b"// stand-in for " + name.encode())
    source = {"package": web.ORT_WEB_PACKAGE, "integrity": web.ORT_WEB_INTEGRITY}
    (folder / "SOURCE.json").write_text(json.dumps(source))
    return folder


@pytest.fixture
def fake_runtime(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("npm-cache")
    stand_in_runtime(cache)
    monkeypatch.setenv("DIFFLAB_NPM_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def pages(checkpoints, tmp_path_factory):
    """The page folder of each kind the page draws, made on the stand-in runtime."""
    cache = tmp_path_factory.mktemp("npm-cache-pages")
    stand_in_runtime(cache)
    root = tmp_path_factory.mktemp("pages")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLAB_NPM_CACHE", str(cache))
        return {
            kind: export_web(checkpoints[kind], root / kind).out_dir for kind in (*DRAWN, *TEXT)
        }


# The folder ------------------------------------------------------------------------------------


def test_the_command_writes_the_page_folder_in_one_line(checkpoints, fake_runtime, tmp_path,
                                                        capsys):  # fmt: skip
    out = tmp_path / "site" / "page"
    assert main(["export", "--web", str(out), "--checkpoint", str(checkpoints["consistency"])]) == 0
    printed = capsys.readouterr().out.strip()
    assert len(printed.splitlines()) == 1 and printed.startswith(f"wrote {out} (consistency")
    assert f"python -m http.server -d {out}" in printed and "MiB" in printed
    assert {p.name for p in out.iterdir()} == PAGE_FILES
    assert [p.name for p in out.parent.iterdir()] == ["page"]  # no temporary folder left
    info = json.loads((out / "page.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    assert info["format"] == "difflab-web-1" and info["onnxruntime_web"]["version"] == "1.22.0"
    assert info["steps"] == {"default": 1, "choices": [1, 2, 4], "max": 30}
    assert info["num_images"] == 16 and info["onnxruntime_web"]["threads"] == 1
    assert info["prompt"] is None and meta["text"] is None  # no text: no prompt box
    assert meta["kind"] == "consistency" and meta["classes"]["names"] == ["cat", "dog", "owl"]
    assert set(info["onnxruntime_web"]["files"]) == set(RUNTIME_FILES)
    # The graph and its weights are an ONNX model again when put together.
    weights = web.unshuffle_bytes(gzip.decompress((out / "model.weights.gz").read_bytes()))
    assert len(weights) == info["weights"]["bytes"]
    onnx = pytest.importorskip("onnx")
    graph = gzip.decompress((out / "model.onnx.gz").read_bytes())
    onnx.checker.check_model(onnx.load_from_string(web.join_weights(graph, weights)))
    # Every URL the page names is a file of the folder.
    html = (out / "index.html").read_text()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(u in PAGE_FILES or u.startswith("data:") for u in urls), urls
    for name in ("index.html", "page.js", "sampler.js"):
        assert not re.search(r"https?://|//cdn|fonts\.", (out / name).read_text()), name


@pytest.mark.parametrize("kind", TEXT)
def test_a_text_models_page_has_a_prompt_box_and_the_vocabulary(pages, kind):
    info = json.loads((pages[kind] / "page.json").read_text())
    meta = json.loads((pages[kind] / "model.json").read_text())
    assert info["prompt"] == {"default": PROMPT, "guidance": 3.0}
    assert meta["text"]["vocabulary"] == list(compose.VOCABULARY) and meta["text"]["length"] == 8
    assert meta["classes"] is None and list(meta["network"]["inputs"]) == ["x", "t", "tokens"]
    assert info["steps"] == {"default": 20, "choices": None, "max": 30}
    html = (pages[kind] / "index.html").read_text()
    assert '<label id="prompt-row" hidden>' in html and 'id="prompt"' in html


def test_overwrite_replaces_a_page_and_only_a_page(checkpoints, fake_runtime, tmp_path, capsys):
    out = tmp_path / "page"
    argv = ["export", "--web", str(out), "--checkpoint", str(checkpoints["progressive"])]
    assert main(argv) == 0
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    (out / "stale.txt").write_text("from an older page")
    assert main([*argv, "--overwrite"]) == 0
    assert {p.name for p in out.iterdir()} == PAGE_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["page"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--web", str(empty), "--checkpoint", str(checkpoints["flow"])]) == 0
    assert {p.name for p in empty.iterdir()} == PAGE_FILES  # an empty folder is taken


def stand_in_npm(tmp_path, script):
    """A folder holding an ``npm`` that runs ``script`` (sh), recording its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/npm-args"\n{script}\n')
    npm.chmod(0o755)
    return bin_dir


def listing(root):
    """Every path under ``root`` with its content, but the stand-in npm's record of its call."""
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None)
                  for p in root.rglob("*") if p.name != "npm-args")  # fmt: skip


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not empty", "already exists and is not empty; pass --overwrite"),
        ("not a page", "holds no difflab page (page.json): not replacing it"),
        ("a file", "exists and is not a folder"),
        ("gan", "the web page draws diffusion, flow matching, consistency and progressive"),
        ("latent-diffusion", "the web page draws diffusion, flow matching, consistency"),
        ("autoencoder", "it is not a diffusion model"),
        ("missing", "does not exist"),
        ("no npm", "npm is not installed (install Node.js's npm); then fetch it with `make web-runtime`"),
        ("offline", "could not fetch onnxruntime-web 1.22.0 (npm error code ENOTFOUND); fetch it with `make web-runtime`"),
        ("tampered", "is not onnxruntime-web@1.22.0 as the npm registry publishes it"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_leaves_nothing(checkpoints, tmp_path, monkeypatch, capsys,
                                                  case, message):  # fmt: skip
    cache = tmp_path / "npm-cache"
    cache.mkdir()
    monkeypatch.setenv("DIFFLAB_NPM_CACHE", str(cache))
    if case not in ("no npm", "offline", "tampered"):
        stand_in_runtime(cache)
    site = tmp_path / "site"
    site.mkdir()
    out, ckpt, extra = site / "page", checkpoints["diffusion"], []
    if case in ("gan", "latent-diffusion", "autoencoder"):
        ckpt = checkpoints[case]
    if case == "missing":
        ckpt = tmp_path / "nope.safetensors"
    if case in ("not empty", "not a page"):
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
        extra = ["--overwrite"] if case == "not a page" else []
    if case == "a file":
        out.write_text("a file")
    if case == "no npm":
        monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    if case == "offline":
        npm = stand_in_npm(tmp_path, 'echo "npm error code ENOTFOUND" >&2\nexit 1')
        monkeypatch.setenv("PATH", f"{npm}{os.pathsep}{os.environ['PATH']}")
    if case == "tampered":
        npm = stand_in_npm(tmp_path, 'printf junk > "$4/onnxruntime-web-1.22.0.tgz"')
        monkeypatch.setenv("PATH", f"{npm}{os.pathsep}{os.environ['PATH']}")
    before = listing(tmp_path)
    argv = ["export", "--web", str(out), "--checkpoint", str(ckpt), *extra]
    assert main(argv) == 2
    *said, err = capsys.readouterr().err.strip().splitlines()
    fetched = case in ("offline", "tampered")  # told first that npm pack runs
    assert len(said) == fetched and all("fetching onnxruntime-web@1.22.0" in s for s in said)
    assert err.startswith("difflab export: error: ") and message in err, err
    assert listing(tmp_path) == before  # no page, no temporary folder, the user's files untouched


def test_the_runtime_is_fetched_with_npm_pack_checked_and_prepared(tmp_path, monkeypatch):
    """A stand-in npm "packs" a package with the runtime's files: ensure_runtime checks its
    sha512 against the pinned one and takes out the files, the .wasm gzipped."""
    wasm = bytes(range(256)) * 64
    package = tmp_path / "package.tgz"
    with tarfile.open(package, "w:gz") as tar:
        for name, data in [("ort.wasm.min.js", b"ort"), ("ort-wasm-simd-threaded.mjs", b"mjs"),
                           ("ort-wasm-simd-threaded.wasm", wasm)]:  # fmt: skip
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    digest = base64.b64encode(hashlib.sha512(package.read_bytes()).digest()).decode()
    monkeypatch.setattr(web, "ORT_WEB_INTEGRITY", f"sha512-{digest}")
    npm = stand_in_npm(tmp_path, f'cp "{package}" "$4/onnxruntime-web-1.22.0.tgz"')
    monkeypatch.setenv("PATH", f"{npm}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DIFFLAB_NPM_CACHE", str(tmp_path / "cache"))
    notes = []
    folder = web.ensure_runtime(note=notes.append)
    args = (tmp_path / "npm-args").read_text().split()
    assert args[:3] == ["pack", "onnxruntime-web@1.22.0", "--pack-destination"], args
    assert len(notes) == 1 and "npm pack" in notes[0]
    assert gzip.decompress((folder / "ort-wasm-simd-threaded.wasm.gz").read_bytes()) == wasm
    assert (folder / "ort.wasm.min.js").read_bytes() == b"ort" and web.runtime_ready()
    assert web.ensure_runtime(note=notes.append) == folder and len(notes) == 1  # cached now
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        folder.name, "onnxruntime-web-1.22.0.tgz"
    ]  # fmt: skip


# The noise and the sampler: Python and JavaScript ---------------------------------------------


def test_page_noise_is_deterministic_standard_normal_and_per_element():
    a = page_noise(7, (16, 1, 28, 28))
    assert a.dtype == np.float32 and a.shape == (16, 1, 28, 28)
    assert np.array_equal(a, page_noise(7, (16, 1, 28, 28)))  # the same seed, the same noise
    assert np.array_equal(a[:3], page_noise(7, (3, 1, 28, 28)))  # image i in any batch size
    assert not np.array_equal(a, page_noise(8, a.shape))
    assert not np.array_equal(a, page_noise(7, a.shape, stream=1))
    big = page_noise(123, (200_000,)).astype(np.float64)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01
    assert abs(np.mean(big > 1.96) - 0.025) < 0.002  # a normal's tail, not a uniform's
    corr = np.corrcoef(page_noise(1, (50_000,)), page_noise(2, (50_000,)))[0, 1]
    assert abs(corr) < 0.02
    assert page_noise(2**32 - 1, (2,)).shape == (2,)
    for bad in (-1, 2**32, 1.5, "3"):
        with pytest.raises(ValueError, match=r"seed must be an integer in 0\.\.4294967295"):
            page_noise(bad, (2,))


NODE_SCRIPT = """
const S = require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const fake = async (x, t, labels, tokens) => {  // the stand-in network, as in the Python test
  const rows = labels || tokens, n = rows ? rows.length : 1, per = x.length / n;
  const out = new Float32Array(x.length);
  for (let j = 0; j < x.length; j++) {
    const r = Math.floor(j / per);
    const words = tokens ? 0.0005 * tokens[r].reduce((sum, id, k) => sum + id * (k + 1), 0) : 0;
    out[j] = 0.3 * x[j] + 0.0007 * t - 0.2 + (labels ? 0.05 * labels[r] : 0) + words;
  }
  return out;
};
(async () => {
  const result = {noise: {}, grids: {}, samples: [], pixels: null, tokens: []};
  for (const prompt of input.prompts) {
    try {
      result.tokens.push({ids: S.tokenize(input.text, prompt)});
    } catch (err) {
      result.tokens.push({error: err.message});
    }
  }
  for (const [seed, stream, size] of input.noise) {
    result.noise[`${seed},${stream}`] = Array.from(S.pageNoise(seed, stream, size));
  }
  for (const T of input.T) {
    result.grids[T] = [];
    for (let s = 1; s <= T; s++) result.grids[T].push(S.trailingTimesteps(T, s));
  }
  for (const c of input.samples) {
    const frames = [];
    const x = await S.sample(c.meta, fake, c.opts, async ({ i, t }) => frames.push([i, t]));
    result.samples.push({x: Array.from(x), frames});
  }
  const p = input.pixels;
  result.pixels = Array.from(S.gridPixels(Float32Array.from(p.x), p.n, p.C, p.H, p.W, 4).rgba);
  process.stdout.write(JSON.stringify(result));
})();
"""


TOKENIZER_CASES = [
    PROMPT, "", "a green 2", "  a  red\t3\n left  of a blue 7 ", "a\u2003red\u30003",
    "a\x1cred\x853", "a white 0 below a yellow 6",
    "a purple 3", "a Red 3", "<pad>", "a red 3 left of a blue 7 now", "a red 3, please",
]  # fmt: skip  # Python's whitespace (\u2003, \x1c, \x85 ...); unknown words; 9 words


def fake_net(meta, info):
    """The stand-in network of NODE_SCRIPT, in NumPy: float64 per element, stored as float32."""

    class Fake:
        def __init__(self):
            self.meta, self.page = meta, info

        def __call__(self, x, t, labels, tokens):
            out = 0.3 * x.astype(np.float64) + 0.0007 * t - 0.2
            if labels is not None:
                out = out + 0.05 * np.asarray(labels, np.float64).reshape(-1, 1, 1, 1)
            if tokens is not None:  # position-weighted: word order counts
                weighted = (tokens * np.arange(1, tokens.shape[1] + 1)).sum(1)  # (N,)
                out = out + 0.0005 * weighted.astype(np.float64).reshape(-1, 1, 1, 1)
            return out.astype(np.float32)

    return Fake()


def test_the_javascript_sampler_is_its_python_twin(pages):
    """sampler.js under node against difflab.export.web on the same stand-in network: the same
    noise, timestep grids, sampler loops (each kind, guidance, classes, prompts, consistency's
    fresh noise at each step) and pixels; and sampler.js's tokenizer is models.text.tokenize."""
    node = shutil.which("node") or pytest.skip("node is not installed (apt-get install nodejs)")
    cases = [
        ("consistency", {"seed": 3, "steps": 4, "label": None, "guidance": 1}),
        ("consistency", {"seed": 9, "steps": 2, "label": 2, "guidance": 1}),
        ("progressive", {"seed": 4, "steps": 2, "label": None, "guidance": 1}),
        ("diffusion", {"seed": 5, "steps": 7, "label": None, "guidance": 2.5}),
        ("diffusion", {"seed": 6, "steps": 30, "label": 1, "guidance": 1}),
        ("flow", {"seed": 2**32 - 1, "steps": 4, "label": 0, "guidance": 0}),
        ("text", {"seed": 10, "steps": 6, "label": None, "prompt": PROMPT, "guidance": 3}),
        ("text", {"seed": 11, "steps": 3, "label": None, "prompt": "", "guidance": 2}),
        (
            "text-bag-flow",
            {"seed": 12, "steps": 4, "label": None, "prompt": "a green 2", "guidance": 1},
        ),
    ]
    samples = []
    for kind, opts in cases:
        meta = json.loads((pages[kind] / "model.json").read_text())
        info = json.loads((pages[kind] / "page.json").read_text())
        samples.append((meta, info, {**opts, "numImages": 5}))
    images = np.random.default_rng(0).uniform(-1.2, 1.2, (5, 3, 4, 4)).astype(np.float32)
    images[0, 0, 0, :3] = [-1.0, 0.0, 1 / 127.5 - 1]  # exact and half-way values
    request = {
        "noise": [[0, 0, 3000], [7, 0, 3000], [7, 1, 3000], [2**32 - 1, 5, 3000]],
        "T": [1, 7, 30, 40, 1000],
        "samples": [{"meta": meta, "opts": opts} for meta, _, opts in samples],
        "pixels": {"x": images.ravel().tolist(), "n": 5, "C": 3, "H": 4, "W": 4},
        "text": {"vocabulary": list(compose.VOCABULARY), "length": 8},
        "prompts": TOKENIZER_CASES,
    }
    done = subprocess.run([node, "-e", NODE_SCRIPT, str(SAMPLER_JS)], input=json.dumps(request),
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    got = json.loads(done.stdout)
    for seed, stream, size in request["noise"]:
        js = np.array(got["noise"][f"{seed},{stream}"], np.float32)
        py = page_noise(seed, (size,), stream)
        assert np.abs(js - py).max() <= 1e-6 and np.mean(js == py) > 0.99, (seed, stream)
    for T in request["T"]:
        assert got["grids"][str(T)] == [web.timestep_sequence(T, s) for s in range(1, T + 1)], T
    for (meta, info, opts), js in zip(samples, got["samples"], strict=True):
        frames: list = []
        py = sample_page(fake_net(meta, info), seed=opts["seed"], steps=opts["steps"],
                         class_label=opts["label"], prompt=opts.get("prompt"),
                         guidance=opts["guidance"], num_images=5,
                         callback=lambda s, frames=frames: frames.append([s["i"], s["t"]]))  # fmt: skip
        assert js["frames"] == frames == [[i, t] for i, t in
                                          enumerate(page_plan(meta, opts["steps"]).timesteps)]  # fmt: skip
        diff = float(np.abs(np.array(js["x"], np.float32) - py.ravel()).max())
        print(f"{meta['kind']} {opts}: sampler.js vs sample_page: {diff:.2e}")
        assert diff <= 1e-5, (meta["kind"], opts, diff)
        assert py.std() > 0.01
    rgba = np.array(got["pixels"], np.uint8).reshape(*page_grid(images).shape[:2], 4)
    assert np.array_equal(rgba[..., :3], page_grid(images)) and (rgba[..., 3] == 255).all()
    for prompt, js in zip(TOKENIZER_CASES, got["tokens"], strict=True):
        try:
            py = {"ids": tokenize([prompt], compose.VOCABULARY, 8)[0].tolist()}
        except ValueError as err:
            py = {"error": str(err)}
        assert js == py, (prompt, js, py)


@pytest.mark.parametrize(
    ("kind", "steps", "guidance"),
    [("diffusion", 6, 2.0), ("diffusion", 30, 1.0), ("flow", 5, 1.0), ("consistency", 1, None),
     ("progressive", 2, None)],
)  # fmt: skip
def test_sample_page_is_difflabs_own_sampler_for_the_pages_noise(pages, checkpoints, kind,
                                                                 steps, guidance):  # fmt: skip
    """The page's Python twin, on the page folder's files with onnxruntime, against difflab's
    DDIM / consistency sampling (PyTorch) from the same x_T; classes in turn."""
    loaded = load_model(checkpoints[kind], "cpu")
    ddim = kind in ("diffusion", "flow")
    request = SamplingRequest(num_images=16, steps=steps, sampler="ddim" if ddim else None,
                              guidance=guidance)  # fmt: skip
    plan = plan_sampling(loaded, request)
    meta = json.loads((pages[kind] / "model.json").read_text())
    x_T = torch.from_numpy(page_noise(11, (16, *meta["input_shape"])))
    want = execute(loaded, plan, x_T=x_T).numpy()
    got = sample_page(pages[kind], seed=11, steps=steps, guidance=guidance or 1.0)
    diff = float(np.abs(np.clip(got, -1, 1) - want).max())
    print(f"{kind}: sample_page vs difflab ({plan.sampler}, {steps} steps): {diff:.2e}")
    assert diff <= TOL and want.std() > 0.05
    assert list(plan.timesteps) == page_plan(meta, steps).timesteps


@pytest.mark.parametrize(
    ("kind", "steps", "prompt", "guidance"),
    [("text", 6, PROMPT, 3.0), ("text", 4, "a green 2", 1.0), ("text-bag-flow", 5, None, 2.0)],
)  # fmt: skip
def test_sample_page_draws_a_prompt_as_difflab_does(pages, checkpoints, kind, steps, prompt,
                                                    guidance):  # fmt: skip
    """A text model's page in Python against difflab's DDIM (PyTorch) for the same prompt (None:
    the page's default), guided against the empty prompt, from the same x_T."""
    loaded = load_model(checkpoints[kind], "cpu")
    request = SamplingRequest(num_images=16, steps=steps, sampler="ddim", guidance=guidance,
                              prompts=(prompt or PROMPT,))  # fmt: skip
    plan = plan_sampling(loaded, request)
    meta = json.loads((pages[kind] / "model.json").read_text())
    x_T = torch.from_numpy(page_noise(13, (16, *meta["input_shape"])))
    want = execute(loaded, plan, x_T=x_T).numpy()
    got = sample_page(pages[kind], seed=13, steps=steps, prompt=prompt, guidance=guidance)
    diff = float(np.abs(np.clip(got, -1, 1) - want).max())
    print(f"{kind} {prompt!r} w={guidance}: sample_page vs difflab: {diff:.2e}")
    assert diff <= TOL and want.std() > 0.05
    # The prompt and the guidance count.
    other = sample_page(pages[kind], seed=13, steps=steps, prompt="a white 0", guidance=guidance)
    assert np.abs(other - got).max() > 1e-2
    if guidance != 1.0:
        plain = sample_page(pages[kind], seed=13, steps=steps, prompt=prompt, guidance=1.0)
        assert np.abs(plain - got).max() > 1e-2


def test_the_pythons_twin_refuses_what_the_page_refuses(pages):
    with pytest.raises(ValueError, match="steps must be one of 1, 2, 4 for this model, got 3"):
        sample_page(pages["consistency"], steps=3)
    with pytest.raises(ValueError, match=r"steps must be an integer in 1..30, got 31"):
        sample_page(pages["diffusion"], steps=31)
    with pytest.raises(ValueError, match=r"class label 3 out of range; expected 0..2"):
        sample_page(pages["diffusion"], class_label=3)
    # A prompt for a model without text, a class for a text model: one line each.
    refusals = [
        (lambda: sample_page(pages["diffusion"], prompt=PROMPT),
         "a prompt was given, but this page's model is class-conditional, without text"),
        (lambda: sample_page(pages["progressive"], prompt=""),
         "a prompt was given, but this page's model is unconditional, without text"),
        (lambda: sample_page(pages["text"], class_label=1),
         "a class label was given, but this page's model is text-conditioned: give a prompt"),
        (lambda: sample_page(pages["progressive"], class_label=1),
         "a class label was given, but this page's model is unconditional"),
        (lambda: sample_page(pages["text"], prompt="a purple 3"),
         "unknown word 'purple' in prompt 'a purple 3'; this model knows: a red green"),
        (lambda: sample_page(pages["text"], prompt=f"{PROMPT} now"), "has 9 words; at most 8 fit"),
    ]  # fmt: skip
    net, text_net = PageNetwork(pages["diffusion"]), PageNetwork(pages["text"])
    x = page_noise(0, (2, 3, 8, 8))
    refusals += [
        (lambda: net(x, 3, [0, 1], np.zeros((2, 8), np.int64)), "a prompt was given"),
        (lambda: text_net(x, 3, [0, 1]), "a class label was given"),
    ]
    for call, message in refusals:
        with pytest.raises(ValueError) as caught:
            call()
        assert message in str(caught.value) and "\n" not in str(caught.value), caught.value


# In the browser (slow) ------------------------------------------------------------------------


def chromium_path():
    for candidate in ("chromium", "chromium-browser"):
        if shutil.which(candidate):
            return shutil.which(candidate)
    pytest.skip("no chromium on this machine (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def real_runtime():
    if not web.runtime_ready():
        pytest.skip(f"onnxruntime-web {ORT_WEB_VERSION} is not fetched: run make web-runtime")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(real_runtime, checkpoints, tmp_path_factory):
    """The real pages of each kind in one folder, served by Python's static server on
    127.0.0.1 (a thread): (base URL, {kind: folder})."""
    root = tmp_path_factory.mktemp("site")
    folders = {kind: export_web(checkpoints[kind], root / kind).out_dir for kind in (*DRAWN, *TEXT)}
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folders
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(served):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True)
        yield browser
        browser.close()


READ_CANVAS = """() => {
  const c = document.getElementById('grid');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
  return {width: c.width, height: c.height, data: Array.from(d.data)};
}"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "seed", "steps", "label", "guidance"),
    [("consistency", 5, 2, None, None), ("progressive", 6, 2, None, None),
     ("diffusion", 7, 4, None, 2.0), ("flow", 8, 3, 1, None)],
)  # fmt: skip
def test_the_page_draws_pythons_images_in_chromium(browser, served, tmp_path, kind, seed, steps,
                                                   label, guidance):  # fmt: skip
    url, folders = served
    page = browser.new_page(viewport={"width": 1000, "height": 1200})
    hosts, errors = [], []
    page.on("request", lambda r: hosts.append(r.url.split("/")[2]))
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url + kind + "/")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('ready')"
                               " || document.querySelector('#status').textContent.startsWith("
                               "'error')", timeout=120_000)  # fmt: skip
        assert page.text_content("#status").startswith("ready"), page.text_content("#status")
        page.fill("#seed", str(seed))
        if kind in ("consistency", "progressive"):
            page.select_option("#steps", str(steps))
        else:
            page.fill("#steps", str(steps))
        if label is not None:
            page.select_option("#class", str(label))
        if guidance is not None:
            page.fill("#guidance", str(guidance))
        page.context.set_offline(True)  # loaded: drawing needs no network
        page.click("#draw")
        page.wait_for_function("/^(done|error)/.test(document.querySelector('#status')"
                               ".textContent)", timeout=120_000)  # fmt: skip
        status = page.text_content("#status")
        assert status == f"done: seed {seed}, {steps} steps", status
        # Python's images for the same settings, from the same folder.
        want = sample_page(folders[kind], seed=seed, steps=steps, class_label=label,
                           guidance=guidance or 1.0)  # fmt: skip
        got = np.array(page.evaluate("Array.from(window.difflab.last.images)"), np.float32)
        diff = float(np.abs(got.reshape(want.shape) - want).max())
        canvas = page.evaluate(READ_CANVAS)
        rgba = np.array(canvas["data"], np.uint8).reshape(canvas["height"], canvas["width"], 4)
        pixels = np.abs(rgba[..., :3].astype(int) - page_grid(want).astype(int)).max()
        print(f"{kind}: the page vs sample_page: max |diff| {diff:.2e}, pixels {pixels}/255")
        assert diff <= PAGE_TOL and pixels <= PIXEL_TOL and want.std() > 0.05
        # Its time, measured in the page, and a frame of each step.
        assert float(page.get_attribute("#time", "data-compute-ms")) > 0
        assert re.match(r"16 images in \d+ ms of computation", page.text_content("#time"))
        assert page.locator("#frames canvas").count() == steps
        shot = tmp_path / f"web_{kind}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        if os.environ.get("DIFFLAB_SCREENSHOT_DIR"):
            Path(os.environ["DIFFLAB_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, os.environ["DIFFLAB_SCREENSHOT_DIR"])
        assert not errors, errors
        assert hosts and all(h.split(":")[0] in LOOPBACK_HOSTS for h in hosts), set(hosts)
    finally:
        page.context.set_offline(False)
        page.close()


@pytest.mark.slow
def test_a_bad_value_is_one_message_in_the_page(browser, served):
    url, _ = served
    page = browser.new_page()
    try:
        page.goto(url + "diffusion/")
        page.wait_for_function("document.querySelector('#status').textContent"
                               ".startsWith('ready')", timeout=120_000)  # fmt: skip
        page.fill("#steps", "31")
        page.click("#draw")
        assert page.text_content("#status") == "error: steps must be an integer in 1..30, got 31"
        page.fill("#steps", "2")
        page.fill("#seed", "-1")
        page.click("#draw")
        assert page.text_content("#status").startswith("error: seed must be an integer")
    finally:
        page.close()


def open_page(browser, url):
    """A new page at ``url``, loaded ("ready"), with its errors and requested hosts recorded."""
    page = browser.new_page(viewport={"width": 1000, "height": 1200})
    page.errors, page.hosts = [], []
    page.on("request", lambda r: page.hosts.append(r.url.split("/")[2]))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("/^(ready|error)/.test(document.querySelector('#status').textContent)",
                           timeout=120_000)  # fmt: skip
    assert page.text_content("#status").startswith("ready"), page.text_content("#status")
    return page


def click_draw(page):
    page.click("#draw")
    page.wait_for_function("/^(done|error)/.test(document.querySelector('#status').textContent)",
                           timeout=120_000)  # fmt: skip
    return page.text_content("#status")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "seed", "steps", "prompt", "guidance"),
    [("text", 9, 4, None, None), ("text", 10, 3, "a green 2 above a white 0", 1.0),
     ("text-bag-flow", 11, 3, "a yellow 6", 2.0)],
)  # fmt: skip
def test_a_text_page_draws_pythons_images_for_its_prompt(browser, served, kind, seed, steps,
                                                        prompt, guidance):  # fmt: skip
    """The prompt box (its default prompt and guidance 3 when untouched), tokenised in the page
    and drawn with guidance against the empty prompt, gives sample_page's images."""
    url, folders = served
    page = open_page(browser, url + kind + "/")
    try:
        assert page.is_visible("#prompt") and page.is_visible("#guidance")
        assert page.is_hidden("#class-row")
        assert page.input_value("#prompt") == PROMPT and page.input_value("#guidance") == "3"
        page.fill("#seed", str(seed))
        page.fill("#steps", str(steps))
        if prompt is not None:
            page.fill("#prompt", prompt)
        if guidance is not None:
            page.fill("#guidance", str(guidance))
        page.context.set_offline(True)  # loaded: drawing needs no network
        assert click_draw(page) == f"done: seed {seed}, {steps} steps"
        want = sample_page(folders[kind], seed=seed, steps=steps, prompt=prompt,
                           guidance=guidance)  # fmt: skip
        got = np.array(page.evaluate("Array.from(window.difflab.last.images)"), np.float32)
        diff = float(np.abs(got.reshape(want.shape) - want).max())
        canvas = page.evaluate(READ_CANVAS)
        rgba = np.array(canvas["data"], np.uint8).reshape(canvas["height"], canvas["width"], 4)
        pixels = np.abs(rgba[..., :3].astype(int) - page_grid(want).astype(int)).max()
        print(f"{kind} {prompt or PROMPT!r} w={guidance or 3.0}: the page vs sample_page: "
              f"max |diff| {diff:.2e}, pixels {pixels}/255")  # fmt: skip
        assert diff <= PAGE_TOL and pixels <= PIXEL_TOL and want.std() > 0.05
        assert not page.errors, page.errors
        assert all(h.split(":")[0] in LOOPBACK_HOSTS for h in page.hosts), set(page.hosts)
    finally:
        page.context.set_offline(False)
        page.close()


@pytest.mark.slow
def test_a_bad_prompt_is_one_message_in_the_page_and_draws_nothing(browser, served):
    url, _ = served
    page = open_page(browser, url + "text/")
    try:
        page.fill("#steps", "2")
        assert click_draw(page) == "done: seed 0, 2 steps"
        before = page.evaluate(READ_CANVAS)
        vocabulary = " ".join(compose.VOCABULARY[1:])
        for prompt, message in [
            ("a purple 3", f"unknown word 'purple' in prompt 'a purple 3'; this model knows: "
                           f"{vocabulary}"),
            ("a Red 3", "unknown word 'Red' in prompt 'a Red 3'"),
            (f"{PROMPT} now", f"prompt '{PROMPT} now' has 9 words; at most 8 fit"),
        ]:  # fmt: skip
            page.fill("#seed", "5")
            page.fill("#prompt", prompt)
            page.click("#draw")
            status = page.text_content("#status")
            assert status.startswith(f"error: {message}"), status
            assert page.evaluate("window.difflab.last.seed") == 0  # nothing drawn
            assert page.evaluate(READ_CANVAS) == before
        page.fill("#prompt", "")  # the empty prompt: drawn, unconditional
        assert click_draw(page) == "done: seed 5, 2 steps"
        assert not page.errors, page.errors
    finally:
        page.close()


@pytest.mark.slow
def test_the_default_mnist_page_is_at_most_5_mib(real_runtime, tmp_path):
    """difflab's default MNIST U-Net (28 px, 0.64M parameters; class-conditional, 10 classes),
    every weight moved off its initial value: its page, runtime included, fits in 5 MiB."""
    mc = default_model_config("mnist", 28, 1, num_classes=10)
    config = RunConfig(model=mc, class_names=tuple(str(k) for k in range(10)))
    torch.manual_seed(0)
    unet = UNet(mc)
    assert 0.6e6 < sum(p.numel() for p in unet.parameters()) < 0.7e6
    ckpt = write_checkpoint(tmp_path / "mnist.safetensors", config, {"model": perturbed(unet, 0)})
    done = export_web(ckpt, tmp_path / "page")
    total = sum(p.stat().st_size for p in done.out_dir.iterdir())
    print(f"MNIST page: {total} bytes ({total / 2**20:.2f} MiB): model {done.model_bytes}, "
          f"runtime {done.runtime_bytes}")  # fmt: skip
    assert total == done.total_bytes <= FIVE_MIB
