"""NumPy backend layers: finite-difference gradient checks (float64, random upstream gradient),
forward parity with PyTorch's functional ops, and optimisers against torch.optim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from difflab.models.unet import SelfAttention as TorchSelfAttention
from difflab.models.unet import timestep_embedding as torch_timestep_embedding
from difflab.nn_numpy import functional as F
from difflab.nn_numpy.gradcheck import check_layer, numerical_gradient, relative_error
from difflab.nn_numpy.layers import (
    Concat,
    Conv2d,
    ConvTranspose2d,
    Embedding,
    GroupNorm,
    Layer,
    Linear,
    MSELoss,
    ReLU,
    SelfAttention,
    SiLU,
    UpsampleNearest,
)
from difflab.nn_numpy.optim import SGD, Adam, AdamW
from difflab.nn_numpy.training import clip_grad_norm

TOL = 1e-6  # relative error allowed between backward and finite differences (float64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_gradcheck(layer: Layer, x: np.ndarray) -> None:
    errors = check_layer(layer, x, rng(1))
    expected = ({"x"} if np.issubdtype(x.dtype, np.floating) else set()) | {
        name for name, _, _ in layer.named_parameters()
    }
    assert set(errors) == expected
    assert max(errors.values()) < TOL, errors


# ---------------------------------------------------------------------------------------------
# gradient checks, one per layer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "k", "stride", "padding", "size"),
    [
        (3, 4, 3, 1, 1, 5),  # the U-Net's 3x3 "same" conv
        (3, 4, 3, 2, 1, 6),  # Downsample: stride 2
        (2, 3, 3, 2, 0, 7),  # stride 2, no padding, odd size
        (3, 5, 1, 1, 0, 4),  # 1x1 (skip, qkv, proj)
        (2, 2, 2, 1, 2, 3),  # even kernel, padding larger than needed
    ],
)
def test_conv2d_gradients(in_ch, out_ch, k, stride, padding, size):
    layer = Conv2d(in_ch, out_ch, k, stride, padding, dtype=np.float64, rng=rng())
    assert_gradcheck(layer, rng(2).standard_normal((2, in_ch, size, size)))


def test_conv2d_without_bias_gradients():
    layer = Conv2d(2, 3, 3, padding=1, bias=False, dtype=np.float64, rng=rng())
    assert set(layer.params) == {"weight"}
    assert_gradcheck(layer, rng(2).standard_normal((2, 2, 4, 4)))


@pytest.mark.parametrize(
    ("stride", "padding", "output_padding"), [(1, 0, 0), (2, 1, 1), (2, 0, 0), (3, 1, 2)]
)
def test_conv_transpose2d_gradients(stride, padding, output_padding):
    layer = ConvTranspose2d(3, 2, 3, stride, padding, output_padding, dtype=np.float64, rng=rng())
    assert_gradcheck(layer, rng(2).standard_normal((2, 3, 3, 4)))


def test_group_norm_gradients():
    layer = GroupNorm(2, 6, dtype=np.float64)
    layer.params["weight"][:] = rng(3).standard_normal(6)  # not the trivial 1 / 0 init
    layer.params["bias"][:] = rng(4).standard_normal(6)
    assert_gradcheck(layer, rng(2).standard_normal((2, 6, 3, 3)) * 3 + 1)


def test_activation_gradients():
    x = rng(2).standard_normal((3, 4, 2, 2)) * 3
    assert_gradcheck(SiLU(), x)
    x_relu = np.where(np.abs(x) < 0.05, 0.5, x)  # keep away from the kink at 0
    assert_gradcheck(ReLU(), x_relu)


def test_linear_gradients():
    assert_gradcheck(Linear(5, 3, dtype=np.float64, rng=rng()), rng(2).standard_normal((4, 5)))


def test_embedding_gradients_with_repeated_indices():
    layer = Embedding(4, 3, dtype=np.float64, rng=rng())
    assert_gradcheck(layer, np.array([0, 3, 3, 1, 3]))


def test_upsample_gradients():
    assert_gradcheck(UpsampleNearest(2), rng(2).standard_normal((2, 3, 3, 2)))


def test_concat_gradients():
    layer = Concat()
    a, b = rng(2).standard_normal((2, 3, 2, 2)), rng(3).standard_normal((2, 1, 2, 2))
    y = layer.forward([a, b])
    dy = rng(4).standard_normal(y.shape)
    da, db = layer.backward(dy)
    assert relative_error(da, numerical_gradient(lambda: layer.forward([a, b]), a, dy)) < TOL
    assert relative_error(db, numerical_gradient(lambda: layer.forward([a, b]), b, dy)) < TOL


def test_attention_gradients():
    layer = SelfAttention(4, 2, dtype=np.float64, rng=rng())
    assert_gradcheck(layer, rng(2).standard_normal((2, 4, 3, 2)))


def test_attention_function_gradients():
    q, k, v = (rng(i).standard_normal((2, 5, 3)) for i in range(3))
    out, cache = F.attention_forward(q, k, v)
    dout = rng(4).standard_normal(out.shape)
    grads = F.attention_backward(dout, cache)
    for array, grad in zip((q, k, v), grads, strict=True):
        numeric = numerical_gradient(lambda: F.attention_forward(q, k, v)[0], array, dout)
        assert relative_error(grad, numeric) < TOL


def test_mse_gradients():
    loss = MSELoss()
    pred, target = rng(2).standard_normal((3, 2, 2, 2)), rng(3).standard_normal((3, 2, 2, 2))
    per_sample = loss.forward(pred, target)
    assert per_sample.shape == (3,)
    dloss = rng(4).standard_normal(3)
    dpred = loss.backward(dloss)
    numeric = numerical_gradient(lambda: loss.forward(pred, target, cache=False), pred, dloss)
    assert relative_error(dpred, numeric) < TOL
    _, dtarget = F.mse_backward(dloss, F.mse_forward(pred, target)[1])
    numeric = numerical_gradient(lambda: F.mse_forward(pred, target)[0], target, dloss)
    assert relative_error(dtarget, numeric) < TOL
    # default upstream gradient: that of the batch mean
    loss.forward(pred, target)
    np.testing.assert_allclose(loss.backward(), 2 * (pred - target) / (3 * 8))


def test_gradcheck_catches_a_wrong_backward():
    class WrongSiLU(SiLU):
        def backward(self, dy):
            _, s = self._take_cache()
            return dy * s  # forgets the x * s * (1 - s) term

    errors = check_layer(WrongSiLU(), rng(2).standard_normal((2, 3)))
    assert errors["x"] > 1e-2


def test_backward_accumulates_parameter_gradients():
    layer = Linear(3, 2, dtype=np.float64, rng=rng())
    x, dy = rng(2).standard_normal((4, 3)), rng(3).standard_normal((4, 2))
    layer.forward(x)
    layer.backward(dy)
    once = layer.grads["weight"].copy()
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["weight"], 2 * once)
    layer.zero_grad()
    assert not layer.grads["weight"].any()


def test_backward_without_cached_forward_is_refused():
    layer = Conv2d(1, 1, 3, padding=1)
    layer.forward(np.zeros((1, 1, 4, 4), np.float32), cache=False)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros((1, 1, 4, 4), np.float32))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="indices"):
        Embedding(3, 2).forward(np.array([0, 3]))
    with pytest.raises(ValueError, match="float64"):
        numerical_gradient(lambda: np.zeros(1), np.zeros(1, np.float32), np.zeros(1))
    with pytest.raises(ValueError, match="output_padding"):
        ConvTranspose2d(1, 1, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="groups"):
        GroupNorm(3, 8)


# ---------------------------------------------------------------------------------------------
# forward parity with PyTorch
# ---------------------------------------------------------------------------------------------


def test_im2col_and_col2im_are_adjoint():
    x = rng(2).standard_normal((2, 3, 5, 6))
    cols, ho, wo = F.im2col(x, 3, 3, 2, 1)
    c = rng(3).standard_normal(cols.shape)
    lhs = np.vdot(cols, c)
    rhs = np.vdot(x, F.col2im(c, x.shape, 3, 3, 2, 1, ho, wo))
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


@pytest.mark.parametrize(("k", "stride", "padding"), [(3, 1, 1), (3, 2, 1), (1, 1, 0), (4, 2, 0)])
def test_conv2d_matches_torch(k, stride, padding):
    layer = Conv2d(3, 5, k, stride, padding, rng=rng())
    x = rng(2).standard_normal((2, 3, 8, 7)).astype(np.float32)
    expected = TF.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(layer.params["weight"]),
        torch.from_numpy(layer.params["bias"]),
        stride=stride,
        padding=padding,
    )
    np.testing.assert_allclose(layer.forward(x), expected.numpy(), atol=1e-5)


def test_conv_transpose2d_matches_torch():
    layer = ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, rng=rng())
    x = rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = TF.conv_transpose2d(
        torch.from_numpy(x),
        torch.from_numpy(layer.params["weight"]),
        torch.from_numpy(layer.params["bias"]),
        stride=2,
        padding=1,
        output_padding=1,
    )
    y = layer.forward(x)
    assert y.shape == (2, 4, 8, 10)
    np.testing.assert_allclose(y, expected.numpy(), atol=1e-5)


def test_group_norm_upsample_activations_match_torch():
    x = rng(2).standard_normal((2, 6, 4, 4)).astype(np.float32) * 2 + 0.5
    norm = GroupNorm(3, 6)
    norm.params["weight"][:] = rng(3).standard_normal(6)
    expected = TF.group_norm(
        torch.from_numpy(x), 3, torch.from_numpy(norm.params["weight"]), torch.zeros(6)
    )
    np.testing.assert_allclose(norm.forward(x), expected.numpy(), atol=1e-5)
    expected_up = TF.interpolate(torch.from_numpy(x), scale_factor=2.0, mode="nearest")
    np.testing.assert_array_equal(UpsampleNearest(2).forward(x), expected_up.numpy())
    np.testing.assert_allclose(SiLU().forward(x), TF.silu(torch.from_numpy(x)).numpy(), atol=1e-6)
    assert np.isfinite(SiLU().forward(np.array([-1000.0, 1000.0], np.float32))).all()


def test_timestep_embedding_matches_torch():
    t = np.array([0, 1, 17, 500, 999])
    expected = torch_timestep_embedding(torch.from_numpy(t), 32).numpy()
    np.testing.assert_allclose(F.timestep_embedding(t, 32), expected, atol=2e-6)


def test_self_attention_matches_torch_module():
    torch.manual_seed(0)
    reference = TorchSelfAttention(8, 4)
    layer = SelfAttention(8, 4)
    for name, param, _ in layer.named_parameters():
        param[...] = reference.state_dict()[name].numpy()
    x = rng(2).standard_normal((2, 8, 4, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(layer.forward(x), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# optimisers and clipping against torch
# ---------------------------------------------------------------------------------------------


def run_both(make_numpy, make_torch, steps: int = 4) -> None:
    start = rng(5).standard_normal((3, 4))
    grads = [rng(10 + i).standard_normal((3, 4)) for i in range(steps)]
    param, grad = start.copy(), np.zeros_like(start)
    opt = make_numpy([("w", param, grad)])
    tparam = torch.nn.Parameter(torch.from_numpy(start.copy()))
    topt = make_torch([tparam])
    for g in grads:
        grad[...] = g
        opt.step()
        tparam.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(param, tparam.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_adam_matches_torch():
    run_both(lambda p: Adam(p, lr=0.1), lambda p: torch.optim.Adam(p, lr=0.1))
    run_both(
        lambda p: Adam(p, lr=0.05, betas=(0.8, 0.99), weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), weight_decay=0.1),
    )


def test_adamw_matches_torch():
    run_both(lambda p: AdamW(p, lr=0.1), lambda p: torch.optim.AdamW(p, lr=0.1))


def test_sgd_matches_torch():
    run_both(lambda p: SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1))
    run_both(
        lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    )
    run_both(
        lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    )


def test_optimiser_state_round_trip():
    param, grad = np.ones(3), np.full(3, 0.5)
    opt = Adam([("w", param, grad)], lr=0.1)
    opt.step()
    saved = opt.state_dict()
    opt.step()
    after_two = param.copy()
    param[...] = 1.0
    opt = Adam([("w", param, grad)], lr=0.1)
    opt.step()
    opt.load_state_dict(saved)
    opt.step()
    np.testing.assert_allclose(param, after_two)


def test_clip_grad_norm_matches_torch():
    grads = [rng(i).standard_normal(s) for i, s in enumerate([(3, 4), (5,), (2, 2, 2)])]
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g.copy())
    expected_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(float(expected_norm))
    for p, g in zip(params, grads, strict=True):
        np.testing.assert_allclose(g, p.grad.numpy())
