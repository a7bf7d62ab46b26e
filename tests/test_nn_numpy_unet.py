"""NumpyUNet against difflab.models.unet.UNet: same parameter names and shapes, same outputs
(float32, 1e-5 absolute), same gradients for every parameter (float64; 1e-6 relative is the
requirement, ~1e-14 is observed, 1e-9 is asserted), and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import difflab.models.unet as torch_unet
from difflab.config import ModelConfig
from difflab.diffusion import diffusion_loss
from difflab.models.unet import UNet
from difflab.nn_numpy import Adam, NumpyUNet, loss_and_grads, train_step
from difflab.nn_numpy import functional as F
from difflab.nn_numpy.gradcheck import relative_error
from difflab.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**overrides) -> ModelConfig:
    fields = dict(
        image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_levels=(), mid_attention=False, norm_groups=4, num_classes=0,
    )  # fmt: skip
    fields.update(overrides)
    return ModelConfig(**fields)


CONFIGS = {
    "plain": tiny(),
    "mid-attention+labels": tiny(mid_attention=True, num_classes=3),
    "three-levels+2-blocks": tiny(channel_mults=(1, 2, 2), num_res_blocks=2, in_channels=3),
    "attention-everywhere+labels": tiny(
        channel_mults=(1, 2, 2), attention_levels=(0, 1, 2), mid_attention=True, num_classes=4
    ),
    "three-levels+rgb+labels": tiny(
        channel_mults=(1, 2, 2), num_res_blocks=2, in_channels=3, mid_attention=True, num_classes=2
    ),
}


def pair(config: ModelConfig, dtype=np.float32) -> tuple[UNet, NumpyUNet]:
    """A torch UNet and a NumpyUNet holding the same (torch-initialised) weights."""
    torch.manual_seed(0)
    reference = UNet(config)
    model = NumpyUNet(config, seed=1)
    model.load_state_dict({k: v.numpy() for k, v in reference.state_dict().items()})
    if dtype == np.float64:
        reference.double()
        model.to_dtype(np.float64)
    return reference, model


def inputs(config: ModelConfig, batch: int = 2, dtype=np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (batch, config.in_channels, config.image_size, config.image_size)
    x = rng.standard_normal(shape).astype(dtype)
    t = rng.integers(0, 1000, batch)
    y = rng.integers(0, config.num_classes, batch) if config.num_classes else None
    return x, t, y


def as_torch(t, y):
    return torch.from_numpy(t), None if y is None else torch.from_numpy(y)


@pytest.fixture
def float64_torch_embedding(monkeypatch):
    """The torch U-Net builds its sinusoidal embedding in float32 whatever the model's dtype, so a
    .double() model fails in time_in. Feed it the NumPy backend's embedding in float64 instead:
    both networks then see identical inputs, and gradients agree to rounding error (the two
    float32 sinusoids differ by ~1 ulp; test_timestep_embedding_matches_torch covers that)."""

    def embedding64(t, dim, max_period=10000.0):
        return torch.from_numpy(F.timestep_embedding(t.numpy(), dim, max_period)).double()

    monkeypatch.setattr(torch_unet, "timestep_embedding", embedding64)


# ---------------------------------------------------------------------------------------------
# one architecture, two backends
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_state_dict_names_and_shapes_match_torch(config):
    expected = {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}
    model = NumpyUNet(config)
    assert list(model.state_dict()) == list(expected)  # same names, same order
    assert {k: v.shape for k, v in model.state_dict().items()} == expected
    assert model.num_parameters() == sum(int(np.prod(s)) for s in expected.values())


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_forward_matches_torch_float32(config):
    reference, model = pair(config)
    x, t, y = inputs(config)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x), *as_torch(t, y)).numpy()
    out = model.forward(x, t, y)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["mid-attention+labels", "three-levels+2-blocks", "attention-everywhere+labels"]
)
def test_every_gradient_matches_torch_autograd_float64(name, float64_torch_embedding):
    config = CONFIGS[name]
    reference, model = pair(config, np.float64)
    x, t, y = inputs(config, dtype=np.float64)
    dout = np.random.default_rng(7).standard_normal(x.shape)  # random upstream gradient

    x_torch = torch.from_numpy(x.copy()).requires_grad_()
    reference(x_torch, *as_torch(t, y)).backward(torch.from_numpy(dout))
    model.zero_grad()
    model.forward(x, t, y)
    dx = model.backward(dout)

    grads = model.gradients()
    errors = {n: relative_error(grads[n], p.grad.numpy()) for n, p in reference.named_parameters()}
    assert set(errors) == set(grads)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-9, (worst, errors[worst])
    assert relative_error(dx, x_torch.grad.numpy()) < 1e-9


def test_numpy_weights_load_into_torch():
    config = CONFIGS["mid-attention+labels"]
    model = NumpyUNet(config, seed=3)
    reference = UNet(config)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x, t, y = inputs(config)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x), *as_torch(t, y)).numpy()
    np.testing.assert_allclose(model(x, t, y), expected, atol=1e-5)


def test_null_label_and_inference_call():
    config = CONFIGS["mid-attention+labels"]
    model = NumpyUNet(config)
    x, t, _ = inputs(config)
    null = np.full(2, config.num_classes)
    np.testing.assert_array_equal(model(x, t), model.forward(x, t, null))
    assert not np.array_equal(model(x, t), model(x, t, np.array([0, 1])))
    # __call__ is inference: nothing cached, so there is nothing to back-propagate
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.ones_like(x))


def test_seeded_initialisation_is_reproducible():
    a, b, c = NumpyUNet(tiny(), seed=0), NumpyUNet(tiny(), seed=0), NumpyUNet(tiny(), seed=1)
    for (name, pa, _), (_, pb, _), (_, pc, _) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        np.testing.assert_array_equal(pa, pb)
        if name.endswith("conv1.weight"):
            assert not np.array_equal(pa, pc)


def test_load_state_dict_names_bad_keys():
    model = NumpyUNet(tiny())
    state = model.state_dict()
    state.pop("conv_in.weight")
    state["extra.weight"] = np.zeros(3)
    state["conv_out.bias"] = np.zeros(5)
    with pytest.raises(ValueError) as err:
        model.load_state_dict(state)
    message = str(err.value)
    assert "missing keys: conv_in.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "conv_out.bias (5,) (expected (1,))" in message


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="dropout"):
        NumpyUNet(tiny(dropout=0.1))
    model = NumpyUNet(tiny())
    with pytest.raises(ValueError, match="shape"):
        model(np.zeros((2, 3, 8, 8), np.float32), np.array([1, 2]))
    with pytest.raises(ValueError, match="multiples of 2"):
        model(np.zeros((2, 1, 7, 7), np.float32), np.array([1, 2]))
    with pytest.raises(ValueError, match="t must have shape"):
        model(np.zeros((2, 1, 8, 8), np.float32), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="timesteps t must be numbers"):
        model(np.zeros((2, 1, 8, 8), np.float32), np.array(["a", "b"]))
    # a flow network's 1000 t is fractional: taken, and embedded as the PyTorch U-Net embeds it
    out = model(np.zeros((2, 1, 8, 8), np.float32), np.array([0.5, 2.0]))
    assert out.shape == (2, 1, 8, 8) and np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prediction", "gamma"), [("eps", None), ("v", 5.0)])
def test_loss_and_grads_match_torch_diffusion_loss(prediction, gamma, float64_torch_embedding):
    config = CONFIGS["mid-attention+labels"]
    reference, model = pair(config, np.float64)
    schedule = make_schedule("cosine", 100)
    x0, t, y = inputs(config, batch=3, dtype=np.float64)
    t = t % 100
    eps = np.random.default_rng(9).standard_normal(x0.shape)
    t_torch, y_torch = as_torch(t, y)

    expected = diffusion_loss(
        lambda x_t, tt: reference(x_t, tt, y_torch),
        torch.from_numpy(x0),
        t_torch,
        torch.from_numpy(eps),
        schedule,
        prediction,
        gamma,
    )
    expected.mean().backward()
    model.zero_grad()
    per_sample = loss_and_grads(model, x0, t, eps, schedule, prediction, y, gamma)
    np.testing.assert_allclose(per_sample, expected.detach().numpy(), rtol=1e-6)
    grads = model.gradients()
    for name, param in reference.named_parameters():
        assert relative_error(grads[name], param.grad.numpy()) < 1e-5, name


def test_training_steps_reduce_the_loss():
    config = tiny(base_channels=8, norm_groups=4)
    model = NumpyUNet(config, seed=0)
    optimizer = Adam(model.named_parameters(), lr=3e-3)
    schedule = make_schedule("linear", 50)
    rng = np.random.default_rng(0)
    x0 = np.repeat(np.linspace(-1, 1, 8, dtype=np.float32)[None, None, None, :], 8, axis=2)
    x0 = np.repeat(x0, 4, axis=0)  # (4, 1, 8, 8): one fixed gradient image
    t, eps = rng.integers(0, 50, 4), rng.standard_normal(x0.shape).astype(np.float32)
    losses = [train_step(model, optimizer, x0, t, eps, schedule, grad_clip=1.0) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(np.isfinite(losses))


def test_numpy_model_drives_the_shared_samplers():
    from difflab.samplers import make_denoiser, sample_ddim

    config = CONFIGS["plain"]
    reference, model = pair(config)
    schedule = make_schedule("linear", 100)
    x = np.random.default_rng(4).standard_normal((2, 1, 8, 8)).astype(np.float32)
    out = sample_ddim(make_denoiser(model, schedule), x.copy(), schedule, steps=4)
    with torch.no_grad():
        expected = sample_ddim(
            make_denoiser(reference, schedule), torch.from_numpy(x), schedule, steps=4
        ).numpy()
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, expected, atol=1e-4)
