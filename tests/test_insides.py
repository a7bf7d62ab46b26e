"""The pictures of the U-Net's insides show the tensors the network really computes: hooks capture
the forward pass's own outputs, the attention weights reproduce the layer's output, and the
embedding plots match closed forms."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from difflab import insides
from difflab.checkpoint import save_checkpoint
from difflab.cli import main
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.models.unet import UNet
from difflab.schedules import make_schedule
from test_cli_generation import TINY


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNet(ModelConfig(image_size=16, in_channels=1, base_channels=8, channel_mults=(1, 2),
                            num_res_blocks=1, num_classes=3)).eval()  # fmt: skip


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 16, 16, generator=g), [5, 300, 900]


def test_feature_maps_are_the_forward_pass_own_outputs(model):
    x, t = _batch()
    levels = insides.feature_maps(model, x, t)
    assert [lv.name for lv in levels] == ["down 16x16", "down 8x8", "mid 8x8", "up 8x8", "up 16x16"]
    assert [lv.features.shape[1] for lv in levels] == [8, 16, 16, 16, 8]
    # The last level is what the output head reads: it gives back the network's output.
    with torch.no_grad():
        head = model.conv_out(F.silu(model.norm_out(levels[-1].features)))
        torch.testing.assert_close(head, model(x, torch.tensor(t)))
    assert all(lv.features.shape[0] == 3 for lv in levels)


def test_attention_weights_reproduce_the_attention_layer(model):
    x, t = _batch()
    weights = insides.bottleneck_attention(model, x, t)  # (3, 64, 64)
    assert weights.shape == (3, 64, 64)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 64))
    seen = {}
    attn = model.mid1.attn
    hook = attn.register_forward_hook(lambda _m, i, o: seen.update(x=i[0], out=o))
    with torch.no_grad():
        model(x, torch.tensor(t))
        hook.remove()
        b, c, h, w = seen["x"].shape
        v = attn.qkv(attn.norm(seen["x"])).reshape(b, 3, c, h * w)[:, 2].transpose(1, 2)
        mixed = (weights @ v).transpose(1, 2).reshape(b, c, h, w)  # A v, (B, C, h, w)
        torch.testing.assert_close(seen["x"] + attn.proj(mixed), seen["out"], rtol=1e-4, atol=1e-5)


def test_sinusoid_similarity_has_its_closed_form(model):
    # Each frequency contributes a (sin, cos) pair of unit norm, so the cosine similarity of the
    # embeddings of t and s is mean_i cos((t - s) w_i), w_i = 10000^(-i / half).
    t, sinusoid, learned = insides.time_embedding_similarity(model, 1000, points=20)
    half = model.config.base_channels // 2
    w = 10000.0 ** (-np.arange(half) / half)
    expected = np.cos((t[:, None, None] - t[None, :, None]) * w).mean(-1)
    np.testing.assert_allclose(sinusoid, expected, atol=2e-5)
    for matrix in (sinusoid, learned):
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-12)
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
    assert t[0] == 0 and t[-1] == 999


def test_principal_projection_keeps_a_plane_exactly():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(7, 2)) * [3.0, 1.0]
    basis, _ = np.linalg.qr(rng.normal(size=(16, 2)))  # an orthonormal 2-D plane in 16-D
    points, share = insides.principal_projection(plane @ basis.T + 5.0)
    pairwise = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.testing.assert_allclose(pairwise, np.linalg.norm(plane[:, None] - plane[None], axis=-1))
    np.testing.assert_allclose(share.sum(), 1.0)
    assert share[0] > share[1]


def test_class_projection_has_every_label_and_the_null(model):
    points, share = insides.class_embedding_projection(model)
    assert points.shape == (4, 2) and 0 < share[1] <= share[0] <= 1


def test_query_pixels_map_onto_the_bottleneck():
    assert insides.query_index(0, 0, 28, 7) == 0
    assert insides.query_index(27, 27, 28, 7) == 48
    assert insides.query_index(14, 3, 28, 7) == 3 * 7 + 0
    with pytest.raises(ValueError, match=r"query pixel \(28, 0\) is outside the 28x28 image"):
        insides.query_index(28, 0, 28, 7)


def test_check_timesteps_names_the_range():
    with pytest.raises(ValueError, match=r"must lie in 0..49"):
        insides.check_timesteps([10, 50], make_schedule("linear", 50))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    assert main(["train", *TINY, "--conditional", "--out", str(root / "cond")]) == 0
    # No attention in the middle block, no classes: initial weights are enough to draw.
    model_cfg = ModelConfig(image_size=16, in_channels=3, base_channels=8, channel_mults=(1, 2),
                            num_res_blocks=1, mid_attention=False)  # fmt: skip
    config = RunConfig(model=model_cfg, diffusion=DiffusionConfig(timesteps=50),
                       train=TrainConfig(data="shapes"))  # fmt: skip
    save_checkpoint(root / "flat/model_final.safetensors", config, UNet(model_cfg).state_dict())
    return root


def _decodes(path):
    with Image.open(path) as img:
        img.load()
        return img.size


def test_inspect_writes_every_picture(runs, tmp_path, capsys):
    ckpt = runs / "cond/model_final.safetensors"
    out = tmp_path / "cond"
    args = ["inspect", "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--query", "8,8", "--query", "2,13", "--class-label", "1"]) == 0
    names = ["feature_maps.png", "attention.png", "time_embeddings.png", "class_embeddings.png"]
    for name in names:
        width, height = _decodes(out / name)
        assert width > 200 and height > 200
    assert capsys.readouterr().out.count("wrote ") == 4


def test_inspect_without_attention_or_classes(runs, tmp_path, capsys):
    ckpt = runs / "flat/model_final.safetensors"
    out = tmp_path / "flat"
    assert main(["inspect", "--checkpoint", str(ckpt), "--out", str(out), "--t", "0,25,49"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["feature_maps.png", "time_embeddings.png"]
    assert "no attention.png" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--t", "10,50"], "timesteps [10, 50] must lie in 0..49"),
        (["--query", "3"], "--query (3,) must be two numbers, ROW,COL"),
        (["--query", "3,16"], "query pixel (3, 16) is outside the 16x16 image"),
        (["--from-data", "9999"], "--from-data index 9999 out of range"),
    ],
)
def test_inspect_bad_input_is_one_line(runs, tmp_path, capsys, flags, message):
    ckpt = runs / "cond/model_final.safetensors"
    out = tmp_path / "bad"
    assert main(["inspect", "--checkpoint", str(ckpt), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
