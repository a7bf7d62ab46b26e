"""Captioned compositions of MNIST digits: the data of text to image (``--data mnist-compose``).

A canvas (32x32 RGB by default) holds one or two MNIST digits, each drawn at half the canvas
size (16 px) in one colour of a small palette on black, and a caption from a small grammar::

    caption  := object | object relation object
    object   := "a" colour digit            colour := red | green | blue | yellow | white
    relation := "left of" | "right of" | "above" | "below"           digit := 0 | 1 | ... | 9

"a red 3 left of a blue 7": the first object is the subject, so the red 3 is the one on the
left. The two objects of a caption differ (not both the same digit in the same colour), so that
every caption names one arrangement.

Held-out combinations (``HeldOut``, ``make_split``) test composition, not memory:

- **relation diagonals**: per relation, N diagonals of the 10x10 grid of digit pairs, diagonal
  k being the pairs (a, (a + k) mod 10). Each relation holds out its own diagonals: "left of"
  holds out k and "right of" the converse diagonal -k (the same arrangement of the two digits,
  so it is never drawn in training under either phrasing), "above"/"below" other diagonals
  again: by default "3 left of 4" is held out while "4 left of 3" and "3 above 4" are seen. A
  diagonal and its negative are never both held out for one relation, so the caption with the
  same words in the other order ("a blue 7 left of a red 3" for "a red 3 left of a blue 7") is
  always in training: a bag-of-words model cannot tell the two apart.
- **colour-digit bindings**: some (colour, digit) pairs (by default a red 2, a green 9, a blue 3,
  a yellow 6 and a white 0) appear in no training caption, while every colour and digit does.

Training canvases draw their digits from MNIST's train split and only seen captions; evaluation
canvases draw from the test split. This module only needs the MNIST arrays
(``load_dataset("mnist")`` reads them); ``load_dataset("mnist-compose")`` wraps
``draw_canvases`` for the commands, with the captions as the data set's ``names``. Prompt
adherence of generated canvases is scored by ``difflab.evaluation.adherence``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# --- the grammar ---------------------------------------------------------------------------------

COLOURS: dict[str, tuple[int, int, int]] = {  # each has a channel at 255: the max channel = ink
    "red": (255, 48, 48),
    "green": (48, 255, 64),
    "blue": (64, 112, 255),
    "yellow": (255, 224, 32),
    "white": (255, 255, 255),
}
COLOUR_NAMES = tuple(COLOURS)
DIGITS = tuple(range(10))
RELATIONS = ("left of", "right of", "above", "below")
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
KINDS = ("one digit", *RELATIONS)  # the class of a canvas (ImageDataset.labels): its caption's kind
PAD = "<pad>"  # token 0
VOCABULARY = (PAD, "a", *COLOUR_NAMES, *(str(d) for d in DIGITS), "left", "right", "of", "above",
              "below")  # fmt: skip
MAX_TOKENS = 8  # "a red 3 left of a blue 7"
EXAMPLE_PROMPT = "a red 3 left of a blue 7"  # what inspect and the web page show at first
_TOKEN_IDS = {word: i for i, word in enumerate(VOCABULARY)}


@dataclass(frozen=True)
class Thing:
    """One object of a caption: a digit in a colour."""

    digit: int  # 0..9
    colour: str  # a key of COLOURS

    def __post_init__(self) -> None:
        is_int = isinstance(self.digit, (int, np.integer)) and not isinstance(self.digit, bool)
        if not is_int or self.digit not in DIGITS:
            raise ValueError(f"digit must be an integer 0..9, got {self.digit!r}")
        object.__setattr__(self, "digit", int(self.digit))
        if self.colour not in COLOURS:
            raise ValueError(
                f"unknown colour {self.colour!r}; expected one of {', '.join(COLOUR_NAMES)}"
            )

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.digit}"


@dataclass(frozen=True)
class Caption:
    """A caption's structure: one object, or two objects and where the first is from the second."""

    objects: tuple[Thing, ...]  # one or two
    relation: str | None = None  # one of RELATIONS with two objects, None with one

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if len(self.objects) == 1 and self.relation is None:
            return
        if len(self.objects) != 2 or self.relation not in RELATIONS:
            raise ValueError(
                f"a caption is one object without a relation, or two objects and one of "
                f"{', '.join(RELATIONS)}; got {len(self.objects)} object(s) and {self.relation!r}"
            )
        if self.objects[0] == self.objects[1]:
            raise ValueError(
                f"the two objects of a caption must differ in digit or colour, got "
                f"{self.objects[0].text} twice"
            )

    @property
    def text(self) -> str:
        """The caption as words: "a red 3" or "a red 3 left of a blue 7"."""
        if self.relation is None:
            return self.objects[0].text
        return f"{self.objects[0].text} {self.relation} {self.objects[1].text}"

    @property
    def kind(self) -> str:
        """One of KINDS: "one digit" or the relation."""
        return self.relation or KINDS[0]

    def swapped(self) -> Caption:
        """The same words with the objects in the other order ("a blue 7 left of a red 3")."""
        if self.relation is None:
            raise ValueError(f"{self.text!r} has one object; there is nothing to swap")
        return Caption(self.objects[::-1], self.relation)


def parse_caption(text: str) -> Caption:
    """A caption's words back into its structure; anything outside the grammar is a ValueError."""
    words = text.split()
    grammar = '"a COLOUR DIGIT" or "a COLOUR DIGIT RELATION a COLOUR DIGIT"'
    relation_words = {tuple(r.split()): r for r in RELATIONS}

    def thing(three: list[str]) -> Thing:
        if len(three) != 3 or three[0] != "a" or three[2] not in {str(d) for d in DIGITS}:
            raise ValueError(f"caption {text!r} is not {grammar}")
        if three[1] not in COLOURS:
            raise ValueError(
                f"caption {text!r}: unknown colour {three[1]!r}; expected one of "
                f"{', '.join(COLOUR_NAMES)}"
            )
        return Thing(int(three[2]), three[1])

    if len(words) == 3:
        return Caption((thing(words),))
    for length in (1, 2):
        relation = relation_words.get(tuple(words[3 : 3 + length]))
        if relation is not None and len(words) == 6 + length:
            return Caption((thing(words[:3]), thing(words[3 + length :])), relation)
    raise ValueError(f"caption {text!r} is not {grammar} (relations: {', '.join(RELATIONS)})")


def all_things() -> tuple[Thing, ...]:
    """Every object of the grammar: 5 colours x 10 digits, colour-major."""
    return tuple(Thing(d, c) for c in COLOUR_NAMES for d in DIGITS)


@functools.cache
def all_captions() -> tuple[Caption, ...]:
    """Every caption of the grammar, in a fixed order: 50 of one object, then 4 x 50 x 49 of two."""
    things = all_things()
    single = [Caption((t,)) for t in things]
    pairs = [
        Caption((a, b), r)
        for r in RELATIONS
        for a, b in itertools.product(things, things)
        if a != b
    ]
    return (*single, *pairs)


# --- the tokenizer -------------------------------------------------------------------------------


def tokenize(texts: Sequence[str] | str, length: int = MAX_TOKENS) -> np.ndarray:
    """Captions -> (N, length) int64 token ids (indices into VOCABULARY), padded with 0 (PAD).

    Words are split on whitespace; a word outside the vocabulary, or a caption longer than
    ``length`` words, is a one-line ValueError.
    """
    if isinstance(texts, str):
        texts = [texts]
    ids = np.zeros((len(texts), length), np.int64)
    for i, text in enumerate(texts):
        words = text.split()
        if len(words) > length:
            raise ValueError(f"caption {text!r} has {len(words)} words; at most {length} fit")
        for j, word in enumerate(words):
            if word not in _TOKEN_IDS or word == PAD:
                raise ValueError(
                    f"unknown word {word!r} in caption {text!r}; the vocabulary is "
                    f"{' '.join(VOCABULARY[1:])}"
                )
            ids[i, j] = _TOKEN_IDS[word]
    return ids


def detokenize(ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
    """(N, L) token ids -> the N captions (padding dropped)."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.min(initial=0) < 0:
        raise ValueError(f"token ids must be a 2-d array of integers >= 0, got shape {ids.shape}")
    if ids.max(initial=0) >= len(VOCABULARY):
        raise ValueError(
            f"token id {ids.max()} is outside the vocabulary (0..{len(VOCABULARY) - 1})"
        )
    return [" ".join(VOCABULARY[k] for k in row if k != 0) for row in ids]


# --- held-out combinations -----------------------------------------------------------------------

# The diagonals a relation may hold out, as pairs {k, -k}: 0 (a digit with itself) and 5 are their
# own negatives, so a caption on them has its swapped twin on the same diagonal: never held out.
_DIAGONAL_PAIRS = ((1, 9), (2, 8), (3, 7), (4, 6))


@dataclass(frozen=True)
class HeldOut:
    """Which captions training never sees: per relation, diagonals of the digit-pair grid, and
    (colour, digit) bindings. ``why(caption)`` says whether and why a caption is held out."""

    diagonals: dict[str, tuple[int, ...]]  # relation -> the k of its held-out pairs (a, a + k)
    bindings: tuple[Thing, ...]  # objects in no training caption

    def __post_init__(self) -> None:
        if set(self.diagonals) != set(RELATIONS):
            raise ValueError(
                f"held-out diagonals must name every relation ({', '.join(RELATIONS)}), got "
                f"{sorted(self.diagonals)}"
            )
        for relation, ks in self.diagonals.items():
            bad = [k for k in ks if k not in range(1, 10) or k == 5 or (10 - k) in ks]
            if bad:
                raise ValueError(
                    f"{relation!r} holds out diagonal {bad[0]}; expected 1..9 but not 5, and "
                    f"never both k and 10 - k (the swapped caption must stay in training)"
                )
        seen = [t for t in all_things() if t not in self.bindings]
        for what, values, of in (("digit", DIGITS, "digit"), ("colour", COLOUR_NAMES, "colour")):
            missing = [v for v in values if all(getattr(t, of) != v for t in seen)]
            if missing:
                raise ValueError(
                    f"held-out bindings leave {what} {missing[0]!r} in no training caption"
                )

    def diagonal_pairs(self, relation: str) -> frozenset[tuple[int, int]]:
        """The digit pairs (first, second) that ``relation`` holds out."""
        return frozenset((a, (a + k) % 10) for k in self.diagonals[relation] for a in DIGITS)

    def why(self, caption: Caption) -> str | None:
        """None for a caption training sees; else "relation", "binding" or "relation+binding"."""
        reasons = []
        if caption.relation is not None:
            pair = (caption.objects[0].digit, caption.objects[1].digit)
            if pair in self.diagonal_pairs(caption.relation):
                reasons.append("relation")
        if any(t in self.bindings for t in caption.objects):
            reasons.append("binding")
        return "+".join(reasons) or None

    def is_held_out(self, caption: Caption) -> bool:
        return self.why(caption) is not None

    def captions(self, held_out: bool) -> tuple[Caption, ...]:
        """The captions of the grammar that are (not) held out, in ``all_captions`` order."""
        return tuple(c for c in all_captions() if self.is_held_out(c) == held_out)


def make_split(num_diagonals: int = 2, num_bindings: int = 5, seed: int = 0) -> HeldOut:
    """Hold out ``num_diagonals`` diagonals per relation (0..2) and ``num_bindings`` (colour,
    digit) bindings (0..10), chosen by ``seed``.

    "left of" takes one of each of ``num_diagonals`` pairs {k, -k} and "right of" the other one
    (the same arrangements); "above"/"below" do the same with other pairs, so no two relations
    hold out the same diagonal (at most 2 each: there are four pairs). Binding i is colour
    i mod 5 with a different digit each, so every colour and digit keeps most of its bindings.
    """
    if num_diagonals not in (0, 1, 2):
        raise ValueError(f"num_diagonals must be 0, 1 or 2 per relation, got {num_diagonals}")
    if not 0 <= num_bindings <= len(DIGITS):
        raise ValueError(f"num_bindings must be 0..{len(DIGITS)}, got {num_bindings}")
    rng = np.random.default_rng(seed)
    pairs = [_DIAGONAL_PAIRS[i] for i in rng.permutation(len(_DIAGONAL_PAIRS))]
    flips = rng.integers(2, size=len(pairs))
    diagonals: dict[str, tuple[int, ...]] = {}
    for axis, (first, second) in enumerate((("left of", "right of"), ("above", "below"))):
        chosen = [
            pairs[i][::-1] if flips[i] else pairs[i]
            for i in range(axis * num_diagonals, (axis + 1) * num_diagonals)
        ]
        diagonals[first] = tuple(sorted(k for k, _ in chosen))
        diagonals[second] = tuple(sorted(k for _, k in chosen))
    digits = rng.permutation(len(DIGITS))
    bindings = tuple(
        Thing(int(digits[i]), COLOUR_NAMES[i % len(COLOUR_NAMES)]) for i in range(num_bindings)
    )
    return HeldOut(diagonals, bindings)


DEFAULT_SPLIT = make_split()  # what --data mnist-compose holds out, whatever its --seed


# --- drawing canvases ----------------------------------------------------------------------------

CANVAS_SIZE = 32  # the default; digits are drawn at half of it
CANVAS_SIZES = range(28, 65, 2)  # even sizes: the two digits of a pair fit side by side
MAX_INK = 22  # the most pixels (of 28) a digit's ink may span: MNIST's span 20
GAP = 3  # at least this many empty pixels between two digits' ink, along their relation's axis
CAPTION_SETS = ("seen", "held-out", "all")
DEFAULT_NUM_CANVASES = {"train": 50_000, "test": 10_000}


def digit_size(image_size: int) -> int:
    """The side of the box an MNIST digit (28 px, ink within 20) is drawn into: half the canvas."""
    return image_size // 2


@dataclass(frozen=True, eq=False)
class Canvases:
    """Canvases and what is in them. Positions are in pixels, x to the right and y down, pixel
    (row i, column j) covering [j, j + 1) x [i, i + 1); a missing second object is NaN or -1."""

    images: np.ndarray  # (N, 3, S, S) float32 in [-1, 1]: black background, coloured digits
    captions: tuple[Caption, ...]  # N structured captions
    centres: np.ndarray  # (N, 2, 2) float64: (x, y) of each object's ink centroid
    boxes: np.ndarray  # (N, 2, 4) int64: each object's ink box (x0, y0, x1, y1), end exclusive
    digit_indices: np.ndarray  # (N, 2) int64: the MNIST image of each object, in the split given
    held_out: np.ndarray  # (N,) bool: the caption is held out of training (split.why)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(c.text for c in self.captions)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64: each caption's kind, an index into KINDS."""
        return np.array([KINDS.index(c.kind) for c in self.captions], np.int64)

    def tokens(self, length: int = MAX_TOKENS) -> np.ndarray:
        """(N, length) int64 token ids of the captions (``tokenize``)."""
        return tokenize(self.texts, length)

    def __len__(self) -> int:
        return len(self.captions)


def resize_digits(grey: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) grey images in [0, 1] -> (N, size, size), each output pixel the mean of the
    input area it covers (a box filter: exact coverage, no ringing)."""
    _, h, w = grey.shape
    rows, cols = _box_matrix(h, size), _box_matrix(w, size)
    return rows @ grey @ cols.T  # (N, size, size)


def _box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): output pixel i averages input [i n_in / n_out, (i + 1) n_in / n_out)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / (n_in / n_out)


def draw_canvases(
    digits: np.ndarray,
    labels: np.ndarray,
    num_images: int,
    *,
    seed: int,
    captions: str = "seen",
    split: HeldOut = DEFAULT_SPLIT,
    image_size: int = CANVAS_SIZE,
) -> Canvases:
    """``num_images`` captioned canvases drawn from MNIST digits, the same for the same arguments.

    digits: (N, 28, 28) or (N, 1, 28, 28) MNIST images, uint8 0..255 or float in [-1, 1], from
        the train split for training canvases and the test split for evaluation.
    labels: (N,) their digits.
    captions: which captions to draw from: "seen" (training), "held-out" or "all" (each
        canvas's ``held_out`` flag says which it got).
    image_size: the canvas side (even, 28..64); digits are drawn at half of it.

    Each canvas first picks its kind (one digit, or one of the four relations, equally often),
    then a caption of that kind uniformly, then an MNIST image of each digit. One digit lands
    anywhere; two are placed along their relation's axis with at least GAP empty pixels between
    their ink, in the caption's order, their centres off that axis by at most half their
    distance along it (so the relation is unambiguous).
    """
    if captions not in CAPTION_SETS:
        raise ValueError(
            f"unknown caption set {captions!r}; expected one of {', '.join(CAPTION_SETS)}"
        )
    if image_size not in CANVAS_SIZES:
        raise ValueError(
            f"mnist-compose canvases are an even number of pixels from {CANVAS_SIZES[0]} to "
            f"{CANVAS_SIZES[-1]} (digits at half of it), got image size {image_size}"
        )
    if num_images < 1:
        raise ValueError(f"number of images must be at least 1, got {num_images}")
    digits = _check_digits(digits)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (len(digits),):
        raise ValueError(f"{len(digits)} digit images but labels of shape {labels.shape}")
    by_digit = [np.flatnonzero(labels == d) for d in DIGITS]
    missing = [d for d in DIGITS if len(by_digit[d]) == 0]
    if missing:
        raise ValueError(f"the MNIST images hold no digit {missing[0]}; every digit 0..9 is needed")

    # Draw the captions and the digit images.
    rng = np.random.default_rng(seed)
    chosen = pick_captions(num_images, rng, captions=captions, split=split)
    indices = np.full((num_images, 2), -1, np.int64)
    for i, caption in enumerate(chosen):
        for j, thing in enumerate(caption.objects):
            indices[i, j] = by_digit[thing.digit][rng.integers(len(by_digit[thing.digit]))]

    # Shrink only the digits used; each one's ink box and ink centroid in it.
    used, slot = np.unique(indices[indices >= 0], return_inverse=True)
    small = resize_digits(_grey(digits[used]), digit_size(image_size))  # (U, s, s)
    (top, bottom), (left, right) = _span(small.max(2) > 0), _span(small.max(1) > 0)  # (U,) each
    centre = np.arange(small.shape[1]) + 0.5
    mass = small.sum((1, 2))
    cy = (small.sum(2) * centre).sum(1) / mass - top  # (U,) in the ink box
    cx = (small.sum(1) * centre).sum(1) / mass - left
    where = np.full((num_images, 2), -1, np.int64)
    where[indices >= 0] = slot

    # Place them.
    images = np.zeros((num_images, 3, image_size, image_size), np.float32)
    centres = np.full((num_images, 2, 2), np.nan)
    boxes = np.full((num_images, 2, 4), -1, np.int64)
    for i, caption in enumerate(chosen):
        us = where[i, : len(caption.objects)]
        shapes = [(int(bottom[u] - top[u]), int(right[u] - left[u])) for u in us]
        corners = _place(rng, shapes, [(cy[u], cx[u]) for u in us], caption.relation, image_size)
        for j, (u, (x0, y0), thing) in enumerate(zip(us, corners, caption.objects, strict=True)):
            h, w = shapes[j]
            ink = small[u, top[u] : bottom[u], left[u] : right[u]]  # (h, w)
            colour = np.asarray(COLOURS[thing.colour], np.float32)[:, None, None] / 255  # (3, 1, 1)
            region = images[i, :, y0 : y0 + h, x0 : x0 + w]
            np.maximum(region, colour * ink[None], out=region)
            centres[i, j] = (x0 + cx[u], y0 + cy[u])
            boxes[i, j] = (x0, y0, x0 + w, y0 + h)
    held_out = np.array([split.is_held_out(c) for c in chosen], bool)
    return Canvases(2 * images - 1, tuple(chosen), centres, boxes, indices, held_out)


def _check_digits(digits: np.ndarray) -> np.ndarray:
    """MNIST images (N, 28, 28) or (N, 1, 28, 28), uint8 or float in [-1, 1] -> (N, 28, 28), each
    with some ink and none of it wider or taller than MAX_INK."""
    digits = np.asarray(digits)
    if digits.ndim == 4 and digits.shape[1] == 1:
        digits = digits[:, 0]
    if digits.ndim != 3 or digits.shape[1:] != (28, 28) or len(digits) == 0:
        raise ValueError(
            f"MNIST digits must be (N, 28, 28) or (N, 1, 28, 28) images, got shape {digits.shape}"
        )
    ink = digits > (0 if digits.dtype == np.uint8 else -1)  # (N, 28, 28)
    spans = [_span(ink.any(axis)) for axis in (1, 2)]
    extent = np.maximum(*(end - start for start, end in spans))  # (N,) pixels
    if extent.max() > MAX_INK:
        k = int(extent.argmax())
        raise ValueError(
            f"digit image {k} has ink {extent[k]} px across; MNIST digits fit in 20 px of their "
            f"28 (at most {MAX_INK} leave room for two digits on a canvas)"
        )
    if extent.min() == 0:
        raise ValueError(f"digit image {int(extent.argmin())} is blank; every digit needs ink")
    return digits


def _grey(digits: np.ndarray) -> np.ndarray:
    """uint8 0..255 or float [-1, 1] images -> float64 in [0, 1]."""
    if digits.dtype == np.uint8:
        return digits / 255.0
    return np.clip((digits.astype(np.float64) + 1) / 2, 0.0, 1.0)


def _span(occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) bool -> (first, last + 1) of the True entries per row: (N,) each; (0, 0) if none."""
    first = occupied.argmax(1)
    end = occupied.shape[1] - occupied[:, ::-1].argmax(1)
    none = ~occupied.any(1)
    return np.where(none, 0, first), np.where(none, 0, end)


def pick_captions(
    num_captions: int,
    rng: np.random.Generator,
    *,
    captions: str = "seen",
    split: HeldOut = DEFAULT_SPLIT,
) -> list[Caption]:
    """``num_captions`` captions as ``draw_canvases`` picks them: each first its kind (one digit,
    or one of the four relations, equally often), then a caption of that kind uniformly from the
    caption set ("seen", "held-out" or "all"). A model's prompts for ``evaluate`` are picked so."""
    if captions not in CAPTION_SETS:
        raise ValueError(
            f"unknown caption set {captions!r}; expected one of {', '.join(CAPTION_SETS)}"
        )
    drawable = _caption_pool(split, captions)
    pool = {kind: [c for c in drawable if c.kind == kind] for kind in KINDS}
    kinds = [k for k in KINDS if pool[k]]
    chosen = []
    for kind in rng.choice(len(kinds), size=num_captions):
        options = pool[kinds[kind]]
        chosen.append(options[rng.integers(len(options))])
    return chosen


def _caption_pool(split: HeldOut, which: str) -> tuple[Caption, ...]:
    if which == "all":
        return all_captions()
    return split.captions(held_out=which == "held-out")


def _place(
    rng: np.random.Generator,
    shapes: list[tuple[int, int]],
    centroids: list[tuple[float, float]],
    relation: str | None,
    size: int,
) -> list[tuple[int, int]]:
    """Top-left corners (x, y) on a ``size`` canvas for ink boxes of ``shapes`` (h, w) whose ink
    centroids are at ``centroids`` (y, x) in them."""
    if relation is None:
        (h, w) = shapes[0]
        return [(int(rng.integers(size - w + 1)), int(rng.integers(size - h + 1)))]
    along = 1 if relation in ("left of", "right of") else 0  # index of the axis in (y, x)
    low, high = (0, 1) if relation in ("left of", "above") else (1, 0)  # first: smaller coordinate?
    length = [shape[along] for shape in shapes]
    across = [shape[1 - along] for shape in shapes]
    centroid = centroids

    # Along the axis: the two boxes in order, GAP or more empty pixels apart.
    slack = size - length[low] - length[high] - GAP
    assert slack >= 0, f"digits of {length} px do not fit a {size} px canvas"
    a, b = np.sort(rng.integers(slack + 1, size=2))
    start = [0, 0]
    start[low] = int(a)
    start[high] = int(a) + length[low] + GAP + int(b - a)
    distance = (start[high] + centroid[high][along]) - (start[low] + centroid[low][along])

    # Across it: centroids on a common line, then apart by at most half their distance along
    # (rounding to whole pixels moves each by 0.5 at most, and the distance is at least GAP).
    offset_in_box = [centroid[j][1 - along] for j in (0, 1)]
    line_lo = max(offset_in_box)
    line_hi = min(size - across[j] + offset_in_box[j] for j in (0, 1))
    for attempt in range(8):
        line = rng.uniform(line_lo, line_hi)
        offset = rng.uniform(-distance / 2, distance / 2) if attempt < 7 else 0.0
        cross = [
            min(max(round(line + sign * offset / 2 - offset_in_box[j]), 0), size - across[j])
            for j, sign in ((0, -1), (1, 1))
        ]
        apart = abs((cross[0] + offset_in_box[0]) - (cross[1] + offset_in_box[1]))
        if apart <= distance / 2:
            break
    return [(start[j], cross[j]) if along == 1 else (cross[j], start[j]) for j in (0, 1)]
