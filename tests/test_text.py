"""Text conditioning of the U-Net: the text encoders (``models.text``), the cross-attention blocks
(``models.unet.SpatialTransformer``), prompts in the sampling plan, and ``train --text`` /
``sample --prompt`` end to end.

The data is ``--data mnist-compose`` drawn from a fake MNIST of ten code-drawn glyphs
(``test_compose.write_glyph_mnist``), so nothing is downloaded; the U-Nets are tiny.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difflab import compose
from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.config import ModelConfig, run_config_from_dict, to_dict
from difflab.kinds import draw, load_model, plan_editing, plan_sampling
from difflab.models.text import BagOfWordsEncoder, TransformerTextEncoder, tokenize
from difflab.models.unet import SpatialTransformer, UNet, position_code, timestep_embedding
from difflab.sampling import execute
from difflab.sampling.plan import TEXT_GUIDANCE, SamplingRequest
from test_compose import write_glyph_mnist

VOCAB = compose.VOCABULARY
PROMPT = "a red 3 left of a blue 7"
SWAPPED = "a blue 7 left of a red 3"  # the same bag of words in another order

# A 32 px text U-Net of 8/16/16 channels; cross-attention at 8 px and in the middle.
SMALL = ModelConfig(
    image_size=32, in_channels=3, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
    text_vocab=len(VOCAB), text_width=16,
)  # fmt: skip
TINY = [
    "--data", "mnist-compose", "--num-images", "24", "--batch-size", "8", "--epochs", "2",
    "--timesteps", "50", "--base-channels", "8", "--channel-mults", "1,2,2", "--text-width",
    "16", "--no-progress", "--preview-steps", "2", "--seed", "1", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


def tokens(*prompts: str) -> torch.Tensor:
    return tokenize(prompts, VOCAB, compose.MAX_TOKENS)  # (P, 8)


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noised 32 px images and their timesteps."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([3, 40])


def trained_looking(model: UNet, seed: int = 1) -> UNet:
    """``model`` with every cross-attention block's zero output projection made random, as
    training would leave it, so that its output depends on the prompt."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SpatialTransformer):
                for p in module.proj_out.parameters():
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


# --- the tokenizer and the encoders ---------------------------------------------------------------


def test_tokenize_is_composes_tokenizer_over_a_stored_vocabulary():
    captions = [c.text for c in compose.all_captions()[::97]]
    assert torch.equal(tokens(*captions), torch.from_numpy(compose.tokenize(captions)))
    with pytest.raises(ValueError, match=r"unknown word 'purple' in prompt 'a purple 3'.*red"):
        tokens("a purple 3")
    with pytest.raises(ValueError, match="at most 8 fit"):
        tokens("a red 3 left of a blue 7 now")


def test_encoders_give_states_and_a_pad_mask_of_the_right_shapes():
    ids = tokens(PROMPT, "a green 2", "")  # (3, 8)
    states, mask = TransformerTextEncoder(len(VOCAB), 16, 2, 4, 8)(ids)
    assert states.shape == (3, 9, 16) and mask.shape == (3, 9)  # the start token, then 8 words
    assert mask.sum(1).tolist() == [9, 4, 1]  # start + words; the empty prompt: the start alone
    assert torch.isfinite(states).all()
    states, mask = BagOfWordsEncoder(len(VOCAB), 16)(ids)
    assert states.shape == (3, 1, 16) and mask.all()


def test_cross_attention_block_keeps_shapes_and_starts_as_the_identity():
    block = SpatialTransformer(16, context_dim=24, heads=4, groups=8)
    x = torch.randn(2, 16, 8, 8)
    text = (torch.randn(2, 5, 24), torch.tensor([[True] * 5, [True, True, False, False, False]]))
    assert torch.equal(block(x, text), x)  # proj_out is zero: x + 0
    trained_looking_block = trained_looking(torch.nn.Sequential(block))[0]
    out = trained_looking_block(x, text)
    assert out.shape == x.shape and not torch.equal(out, x)


# --- the U-Net --------------------------------------------------------------------------------------


def test_position_code_is_the_sinusoid_of_each_cells_column_and_row():
    side, dim = 8, 18  # 4 frequencies per axis (sin and cos each), 2 channels left at zero
    code = position_code(side, dim)
    assert code.shape == (side * side, dim)
    axis = timestep_embedding(torch.arange(side), 8, max_period=2.0 * side)  # (side, 8)
    grid = code.reshape(side, side, dim)  # (row, column, channel)
    torch.testing.assert_close(grid[:, :, :8], axis[None].expand(side, -1, -1))  # the column
    torch.testing.assert_close(grid[:, :, 8:16], axis[:, None].expand(-1, side, -1))  # the row
    assert (grid[:, :, 16:] == 0).all()
    assert len(torch.unique(code, dim=0)) == side * side  # every cell has its own code


def test_cross_positions_tell_mirrored_layouts_apart_and_keep_the_zero_start():
    """Without the code, the block's self- and cross-attention see a set of cells: an input
    mirrored left to right gives the mirrored output. With it, cells know where they are."""
    x = torch.randn(2, 16, 8, 8)
    text = (torch.randn(2, 5, 24), torch.ones(2, 5, dtype=torch.bool))
    flip = lambda z: z.flip(-1)  # noqa: E731
    torch.manual_seed(0)
    plain = trained_looking(torch.nn.Sequential(SpatialTransformer(16, 24, 4, 8)))[0]
    torch.manual_seed(0)
    placed = trained_looking(torch.nn.Sequential(SpatialTransformer(16, 24, 4, 8, side=8)))[0]
    with torch.no_grad():
        torch.testing.assert_close(plain(flip(x), text), flip(plain(x, text)))
        assert not torch.allclose(placed(flip(x), text), flip(placed(x, text)), atol=1e-3)
    fresh = SpatialTransformer(16, 24, 4, 8, side=8)
    assert torch.equal(fresh(x, text), x)  # the code is inside the zero-started branch
    assert "positions" not in fresh.state_dict()  # a fixed buffer: no weights to store


@pytest.mark.parametrize("encoder", ["transformer", "bag"])
def test_fresh_text_unet_computes_exactly_what_the_same_unet_without_text_does(encoder):
    plain = UNet(replace(SMALL, text_vocab=0)).eval()
    text = UNet(replace(SMALL, text_encoder=encoder, cross_positions=True)).eval()
    missing, unexpected = text.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing
    assert all(k.startswith("text.") or ".cross." in k for k in missing)
    x, t = inputs()
    with torch.no_grad():
        expected = plain(x, t)
        for prompts in [(PROMPT, "a green 2"), ("", SWAPPED)]:
            assert torch.equal(text(x, t, tokens=tokens(*prompts)), expected)
        assert torch.equal(text(x, t), expected)  # no tokens: the empty prompt


@pytest.mark.parametrize("encoder", ["transformer", "bag"])
def test_pad_tokens_are_masked_out(encoder):
    torch.manual_seed(0)
    model = trained_looking(UNet(replace(SMALL, text_encoder=encoder)))
    x, t = inputs()
    ids = tokens("a green 2", PROMPT)  # the first has five pads
    with torch.no_grad():
        before = model(x, t, tokens=ids)
        assert not torch.equal(before, model(x, t, tokens=tokens("a green 3", PROMPT)))
        model.text.token_emb.weight[0] = 100.0  # the pad token's embedding
        assert torch.equal(model(x, t, tokens=ids), before)
        # The empty prompt (all pad) is finite, and is what no tokens means.
        empty = model(x, t, tokens=tokens("", ""))
        assert torch.isfinite(empty).all() and torch.equal(model(x, t), empty)


def test_bag_of_words_is_blind_to_word_order_and_the_transformer_is_not():
    torch.manual_seed(0)
    x, t = inputs()
    ids = tokens(PROMPT, SWAPPED)
    with torch.no_grad():
        bag = trained_looking(UNet(replace(SMALL, text_encoder="bag")))
        out = bag(x[:1].repeat(2, 1, 1, 1), t[:1].repeat(2), tokens=ids)
        states, _ = bag.text(ids)  # the same words summed in another order: equal to rounding
        torch.testing.assert_close(states[0], states[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-5)
        transformer = trained_looking(UNet(SMALL))
        out = transformer(x[:1].repeat(2, 1, 1, 1), t[:1].repeat(2), tokens=ids)
        assert (out[0] - out[1]).abs().max() > 1e-3


def test_text_fields_default_so_old_configs_and_weights_load_unchanged():
    old = to_dict(replace(SMALL, text_vocab=0))
    for name in ("text_vocab", "text_length", "text_encoder", "text_width", "text_layers",
                 "text_heads", "cross_attention_levels"):  # fmt: skip
        del old[name]
    config = run_config_from_dict({"model": old, "diffusion": {}, "train": {}, "class_names": []})
    assert config.model.text_vocab == 0 and config.vocabulary == () and config.kind == "diffusion"
    keys = set(UNet(config.model).state_dict())
    assert not any(k.startswith("text.") or ".cross." in k for k in keys)
    with pytest.raises(ValueError, match="no text conditioning"):
        UNet(config.model)(*inputs(), tokens=tokens(PROMPT, PROMPT))


def test_cross_attention_levels_default_to_those_of_at_most_8_px():
    assert SMALL.cross_levels == (2,)  # 32, 16, 8 px
    assert replace(SMALL, channel_mults=(1, 2, 2, 2)).cross_levels == (2, 3)  # 8 and 4 px
    assert replace(SMALL, image_size=64).cross_levels == (2,)  # none that small: the lowest
    assert replace(SMALL, cross_attention_levels=(1, 2)).cross_levels == (1, 2)
    assert replace(SMALL, text_vocab=0).cross_levels == ()
    model = UNet(replace(SMALL, cross_attention_levels=(2,)))
    crossed = {
        name.split(".cross.")[0] for name, _ in model.named_parameters() if ".cross." in name
    }
    assert crossed == {"down.4", "mid1", "up.0", "up.1"}  # 8 px blocks and the middle


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"text_encoder": "lstm"}, "unknown text encoder 'lstm'"),
        ({"num_classes": 10}, "class labels or on text, not both"),
        ({"text_width": 18}, "does not divide into 4 heads"),
        ({"cross_attention_levels": (3,)}, "must lie in 0..2"),
        ({"text_heads": 3, "text_width": 18}, "do not divide into 3 cross-attention heads"),
    ],
)
def test_bad_text_configurations_are_refused_in_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        replace(SMALL, **change).validate()


# --- train --text and sample --prompt ---------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("glyph-mnist")
    for split in ("train", "test"):
        write_glyph_mnist(directory, split)
    return directory


@pytest.fixture(scope="module")
def text_run(mnist_dir, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("text") / "run"
    argv = ["train", *TINY, "--data-dir", str(mnist_dir), "--text", "--label-dropout", "0.5"]
    assert main([*argv, "--out", str(out)]) == 0
    return out, argv


def test_train_text_records_the_vocabulary_and_samples_prompt_rows(text_run, tmp_path, capsys):
    run, _ = text_run
    ckpt = load_checkpoint(run / "model_final.safetensors")
    config = ckpt.config
    assert config.vocabulary == VOCAB and config.model.text_vocab == len(VOCAB)
    assert config.model.cross_attention_levels == (2,) and config.kind == "diffusion"
    assert not config.model.cross_positions
    assert config.train.label_dropout == 0.5
    weights = ckpt.model
    assert any(k.startswith("text.layers.1.") for k in weights)
    assert any(k.endswith("cross.proj_out.weight") and weights[k].abs().sum() > 0 for k in weights)

    out = tmp_path / "prompts.png"
    argv = ["sample", "--checkpoint", str(run / "model_final.safetensors"), "--device", "cpu",
            "--prompt", PROMPT, "--prompt", "a green 2", "--guidance", "3", "--num-images", "6",
            "--steps", "3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert out.is_file() and "6 images" in capsys.readouterr().out

    loaded = load_model(run / "model_final.safetensors", "cpu")
    request = SamplingRequest(num_images=5, prompts=(PROMPT, "a green 2"), class_rows=True)
    plan = plan_sampling(loaded, replace(request, guidance=3.0, steps=3))
    assert plan.rows == 3 and plan.num_images == 6 and plan.prompts == (PROMPT, "a green 2")
    assert torch.equal(plan.labels, tokens(PROMPT, "a green 2").repeat_interleave(3, 0))
    common = dict(num_images=2, seed=4, steps=3)
    red = draw(loaded, prompts=(PROMPT,), **common)
    assert not torch.equal(red, draw(loaded, prompts=("a green 2",), **common))
    assert not torch.equal(red, draw(loaded, prompts=(PROMPT,), guidance=1.0, **common))
    assert torch.equal(red, draw(loaded, prompts=(PROMPT,), **common))  # seeded
    # A prompt without --guidance is guided at the measured default; no prompt, unguided.
    assert torch.equal(red, draw(loaded, prompts=(PROMPT,), guidance=TEXT_GUIDANCE, **common))
    assert plan_sampling(loaded, SamplingRequest(num_images=2)).guidance == 1.0


def test_text_run_resumes_bitwise(text_run, tmp_path):
    run, argv = text_run
    stopped = tmp_path / "stopped"
    assert main([*argv, "--max-steps", "2", "--out", str(stopped)]) == 0
    assert main(["train", "--resume", str(stopped), "--no-progress"]) == 0
    a, b = (
        load_file(str(run / "model_final.safetensors")),
        load_file(str(stopped / "model_final.safetensors")),
    )
    assert sorted(a) == sorted(b)
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_flow_matching_with_a_bag_of_words_trains_and_samples(mnist_dir, tmp_path):
    out = tmp_path / "flow"
    argv = ["train", *TINY, "--data-dir", str(mnist_dir), "--text", "--text-encoder", "bag",
            "--objective", "flow", "--epochs", "1", "--cross-positions", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    loaded = load_model(out / "model_final.safetensors", "cpu")
    assert loaded.config.kind == "flow" and loaded.config.model.text_encoder == "bag"
    assert loaded.config.model.cross_positions  # and the default run has none (text_run)
    x = draw(loaded, num_images=2, prompts=(PROMPT,), sampler="heun", steps=2, guidance=2.0)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


def test_sample_refuses_bad_prompts_in_one_line(text_run, tiny_checkpoint, tmp_path, capsys):
    run, _ = text_run
    text_ckpt = str(run / "model_final.safetensors")
    plain = str(tiny_checkpoint(tmp_path / "plain.safetensors", 0))
    classes = str(tiny_checkpoint(tmp_path / "classes.safetensors", 5))
    out = tmp_path / "never.png"
    for checkpoint, flags, expected in [
        (text_ckpt, ["--prompt", "a purple 3"], "unknown word 'purple'"),
        (text_ckpt, ["--prompt", PROMPT, "--class-label", "1"], "exclude each other"),
        (classes, ["--prompt", PROMPT, "--class-label", "1"], "exclude each other"),
        (plain, ["--prompt", PROMPT], "has no text conditioning"),
        (text_ckpt, ["--guidance", "2"], "needs a prompt"),
        (text_ckpt, ["--prompt", PROMPT, "--guidance-sweep", "1,3"], "--guidance-sweep"),
        (text_ckpt, ["--prompt", PROMPT, "--backend", "numpy"], "runs in torch only"),
    ]:
        argv = ["sample", "--checkpoint", checkpoint, "--out", str(out), "--device", "cpu"]
        assert main([*argv, *flags]) == 2, flags
        assert expected in one_line(capsys), flags
        assert not out.exists()
    main(["sample", "--checkpoint", text_ckpt, "--out", str(out), "--prompt", "a purple 3"])
    assert "left right of above below" in capsys.readouterr().err


def test_train_and_other_commands_refuse_what_text_models_lack(
    text_run, mnist_dir, tmp_path, capsys
):
    run, _ = text_run
    text_ckpt = str(run / "model_final.safetensors")
    base = ["train", *TINY, "--data-dir", str(mnist_dir), "--out", str(tmp_path / "never")]
    for flags, expected in [
        (["--text", "--data", "emoji"], "--text trains on captioned data: --data mnist-compose"),
        (["--text-encoder", "bag"], "--text-encoder sets up text conditioning"),
        (["--text", "--conditional"], "exclude each other"),
        (["--text", "--backend", "numpy"], "torch backend only"),
        (["--text", "--latent", text_ckpt], "not --latent"),
    ]:
        assert main([*base, *flags]) == 2, flags
        assert expected in one_line(capsys), flags
    assert not (tmp_path / "never").exists()
    distill = ["distill", "--teacher", text_ckpt, "--out", str(tmp_path / "d"), "--no-progress"]
    assert main(distill) == 2
    assert "does not distil text models" in one_line(capsys)
    never = tmp_path / "diffusers"
    assert main(["export", "--checkpoint", text_ckpt, "--diffusers", str(never)]) == 2
    assert "not exported to diffusers" in one_line(capsys) and not never.exists()
    loaded = load_model(text_ckpt, "cpu")
    with pytest.raises(ValueError, match="editing commands take no prompt yet"):
        plan_editing(loaded, SamplingRequest(sampler="ddim", guidance=2.0))
    assert plan_editing(loaded, SamplingRequest(sampler="ddim")).labels is None  # empty prompt


# --- inspect: cross-attention maps; evaluate: prompt adherence ---------------------------------------


def test_cross_attention_weights_reproduce_the_attention_and_maps_sum_to_one():
    from difflab import insides

    torch.manual_seed(0)
    model = trained_looking(UNet(replace(SMALL, cross_attention_levels=(1, 2))))
    block = model.mid1.cross
    seen = {}
    hook = block.cross_attn.register_forward_hook(
        lambda _m, i, o: seen.update(x=i[0], states=i[1], mask=i[2], out=o)
    )
    x, t = inputs()
    prompt = tokens(PROMPT, PROMPT)
    with torch.no_grad():
        model(x, t, tokens=prompt)
        hook.remove()
        attn = block.cross_attn
        weights = insides.attention_weights(attn, seen["x"], seen["states"], seen["mask"])
        b, n, d = seen["x"].shape
        heads = attn.heads
        v = attn.to_v(seen["states"]).reshape(b, -1, heads, d // heads).transpose(1, 2)
        mixed = (weights @ v).transpose(1, 2).reshape(b, n, d)  # A v per head, heads joined
        torch.testing.assert_close(attn.to_out(mixed), seen["out"], rtol=1e-4, atol=1e-5)
    assert weights.shape == (2, heads, n, 1 + compose.MAX_TOKENS)
    assert (weights[..., ~seen["mask"][0]] == 0).all()  # the pad tokens get no weight

    cross = insides.cross_attention_maps(model, x, [3, 40], prompt, PROMPT.split())
    assert cross.tokens == ["<start>", *PROMPT.split()]
    assert cross.maps.shape == (2, 1 + len(PROMPT.split()), 32, 32)
    torch.testing.assert_close(cross.maps.sum(1), torch.ones(2, 32, 32))
    up = ["up 8x8"] * 2 + ["up 16x16"] * 2  # num_res_blocks + 1 blocks a level on the way up
    assert cross.blocks == ["down 16x16", "down 8x8", "mid 8x8", *up]


def test_cross_attention_map_of_a_block_with_constant_keys_is_uniform():
    """Keys that do not depend on the token make every unmasked token equally attended."""
    from difflab import insides

    model = UNet(replace(SMALL, cross_attention_levels=(2,)))
    for module in model.modules():
        if isinstance(module, SpatialTransformer):
            torch.nn.init.zeros_(module.cross_attn.to_k.weight)
    x, t = inputs()
    prompt = tokens("a green 2", "a green 2")
    cross = insides.cross_attention_maps(model, x, t.tolist(), prompt, ["a", "green", "2"])
    assert cross.tokens == ["<start>", "a", "green", "2"]
    torch.testing.assert_close(cross.maps, torch.full((2, 4, 32, 32), 0.25))


def test_inspect_draws_cross_attention_for_a_prompt(text_run, tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    run, _ = text_run
    checkpoint = str(run / "model_final.safetensors")
    out = tmp_path / "inspect"
    argv = ["inspect", "--checkpoint", checkpoint, "--out", str(out), "--t", "5,40",
            "--prompt", "a green 2 above a red 7"]  # fmt: skip
    assert main(argv) == 0
    picture = out / "cross_attention.png"
    assert f"wrote {picture}" in capsys.readouterr().out
    with Image.open(picture) as image:
        assert image.size[0] > 400
    assert (out / "feature_maps.png").is_file()
    plain = str(tiny_checkpoint(tmp_path / "plain.safetensors", 0))
    never = tmp_path / "never"
    assert main(["inspect", "--checkpoint", plain, "--out", str(never), "--prompt", PROMPT]) == 2
    assert "has no text conditioning" in one_line(capsys)
    assert main(["inspect", "--checkpoint", checkpoint, "--out", str(never), "--prompt",
                 "a purple 3"]) == 2  # fmt: skip
    assert "unknown word 'purple'" in one_line(capsys)
    assert not never.exists()


def test_adherence_captions_split_seen_and_held_out():
    from difflab.evaluation import adherence_captions

    captions, held_out = adherence_captions(401, seed=3)
    assert len(captions) == 401 and held_out.sum() == 200 and not held_out[:201].any()
    assert [compose.DEFAULT_SPLIT.is_held_out(c) for c in captions] == held_out.tolist()
    assert {c.kind for c in captions[201:]} == set(compose.KINDS)
    again, _ = adherence_captions(401, seed=3)
    assert again == captions and adherence_captions(401, seed=4)[0] != captions
    with pytest.raises(ValueError, match="at least 2 prompts"):
        adherence_captions(1)


def test_evaluate_scores_a_text_model_by_prompt_adherence(text_run, tmp_path, capsys):
    import json

    from PIL import Image

    from difflab import evaluation as ev
    from difflab.models.classifier import Classifier, ClassifierConfig

    run, _ = text_run
    checkpoint = str(run / "model_final.safetensors")
    torch.manual_seed(0)
    info = {"data": "mnist", "class_names": [str(d) for d in range(10)], "test_accuracy": 0.1}
    evaluator_path = ev.save_evaluator(tmp_path / "mnist.safetensors",
                                       Classifier(ClassifierConfig()), info)  # fmt: skip
    out = tmp_path / "adherence.json"
    argv = ["evaluate", "--checkpoint", checkpoint, "--evaluator", str(evaluator_path),
            "--num-samples", "6", "--steps", "2", "--guidance", "2", "--no-progress",
            "--save-images", str(tmp_path / "drawn.npz"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out captions" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    summary, setup = report["prompt_adherence"], report["setup"]
    assert summary["n"] == 6 and summary["seen"]["n"] == 3 and summary["held_out"]["n"] == 3
    assert setup["guidance"] == 2.0 and setup["steps"] == 2 and setup["held_out_prompts"] == 3
    with Image.open(setup["picture"]) as picture:
        assert picture.size[0] > 200
    saved = np.load(tmp_path / "drawn.npz")
    captions, _ = ev.adherence_captions(6, seed=0)
    assert saved["images"].shape == (6, 3, 32, 32)
    assert saved["captions"].tolist() == [c.text for c in captions]

    # The face adds nothing: the library call with the same arguments gives the same verdicts.
    loaded = load_model(checkpoint, "cpu")
    evaluator = ev.load_evaluator(evaluator_path, torch.device("cpu"))
    plan = plan_sampling(loaded, ev.prompt_request(captions, steps=2, guidance=2.0))
    images = execute(loaded, plan).numpy()
    direct = ev.score_prompts(images, captions, np.arange(6) >= 3, evaluator, plan)
    assert direct.summary == summary

    for flags, expected in [
        (["--memorisation"], "--memorisation does not apply to a text model"),
        (["--data", "mnist"], "--data does not apply to a text model"),
    ]:
        assert main([*argv[:-2], "--out", str(tmp_path / "never.json"), *flags]) == 2
        assert expected in one_line(capsys)
    assert not (tmp_path / "never.json").exists()
