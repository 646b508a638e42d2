#!/usr/bin/env python3
"""Train D2L's LeNet (two variants) on the real digits and save .npz weights.

Training data: the training part of the split defined in ``make_digits.py``
(scikit-learn ``load_digits`` resized to 28x28, 80% of each class), regenerated
here with the same function.  The held-out 20% (== ``convdsl/data/digits.npz``)
is only used to report accuracy.  Input normalisation: ``uint8 / 255`` as
float32, exactly what the runtime feeds the network.

Outputs (float32 arrays, PyTorch layouts, written by ``convdsl.save_weights``):
  examples/lenet.npz       sigmoid + AvgPool2d(2, 2)   (D2L's LeNet)
  examples/lenet_relu.npz  relu    + MaxPool2d(2, 2)
(``--format safetensors``: the same names ending in ``.safetensors`` instead.)
Keys: conv1.weight [6,1,5,5], conv1.bias [6], conv2.weight [16,6,5,5],
conv2.bias [16], dense1.weight [120,400], dense1.bias [120],
dense2.weight [84,120], dense2.bias [84], dense3.weight [10,84], dense3.bias [10].

Deterministic: fixed seeds, CPU, one thread, fixed data order/augmentation.

Usage:  python scripts/train_lenet.py [--variant sigmoid|relu|both] [--epochs N] [--format npz|safetensors]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_digits  # noqa: E402

sys.path.insert(0, make_digits.REPO)
from convdsl import save_weights  # noqa: E402

REPO = make_digits.REPO
OUTPUTS = {
    "sigmoid": os.path.join(REPO, "examples", "lenet.npz"),
    "relu": os.path.join(REPO, "examples", "lenet_relu.npz"),
}
# (lr, epochs) per variant; sigmoid nets want a larger step.
HYPER = {"sigmoid": (3e-3, 60), "relu": (1e-3, 40)}
SEED = 0
BATCH = 32
MAX_SHIFT = 2


class LeNet(nn.Module):
    def __init__(self, variant: str = "sigmoid"):
        super().__init__()
        self.variant = variant
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.dense1 = nn.Linear(400, 120)
        self.dense2 = nn.Linear(120, 84)
        self.dense3 = nn.Linear(84, 10)

    def forward(self, x):
        act = torch.sigmoid if self.variant == "sigmoid" else F.relu
        pool = F.avg_pool2d if self.variant == "sigmoid" else F.max_pool2d
        x = pool(act(self.conv1(x)), 2, 2)
        x = pool(act(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = act(self.dense1(x))
        x = act(self.dense2(x))
        return self.dense3(x)


def to_input(images_u8: np.ndarray) -> torch.Tensor:
    """The runtime's normalisation: uint8 -> float32 / 255."""
    return torch.from_numpy(images_u8.astype(np.float32) / 255)


def shift_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to MAX_SHIFT pixels in x and y.

    The digits sit inside a 4-pixel zero border, so a roll by <= 2 pixels
    is exactly a shift (nothing non-zero wraps around).
    """
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (x.shape[0], 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = torch.roll(x[i], (int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def state_arrays(model: nn.Module) -> dict:
    return {k: v.detach().cpu().numpy().astype(np.float32)
            for k, v in model.state_dict().items()}


def train(variant: str, data: dict, epochs: int | None = None, lr: float | None = None):
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    d_lr, d_epochs = HYPER[variant]
    lr = d_lr if lr is None else lr
    epochs = d_epochs if epochs is None else epochs

    xtr, ytr = to_input(data["train_images"]), torch.from_numpy(data["train_labels"])
    xte, yte = to_input(data["test_images"]), torch.from_numpy(data["test_labels"])

    model = LeNet(variant)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    n = len(ytr)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(0, n, BATCH):
            idx = perm[s:s + BATCH]
            xb = shift_batch(xtr[idx], gen)
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0 or epoch == 0:
            print(f"  [{variant}] epoch {epoch + 1:3d}  loss {total / n:.4f}  "
                  f"train {accuracy(model, xtr, ytr):.4f}  "
                  f"held-out {accuracy(model, xte, yte):.4f}", flush=True)
    tr_acc, te_acc = accuracy(model, xtr, ytr), accuracy(model, xte, yte)
    return model, tr_acc, te_acc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["sigmoid", "relu", "both"], default="both")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--format", choices=["npz", "safetensors"], default="npz",
                    help="weights file format (convdsl run reads either)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = make_digits.load_split()
    print(f"train {len(data['train_labels'])}  held-out {len(data['test_labels'])}")

    variants = ["sigmoid", "relu"] if args.variant == "both" else [args.variant]
    for v in variants:
        model, tr_acc, te_acc = train(v, data, args.epochs, args.lr)
        print(f"{v}: train accuracy {tr_acc:.4f}  held-out accuracy {te_acc:.4f}")
        if te_acc < 0.95:
            print(f"WARNING: {v} held-out accuracy below 0.95", file=sys.stderr)
        if not args.no_save:
            out = os.path.splitext(OUTPUTS[v])[0] + "." + args.format
            save_weights(out, state_arrays(model))
            print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
