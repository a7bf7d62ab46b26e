"""Optimisers for the NumPy backend, outside the layers: they update parameters in place from
the gradients the layers accumulated.

Each optimiser takes ``model.named_parameters()`` -- ``(name, param, grad)`` triples whose arrays
it keeps references to -- and follows ``torch.optim`` exactly (same defaults, same order of
operations), so one training run can be compared number for number with the PyTorch backend.
``lr`` is a plain attribute a learning-rate schedule may change between steps.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

NamedParams = Iterable[tuple[str, np.ndarray, np.ndarray]]


class Optimizer:
    """Holds the (name, param, grad) triples and per-parameter state arrays."""

    def __init__(self, named_params: NamedParams, lr: float) -> None:
        self.entries = list(named_params)
        if not self.entries:
            raise ValueError("optimiser got no parameters")
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        self.lr = lr
        self.step_count = 0
        self.state: dict[str, dict[str, np.ndarray]] = {name: {} for name, _, _ in self.entries}

    def step(self) -> None:
        """Update every parameter in place from its gradient."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, object]:
        """Step count, learning rate and copies of every state array, for resuming."""
        return {
            "step_count": self.step_count,
            "lr": self.lr,
            "state": {n: {k: v.copy() for k, v in s.items()} for n, s in self.state.items()},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what ``state_dict`` returned (parameter names must match)."""
        saved = state["state"]
        assert isinstance(saved, dict)
        if set(saved) != set(self.state):
            raise ValueError("optimiser state names do not match this optimiser's parameters")
        self.step_count = int(state["step_count"])  # type: ignore[call-overload]
        self.lr = float(state["lr"])  # type: ignore[arg-type]
        self.state = {n: {k: np.array(v) for k, v in s.items()} for n, s in saved.items()}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    g = grad + weight_decay * p;  buf = g (first step), else momentum * buf + g;
    p -= lr * (g + momentum * buf if nesterov else buf)  (plain p -= lr * g when momentum = 0).
    """

    def __init__(
        self,
        named_params: NamedParams,
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(named_params, lr)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def step(self) -> None:
        self.step_count += 1
        for name, param, grad in self.entries:
            g = grad + self.weight_decay * param if self.weight_decay else grad
            if self.momentum:
                state = self.state[name]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = np.array(g, copy=True)
                else:
                    state["momentum_buffer"] *= self.momentum
                    state["momentum_buffer"] += g
                buf = state["momentum_buffer"]
                g = g + self.momentum * buf if self.nesterov else buf
            param -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1) as ``torch.optim.Adam``; ``decoupled=True`` is AdamW.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    ``weight_decay`` adds weight_decay * p to g (L2, Adam) or, decoupled (Loshchilov & Hutter
    2019, AdamW), multiplies p by (1 - lr * weight_decay) before the update.
    """

    def __init__(
        self,
        named_params: NamedParams,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        super().__init__(named_params, lr)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.betas, self.eps = betas, eps
        self.weight_decay, self.decoupled = weight_decay, decoupled

    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1.0 - beta1**self.step_count
        bias_correction2 = 1.0 - beta2**self.step_count
        step_size = self.lr / bias_correction1
        for name, param, grad in self.entries:
            g = grad
            if self.weight_decay and self.decoupled:
                param *= 1.0 - self.lr * self.weight_decay
            elif self.weight_decay:
                g = grad + self.weight_decay * param
            state = self.state[name]
            if not state:
                state["exp_avg"] = np.zeros_like(param)
                state["exp_avg_sq"] = np.zeros_like(param)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m *= beta1
            m += (1.0 - beta1) * g  # first moment
            v *= beta2
            v += (1.0 - beta2) * (g * g)  # second moment
            update = np.sqrt(v)  # then, in place: m / (sqrt(v) / sqrt(bc2) + eps) * step_size
            update /= np.sqrt(bias_correction2)
            update += self.eps
            np.divide(m, update, out=update)
            update *= step_size
            param -= update


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW`` (default weight_decay 0.01)."""

    def __init__(
        self,
        named_params: NamedParams,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(named_params, lr, betas, eps, weight_decay, decoupled=True)
