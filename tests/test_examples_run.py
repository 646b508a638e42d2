"""Every example compiles and runs, and agrees with the same network in PyTorch on the same weights.

The small ones are also checked against the numpy reference written from the definitions."""

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from reference import run_reference

import convdsl
from convdsl.runtime.boundary import random_weights
from convdsl.tools.export_torch import to_torch

EXAMPLES_AND_SIZES = [
    ("lenet.conv", {}, 3), ("lenet_relu.conv", {}, 3), ("lenet5.conv", {}, 3),
    ("anysize.conv", {"H": 13, "W": 21}, 2), ("anysize.conv", {"H": 32, "W": 12}, 2),
    ("symbolic_where.conv", {"H": 20, "W": 16}, 2), ("vgg11_small.conv", {}, 2),
    ("nin.conv", {}, 1), ("alexnet.conv", {}, 1), ("vgg11.conv", {}, 1),
]
SMALL = {"lenet.conv", "lenet_relu.conv", "lenet5.conv", "anysize.conv", "symbolic_where.conv"}


@pytest.mark.parametrize("name,sizes,batch", EXAMPLES_AND_SIZES)
def test_example_runs_and_agrees(name, sizes, batch):
    program = convdsl.load(EXAMPLES / name)
    model = program.model()
    env = {s: v for s, v in model.valid_for.items() if s != "N"}
    env.update(sizes)
    weights = random_weights(model, env, seed=1)
    net = convdsl.compile(program, weights)
    shape = [batch] + [d if isinstance(d, int) else env[str(d)] for d in model.input_shape[1:]]
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    y = net(x)
    with torch.inference_mode():
        expect = to_torch(model.bind(env), weights)(torch.from_numpy(x)).numpy()
    assert y.shape == expect.shape
    # Deep nets sum long dot products: compare relative to the output's scale.
    scale = max(1.0, float(np.abs(expect).max()))
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5 * scale)
    if name in SMALL:
        ref = run_reference(model.bind(env), weights, x)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * scale)
