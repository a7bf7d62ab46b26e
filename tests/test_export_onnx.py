"""`difflab export --onnx`: each kind's network, run by onnxruntime, gives PyTorch's output (max
|diff| <= 1e-4) at any batch size, timestep and label (a text model's: prompt); the JSON holds the
checkpoint's schedule and the plan `difflab sample` makes (and a text model's vocabulary);
docs/export.md's snippets sample as difflab does; bad input is one line and leaves no file.

The checkpoints are tiny 8 px networks built here with every weight moved off its initial value
(GroupNorm's scale 1 and shift 0 would hide a scale applied per group instead of per channel)."""

import ast
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import difflab
from difflab import compose
from difflab.checkpoint import write_checkpoint
from difflab.cli import main
from difflab.config import (
    AutoencoderConfig,
    ConsistencyConfig,
    DiffusionConfig,
    FlowConfig,
    GANConfig,
    LatentConfig,
    ModelConfig,
    ProgressiveConfig,
    RunConfig,
)
from difflab.consistency import boundary_scalings
from difflab.export import OPSET, export_onnx
from difflab.kinds import KINDS, load_model, plan_sampling
from difflab.models.autoencoder import Autoencoder
from difflab.models.gan import build_networks
from difflab.models.text import tokenize
from difflab.models.unet import UNet
from difflab.sampling import SamplingRequest, execute
from difflab.schedules import make_schedule

TOL = 1e-4
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
SMALL = {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "norm_groups": 4}
AE = AutoencoderConfig(
    image_size=6, image_channels=3, padded_size=8, latent_channels=2, base_channels=8,
    channel_mults=(1, 2), norm_groups=4, latent_scale=0.8,
)  # fmt: skip
NAMES = ("cat", "dog", "owl")
DENOISERS = ("diffusion", "latent-diffusion", "flow", "consistency", "progressive")


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


def perturbed(module, seed):
    """``module``'s weights, each moved off its initial value (a BatchNorm variance kept > 0)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, value in module.state_dict().items():
        if value.is_floating_point():
            value = value + 0.1 * torch.randn(value.shape, generator=gen)
            value = value.abs() + 0.5 if name.endswith("running_var") else value
        weights[name] = value
    return weights


def configs():
    """The run configuration and the networks of a checkpoint of each kind."""
    teacher = {"teacher": "teacher.safetensors", "teacher_sha256": "0" * 64}
    cond = ModelConfig(image_size=8, in_channels=3, num_classes=3, attention_levels=(1,), **SMALL)
    uncond = ModelConfig(image_size=8, in_channels=3, **SMALL)
    latent = ModelConfig(image_size=AE.latent_size, in_channels=AE.latent_channels, **SMALL)
    v = DiffusionConfig(timesteps=30, prediction="v")
    runs = {
        "diffusion": RunConfig(model=cond, diffusion=v, class_names=NAMES),
        "latent-diffusion": RunConfig(
            model=latent, diffusion=DiffusionConfig(timesteps=40, schedule="linear",
                                                    prediction="eps"),
            latent=LatentConfig(autoencoder="ae.safetensors", autoencoder_sha256="0" * 64,
                                latent_scale=0.8, image_size=6, image_channels=3, architecture=AE),
        ),
        "flow": RunConfig(model=cond, diffusion=DiffusionConfig(timesteps=30, prediction="flow",
                                                                min_snr_gamma=None),
                          class_names=NAMES, flow=FlowConfig()),
        "consistency": RunConfig(model=cond, diffusion=v, class_names=NAMES,
                                 consistency=ConsistencyConfig(**teacher, guidance=2.0)),
        "progressive": RunConfig(model=uncond, diffusion=DiffusionConfig(timesteps=30,
                                                                         prediction="x0"),
                                 progressive=ProgressiveConfig(**teacher, steps=2)),
        "gan": RunConfig(model=ModelConfig(image_size=8, in_channels=3),
                         gan=GANConfig(z_dim=16, g_width=8, d_width=8)),
        "autoencoder": RunConfig(model=ModelConfig(image_size=8, in_channels=3), autoencoder=AE),
    }  # fmt: skip
    networks = {}
    for kind, config in runs.items():
        torch.manual_seed(0)
        if kind == "gan":
            networks[kind] = {"generator": perturbed(build_networks(8, 3, config.gan)[0], 1)}
        elif kind == "autoencoder":
            networks[kind] = {"autoencoder": perturbed(Autoencoder(AE), 2)}
        else:
            networks[kind] = {"model": perturbed(UNet(config.model), 3)}
    networks["latent-diffusion"]["autoencoder"] = perturbed(Autoencoder(AE), 4)
    return {kind: (config, networks[kind]) for kind, config in runs.items()}


def text_configs():
    """Two text-conditioned models with compose's vocabulary, keyed by a name: a diffusion model
    (v) with the transformer encoder (and the cells' position code), and a flow matching one with the bag of words; every weight
    moved off its initial value, the cross-attention blocks' zero output projections too (else
    the prompt would change nothing and a lost tokens input would pass)."""
    text = ModelConfig(image_size=8, in_channels=3, text_vocab=len(compose.VOCABULARY),
                       text_width=16, cross_positions=True, **SMALL)  # fmt: skip
    runs = {
        "text": RunConfig(model=text, diffusion=DiffusionConfig(timesteps=30, prediction="v"),
                          vocabulary=compose.VOCABULARY),
        "text-bag-flow": RunConfig(
            model=replace(text, text_encoder="bag"),
            diffusion=DiffusionConfig(timesteps=30, prediction="flow", min_snr_gamma=None),
            flow=FlowConfig(), vocabulary=compose.VOCABULARY,
        ),
    }  # fmt: skip
    out = {}
    for name, config in runs.items():
        torch.manual_seed(0)
        out[name] = (config, {"model": perturbed(UNet(config.model), 5)})
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        kind: write_checkpoint(root / f"{kind}.safetensors", config, networks)
        for kind, (config, networks) in configs().items()
    }


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """Each kind but the autoencoder exported by the library into its own folder as model.onnx:
    (the loaded PyTorch model, the JSON, an onnxruntime session, the folder)."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for kind in KINDS:
        if kind not in checkpoints or kind == "autoencoder":
            continue
        result = export_onnx(checkpoints[kind], root / kind / "model.onnx")
        assert result.kind == kind and result.max_abs_diff <= TOL
        meta = json.loads(result.metadata.read_text())
        out[kind] = (load_model(checkpoints[kind], "cpu"), meta, session(result.network),
                     root / kind)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def text_exported(tmp_path_factory):
    """The text models of ``text_configs`` exported: (the loaded model, the JSON, a session,
    the folder), by name."""
    root = tmp_path_factory.mktemp("text-onnx")
    out = {}
    for name, (config, networks) in text_configs().items():
        ckpt = write_checkpoint(root / f"{name}.safetensors", config, networks)
        result = export_onnx(ckpt, root / name / "model.onnx")
        assert result.max_abs_diff <= TOL
        meta = json.loads(result.metadata.read_text())
        out[name] = (load_model(ckpt, "cpu"), meta, session(result.network), root / name)
    return out


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def both(loaded, sess, x, t, label=None):
    """The network's output for one batch in PyTorch and in onnxruntime."""
    with torch.no_grad():
        want = loaded.model(x, t, label).numpy()
    feed = {"x": x.numpy(), "t": t.numpy()}
    if loaded.config.model.num_classes:
        null = torch.full(t.shape, loaded.config.model.num_classes, dtype=torch.long)
        feed["label"] = (null if label is None else label).numpy()
    return want, sess.run(None, feed)[0]


def both_text(loaded, sess, x, t, tokens):
    """A text model's output for one batch of prompt tokens (N, L) in PyTorch and onnxruntime."""
    with torch.no_grad():
        want = loaded.model(x, t, tokens=tokens).numpy()
    return want, sess.run(None, {"x": x.numpy(), "t": t.numpy(), "tokens": tokens.numpy()})[0]


def max_diff(pairs):
    return max(float(np.abs(want - got).max()) for want, got in pairs)


@pytest.mark.parametrize("kind", DENOISERS)
def test_onnxruntime_gives_pytorchs_output_at_every_t_and_label(exported, kind):
    loaded, meta, sess, _ = exported[kind]
    T, k = loaded.schedule.num_timesteps, loaded.config.model.num_classes
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, *meta["input_shape"], generator=gen)
    grids = [torch.full((5,), t) for t in (0, T // 2, T - 1)]
    grids.append(torch.randint(0, T, (5,), generator=gen))  # mixed t in one batch
    if kind == "flow":  # its t is 1000 times a flow time in [0, 1], float32
        grids = [torch.full((5,), 1000.0 * s) for s in (0.0, 0.5, 1.0)]
        grids.append(1000.0 * torch.rand(5, generator=gen))
    pairs = [both(loaded, sess, x, t) for t in grids]  # no label: the null label's output
    if k:
        labels = torch.tensor([0, 1, 2, k, 1])  # classes and the null label, mixed
        pairs += [both(loaded, sess, x, t, labels) for t in grids]
        cond, uncond = pairs[-1][1], pairs[len(grids) - 1][1]
        assert np.abs(cond - uncond).max() > 1e-3  # the label is an input that counts
    diff = max_diff(pairs)
    print(f"{kind}: max |onnxruntime - PyTorch| = {diff:.2e}")
    assert diff <= TOL
    assert np.abs(pairs[0][0]).max() > 0.1  # a real output, not a vanishing one


PROMPTS = ("a red 3 left of a blue 7", "a blue 7 left of a red 3", "", "a green 2",
           "a yellow 6 below a white 0")  # fmt: skip


@pytest.mark.parametrize("name", ["text", "text-bag-flow"])
def test_a_text_models_prompt_tokens_are_an_input_that_counts(text_exported, name):
    """The prompt's token ids (N, L) int64 are the graph's third input; onnxruntime gives
    PyTorch's output for prompts of every length, the empty one too, at any t and batch size."""
    loaded, _, sess, folder = text_exported[name]
    graph = onnx.load(str(folder / "model.onnx")).graph
    types = {i.name: i.type.tensor_type for i in graph.input}
    assert list(types) == ["x", "t", "tokens"]
    assert types["tokens"].elem_type == onnx.TensorProto.INT64
    assert [d.dim_param or d.dim_value for d in types["tokens"].shape.dim] == ["batch", 8]
    tokens = tokenize(PROMPTS, compose.VOCABULARY, 8)  # (5, 8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, 8, generator=gen)
    if name == "text":
        grids = [torch.full((5,), t) for t in (0, 15, 29)] + [torch.randint(0, 30, (5,))]
    else:  # a flow network's t: 1000 times a flow time, float32
        grids = [torch.full((5,), 1000.0 * s) for s in (0.0, 0.5, 1.0)]
        grids.append(1000.0 * torch.rand(5, generator=gen))
    pairs = [both_text(loaded, sess, x, t, tokens) for t in grids]
    for n in (1, 7):  # other batch sizes than the traced one (2)
        pairs.append(both_text(loaded, sess, torch.randn(n, 3, 8, 8), grids[1][:1].repeat(n),
                               tokens[torch.arange(n) % 5]))  # fmt: skip
    diff = max_diff(pairs)
    # The prompt counts: each output differs from the empty prompt's, in both runtimes.
    empty = both_text(loaded, sess, x, grids[1], tokens[[2] * 5])
    prompt_effect = float(np.abs(pairs[1][1] - empty[1]).reshape(5, -1).max(1)[[0, 1, 3, 4]].min())
    print(f"{name}: max |onnxruntime - PyTorch| = {diff:.2e}; prompt vs empty >= "
          f"{prompt_effect:.2e}")  # fmt: skip
    assert diff <= TOL and np.abs(pairs[0][0]).max() > 0.1
    assert prompt_effect > 1e-3
    # Word order: the transformer tells the two orders apart; the bag of words cannot.
    _, got = both_text(loaded, sess, x[:1].repeat(2, 1, 1, 1), grids[1][:2], tokens[:2])
    order = float(np.abs(got[0] - got[1]).max())
    assert (order > 1e-3) if name == "text" else (order < 1e-5), order


@pytest.mark.parametrize("name", ["text", "text-bag-flow"])
def test_a_text_models_json_holds_its_vocabulary_and_prompt_length(text_exported, name):
    loaded, meta, _, _ = text_exported[name]
    assert meta["classes"] is None and list(meta["network"]["inputs"]) == ["x", "t", "tokens"]
    assert meta["network"]["inputs"]["tokens"] == {"shape": ["batch", 8], "dtype": "int64"}
    text = meta["text"]
    assert text["vocabulary"] == list(compose.VOCABULARY) == list(loaded.config.vocabulary)
    assert text["length"] == loaded.config.model.text_length == 8 and text["pad"] == 0
    assert "empty prompt" in text["guidance"] and "str.split()" in text["tokenizer"]
    assert meta["kind"] == ("diffusion" if name == "text" else "flow")


def test_the_gan_generator_and_the_latent_decoder_match_pytorch(exported):
    loaded, meta, sess, _ = exported["gan"]
    z = torch.randn(5, loaded.model.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = loaded.model(z).numpy()
    gan = float(np.abs(sess.run(None, {"z": z.numpy()})[0] - want).max())
    assert meta["input_shape"] == [16] and meta["image_shape"] == [3, 8, 8]

    loaded, meta, _, folder = exported["latent-diffusion"]
    assert meta["latent"]["decoder"]["file"] == "model.decoder.onnx"
    assert meta["latent"]["scale"] == 0.8 and meta["image_shape"] == [3, 6, 6]
    latent = 3 * torch.randn(5, *meta["input_shape"], generator=torch.Generator().manual_seed(1))
    got = session(folder / "model.decoder.onnx").run(None, {"latent": latent.numpy()})[0]
    decoder = float(np.abs(got - loaded.space.to_images(latent).numpy()).max())
    print(f"gan generator: {gan:.2e}, latent decoder: {decoder:.2e}")
    assert gan <= TOL and decoder <= TOL and got.shape == (5, 3, 6, 6)


def test_no_size_or_timestep_is_baked_into_the_graph(exported):
    loaded, _, sess, folder = exported["diffusion"]
    graph = onnx.load(str(folder / "model.onnx")).graph
    types = {i.name: i.type.tensor_type for i in graph.input}
    assert list(types) == ["x", "t", "label"]
    assert types["t"].elem_type == types["label"].elem_type == onnx.TensorProto.INT64
    assert types["x"].elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in types["x"].shape.dim] == ["batch", 3, 8, 8]
    assert [d.dim_param for d in types["t"].shape.dim] == ["batch"]
    # Other batch sizes than the traced one (2).
    for n in (1, 7):
        x = torch.randn(n, 3, 8, 8)
        t, labels = torch.arange(n) * 4, torch.arange(n) % 4
        assert max_diff([both(loaded, sess, x, t, labels)]) <= TOL
    # t is an input: two timesteps, two outputs, each PyTorch's.
    x = torch.randn(2, 3, 8, 8)
    early, late = (both(loaded, sess, x, torch.full((2,), t)) for t in (3, 25))
    assert np.abs(early[1] - late[1]).max() > 1e-3
    assert max_diff([early, late]) <= TOL


def test_groupnorm_is_written_per_channel_at_opset_17(exported):
    model = onnx.load(str(exported["diffusion"][3] / "model.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert "GroupNormalization" not in ops and "InstanceNormalization" in ops
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert OPSET >= 17


@pytest.mark.parametrize("kind", DENOISERS)
def test_the_json_holds_the_checkpoints_schedule_and_prediction(exported, kind):
    loaded, meta, _, _ = exported[kind]
    dc = loaded.config.diffusion
    expected = make_schedule(dc.schedule, dc.timesteps)
    assert meta["schedule"]["name"] == dc.schedule and meta["schedule"]["T"] == dc.timesteps
    assert np.array_equal(np.array(meta["schedule"]["alpha_bar"]), expected.alpha_bar)
    assert meta["prediction"] == dc.prediction and meta["kind"] == kind
    assert meta["difflab_version"] == difflab.__version__
    assert meta["network"]["opset"] == OPSET and meta["network"]["max_abs_diff"] <= TOL
    if loaded.config.model.num_classes:
        assert meta["classes"] == {**meta["classes"], "num_classes": 3, "names": list(NAMES),
                                   "null_label": 3}  # fmt: skip
        assert list(meta["network"]["inputs"]) == ["x", "t", "label"]
    else:
        assert meta["classes"] is None and list(meta["network"]["inputs"]) == ["x", "t"]
    assert meta["text"] is None


@pytest.mark.parametrize("kind", ["consistency", "progressive"])
def test_a_students_steps_and_timesteps_are_plan_samplings(exported, kind):
    loaded, meta, _, _ = exported[kind]
    plan = plan_sampling(loaded, SamplingRequest(num_images=1))
    sampling = meta["sampling"]
    assert (sampling["sampler"], sampling["steps"]) == (plan.sampler, plan.steps)
    assert sampling["timesteps"] == list(plan.timesteps)
    assert sampling["guidance"] == plan.shown_guidance
    choices = KINDS[kind].step_choices(loaded.config)
    assert sampling["step_choices"] == {
        str(s): list(plan_sampling(loaded, SamplingRequest(num_images=1, steps=s)).timesteps)
        for s in choices
    }
    if kind == "consistency":
        c_skip, c_out = boundary_scalings(loaded.schedule, "v")
        assert sampling["c_skip"] == c_skip.tolist() and sampling["c_out"] == c_out.tolist()
        assert sampling["guidance"] == 2.0 and sorted(sampling["step_choices"]) == ["1", "2", "4"]
        assert "clip_x0" not in sampling  # consistency sampling never clips
    else:
        assert sampling["steps"] == 2 and sampling["clip_x0"] is plan.clip_x0 is False


def snippet(*needles):
    """The python blocks of docs/export.md that contain ``needles``, joined in order."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    return "\n".join(next(b for b in blocks if needle in b) for needle in needles)


@pytest.mark.parametrize(
    ("kind", "blocks"),
    [
        ("diffusion", ("def run(", "ab_next")),
        ("progressive", ("def run(", "ab_next")),
        ("latent-diffusion", ("def run(", "ab_next", "model.decoder.onnx")),
        ("consistency", ("def run(", "c_skip")),
    ],
)
def test_the_docs_snippets_sample_as_difflab_does(exported, kind, blocks, monkeypatch):
    loaded, meta, _, folder = exported[kind]
    monkeypatch.chdir(folder)
    ns = {}
    exec(compile(snippet(*blocks), str(DOCS), "exec"), ns)
    sampling = meta["sampling"]
    request = SamplingRequest(num_images=8)
    if sampling["guidance"] is None:  # a diffusion model: the JSON's DDIM plan
        request = SamplingRequest(num_images=8, sampler="ddim", steps=sampling["steps"])
    plan = plan_sampling(loaded, request)
    want = execute(loaded, plan, x_T=torch.from_numpy(ns["noise"])).numpy()
    got = ns["images"] if "images" in ns else np.clip(ns["x"], -1, 1)
    diff = float(np.abs(got - want).max())
    print(f"{kind}: onnxruntime sampling from the JSON vs difflab: {diff:.2e}")
    assert diff <= TOL and want.std() > 0.05


def test_the_command_writes_the_files_and_says_so_in_one_line(checkpoints, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    argv = ["export", "--onnx", str(out), "--checkpoint", str(checkpoints["latent-diffusion"])]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip()
    assert len(printed.splitlines()) == 1 and printed.startswith("wrote ")
    files = ["m.onnx", "m.json", "m.decoder.onnx"]
    assert all(name in printed for name in files), printed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    assert main(argv) == 2  # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    before = out.stat().st_mtime_ns
    assert main([*argv, "--overwrite", "--raw-weights"]) == 0
    assert out.stat().st_mtime_ns != before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # no temporary file left


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("autoencoder", "it is not a diffusion model"),
        ("suffix", "must end in .onnx"),
        ("unwritable", "cannot write"),
        ("exists", "already exists; pass --overwrite"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(checkpoints, tmp_path, capsys, case, message):
    ckpt, out = checkpoints["autoencoder" if case == "autoencoder" else "progressive"], "m.onnx"
    if case == "missing":
        ckpt = tmp_path / "nope.safetensors"
    if case == "suffix":
        out = "m.onx"
    if case == "unwritable":
        (tmp_path / "file").write_text("not a folder")
        out = "file/m.onnx"
    if case == "exists":
        (tmp_path / "m.json").write_text("{}")
    before = sorted(tmp_path.rglob("*"))
    assert main(["export", "--onnx", str(tmp_path / out), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("difflab export: error: "), err
    assert message in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_without_the_extra_it_says_how_to_install_it(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    argv = ["export", "--onnx", str(tmp_path / "m.onnx"), "--checkpoint", str(checkpoints["gan"])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[export]"' in err, err
    assert list(tmp_path.iterdir()) == []


def test_difflab_imports_onnx_only_inside_the_export_functions():
    """Nothing at module level imports onnx or onnxruntime: difflab works without the extra."""
    src = Path(difflab.__file__).parent
    for path in src.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("onnx", "onnxruntime") for n in names), path
