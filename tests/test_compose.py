"""Tests for difflab.compose (captioned canvases of MNIST digits, held-out combinations, the
tokenizer) and difflab.evaluation.adherence (the prompt-adherence scorer).

The digits here are ten distinct glyphs drawn in code and read by a template-matching stub in
place of the MNIST evaluator, so nothing is downloaded or read from the user cache; the slow
test at the end uses real MNIST and a briefly trained evaluator.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab import compose
from difflab.compose import (
    DEFAULT_SPLIT,
    RELATIONS,
    VOCABULARY,
    Caption,
    HeldOut,
    Thing,
    all_captions,
    detokenize,
    draw_canvases,
    make_split,
    parse_caption,
    tokenize,
)
from difflab.data import load_dataset
from difflab.evaluation import adherence
from difflab.evaluation.adherence import Detection, judge, read_canvases, relation_between
from difflab.evaluation.evaluator import Evaluator
from difflab.models.classifier import Classifier, ClassifierConfig
from test_data import write_idx

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


# --- synthetic digits: ten glyphs and a stub that reads them -------------------------------------


def glyphs() -> np.ndarray:
    """(10, 28, 28) uint8: one distinct bold shape per "digit", within 20x20 like MNIST's ink,
    shifted so that its ink centroid is at the centre of pixel (14, 14) as MNIST's is."""
    y, x = np.mgrid[0:28, 0:28] + 0.5
    r = np.hypot(x - 14, y - 14)
    box = (abs(x - 14) < 10) & (abs(y - 14) < 10)
    shapes = [
        (r < 9) & (r > 5),  # 0: ring
        (abs(x - 14) < 2.5) & (abs(y - 14) < 10),  # 1: vertical bar
        (abs(y - 14) < 2.5) & (abs(x - 14) < 10),  # 2: horizontal bar
        ((abs(x - 14) < 2) | (abs(y - 14) < 2)) & box,  # 3: plus
        ((abs((x - 14) - (y - 14)) < 2.5) | (abs((x - 14) + (y - 14)) < 2.5)) & box,  # 4: X
        (abs((x - 14) + (y - 14)) < 3) & box,  # 5: a diagonal /
        ((abs(x - 7) < 2.5) | (abs(y - 21) < 2.5)) & box,  # 6: L
        ((abs(y - 7) < 2.5) | (abs(x - 14) < 2.5)) & box,  # 7: T
        r < 8,  # 8: disc
        ((abs(x - 8) < 2.5) | (abs(x - 20) < 2.5) | (abs(y - 21) < 2.5)) & box,  # 9: U
    ]
    out = []
    for shape in shapes:
        ink = shape.astype(np.float64)
        cy, cx = (np.argwhere(ink) + 0.5).mean(0)
        out.append(np.roll(ink, (round(14.5 - cy), round(14.5 - cx)), (0, 1)))
    return (np.stack(out) * 255).astype(np.uint8)


GLYPHS = glyphs()


def glyph_set(copies: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A fake MNIST split: ``copies`` of each glyph, their brightness varied a little."""
    images = np.concatenate([GLYPHS * (1 - 0.1 * k) for k in range(copies)]).astype(np.uint8)
    return images, np.tile(np.arange(10), copies)


def stub_classify(crops: np.ndarray) -> np.ndarray:
    """Scores (M, 10): the cosine similarity of each crop's ink to each glyph's."""
    templates = GLYPHS.reshape(10, -1) / 255.0  # (10, 784)
    ink = (crops.reshape(len(crops), -1) + 1) / 2  # (M, 784)
    norms = np.linalg.norm(ink, axis=1, keepdims=True) * np.linalg.norm(templates, axis=1)
    return ink @ templates.T / np.maximum(norms, 1e-9)


def canvases(n: int = 60, seed: int = 0, captions: str = "all", size: int = 32):
    digits, labels = glyph_set()
    return draw_canvases(digits, labels, n, seed=seed, captions=captions, image_size=size)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# --- the grammar and the tokenizer ---------------------------------------------------------------


def test_grammar_enumerates_every_caption_once_and_each_parses_back():
    captions = all_captions()
    assert len(captions) == 5 * 10 + 4 * (50 * 49)  # objects of a pair differ
    texts = [c.text for c in captions]
    assert len(set(texts)) == len(texts)
    assert all(parse_caption(c.text) == c for c in captions)
    assert parse_caption("a red 3 left of a blue 7") == Caption(
        (Thing(3, "red"), Thing(7, "blue")), "left of"
    )
    assert parse_caption("  a white 0  ") == Caption((Thing(0, "white"),))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a purple 3", "unknown colour 'purple'"),
        ("a red 3 near a blue 7", "is not"),
        ("a red 12", "is not"),
        ("red 3", "is not"),
        ("", "is not"),
        ("a red 3 left of a red 3", "must differ"),
        ("a red 3 left a blue 7", "is not"),
    ],
)
def test_parse_refuses_captions_outside_the_grammar_in_one_line(text, expected):
    with pytest.raises(ValueError) as exc:
        parse_caption(text)
    assert expected in one_line(exc)


def test_tokenizer_round_trips_the_whole_grammar_with_padding():
    texts = [c.text for c in all_captions()]
    ids = tokenize(texts)
    assert ids.shape == (len(texts), compose.MAX_TOKENS) and ids.dtype == np.int64
    assert detokenize(ids) == texts
    one = tokenize("a red 3")
    assert one.shape == (1, 8) and (one[0, 3:] == 0).all() and (one[0, :3] > 0).all()
    assert VOCABULARY[0] == compose.PAD
    # The vocabulary is exactly the grammar's words.
    assert {w for t in texts for w in t.split()} == set(VOCABULARY[1:])
    assert tokenize(["a red 3"], length=12).shape == (1, 12)


def test_tokenizer_refuses_unknown_words_and_long_captions_in_one_line():
    with pytest.raises(ValueError) as exc:
        tokenize(["a red 3", "a purple 3"])
    assert "unknown word 'purple'" in one_line(exc) and "a purple 3" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        tokenize("a <pad> 3")
    assert "unknown word '<pad>'" in one_line(exc)
    with pytest.raises(ValueError) as exc:
        tokenize("a red 3 left of a blue 7", length=5)
    assert "8 words; at most 5" in one_line(exc)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        detokenize([[1, len(VOCABULARY)]])


# --- held-out combinations -------------------------------------------------------------------------

SEEN = DEFAULT_SPLIT.captions(held_out=False)
HELD = DEFAULT_SPLIT.captions(held_out=True)


def test_default_split_is_pinned():
    """What --data mnist-compose holds out; a change here changes every benchmark's meaning."""
    assert DEFAULT_SPLIT.diagonals == {
        "left of": (1, 3),
        "right of": (7, 9),
        "above": (2, 4),
        "below": (6, 8),
    }
    assert [t.text for t in DEFAULT_SPLIT.bindings] == [
        "a red 2",
        "a green 9",
        "a blue 3",
        "a yellow 6",
        "a white 0",
    ]


def test_no_held_out_caption_is_in_training_exhaustively():
    assert set(SEEN).isdisjoint(HELD) and len(SEEN) + len(HELD) == len(all_captions())
    assert set(SEEN) | set(HELD) == set(all_captions())
    for caption in SEEN:
        assert not any(t in DEFAULT_SPLIT.bindings for t in caption.objects), caption.text
        if caption.relation:
            pair = (caption.objects[0].digit, caption.objects[1].digit)
            assert pair not in DEFAULT_SPLIT.diagonal_pairs(caption.relation), caption.text
    # A sizeable share is held out, and some of each kind.
    assert 0.2 < len(HELD) / len(all_captions()) < 0.5
    assert {c.kind for c in HELD} == set(compose.KINDS)


def test_held_out_diagonals_are_what_the_split_says():
    for relation in RELATIONS:
        ks = DEFAULT_SPLIT.diagonals[relation]
        assert len(ks) == 2
        held_pairs = {
            (c.objects[0].digit, c.objects[1].digit)
            for c in HELD
            if c.relation == relation and "relation" in DEFAULT_SPLIT.why(c)
        }
        assert held_pairs == {(a, (a + k) % 10) for k in ks for a in range(10)}
        # Each relation its own diagonals; the converse relation holds out the same arrangements.
        others = [DEFAULT_SPLIT.diagonals[r] for r in RELATIONS if r != relation]
        assert all(set(ks).isdisjoint(o) for o in others)
        converse = DEFAULT_SPLIT.diagonals[compose.CONVERSE[relation]]
        assert sorted((10 - k) % 10 for k in ks) == sorted(converse)
    # "3 left of 7"-style: for a held-out pair, the reverse order and the other axis are seen.
    k = DEFAULT_SPLIT.diagonals["left of"][0]
    a, b = Thing(0, "green"), Thing(k, "blue")
    assert DEFAULT_SPLIT.why(Caption((a, b), "left of")) == "relation"
    assert DEFAULT_SPLIT.why(Caption((b, a), "left of")) is None
    assert DEFAULT_SPLIT.why(Caption((a, b), "above")) is None


def test_every_primitive_appears_in_training():
    assert {w for c in SEEN for w in c.text.split()} == set(VOCABULARY[1:])
    singles = [c.objects[0] for c in SEEN if c.relation is None]
    assert {t.digit for t in singles} == set(range(10))
    assert {t.colour for t in singles} == set(compose.COLOUR_NAMES)
    for relation in RELATIONS:
        seen = [c for c in SEEN if c.relation == relation]
        assert {c.objects[0].digit for c in seen} == set(range(10))
        assert {c.objects[1].digit for c in seen} == set(range(10))
    for binding in DEFAULT_SPLIT.bindings:  # its digit and its colour, each in other bindings
        assert any(t.digit == binding.digit for t in singles)
        assert any(t.colour == binding.colour for t in singles)


def test_a_bag_of_words_cannot_tell_held_out_relations_from_training():
    relation_held = [c for c in HELD if DEFAULT_SPLIT.why(c) == "relation"]
    assert len(relation_held) > 1000
    seen = set(SEEN)
    for caption in relation_held:
        twin = caption.swapped()
        assert twin in seen, caption.text
        assert Counter(twin.text.split()) == Counter(caption.text.split())


@pytest.mark.parametrize("seed", range(6))
def test_make_split_keeps_its_promises_for_any_seed(seed):
    split = make_split(num_diagonals=2, num_bindings=10, seed=seed)
    chosen = [k for r in RELATIONS for k in split.diagonals[r]]
    assert len(chosen) == len(set(chosen)) == 8 and not {0, 5} & set(chosen)
    assert len(set(split.bindings)) == 10
    assert len({t.digit for t in split.bindings}) == 10
    assert make_split(1, 3, seed=seed) == make_split(1, 3, seed=seed)
    assert all(len(ks) == 0 for ks in make_split(0, 0, seed=seed).diagonals.values())


def test_make_split_and_held_out_refuse_bad_splits_in_one_line():
    with pytest.raises(ValueError) as exc:
        make_split(num_diagonals=3)
    assert "got 3" in one_line(exc)
    with pytest.raises(ValueError) as exc:
        make_split(num_bindings=11)
    assert "got 11" in one_line(exc)
    diagonals = {r: () for r in RELATIONS}
    with pytest.raises(ValueError) as exc:
        HeldOut({**diagonals, "left of": (3, 7)}, ())
    assert "10 - k" in one_line(exc)
    with pytest.raises(ValueError) as exc:
        HeldOut({**diagonals, "above": (5,)}, ())
    assert "not 5" in one_line(exc)
    with pytest.raises(ValueError) as exc:
        HeldOut(diagonals, tuple(Thing(3, c) for c in compose.COLOUR_NAMES))
    assert "digit 3" in one_line(exc)


# --- canvases --------------------------------------------------------------------------------------


def test_canvases_are_deterministic_from_the_seed():
    a, b, c = canvases(seed=5), canvases(seed=5), canvases(seed=6)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert np.array_equal(a.centres, b.centres, equal_nan=True)
    assert np.array_equal(a.digit_indices, b.digit_indices)
    assert a.captions != c.captions and not np.array_equal(a.images, c.images)


def test_caption_sets_draw_only_what_they_say():
    train = canvases(400, captions="seen")
    assert not train.held_out.any()
    assert not any(DEFAULT_SPLIT.is_held_out(c) for c in train.captions)
    held = canvases(200, captions="held-out")
    assert held.held_out.all() and all(DEFAULT_SPLIT.is_held_out(c) for c in held.captions)
    mixed = canvases(400, captions="all")
    assert 0.1 < mixed.held_out.mean() < 0.6
    kinds = Counter(c.kind for c in train.captions)
    assert set(kinds) == set(compose.KINDS) and min(kinds.values()) > 50  # about 80 each


@pytest.mark.parametrize("size", [32, 48])
def test_canvas_layout_matches_captions(size):
    got = canvases(200, seed=1, size=size)
    assert got.images.shape == (200, 3, size, size) and got.images.dtype == np.float32
    assert got.images.min() == -1.0 and got.images.max() <= 1.0
    assert np.array_equal(got.labels, [compose.KINDS.index(c.kind) for c in got.captions])
    assert detokenize(got.tokens()) == list(got.texts)
    labels = glyph_set()[1]
    for i, caption in enumerate(got.captions):
        indices = got.digit_indices[i]
        assert [labels[k] for k in indices[: len(caption.objects)]] == [
            t.digit for t in caption.objects
        ]
        boxes = got.boxes[i]
        assert (boxes[: len(caption.objects)] >= 0).all() and (boxes[:, 2:] <= size).all()
        for box, thing in zip(boxes, caption.objects, strict=False):  # the box holds its colour
            x0, y0, x1, y1 = box
            patch = (got.images[i, :, y0:y1, x0:x1] + 1) / 2
            brightest = patch.max(0) == patch.max()
            rgb = patch[:, brightest].mean(1)
            assert np.allclose(
                rgb / rgb.max(), np.divide(compose.COLOURS[thing.colour], 255), atol=0.01
            )
        if caption.relation is None:
            assert indices[1] == -1 and np.isnan(got.centres[i, 1]).all()
            continue
        first, second = got.centres[i]
        assert relation_between(tuple(first), tuple(second)) == caption.relation
        along = 0 if caption.relation in ("left of", "right of") else 1
        low, high = sorted(boxes, key=lambda b: b[along])
        assert high[along] - low[along + 2] >= compose.GAP  # empty pixels between the inks
        distance = abs(first[along] - second[along])
        assert abs(first[1 - along] - second[1 - along]) <= distance / 2


def test_draw_canvases_refuses_bad_input_in_one_line():
    digits, labels = glyph_set()
    cases = [
        (dict(image_size=33), "even number of pixels"),
        (dict(image_size=96), "got image size 96"),
        (dict(captions="unseen"), "unknown caption set 'unseen'"),
        (dict(labels=labels % 9), "no digit 9"),
        (dict(num_images=0), "at least 1"),
        (dict(digits=np.full((30, 28, 28), 255, np.uint8)), "ink 28 px across"),
        (dict(digits=digits[:, :20]), "(N, 28, 28)"),
        (dict(digits=np.zeros_like(digits)), "digit image 0 is blank"),
    ]
    for change, expected in cases:
        kwargs = dict(digits=digits, labels=labels, num_images=4, seed=0) | change
        with pytest.raises(ValueError) as exc:
            draw_canvases(**kwargs)
        assert expected in one_line(exc), change


def write_glyph_mnist(directory: Path, split: str) -> None:
    images, labels = glyph_set(copies=2)
    prefix = "train" if split == "train" else "t10k"
    write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))


def test_load_dataset_mnist_compose_reads_the_mnist_files(tmp_path):
    for split in ("train", "test"):
        write_glyph_mnist(tmp_path, split)
    train = load_dataset(
        "mnist-compose", data_dir=tmp_path, split="train", num_images=300, download=False
    )
    assert train.name == "mnist-compose" and train.images.shape == (300, 3, 32, 32)
    assert train.class_names == compose.KINDS and len(train.names) == 300
    parsed = [parse_caption(t) for t in train.names]
    assert not any(DEFAULT_SPLIT.is_held_out(c) for c in parsed)
    assert [compose.KINDS.index(c.kind) for c in parsed] == train.labels.tolist()
    test = load_dataset(
        "mnist-compose", data_dir=tmp_path, split="test", num_images=300, download=False
    )
    assert any(DEFAULT_SPLIT.is_held_out(parse_caption(t)) for t in test.names)
    again = load_dataset("mnist-compose", data_dir=tmp_path, num_images=300, download=False)
    assert np.array_equal(again.images, train.images) and again.names == train.names
    big = load_dataset(
        "mnist-compose", data_dir=tmp_path, num_images=4, image_size=48, download=False
    )
    assert big.image_size == 48
    with pytest.raises(ValueError) as exc:
        load_dataset("mnist-compose", data_dir=tmp_path / "none", download=False)
    assert "no MNIST train files" in one_line(exc)


# --- the scorer ------------------------------------------------------------------------------------


def test_relation_between_uses_the_dominant_axis():
    assert relation_between((1, 5), (9, 6)) == "left of"
    assert relation_between((9, 5), (1, 2)) == "right of"
    assert relation_between((5, 1), (6, 9)) == "above"
    assert relation_between((5, 9), (2, 1)) == "below"
    assert relation_between((0, 0), (4, 4)) == "left of"  # a tie is horizontal


def detection(digit: int, colour: str, x: float, y: float) -> Detection:
    return Detection(digit, colour, (x, y), (int(x) - 4, int(y) - 4, int(x) + 4, int(y) + 4), 30)


def test_judge_checks_every_clause_and_says_which_failed():
    red3, blue7 = detection(3, "red", 8, 16), detection(7, "blue", 24, 15)
    ok = judge("a red 3 left of a blue 7", [red3, blue7])
    assert ok.correct and ok.reason == "ok" and ok.relation_ok and ok.failure is None
    swapped = judge("a blue 7 left of a red 3", [red3, blue7])
    assert not swapped.correct and swapped.failure == "relation"
    assert swapped.reason == "a blue 7 is right of a red 3, not left of"
    assert swapped.objects_ok == (True, True) and swapped.relation_ok is False
    colour = judge("a green 3 left of a blue 7", [red3, blue7])
    assert colour.failure == "object" and colour.objects_ok == (False, True)
    assert colour.relation_ok is None and "no a green 3" in colour.reason
    extra = judge("a red 3", [red3, blue7])
    assert extra.failure == "count" and extra.objects_ok == (True,) and not extra.correct
    assert judge("a red 3", [red3]).correct
    assert judge("a red 3", []).failure == "count"
    missing = judge("a red 3 above a blue 7", [red3])
    assert missing.failure == "count" and missing.objects_ok == (True, False)
    assert not judge("a red 3 above a blue 7", [red3, blue7]).correct


def test_scorer_accepts_real_canvases_and_rejects_wrong_captions():
    got = canvases(120, seed=3)
    found = read_canvases(got.images, stub_classify)
    verdicts = [judge(c, d) for c, d in zip(got.captions, found, strict=True)]
    assert all(v.correct for v in verdicts), [v.reason for v in verdicts if not v.correct]
    assert all(len(d) == len(c.objects) for c, d in zip(got.captions, found, strict=True))
    # Each detection sits where the canvas put its digit.
    for i, dets in enumerate(found):
        for centre in got.centres[i][: len(dets)]:
            assert min(np.hypot(*(np.array(d.centre) - centre)) for d in dets) < 1.0
    pairs = [(c, d) for c, d in zip(got.captions, found, strict=True) if c.relation]
    assert len(pairs) > 60

    def other_colour(t: Thing, avoid: Thing) -> Thing:
        return next(
            Thing(t.digit, c)
            for c in compose.COLOUR_NAMES
            if c != t.colour and Thing(t.digit, c) != avoid
        )

    def next_digit(t: Thing) -> Thing:
        return Thing((t.digit + 1) % 10, t.colour)

    wrong = {
        "swapped": [(c.swapped(), d) for c, d in pairs],
        "converse": [(Caption(c.objects, compose.CONVERSE[c.relation]), d) for c, d in pairs],
        "colour": [
            (Caption((other_colour(c.objects[0], c.objects[1]), c.objects[1]), c.relation), d)
            for c, d in pairs
        ],
        "digit": [
            (Caption((c.objects[0], next_digit(c.objects[1])), c.relation), d)
            for c, d in pairs
            if next_digit(c.objects[1]) != c.objects[0]
        ],
        "left out": [(Caption(c.objects[:1]), d) for c, d in pairs],
    }
    for name, cases in wrong.items():
        accepted = [judge(c, d).correct for c, d in cases]
        assert len(accepted) > 50 and not any(accepted), name


def test_score_canvases_and_summary_on_a_mixed_set():
    got = canvases(80, seed=4, size=48)
    verdicts = adherence.score_canvases(got.images, got.texts, stub_classify)
    summary = adherence.adherence_summary(verdicts, got.captions, got.held_out)
    assert summary["n"] == 80 and summary["accuracy"] == 1.0
    assert summary["held_out"]["n"] == int(got.held_out.sum()) and summary["failures"] == {}
    assert set(summary["by_kind"]) == {c.kind for c in got.captions}
    assert summary["clauses"] == {"count": 1.0, "objects": 1.0, "relation": 1.0}
    with pytest.raises(ValueError) as exc:
        adherence.score_canvases(got.images, got.texts[:3], stub_classify)
    assert "80 images but 3 captions" in one_line(exc)


def test_reader_ignores_specks_counts_extra_digits_and_reads_dim_colours():
    size = 32
    canvas = np.zeros((4, 3, size, size), np.float32)
    glyph = compose.resize_digits(GLYPHS[[8]] / 255.0, 16)[0]  # (16, 16) disc
    for k, colour in enumerate(("red", "green", "blue", "yellow")):
        rgb = np.asarray(compose.COLOURS[colour])[:, None, None] / 255
        canvas[k, :, 2:18, 2:18] = rgb * glyph * 0.6  # a dim digit still has its colour
    canvas[0, :, 28, 28] = 1.0  # a one-pixel speck of noise is no digit
    canvas[1, :, 14:30, 14:30] = glyph  # a second, white digit
    found = read_canvases(2 * canvas - 1, stub_classify)
    assert [d.text for d in found[0]] == ["a red 8"]
    assert [d.text for d in found[1]] == ["a green 8", "a white 8"]
    assert [d.text for d in found[2]] == ["a blue 8"] and [d.text for d in found[3]] == [
        "a yellow 8"
    ]
    assert read_canvases(-np.ones((1, 3, size, size), np.float32), stub_classify) == [()]
    with pytest.raises(ValueError) as exc:
        read_canvases(np.zeros((1, 1, size, size), np.float32), stub_classify)
    assert "(N, 3, S, S)" in one_line(exc)
    with pytest.raises(ValueError) as exc:
        read_canvases(2 * canvas - 1, lambda crops: np.zeros((len(crops), 3)))
    assert "expected" in one_line(exc)


def test_mnist_classifier_wraps_only_an_mnist_evaluator():
    torch.manual_seed(0)
    mnist = Evaluator(
        Classifier(ClassifierConfig()), {"data": "mnist", "class_names": list("0123456789")}, ""
    )
    scores = adherence.mnist_classifier(mnist)(np.zeros((5, 1, 28, 28), np.float32))
    assert scores.shape == (5, 10) and np.isfinite(scores).all()
    emoji = Evaluator(
        Classifier(ClassifierConfig(image_size=8, in_channels=3, num_classes=5)),
        {"data": "emoji", "class_names": list("abcde")},
        "",
    )
    with pytest.raises(ValueError) as exc:
        adherence.mnist_classifier(emoji)
    assert "MNIST evaluator" in one_line(exc) and "'emoji'" in str(exc.value)


# --- real MNIST (slow) -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="real MNIST not present")
def test_scorer_ceiling_on_real_mnist_with_a_briefly_trained_evaluator():
    """An evaluator trained for 300 steps (about 98% on MNIST) reads real held-out canvases:
    most true captions are accepted, swapped ones almost never."""
    from difflab.evaluation import subset, train_classifier

    train = load_dataset("mnist", data_dir=REAL_MNIST, num_images=12_000, download=False)
    test = load_dataset("mnist", split="test", data_dir=REAL_MNIST, download=False)
    model, info = train_classifier(train, subset(test, 1000), max_steps=300, seed=0)
    assert info["test_accuracy"] > 0.95
    evaluator = Evaluator(model, {**info, "data": "mnist"}, "")
    got = draw_canvases(test.images, test.labels, 300, seed=0, captions="held-out")
    classify = adherence.mnist_classifier(evaluator)
    found = read_canvases(got.images, classify)
    verdicts = [judge(c, d) for c, d in zip(got.captions, found, strict=True)]
    assert np.mean([v.correct for v in verdicts]) > 0.9
    swapped = [
        judge(c.swapped(), d).correct
        for c, d in zip(got.captions, found, strict=True)
        if c.relation
    ]
    assert np.mean(swapped) < 0.02
    real = load_dataset("mnist-compose", data_dir=REAL_MNIST, num_images=50, download=False)
    assert real.images.shape == (50, 3, 32, 32) and len(real.names) == 50
