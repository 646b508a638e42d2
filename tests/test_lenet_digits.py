"""LeNet on the bundled real digits: convdsl and PyTorch agree on every image."""

import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, ROOT

import convdsl
from convdsl.data import load_digits
from convdsl.tools.export_torch import to_torch


@pytest.mark.parametrize("name", ["lenet", "lenet_relu"])
def test_trained_lenet_agrees_with_torch_on_every_digit(name):
    program = convdsl.load(EXAMPLES / f"{name}.conv")
    weights = dict(np.load(EXAMPLES / f"{name}.npz", allow_pickle=False))
    images, labels = load_digits()
    ours = convdsl.compile(program, weights)(images)
    with torch.inference_mode():
        theirs = to_torch(program.model(), weights)(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert (ours.argmax(1) == labels).mean() >= 0.95


def test_installed_command_prints_accuracy(tmp_path):
    exe = shutil.which("convdsl")
    assert exe, "the convdsl console script is installed with the package"
    r = subprocess.run([exe, "run", "examples/lenet.conv", "--repeat", "1"], capture_output=True, text=True,
                       cwd=ROOT, env={"PATH": "/usr/bin:/bin", "CONVDSL_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "accuracy: 354/359 = 98.6%" in r.stdout
    assert "compiled with LLVM in" in r.stdout and "run time:" in r.stdout
