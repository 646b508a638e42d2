"""A compiled training step, called from Python (the internal API later work builds
``convdsl train`` on).

``TrainingStep(cm, weights, lr=..., momentum=..., weight_decay=...)`` compiles ``cm``'s training
step (:mod:`convdsl.backend.train`) and owns its state arena: the parameters (copied in from
``weights``, PyTorch layouts and weights-file names), their gradients and SGD momentum buffers.
``step(x, labels)`` runs forward, loss, backward and the update in place on one batch and
returns the mean loss; ``gradients(x, labels)`` returns the loss and every parameter's gradient
without touching the state (it runs the same code on a copy of the arena with a zero rate);
``weights()`` gives the current parameters.  Single-threaded.
"""

from __future__ import annotations

import ctypes
from typing import Mapping

import numpy as np

from ..backend.lower import aligned_zeros
from ..backend.schedule import Schedule
from ..backend.train import HYPER, TrainBuild, TrainingError, build_training, format_train_plan
from ..core.model import ConcreteModel
from .errors import BoundaryError

__all__ = ["TrainingStep", "TrainingError"]

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class TrainingStep:
    """The compiled training step of ``cm`` with SGD (PyTorch's rule, no dampening or Nesterov)."""

    def __init__(self, cm: ConcreteModel, weights: Mapping[str, np.ndarray], *, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, schedule: Schedule | None = None) -> None:
        self.cm = cm
        self.build: TrainBuild = build_training(cm, schedule or Schedule.for_host())
        self.plan = self.build.lowered.plan
        self._fn = _ENTRY(self.build.jit.address(self.build.entry))
        self.state = aligned_zeros(self.plan.state_size)
        self.scratch = aligned_zeros(max(self.build.lowered.program.scratch_size, 1))
        for p in self.plan.params:
            if p.name not in weights:
                raise BoundaryError(f"the weights have no {p.name} (shape {list(p.shape)})")
            a = np.asarray(weights[p.name])
            if a.shape != p.shape:
                raise BoundaryError(f"{p.name} has shape {list(a.shape)}, the model needs {list(p.shape)}")
            self.state[p.value:p.value + p.size] = a.reshape(-1)
        self.set_hyper(lr=lr, momentum=momentum, weight_decay=weight_decay)

    def set_hyper(self, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        """The rates the next steps use (read by the native code at each step)."""
        if not (lr >= 0 and 0 <= momentum and weight_decay >= 0):
            raise BoundaryError(f"lr, momentum and weight decay must be >= 0, not {lr}, {momentum}, {weight_decay}")
        h = self.plan.hyper_offset
        self.state[h:h + len(HYPER)] = (lr, momentum, weight_decay)

    def plan_text(self) -> str:
        return format_train_plan(self.plan)

    def _batch(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The input rows the native code reads: each image's features, then its one-hot label."""
        F, C = self.plan.features, self.plan.classes
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim < 1 or x.shape[1:] != tuple(self.cm.input_shape) or x.shape[0] < 1:
            raise BoundaryError(f"the batch must be float32 [N, {', '.join(map(str, self.cm.input_shape))}] "
                                f"with N >= 1, not {x.dtype} {list(x.shape)}")
        labels = np.asarray(labels)
        n = x.shape[0]
        if (labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer)
                or (n and (labels.min() < 0 or labels.max() >= C))):
            raise BoundaryError(f"the labels must be {n} integers in 0 .. {C - 1}")
        rows = np.zeros((n, F + C), np.float32)
        rows[:, :F] = x.reshape(n, F)
        rows[np.arange(n), F + labels] = 1.0
        return rows

    def _run(self, rows: np.ndarray, state: np.ndarray) -> float:
        n = rows.shape[0]
        losses = np.zeros(n, np.float32)
        self._fn(rows.ctypes.data, losses.ctypes.data, state.ctypes.data, self.scratch.ctypes.data, n)
        return float(state[self.plan.loss_offset])

    def step(self, x: np.ndarray, labels: np.ndarray) -> float:
        """One SGD step on the batch ``(x, labels)``, in place; the batch's mean loss (before the step)."""
        return self._run(self._batch(x, labels), self.state)

    def gradients(self, x: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """``(loss, gradients)`` at the current weights, under the weights-file names; the state
        is not changed."""
        state = self.state.copy()
        h = self.plan.hyper_offset
        state[h:h + len(HYPER)] = 0.0
        loss = self._run(self._batch(x, labels), state)
        return loss, {p.name: state[p.grad:p.grad + p.size].reshape(p.shape).copy() for p in self.plan.params}

    def weights(self) -> dict[str, np.ndarray]:
        """The current parameters (copies), PyTorch layouts."""
        return {p.name: self.state[p.value:p.value + p.size].reshape(p.shape).copy() for p in self.plan.params}
