"""Text prompts on the colour emoji (``train --data emoji-datasource --text``): the captions, the
held-out colour-shape prompts, the colour judge, and the faces on a small fake package."""

import json

import numpy as np
import pytest
from PIL import Image

from difflab import evaluation as ev
from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.data import (
    EMOJI_CATEGORIES,
    EMOJI_COLOURS,
    EMOJI_DATASOURCE,
    EMOJI_HELD_OUT,
    EMOJI_SHAPES,
    EXAMPLE_PROMPTS,
    MNIST_COMPOSE,
    ImageDataset,
    caption_vocabulary,
    emoji_caption,
    emoji_grid,
    emoji_in_test_split,
    load_dataset,
    text_training_data,
)
from difflab.models.text import tokenize
from test_emoji_datasource import png_bytes

# the colours of Noto Emoji's coloured shapes (RGB 0..255), which the fake package draws with
RGB = {"red": (244, 67, 54), "orange": (255, 152, 0), "yellow": (255, 204, 50),
       "green": (124, 179, 66), "blue": (25, 118, 210), "purple": (171, 71, 188),
       "brown": (184, 110, 84)}  # fmt: skip


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


# --- captions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "caption"),
    [
        ("LARGE PURPLE SQUARE", "purple square"),
        ("large red circle", "red circle"),
        ("heavy black heart", "red heart"),  # emoji.json's name of the red heart
        ("HEAVY BLACK HEART", "red heart"),
        ("purple heart", "purple heart"),
        ("thumbs up sign: dark skin tone", "thumbs up sign dark skin tone"),
        ("people holding hands: light skin tone, dark skin tone",
         "people holding hands light skin tone dark skin tone"),
        ("large orange diamond", "large orange diamond"),  # not one of the grid's shapes
        ("black large square", "black large square"),  # not one of the grid's colours
        ("medium-light skin tone", "medium-light skin tone"),
        ("face with tears of joy!", "face with tears of joy"),
    ],
)  # fmt: skip
def test_emoji_caption_lowercases_drops_punctuation_and_names_the_coloured_shapes(name, caption):
    assert emoji_caption(name) == caption
    assert emoji_caption(caption) == caption  # captioning a caption changes nothing


def test_the_grid_is_every_colour_with_every_shape_and_holds_the_held_out_prompts():
    grid = emoji_grid()
    assert len(grid) == len(set(grid)) == len(EMOJI_COLOURS) * len(EMOJI_SHAPES) == 21
    assert set(EMOJI_HELD_OUT) < set(grid)
    for colour in EMOJI_COLOURS:  # every word of the held-out prompts is seen with another word
        assert sum(f"{colour} {s}" not in EMOJI_HELD_OUT for s in EMOJI_SHAPES) >= 2
    for shape in EMOJI_SHAPES:
        assert sum(f"{c} {shape}" not in EMOJI_HELD_OUT for c in EMOJI_COLOURS) >= 6
    assert EXAMPLE_PROMPTS[EMOJI_DATASOURCE] in EMOJI_HELD_OUT


def named_dataset(names: list[str]) -> ImageDataset:
    n = len(names)
    images = np.linspace(-1, 1, n * 3 * 4 * 4, dtype=np.float32).reshape(n, 3, 4, 4)
    return ImageDataset(EMOJI_DATASOURCE, images, np.arange(n) % 3, ("a", "b", "c"), tuple(names))


def test_text_training_data_captions_the_emoji_and_leaves_the_held_out_prompts_out():
    names = ["large purple square", "purple heart", "heavy black heart", "green heart",
             "large red square", "large orange circle", "dog face"]  # fmt: skip
    ds = named_dataset(names)
    text = text_training_data(ds)
    assert text.names == ("purple heart", "red heart", "red square", "dog face")
    keep = [1, 2, 4, 6]  # the images and labels follow their captions
    np.testing.assert_array_equal(text.images, ds.images[keep])
    np.testing.assert_array_equal(text.labels, ds.labels[keep])
    assert not set(text.names) & set(EMOJI_HELD_OUT)
    again = text_training_data(text)
    assert again.names == text.names and np.array_equal(again.images, text.images)
    compose_like = ImageDataset(MNIST_COMPOSE, ds.images, ds.labels, ds.class_names, ds.names)
    assert text_training_data(compose_like) is compose_like  # its captions are its names


def test_caption_vocabulary_starts_with_the_pad_and_tokenises_every_caption():
    captions = ["red heart", "dog face", "purple heart", "thumbs up sign dark skin tone"]
    vocabulary = caption_vocabulary(captions)
    assert vocabulary[0] == "<pad>" and list(vocabulary[1:]) == sorted(set(vocabulary[1:]))
    assert set(vocabulary[1:]) == {w for c in captions for w in c.split()}
    ids = tokenize(captions, vocabulary, 6).numpy()
    for caption, row in zip(captions, ids, strict=True):
        words = caption.split()
        assert [vocabulary[i] for i in row[: len(words)]] == words and not row[len(words) :].any()
    # "purple square" is held out of training, but both its words are known
    assert tokenize(["purple square"], caption_vocabulary(["purple heart", "red square"]), 2)[
        0
    ].tolist() == [2, 4]


# --- the colour judge ---------------------------------------------------------------------------


def shape_image(rgb, side: int = 16, shape: str = "square", fill: float = 0.5) -> np.ndarray:
    """(3, side, side) in [-1, 1]: a shape of colour ``rgb`` (0..255) on white."""
    image = np.ones((3, side, side), np.float32)
    half = int(side * fill) // 2
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    mask = (np.abs(yy) <= half) & (np.abs(xx) <= half)
    if shape == "circle":
        mask = yy**2 + xx**2 <= half**2
    colour = np.asarray(rgb, np.float32)[:, None] / 127.5 - 1
    image[:, mask] = colour
    return image


def test_shape_colours_is_the_median_of_the_drawn_pixels_and_nan_for_a_blank_image():
    square = shape_image(RGB["purple"])
    square[:, 7, 7] = -1.0  # one black pixel (an outline) does not move the median
    blank = np.ones((3, 16, 16), np.float32)
    faint = blank.copy()
    faint[:, 8, 8] = -1.0  # 1 of 256 pixels drawn: under MIN_FOREGROUND
    colours = ev.shape_colours(np.stack([square, blank, faint]))
    np.testing.assert_allclose(colours[0], np.array(RGB["purple"]) / 255, atol=1e-6)
    assert np.isnan(colours[1]).all() and np.isnan(colours[2]).all()


def synthetic_references() -> ev.ColourReferences:
    images, captions = [], []
    for caption in emoji_grid():
        colour, shape = caption.split()
        images.append(shape_image(RGB[colour], shape="circle" if shape == "circle" else "square"))
        captions.append(caption)
    colours = ev.shape_colours(np.stack(images))
    return ev.ColourReferences(colours, tuple(c.split()[0] for c in captions), tuple(captions))


def test_the_judge_names_each_colour_by_its_nearest_reference_and_scores_seen_and_held_out():
    references = synthetic_references()
    assert ev.reference_accuracy(references) == 1.0  # each colour has 3 references
    prompts = ["purple square", "purple square", "red heart", "green heart", "blue circle"]
    drawn = [
        shape_image([175, 75, 190]),  # near purple: right
        shape_image(RGB["red"]),  # asked purple: wrong
        shape_image(RGB["red"], shape="circle"),  # red, a circle not a heart: right (colour only)
        np.ones((3, 16, 16), np.float32),  # nothing drawn: wrong
        shape_image(RGB["blue"]),
    ]
    report = ev.score_colour_prompts(np.stack(drawn), prompts, EMOJI_HELD_OUT, references)
    assert report.named == ("purple", "red", "red", None, "blue")
    s = report.summary
    assert (s["accuracy"], s["n"]) == (3 / 5, 5)
    assert s["held_out"] == {"accuracy": 1 / 3, "n": 3}  # purple square twice, green heart
    assert s["seen"] == {"accuracy": 1.0, "n": 2}
    assert s["by_prompt"]["purple square"] == {"accuracy": 0.5, "n": 2}
    assert s["nothing_drawn"] == 1 and s["judge_ceiling"] == 1.0
    lines = ev.format_colour_prompts(s)
    assert "held-out prompts  33.3% of 3" in lines and "purple square* 50.0% of 2" in lines
    with pytest.raises(ValueError, match=r"not grid prompts.*dog face"):
        ev.score_colour_prompts(np.stack(drawn[:1]), ["dog face"], (), references)


def test_grid_split_holds_out_the_grid_prompts_training_never_saw():
    seen, unseen = ev.grid_split(["red heart", "purple heart", "dog face", "red square"])
    assert seen == ("red heart", "purple heart", "red square")
    assert len(unseen) == 18 and "purple square" in unseen and "dog face" not in unseen


# --- train, sample, evaluate and inspect on a small fake package --------------------------------

# the fake package: a coloured shape per grid caption (circles round), and two other emoji
SHAPE_NAMES = {"red heart": "HEAVY BLACK HEART", "red circle": "LARGE RED CIRCLE"}


def split_codes(n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Code points from U+1F300 on that the identity split puts in the train and test splits."""
    train, test, code = [], [], 0x1F300
    while len(train) < n_train or len(test) < n_test:
        name = f"{code:X}"
        (test if emoji_in_test_split(name) else train).append(name)
        code += 1
    return train[:n_train], test[:n_test]


def shape_package(vendor: str) -> dict[str, bytes]:
    """Every grid caption's shape in the train split; a dog face (test) and a grinning face."""
    emoji, files = [], {}
    entries = [
        (c, SHAPE_NAMES.get(c, f"large {c}" if "heart" not in c else c)) for c in emoji_grid()
    ]
    entries += [("grinning face", "GRINNING FACE"), ("dog face", "DOG FACE")]
    train, test = split_codes(len(entries) - 1, 1)
    for (caption, name), code in zip(entries, train + test, strict=True):
        if caption in emoji_grid():
            colour, shape = caption.split()
            pixels = shape_image(RGB[colour], side=64, shape=shape, fill=0.7)
        else:
            pixels = shape_image((90, 60, 30), side=64, shape="circle", fill=0.9)
        rgba = np.concatenate(
            [np.rint((pixels + 1) * 127.5).astype(np.uint8), np.full((1, 64, 64), 255, np.uint8)]
        ).transpose(1, 2, 0)
        files[f"img/{vendor}/64/{code.lower()}.png"] = png_bytes(np.ascontiguousarray(rgba))
        emoji.append({"name": name, "unified": code, "image": f"{code.lower()}.png",
                      f"has_img_{vendor}": True,
                      "category": "Symbols" if caption in emoji_grid() else "Smileys & Emotion"})  # fmt: skip
    files["emoji.json"] = json.dumps(emoji).encode()
    files["categories.json"] = json.dumps({c: {} for c in EMOJI_CATEGORIES}).encode()
    return files


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji-shapes")
    for vendor in ("google", "twitter"):
        for name, data in shape_package(vendor).items():
            (root / vendor / name).parent.mkdir(parents=True, exist_ok=True)
            (root / vendor / name).write_bytes(data)
    return root


TINY = ["--data", EMOJI_DATASOURCE, "--image-size", "16", "--batch-size", "8", "--epochs", "2",
        "--timesteps", "50", "--base-channels", "8", "--channel-mults", "1,2", "--text-width",
        "16", "--no-progress", "--preview-steps", "2", "--seed", "1", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def emoji_text_run(shapes_dir, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("emoji-text") / "run"
    argv = ["train", *TINY, "--data-dir", str(shapes_dir), "--text", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_train_text_on_emoji_learns_the_training_captions_words(emoji_text_run, shapes_dir):
    config = load_checkpoint(emoji_text_run / "model_final.safetensors").config
    train = text_training_data(load_dataset(EMOJI_DATASOURCE, data_dir=shapes_dir, image_size=16))
    assert config.takes_prompts and config.vocabulary == caption_vocabulary(train.names)
    assert config.model.text_length == max(len(c.split()) for c in train.names)
    assert {"purple", "square", "green", "heart", "orange", "circle"} <= set(config.vocabulary)
    assert not set(train.names) & set(EMOJI_HELD_OUT)  # the held-out prompts were never trained on
    log = [json.loads(line) for line in (emoji_text_run / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = -(-len(train.names) // 8)  # 2 epochs of the captioned images only
    assert max(r.get("step", 0) for r in log) == 2 * steps_per_epoch


def test_sample_draws_held_out_prompts_and_refuses_unknown_words(emoji_text_run, tmp_path, capsys):
    ckpt = str(emoji_text_run / "model_final.safetensors")
    out = tmp_path / "grid.png"
    argv = ["sample", "--checkpoint", ckpt, "--device", "cpu", "--prompt", "purple square",
            "--prompt", "grinning face", "--num-images", "4", "--steps", "3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    with Image.open(out) as picture:
        assert picture.mode == "RGB"
    capsys.readouterr()
    bad = ["sample", "--checkpoint", ckpt, "--device", "cpu", "--prompt", "a purple unicorn",
           "--steps", "3", "--out", str(tmp_path / "bad.png")]  # fmt: skip
    assert main(bad) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unicorn" in err[0] and not (tmp_path / "bad.png").exists()


def test_evaluate_judges_the_colour_prompts_seen_against_held_out(
    emoji_text_run, shapes_dir, tmp_path, capsys
):
    out = tmp_path / "colour.json"
    argv = ["evaluate", "--checkpoint", str(emoji_text_run / "model_final.safetensors"),
            "--device", "cpu", "--num-samples", "42", "--steps", "3", "--no-progress",
            "--save-images", str(tmp_path / "drawn.npz"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    summary, setup = report["colour_prompts"], report["setup"]
    assert summary["held_out_prompts"] == sorted(EMOJI_HELD_OUT)  # the package's split: all trained
    assert summary["n"] == 42 and summary["held_out"]["n"] == 6 and summary["seen"]["n"] == 36
    assert summary["judge_ceiling"] == 1.0  # the fake shapes' colours are the references
    assert set(summary["by_prompt"]) == set(emoji_grid())
    right = sum(e["accuracy"] * e["n"] for e in summary["by_prompt"].values())
    assert right == pytest.approx(summary["accuracy"] * 42)
    assert "colour accuracy" in printed and "held-out prompts" in printed
    with Image.open(setup["picture"]) as picture:
        assert picture.mode == "RGB" and picture.width > 0
    with np.load(tmp_path / "drawn.npz") as drawn:
        assert drawn["images"].shape[:2] == (42, 3)
        assert list(drawn["captions"][:22]) == [*emoji_grid(), emoji_grid()[0]]  # in turn


def test_evaluate_refuses_an_evaluator_for_colour_prompts(emoji_text_run, tmp_path, capsys):
    argv = ["evaluate", "--checkpoint", str(emoji_text_run / "model_final.safetensors"),
            "--evaluator", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "m.json")]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--evaluator does not apply" in err[0]
    assert not (tmp_path / "m.json").exists()


def test_inspect_draws_cross_attention_for_the_emoji_example_prompt(emoji_text_run, tmp_path):
    out = tmp_path / "inspect"
    argv = ["inspect", "--checkpoint", str(emoji_text_run / "model_final.safetensors"),
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    with Image.open(out / "cross_attention.png") as picture:
        assert picture.width > 0


def test_the_web_pages_prompt_box_starts_with_a_prompt_the_model_knows():
    from difflab.export.web import _prompt_info

    emoji = caption_vocabulary(["purple heart", "red square", "dog face"])
    assert (
        _prompt_info({"text": {"vocabulary": list(emoji), "length": 2}})["default"]
        == (EXAMPLE_PROMPTS[EMOJI_DATASOURCE])
    )
    compose_words = ["<pad>", *EXAMPLE_PROMPTS[MNIST_COMPOSE].split()]
    info = _prompt_info({"text": {"vocabulary": compose_words, "length": 8}})
    assert info["default"] == EXAMPLE_PROMPTS[MNIST_COMPOSE]
    unknown = _prompt_info({"text": {"vocabulary": ["<pad>", "dog", "face"], "length": 2}})
    assert unknown["default"] == ""  # none of the examples' words: the empty prompt
    assert _prompt_info({"text": None}) is None
