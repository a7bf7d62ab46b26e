"""The images an editing command starts from (files, or test images of the model's data) and an
inpainting mask, checked against what the checkpoint expects.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from difflab.config import RunConfig
from difflab.data import load_dataset

PIXEL_MODES = ("L", "LA", "RGB", "RGBA")  # the 8-bit modes whose pixels the model's values are


def load_input_images(
    config: RunConfig,
    paths: Sequence[str | os.PathLike[str]] = (),
    data_indices: Sequence[int] = (),
) -> torch.Tensor:
    """Images to edit, as the model expects them: (N, C, H, W) in [-1, 1].

    From image files (any format Pillow reads; they must already have the model's size and
    channel count, so nothing is silently resized or recoloured), or by index from the test
    split of the dataset the model was trained on.
    """
    channels, image_size = config.image_shape  # a latent model's: its decoded images'
    want = f"{image_size}x{image_size} with {channels} channel(s)"
    out = []
    for path in paths:
        try:
            with warnings.catch_warnings():  # the size is checked below, before any decoding
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                picture = Image.open(path)  # reads the header: size and mode, no pixels yet
            with picture:
                mode, size, bands = picture.mode, picture.size, len(picture.getbands())
                if mode in ("RGBA", "LA") and channels != bands:
                    bands -= 1  # the alpha channel is dropped
                if mode not in PIXEL_MODES:  # palette, 1-bit, 16-bit or float: no 8-bit pixels
                    raise ValueError(
                        f"image {path} has mode {mode}; expected 8-bit greyscale or RGB "
                        f"({', '.join(PIXEL_MODES)}), {want}"
                    )
                if size != (image_size, image_size) or bands != channels:  # before decoding:
                    # a small file may hold a huge image (13000x13000 PNGs of 0.7 MB)
                    raise ValueError(
                        f"image {path} is {size[0]}x{size[1]} with {bands} channel(s) "
                        f"(mode {mode}); this checkpoint expects {want}"
                    )
                picture.load()
                pixels = np.asarray(picture)
        except Image.DecompressionBombError as err:  # raised by the header, before decoding
            pixels = re.search(r"\((\d+) pixels\)", str(err))
            count = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
            raise ValueError(
                f"image {path} has {count}, more than Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} "
                f"allows; this checkpoint expects {want}"
            ) from None
        except (OSError, SyntaxError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]  # (H, W, 1)
        pixels = pixels[:, :, :channels]  # (H, W, C): without a dropped alpha channel
        out.append(torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    if data_indices:
        tc = config.train
        test = load_dataset(
            tc.data, data_dir=tc.data_dir, split="test", image_size=image_size, seed=tc.seed,
            download=False, vendors=tc.vendors,
        )  # fmt: skip
        for index in data_indices:
            if not 0 <= index < test.num_images:
                raise ValueError(
                    f"--from-data index {index} out of range; the {tc.data} test split has "
                    f"{test.num_images} images (0..{test.num_images - 1})"
                )
            out.append(torch.from_numpy(test.images[index]))
    if not out:
        raise ValueError("no input image: give --image PATH or --from-data INDEX")
    return torch.stack(out)  # (N, C, H, W)


def load_mask(path: str | os.PathLike[str], config: RunConfig) -> torch.Tensor:
    """A (1, 1, H, W) inpainting mask from an image file: white (> 50% grey) = regenerate."""
    size = config.model.image_size
    try:
        with Image.open(path) as picture:
            grey = np.asarray(picture.convert("L"), dtype=np.float32)  # (H, W)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err
    if grey.shape != (size, size):
        raise ValueError(
            f"mask {path} is {grey.shape[1]}x{grey.shape[0]}; this checkpoint expects {size}x{size}"
        )
    mask = torch.from_numpy((grey > 127.5).astype(np.float32))[None, None]
    if not mask.any():
        raise ValueError(f"mask {path} is all black: nothing to regenerate (white = regenerate)")
    return mask
