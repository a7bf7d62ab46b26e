"""Make ``fid_inception.json``: pytorch-fid's own FID-Inception, run on seeded weights and images.

difflab's ``models/inception.py`` is checked against this file in ``tests/test_inception.py``
without torchvision or pytorch-fid. To regenerate it, in a separate environment that has them
(on x86_64: ``pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid==0.3.0``):

    python tests/oracles/fid_inception.py

pytorch-fid builds its network and loads the weights through its own code (the download is
replaced by the seeded state dict below, loaded strictly, so every name and shape must be its
own), then runs on seeded images in [0, 1]. The file keeps pytorch-fid's parameter names and
shapes, the images' seed and shapes, and every 8th feature of each image with their norms; and
the FID that pytorch-fid's ``calculate_fid_given_paths`` (its command line) gives between two
seeded PNG folders (``seeded_folders``), for a check of the whole pipeline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "fid_inception.json"
WEIGHT_SEED, IMAGE_SEED = 0, 1
IMAGE_SHAPES = [(3, 3, 32, 32), (2, 3, 299, 299)]  # resized to 299, and already 299
EVERY = 8  # keep features 0, 8, 16, ...


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = WEIGHT_SEED) -> dict:
    """Weights that keep activations O(1) through the net: He-scaled convolutions, BN near identity.

    Drawn in sorted-name order from one NumPy generator, so any environment makes the same ones.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros(shape, dtype=torch.int64)
            continue
        if name.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif name.endswith("bn.weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith(("bn.bias", "running_mean")):
            value = 0.1 * rng.standard_normal(shape)
        else:  # fc
            value = 0.02 * rng.standard_normal(shape)
        out[name] = torch.from_numpy(value.astype(np.float32))
    return out


def seeded_images(seed: int = IMAGE_SEED) -> list[np.ndarray]:
    """Uniform [0, 1] float32 images of each of IMAGE_SHAPES."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.0, 1.0, shape).astype(np.float32) for shape in IMAGE_SHAPES]


FOLDER_SIZES = {"generated": 64, "real/test": 64, "real/train": 40}  # images of 32 px


def seeded_folders(root: Path, seed: int = IMAGE_SEED) -> None:
    """PNG folders for the whole-pipeline check: "generated" is pixel noise, "real" blocky noise
    (4x4 blocks), so that the two sets differ; pytorch-fid compares generated with real/test."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, n in FOLDER_SIZES.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        if name == "generated":
            pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        else:
            pixels = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2)
        for i, image in enumerate(pixels):
            Image.fromarray(image).save(folder / f"{i:03d}.png")


def main() -> None:
    import pytorch_fid
    import pytorch_fid.inception as pfi
    from torchvision.models.inception import Inception3

    torch.set_num_threads(2)
    # the shapes of pytorch-fid's network: torchvision's Inception3 with its FID blocks
    skeleton = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    for name, block in [
        ("Mixed_5b", pfi.FIDInceptionA(192, pool_features=32)),
        ("Mixed_5c", pfi.FIDInceptionA(256, pool_features=64)),
        ("Mixed_5d", pfi.FIDInceptionA(288, pool_features=64)),
        ("Mixed_6b", pfi.FIDInceptionC(768, channels_7x7=128)),
        ("Mixed_6c", pfi.FIDInceptionC(768, channels_7x7=160)),
        ("Mixed_6d", pfi.FIDInceptionC(768, channels_7x7=160)),
        ("Mixed_6e", pfi.FIDInceptionC(768, channels_7x7=192)),
        ("Mixed_7b", pfi.FIDInceptionE_1(1280)),
        ("Mixed_7c", pfi.FIDInceptionE_2(2048)),
    ]:
        setattr(skeleton, name, block)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    weights = seeded_state_dict(shapes)
    pfi.load_state_dict_from_url = lambda *a, **kw: weights  # no download: the seeded weights
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    batches = []
    with torch.no_grad():
        for images in seeded_images():
            features = model(torch.from_numpy(images))[0][:, :, 0, 0].double().numpy()
            batches.append(
                {
                    "shape": list(images.shape),
                    "features_every_8th": np.round(features[:, ::EVERY], 7).tolist(),
                    "norm": np.linalg.norm(features, axis=1).tolist(),
                    "mean": features.mean(axis=1).tolist(),
                }
            )
    # the whole pipeline, from PNG folders to FID, by pytorch-fid's own command-line function
    import tempfile

    from pytorch_fid.fid_score import calculate_fid_given_paths

    with tempfile.TemporaryDirectory() as tmp:
        seeded_folders(Path(tmp))
        paths = [str(Path(tmp) / "generated"), str(Path(tmp) / "real" / "test")]
        folder_fid = float(calculate_fid_given_paths(paths, 50, "cpu", 2048, num_workers=0))
    OUT.write_text(
        json.dumps(
            {
                "made_by": f"pytorch-fid {pytorch_fid.__version__}, torch {torch.__version__}",
                "weight_seed": WEIGHT_SEED,
                "image_seed": IMAGE_SEED,
                "every": EVERY,
                "state_dict_shapes": {k: list(v) for k, v in shapes.items()},
                "batches": batches,
                "folder_sizes": FOLDER_SIZES,
                "folder_fid": folder_fid,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {OUT} ({sys.getsizeof(OUT.read_text()) // 1024} KiB)")


if __name__ == "__main__":
    main()
