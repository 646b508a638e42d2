"""A numpy reference of the optimisers and learning-rate schedules of ``convdsl train``.

Written from the update rules that PyTorch documents for ``torch.optim.SGD``, ``Adam`` and
``AdamW`` (no amsgrad, no maximize), with their defaults, and from CLI.md's schedules.  Each
optimiser keeps its state per parameter name (what a checkpoint must save to resume exactly);
``step(params, grads, lr)`` returns the new parameters, float64.  ``lr`` is the rate of this step,
from :func:`lr_at`, as a scheduler sets a PyTorch optimiser's ``param_group["lr"]``.

``train_reference`` runs K steps of the whole of ``convdsl train`` on a model: batches in file
order (``--no-shuffle``) or in given per-epoch permutations, a last partial batch, epochs
restarting at the first sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from convdsl.core.model import ConcreteModel
from reference_grad import network_backward

Params = dict[str, np.ndarray]


@dataclass
class SGD:
    """``g += wd p``; with momentum ``b = g`` at the first step, ``b = mu b + (1 - dampening) g``
    after; ``g = g + mu b`` (Nesterov) or ``g = b``; ``p -= lr g``."""

    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float) -> Params:
        out = {}
        for name, p in params.items():
            p = np.asarray(p, np.float64)
            g = np.asarray(grads[name], np.float64)
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                s = self.state.setdefault(name, {})
                if "momentum_buffer" not in s:
                    s["momentum_buffer"] = g.copy()
                else:
                    s["momentum_buffer"] = self.momentum * s["momentum_buffer"] + (1 - self.dampening) * g
                g = g + self.momentum * s["momentum_buffer"] if self.nesterov else s["momentum_buffer"]
            out[name] = p - lr * g
        return out


@dataclass
class Adam:
    """``g += wd p`` (Adam's L2 penalty; AdamW instead shrinks ``p *= 1 - lr wd`` first);
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``; at step ``t`` (from 1)
    ``p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False  # AdamW
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float) -> Params:
        b1, b2 = self.betas
        out = {}
        for name, p in params.items():
            p = np.asarray(p, np.float64)
            g = np.asarray(grads[name], np.float64)
            if self.decoupled:
                p = p * (1 - lr * self.weight_decay)
            elif self.weight_decay:
                g = g + self.weight_decay * p
            s = self.state.setdefault(name, {"step": np.array(0), "exp_avg": np.zeros_like(p),
                                             "exp_avg_sq": np.zeros_like(p)})
            s["step"] = s["step"] + 1
            t = int(s["step"])
            s["exp_avg"] = b1 * s["exp_avg"] + (1 - b1) * g
            s["exp_avg_sq"] = b2 * s["exp_avg_sq"] + (1 - b2) * g * g
            m_hat = s["exp_avg"] / (1 - b1 ** t)
            v_hat = s["exp_avg_sq"] / (1 - b2 ** t)
            out[name] = p - lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return out


def AdamW(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2) -> Adam:
    """``torch.optim.AdamW``: Adam with decoupled weight decay, 0.01 by default."""
    return Adam(betas, eps, weight_decay, decoupled=True)


Optimizer = SGD | Adam


# ----------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Schedule:
    """A parsed ``--lr-schedule``: ``constant``, ``step:EPOCHS:GAMMA``, ``cosine``, ``inv:GAMMA:POWER``."""

    kind: str
    epochs: int = 0  # step
    gamma: float = 0.0  # step, inv
    power: float = 0.0  # inv


def parse_schedule(text: str) -> Schedule:
    kind, *args = text.split(":")
    try:
        if kind in ("constant", "cosine") and not args:
            return Schedule(kind)
        if kind == "step" and len(args) == 2 and int(args[0]) >= 1:
            return Schedule(kind, epochs=int(args[0]), gamma=float(args[1]))
        if kind == "inv" and len(args) == 2:
            return Schedule(kind, gamma=float(args[0]), power=float(args[1]))
    except ValueError:
        pass
    raise ValueError(f"not a learning-rate schedule: {text!r}")


def lr_at(schedule: Schedule, base_lr: float, *, step: int, epoch: int, total_steps: int) -> float:
    """The rate of optimiser step ``step`` (from 0), which falls in epoch ``epoch`` (from 0), of a
    run of ``total_steps`` steps.

    * ``step:E:G``: ``base * G^(epoch // E)``, changing at epoch boundaries (``StepLR`` stepped
      once per epoch);
    * ``cosine``: ``base * (1 + cos(pi * step / total_steps)) / 2``, per step, so that it would
      reach 0 after the last step (``CosineAnnealingLR(T_max=total_steps)`` stepped per step);
    * ``inv:G:P``: Caffe's ``base * (1 + G * iter)^(-P)`` with ``iter`` the step index.
    """
    if schedule.kind == "constant":
        return base_lr
    if schedule.kind == "step":
        return base_lr * schedule.gamma ** (epoch // schedule.epochs)
    if schedule.kind == "cosine":
        return base_lr * (1 + math.cos(math.pi * step / total_steps)) / 2
    if schedule.kind == "inv":
        return base_lr * (1 + schedule.gamma * step) ** (-schedule.power)
    raise AssertionError(schedule.kind)


# ----------------------------------------------------------------------------- training


def batches_in_order(n: int, batch: int, steps: int,
                     permutations: "Sequence[np.ndarray] | None" = None) -> list[tuple[int, np.ndarray]]:
    """``(epoch, sample indices)`` of each of ``steps`` steps: an epoch is ``ceil(n / batch)``
    steps, and step k of it takes positions ``[k*batch, min((k+1)*batch, n))`` of the epoch's
    order: the file's (``--no-shuffle``), or ``permutations[epoch]`` where given (the shuffle
    itself, a seeded permutation per epoch, is the implementation's to choose)."""
    per_epoch = -(-n // batch)
    epochs = -(-steps // per_epoch)
    if permutations is not None and len(permutations) < epochs:
        raise ValueError(f"{steps} steps take {epochs} epochs, but {len(permutations)} permutations are given")
    out = []
    for k in range(steps):
        epoch, i = divmod(k, per_epoch)
        order = np.arange(n) if permutations is None else np.asarray(permutations[epoch])
        out.append((epoch, order[i * batch:min((i + 1) * batch, n)]))
    return out


def train_reference(cm: ConcreteModel, weights: Mapping[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
                    *, batch: int, steps: int, optimizer: Optimizer, base_lr: float,
                    schedule: Schedule = Schedule("constant"),
                    masks: "Sequence[Mapping[str, np.ndarray]] | None" = None,
                    permutations: "Sequence[np.ndarray] | None" = None) -> tuple[Params, list[float]]:
    """``steps`` optimiser steps from ``weights`` on ``(images, labels)`` in file order (or in
    each epoch's given permutation): the final weights (float64) and each step's loss (the loss
    before that step's update).  ``masks[k]`` holds step k's dropout masks."""
    params = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    losses = []
    for k, (epoch, idx) in enumerate(batches_in_order(len(labels), batch, steps, permutations)):
        loss, grads = network_backward(cm, params, images[idx], labels[idx], masks[k] if masks else None)
        losses.append(loss)
        lr = lr_at(schedule, base_lr, step=k, epoch=epoch, total_steps=steps)
        params = optimizer.step(params, grads, lr)
    return params, losses
