"""The allocation chooses each layer's layout (tensor or channel codebooks, float16) together with its width."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import folded_conv_weights
from onnx import TensorProto, helper

from onnx_statq import QuantConfig, StatqPass
from onnx_statq.codebook.allocate import allocate_options


def _brute_force(options, budget):
    best, pick = None, None
    for combo in itertools.product(*(range(len(o)) for o in options)):
        cost = sum(options[i][j][0] for i, j in enumerate(combo))
        err = sum(options[i][j][1] for i, j in enumerate(combo))
        if cost <= budget and (best is None or err < best):
            best, pick = err, combo
    return best, pick


@pytest.mark.parametrize("seed", range(12))
def test_allocation_is_near_the_exhaustive_optimum_and_within_budget(seed):
    rng = np.random.default_rng(seed)
    options = []
    for _ in range(4):
        layout = []
        for scale, table in ((1.0, 0), (rng.uniform(0.1, 1.0), rng.integers(50, 400))):  # tensor, channel
            size = int(rng.integers(200, 2000))
            layout += [(size * b + table * 2**b, scale * 4.0**-b) for b in range(2, 9)]
        layout.append((16.0 * size, 1e-7))  # float16
        options.append(layout)
    cheapest = sum(min(c for c, _ in o) for o in options)
    budget = cheapest * rng.uniform(1.3, 3.0)
    chosen = allocate_options(options, budget)
    cost = sum(options[i][j][0] for i, j in enumerate(chosen))
    err = sum(options[i][j][1] for i, j in enumerate(chosen))
    best, _ = _brute_force(options, budget)
    assert cost <= budget * (1 + 1e-9)
    assert err <= 1.5 * best  # a hull greedy with exchanges: close to the optimum of this small knapsack


def test_unreachable_budget_keeps_the_cheapest_options():
    options = [[(100.0, 1.0), (200.0, 0.5)], [(50.0, 2.0), (80.0, 1.0)]]
    assert allocate_options(options, 10.0) == [0, 0]


def test_layouts_follow_the_weights(make_model, rng):
    """A folded-BN convolution (channels disagree, many weights each), a depthwise one (nine weights per channel),
    and a MatMul whose columns agree: the three cases of the layout choice."""
    weights = {
        "wc": folded_conv_weights(rng, 64, 32),
        "wd": folded_conv_weights(rng, 256, 1),
        "wm": (rng.standard_normal((256, 256)) * 0.05).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["c", "c", "c", "c"], ["c4"], axis=1),
        helper.make_node("Conv", ["c4", "wd"], ["d"], name="dw", pads=[1, 1, 1, 1], group=256),
        helper.make_node("Flatten", ["d"], ["f0"], axis=2),
        helper.make_node("ReduceMean", ["f0"], ["f"], axes=[2], keepdims=0),
        helper.make_node("MatMul", ["f", "wm"], ["y"], name="mm"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])
    m = make_model(nodes, [x], [y], weights)
    layers = {r.name: r for r in StatqPass(QuantConfig(bits=4))(m).report.layers}
    assert layers["wc"].representation == "channel"  # scales differ 12x; 288 weights pay for a table
    assert layers["wd"].representation != "tensor"  # nine weights per channel of very different scales
    assert layers["wm"].representation == "tensor"  # columns agree: one table is as good and cheaper
    fixed = {r.name: r for r in StatqPass(QuantConfig(bits=4, granularity="tensor"))(m).report.layers}
    assert {r.representation for r in fixed.values()} == {"tensor"}  # an explicit granularity is kept


def test_no_layer_but_a_matmul_falls_more_than_one_bit_below_the_average(rng):
    """Equal weight per layer starved the largest layer (MiniLM's embedding got 2 bits at a 4-bit average): under
    an average budget the options start one bit below it; other targets, and weights only MatMul reads (where the
    floor was measured to hurt), keep the full range."""
    from onnx_statq.codebook import encode_tensor
    from onnx_statq.codebook.allocate import LO_BITS
    from onnx_statq.graph.allocation import Layer, _options

    w = (rng.standard_normal((256, 64)) * 0.05).astype(np.float32)
    conv = Layer(w, 1, encode_tensor(w, 1, 4))
    matmul = Layer(w, 1, encode_tensor(w, 1, 4), floored=False)
    widths = lambda config, la: {b for b in _options(config, [la]).bits[0] if b != 16}  # noqa: E731
    assert min(widths(QuantConfig(bits=4), conv)) == 3
    assert min(widths(QuantConfig(bits=4, avg_bits=6.0), conv)) == 5
    assert min(widths(QuantConfig(bits=3), conv)) == 2
    assert min(widths(QuantConfig(bits="auto", size_ratio=8.0), conv)) == LO_BITS
    assert min(widths(QuantConfig(bits=4, avg_bits=6.0), matmul)) == LO_BITS


def test_weights_too_small_for_float16_keep_float32_levels(rng):
    """Weights of ~1e-8 round to 0 in float16: per-channel float16 levels made such a layer all zeros (0 dB)."""
    from onnx_statq.codebook import Granularity, LevelDType, encode_tensor
    from onnx_statq.codebook.tensor import fits_half
    from onnx_statq.graph.allocation import Layer, layer_curve

    w = (rng.standard_normal((64, 32, 3, 3)) * 1e-8).astype(np.float32)
    assert not fits_half(w) and fits_half(w * 1e7) and not fits_half(w * 1e13)  # too small, fine, too large
    enc = encode_tensor(w, 0, 3, granularity=Granularity.CHANNEL)
    assert enc.codebook is not None and enc.codebook.level_dtype == LevelDType.FLOAT32
    assert enc.rel_error < 0.1  # about 0.03 at 3 bits, as for any Gaussian layer
    predicted = layer_curve(Layer(w, 0, enc), enc, [3])[3]  # predicted without float16's rounding, as encoded
    assert 0.5 < predicted / enc.rel_error < 2
