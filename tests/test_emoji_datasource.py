"""The colour emoji set (``--data emoji-datasource``): small fake npm packages written here, as
folders and as .tgz files, and the real packages in ../shared/data/emoji-datasource (slow)."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab import kinds
from difflab.cli import main
from difflab.config import RunConfig, run_config_from_dict, to_dict
from difflab.data import (
    EMOJI_CATEGORIES,
    EMOJI_DATASOURCE,
    EMOJI_DATASOURCE_CLASSES,
    TWEMOJI_ATTRIBUTION,
    ImageDataset,
    dataset_attribution,
    emoji_in_test_split,
    load_dataset,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "emoji-datasource"
NPM_PACK = "npm pack emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0"
RED_HALF = (255, 0, 0, 128)  # google's grinning face: one colour, half transparent

# emoji.json entries, in an order that is not their code points'. The split (SHA-256 of the code
# points) puts 270B and 1F436 in the test split and the others in the training split.
ENTRIES = [
    dict(name="DOG FACE", unified="1F436", category="Animals & Nature"),
    dict(name="GRINNING FACE", unified="1F600", category="Smileys & Emotion"),
    dict(name="THUMBS UP SIGN", unified="1F44D", category="People & Body",
         skin_variations=["1F3FB", "1F3FF"]),
    dict(name="RAISED HAND", unified="270B", category="People & Body", skin_variations=["1F3FD"]),
    dict(name="EMOJI MODIFIER FITZPATRICK TYPE-1-2", unified="1F3FB", category="Component"),
    dict(name="PEOPLE HOLDING HANDS", unified="1F9D1-200D-1F91D-200D-1F9D1",
         category="People & Body", skin_variations=["1F3FB-1F3FF", "1F3FC-1F3FC"]),
    dict(name="France Flag", unified="1F1EB-1F1F7", category="Flags"),
    dict(name="ROCKET", unified="1F680", category="Travel & Places", twitter=False),
]  # fmt: skip
TEST_NAMES = {"dog face", "raised hand", "raised hand: medium skin tone"}
TRAIN_NAMES = [  # per vendor, in the order of the code points
    "france flag",
    "thumbs up sign",
    "thumbs up sign: light skin tone",
    "thumbs up sign: dark skin tone",
    "grinning face",
    "rocket",  # google only
    "people holding hands",
    "people holding hands: light skin tone, dark skin tone",
    "people holding hands: medium-light skin tone",
]


def png_bytes(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def fake_package(vendor: str) -> dict[str, bytes]:
    """The files of a small emoji-datasource-<vendor> package, by their path inside package/."""
    rng = np.random.default_rng(len(vendor))
    emoji, files = [], {}

    def image(code: str, present: bool) -> dict:
        name = f"{code.lower()}.png"
        if present:
            pixels = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
            if vendor == "google" and code == "1F600":
                pixels[:] = RED_HALF
            files[f"img/{vendor}/64/{name}"] = png_bytes(pixels)
        return {"unified": code, "image": name, f"has_img_{vendor}": present}

    for entry in ENTRIES:
        present = entry.get(vendor, True)
        record = {
            "name": entry["name"], "short_name": entry["name"].lower().replace(" ", "_"),
            **image(entry["unified"], present), "category": entry["category"],
        }  # fmt: skip
        tones = entry.get("skin_variations", [])
        if tones:
            record["skin_variations"] = {
                tone: image(f"{entry['unified']}-{tone}", present) for tone in tones
            }
        emoji.append(record)
    files["emoji.json"] = json.dumps(emoji).encode()
    files["categories.json"] = json.dumps({c: {} for c in EMOJI_CATEGORIES}).encode()
    return files


def write_folders(root: Path, vendors=("google", "twitter")) -> Path:
    for vendor in vendors:
        for name, data in fake_package(vendor).items():
            (root / vendor / name).parent.mkdir(parents=True, exist_ok=True)
            (root / vendor / name).write_bytes(data)
    return root


def tgz_path(root: Path, vendor: str) -> Path:
    return root / f"emoji-datasource-{vendor}-16.0.0.tgz"


def write_tgz(path: Path, files: dict[str, bytes], extra=()) -> None:
    """An npm tarball: every file under package/, then ``extra`` TarInfo members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def write_tarballs(root: Path, vendors=("google", "twitter")) -> Path:
    for vendor in vendors:
        write_tgz(tgz_path(root, vendor), fake_package(vendor))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_folders(tmp_path_factory.mktemp("emoji-folders"))


def load(data_dir, **kwargs) -> ImageDataset:
    return load_dataset(EMOJI_DATASOURCE, data_dir=data_dir, **kwargs)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] back to the integers 0..255 the images were made of (``uint8 / 127.5 - 1``)."""
    return np.rint((images.astype(np.float64) + 1) * 127.5).astype(np.int64)


def composite_formula(rgba: np.ndarray, background) -> np.ndarray:
    a = rgba[..., 3:].astype(np.float64) / 255
    return np.rint(rgba[..., :3] * a + np.asarray(background, np.float64) * (1 - a))


# --- images, labels, names ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32, 64, None])
def test_images_are_float32_nchw_in_minus_one_to_one(folders, size):
    ds = load(folders, image_size=size)
    side = size or 64
    assert ds.name == EMOJI_DATASOURCE
    assert ds.images.shape == (2 * len(TRAIN_NAMES) - 1, 3, side, side)  # twitter has no rocket
    assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int64
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    pixels = to_uint8(ds.images)  # on the uint8 grid: exactly uint8 / 127.5 - 1
    np.testing.assert_array_equal(ds.images, pixels.astype(np.float32) / np.float32(127.5) - 1)


def test_alpha_is_composited_onto_white_by_default_and_any_background_on_request(folders):
    grin = TRAIN_NAMES.index("grinning face") * 2  # google's: half-transparent red
    on_white = load(folders, image_size=16).images[grin]  # (3, 16, 16)
    # alpha 128 over white: 255 * 128/255 + 255 * 127/255 = 255 and 0 * 128/255 + 255 * 127/255
    # = 127; over black: 255 * 128/255 = 128 and 0
    expected = np.array([255, 127, 127], np.float32) / np.float32(127.5) - np.float32(1)
    np.testing.assert_array_equal(on_white, np.broadcast_to(expected[:, None, None], (3, 16, 16)))
    on_black = load(folders, image_size=16, background=(0, 0, 0)).images[grin]
    assert to_uint8(on_black[:, 3, 5]).tolist() == [128, 0, 0]


def test_every_pixel_follows_the_compositing_formula_and_box_averages_blocks(folders):
    with Image.open(folders / "twitter/img/twitter/64/1f44d.png") as picture:
        rgba = np.asarray(picture)  # (64, 64, 4)
    row = 2 * TRAIN_NAMES.index("thumbs up sign") + 1  # twitter's image follows google's
    background = (10, 200, 90)
    full = load(folders, background=background).images[row]  # (3, 64, 64)
    expected = composite_formula(rgba, background)  # (64, 64, 3), never a tie: 255 is odd
    np.testing.assert_array_equal(to_uint8(full), expected.transpose(2, 0, 1))
    np.testing.assert_array_equal(full, to_uint8(full).astype(np.float32) / np.float32(127.5) - 1)
    half = (load(folders, image_size=32, background=background).images[row] + 1) * 127.5
    block_mean = expected.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    # an area average: Pillow rounds after each of its two passes (LANCZOS would be far off)
    assert np.abs(half - block_mean).max() <= 1 + 1e-3


def test_labels_are_categories_in_unicode_order_without_components(folders):
    ds = load(folders, image_size=16)
    assert ds.class_names == EMOJI_DATASOURCE_CLASSES
    assert ds.class_names == (
        "Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
        "Travel & Places", "Activities", "Objects", "Symbols", "Flags",
    )  # fmt: skip
    assert not any("fitzpatrick" in name for name in ds.names)
    category = {e["name"].lower(): e["category"] for e in ENTRIES}
    for name, label in zip(ds.names, ds.labels, strict=True):
        assert ds.class_names[label] == category[name.split(":")[0]], name
    assert ds.labels.tolist()[:2] == [8, 8]  # the flag comes first (by code point), both vendors
    with_components = load(folders, image_size=16, components=True)
    assert with_components.class_names == EMOJI_CATEGORIES
    assert "emoji modifier fitzpatrick type-1-2" in with_components.names


def test_names_are_lowercased_with_their_skin_tones_and_follow_each_other_by_vendor(folders):
    ds = load(folders, image_size=16)
    google, twitter = list(ds.names[0::2]), list(ds.names[1::2])
    assert google[:5] == TRAIN_NAMES[:5] == twitter[:5]  # both vendors of one emoji in a row
    assert ds.names == tuple(
        name for name in TRAIN_NAMES for _ in range(1 if name == "rocket" else 2)
    )
    assert load(folders, image_size=16, vendors="google").names == tuple(TRAIN_NAMES)


def test_split_keeps_an_emoji_its_tones_and_both_vendors_on_one_side(folders):
    train, test = load(folders, image_size=16), load(folders, image_size=16, split="test")
    assert set(test.names) == TEST_NAMES and len(test.names) == 2 * len(TEST_NAMES)
    assert not set(train.names) & set(test.names)
    assert emoji_in_test_split("270B") and emoji_in_test_split("1f436")  # case does not matter
    assert not emoji_in_test_split("1F44D")
    again = load(folders, image_size=16, split="test")
    np.testing.assert_array_equal(test.images, again.images)  # deterministic
    assert test.names == again.names and np.array_equal(test.labels, again.labels)


def test_split_is_about_one_in_ten_and_stable():
    codes = [f"{c:X}" for c in range(0x1F300, 0x1F300 + 2000)]
    share = np.mean([emoji_in_test_split(c) for c in codes])
    assert 0.08 < share < 0.12
    # SHA-256, not Python's salted hash(): pinned values hold on every machine and run
    assert [emoji_in_test_split(c) for c in ("1F436", "1F34E", "1F600", "26BD")] == [
        True, True, False, False,
    ]  # fmt: skip


def test_vendors_pick_whose_images(folders):
    both = load(folders, image_size=16)
    google = load(folders, image_size=16, vendors="google")
    twitter = load(folders, image_size=16, vendors="twitter")
    assert google.num_images + twitter.num_images == both.num_images
    assert "rocket" in google.names and "rocket" not in twitter.names
    np.testing.assert_array_equal(google.images[:4], both.images[0:8:2])
    np.testing.assert_array_equal(twitter.images[:4], both.images[1:8:2])
    assert load(folders, image_size=16, vendors="both").names == both.names
    assert not np.array_equal(google.images[:4], twitter.images[:4])


def test_only_the_vendors_asked_for_need_their_package(tmp_path):
    write_folders(tmp_path, vendors=("google",))
    assert load(tmp_path, image_size=16, vendors="google").num_images == len(TRAIN_NAMES)
    with pytest.raises(ValueError, match="has no twitter package") as err:
        load(tmp_path, image_size=16)
    assert "--vendors google" in str(err.value) and "\n" not in str(err.value)


def test_num_images_keeps_the_first_images_of_the_split(folders):
    ds = load(folders, image_size=16, num_images=3)
    assert ds.names == ("france flag", "france flag", "thumbs up sign")
    np.testing.assert_array_equal(ds.images, load(folders, image_size=16).images[:3])


def test_tarballs_give_the_same_arrays_as_folders(folders, tmp_path):
    write_tarballs(tmp_path)
    for split in ("train", "test"):
        a, b = load(folders, split=split, image_size=32), load(tmp_path, split=split, image_size=32)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.names == b.names and a.class_names == b.class_names
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # nothing was unpacked
        "emoji-datasource-google-16.0.0.tgz", "emoji-datasource-twitter-16.0.0.tgz",
    ]  # fmt: skip


def test_a_tarball_is_read_safely_only_regular_files_under_package(tmp_path):
    files = fake_package("google")
    grin = files.pop("img/google/64/1f600.png")
    outside = tarfile.TarInfo("img/google/64/1f600.png")  # not under package/
    outside.size = len(grin)
    escaping = tarfile.TarInfo("package/../img/google/64/1f600.png")
    escaping.size = len(grin)
    link = tarfile.TarInfo("package/img/google/64/1f600.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    write_tgz(
        tgz_path(tmp_path, "google"), files,
        extra=[(outside, grin), (escaping, grin), (link, None)],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"missing image .*google-16\.0\.0\.tgz:package/img/"):
        load(tmp_path, image_size=16, vendors="google")
    assert [p.name for p in tmp_path.iterdir()] == ["emoji-datasource-google-16.0.0.tgz"]
    assert not (tmp_path.parent / "img").exists()


def test_image_dataset_names_are_optional_and_checked():
    images, labels = np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, np.int64)
    assert ImageDataset("x", images, labels, ("all",)).names is None  # the other sets' datasets
    assert load_dataset("shapes", num_images=4).names is None
    assert ImageDataset("x", images, labels, ("all",), ("a", "b")).names == ("a", "b")
    with pytest.raises(ValueError, match="3 names for 2 images"):
        ImageDataset("x", images, labels, ("all",), ("a", "b", "c"))


def test_attribution_is_named_for_twemoji_only():
    assert dataset_attribution(EMOJI_DATASOURCE) == TWEMOJI_ATTRIBUTION
    assert dataset_attribution(EMOJI_DATASOURCE, "both") == TWEMOJI_ATTRIBUTION
    assert dataset_attribution(EMOJI_DATASOURCE, "twitter") == TWEMOJI_ATTRIBUTION
    assert dataset_attribution(EMOJI_DATASOURCE, "google") is None
    assert dataset_attribution("emoji") is None and dataset_attribution("mnist") is None
    assert "CC BY 4.0" in TWEMOJI_ATTRIBUTION and "Twemoji" in TWEMOJI_ATTRIBUTION


def test_vendors_is_saved_in_the_config_and_old_configs_load_without_it():
    data = to_dict(RunConfig())
    assert data["train"]["vendors"] is None
    data["train"]["vendors"] = "google"
    assert run_config_from_dict(data).train.vendors == "google"
    del data["train"]["vendors"]  # a config written before the field
    assert run_config_from_dict(data).train.vendors is None


# --- bad input: one line each -------------------------------------------------------------------


def one_line(excinfo, *parts):
    text = str(excinfo.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


def test_a_missing_folder_says_how_to_get_the_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as err:
        load(missing)
    one_line(err, f"--data-dir {missing} does not exist", NPM_PACK, "--strip-components")
    with pytest.raises(ValueError) as err:
        load(tmp_path)  # exists, holds nothing
    one_line(err, f"--data-dir {tmp_path} has no google package", NPM_PACK)


def test_no_data_dir_looks_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path))
    with pytest.raises(ValueError) as err:
        load(None)
    one_line(err, str(tmp_path / EMOJI_DATASOURCE), NPM_PACK)
    write_folders(tmp_path / EMOJI_DATASOURCE)
    assert load(None, image_size=16).num_images == 2 * len(TRAIN_NAMES) - 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=28), "read at 64, 32 or 16 pixels, got image size 28"),
        (dict(image_size=8), "got image size 8"),
        (dict(vendors="apple"), "unknown vendors 'apple'; expected one of both, google, twitter"),
        (dict(background=(0, 0, 256)), "three integers 0..255, got (0, 0, 256)"),
        (dict(background=(0, 0)), "background must be an RGB colour"),
    ],
)
def test_bad_options_are_one_line(folders, kwargs, message):
    with pytest.raises(ValueError) as err:
        load(folders, **kwargs)
    one_line(err, message)


def test_emoji_options_belong_to_emoji_datasource_only():
    for kwargs, flag in [
        (dict(vendors="google"), "--vendors"),
        (dict(background=(0, 0, 0)), "background"),
        (dict(components=True), "components"),
    ]:
        with pytest.raises(ValueError) as err:
            load_dataset("emoji", **kwargs)
        one_line(err, f"{flag} applies to --data emoji-datasource only, not to emoji")


def broken_png(kind: str) -> bytes:
    good = png_bytes(np.zeros((64, 64, 4), np.uint8) + 7)
    return {
        "garbage": b"definitely not a png",
        "truncated": good[: len(good) // 2],
        "small": png_bytes(np.zeros((32, 32, 4), np.uint8)),
    }[kind]


@pytest.mark.parametrize(
    "kind, message",
    [("garbage", "not a PNG file"), ("truncated", "cannot read image"), ("small", "is 32x32")],
)
def test_a_corrupt_png_is_named(tmp_path, kind, message):
    write_folders(tmp_path, vendors=("google",))
    bad = tmp_path / "google/img/google/64/1f44d-1f3fb.png"
    bad.write_bytes(broken_png(kind))
    with pytest.raises(ValueError) as err:
        load(tmp_path, vendors="google")
    one_line(err, str(bad), message)
    files = fake_package("google")
    files["img/google/64/1f44d-1f3fb.png"] = broken_png(kind)
    write_tgz(tgz_path(tmp_path / "tgz", "google"), files)
    with pytest.raises(ValueError) as err:
        load(tmp_path / "tgz", vendors="google")
    one_line(err, "google-16.0.0.tgz:package/img/google/64/1f44d-1f3fb.png", message)


def test_a_missing_png_is_named(tmp_path):
    write_folders(tmp_path, vendors=("google",))
    gone = tmp_path / "google/img/google/64/1f600.png"
    gone.unlink()
    with pytest.raises(ValueError) as err:
        load(tmp_path, vendors="google")
    one_line(err, f"missing image {gone}")


def test_bad_package_files_are_named(tmp_path):
    write_folders(tmp_path, vendors=("google",))
    listing = tmp_path / "google/emoji.json"
    listing.write_text("{not json")
    with pytest.raises(ValueError) as err:
        load(tmp_path, vendors="google")
    one_line(err, f"cannot read {listing}")
    entries = json.loads(fake_package("google")["emoji.json"])
    entries[0]["category"] = "Dogs"
    listing.write_text(json.dumps(entries))
    with pytest.raises(ValueError) as err:
        load(tmp_path, vendors="google")
    one_line(err, str(listing), "entry 0 (dog face) has category 'Dogs'")
    del entries[0]["image"]
    listing.write_text(json.dumps(entries))
    with pytest.raises(ValueError) as err:
        load(tmp_path, vendors="google")
    one_line(err, str(listing), "entry 0 is not an emoji-datasource emoji")
    entries[0]["image"] = "../../secret.png"
    entries[0]["category"] = "Animals & Nature"
    listing.write_text(json.dumps(entries))
    with pytest.raises(ValueError) as err:
        load(tmp_path, vendors="google")
    one_line(err, "names image '../../secret.png', not a file")


def test_bad_tarballs_are_named(tmp_path):
    tgz = tgz_path(tmp_path, "google")
    tgz.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError) as err:
        load(tmp_path, vendors="google")
    one_line(err, f"cannot read {tgz} as an npm package tarball")
    write_tgz(tgz, {"README.md": b"hello"})
    with pytest.raises(ValueError) as err:
        load(tmp_path, vendors="google")
    one_line(err, f"{tgz} holds no package/emoji.json")


# --- the command line ---------------------------------------------------------------------------

TINY_EMOJI = [
    "--data", EMOJI_DATASOURCE, "--image-size", "16", "--epochs", "1", "--batch-size", "4",
    "--timesteps", "50", "--base-channels", "8", "--channel-mults", "1,2", "--no-progress",
    "--preview-steps", "2", "--seed", "3", "--device", "cpu",
]  # fmt: skip


def test_train_runs_on_the_colour_emoji_and_credits_twemoji(folders, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", *TINY_EMOJI, "--data-dir", str(folders), "--conditional", "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["data"] == EMOJI_DATASOURCE and config["train"]["vendors"] is None
    assert config["model"]["image_size"] == 16 and config["model"]["in_channels"] == 3
    assert config["class_names"] == list(EMOJI_DATASOURCE_CLASSES)
    assert "CC BY 4.0" in (out / "report.html").read_text()
    google = tmp_path / "google"
    argv = ["train", *TINY_EMOJI, "--data-dir", str(folders), "--vendors", "google"]
    assert main([*argv, "--max-steps", "1", "--out", str(google)]) == 0
    assert json.loads((google / "config.json").read_text())["train"]["vendors"] == "google"
    assert "CC BY 4.0" not in (google / "report.html").read_text()
    # a resumed run reads its own vendors again
    seen = []
    monkeypatch.setattr(
        kinds, "load_dataset", lambda *a, **k: seen.append(k) or load_dataset(*a, **k)
    )
    assert main(["train", "--resume", str(google), "--max-steps", "2", "--no-progress"]) == 0
    assert [k["vendors"] for k in seen] == ["google"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data-dir", "{missing}"], NPM_PACK),
        (["--data-dir", "{folders}", "--image-size", "28"], "got image size 28"),
        (["--data-dir", "{folders}", "--vendors", "apple"], "invalid choice: 'apple'"),
    ],
)
def test_train_refuses_bad_emoji_flags_in_one_line(folders, tmp_path, capsys, extra, message):
    argv = ["train", "--data", EMOJI_DATASOURCE, "--no-progress", "--out", str(tmp_path / "x")]
    extra = [e.format(missing=tmp_path / "missing", folders=folders) for e in extra]
    try:
        assert main([*argv, *extra]) == 2
    except SystemExit as exit_:  # argparse exits by itself
        assert exit_.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_a_real_process_without_the_files_exits_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "difflab", "train", "--data", EMOJI_DATASOURCE, "--data-dir",
         str(tmp_path / "missing"), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--data-dir" in result.stderr and NPM_PACK in result.stderr
    assert not (tmp_path / "run").exists()


def test_vendors_flag_is_refused_for_another_dataset(capsys, tmp_path):
    argv = ["train", "--data", "shapes", "--vendors", "google", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "--vendors applies to --data emoji-datasource only" in err


# --- the real packages (slow) -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"no emoji-datasource packages in {REAL}")
def test_real_packages_counts_and_split():
    per_vendor = {}
    for vendor in ("google", "twitter"):
        train = load(REAL, vendors=vendor, image_size=16)
        test = load(REAL, vendors=vendor, split="test", image_size=16)
        per_vendor[vendor] = (train, test)
        assert train.num_images + test.num_images == 3786 - 5  # less the 5 Component swatches
        assert train.class_names == EMOJI_DATASOURCE_CLASSES and len(train.class_names) == 9
        assert set(np.unique(train.labels)) == set(range(9)) == set(np.unique(test.labels))
        assert 0.08 < test.num_images / (train.num_images + test.num_images) < 0.14
        assert not set(train.names) & set(test.names)
        assert "thumbs up sign: medium skin tone" in train.names + test.names
        assert not any("fitzpatrick" in name for name in train.names + test.names)
    (google, google_test), (twitter, twitter_test) = per_vendor.values()
    assert google.names == twitter.names and google_test.names == twitter_test.names
    assert not np.array_equal(google.images, twitter.images)
