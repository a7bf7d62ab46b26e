"""The from-scratch NumPy backend: every layer's forward and backward by hand, no autograd.

``functional``  stateless forward / backward pairs (the math)
``layers``      layers owning parameters and gradients (the layer contract is in its docstring)
``unet``        ``NumpyUNet``, the same graph and parameter names as ``difflab.models.unet.UNet``
``optim``       SGD, Adam, AdamW, matching ``torch.optim``
``training``    the diffusion loss with its gradients, gradient clipping, one training step
``gradcheck``   finite-difference gradient checks
"""

from difflab.nn_numpy.optim import SGD, Adam, AdamW
from difflab.nn_numpy.training import clip_grad_norm, loss_and_grads, train_step
from difflab.nn_numpy.unet import NumpyUNet

__all__ = ["SGD", "Adam", "AdamW", "NumpyUNet", "clip_grad_norm", "loss_and_grads", "train_step"]
