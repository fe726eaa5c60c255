"""The sketch predictor against the error sigma measures, where the closed-form model missed, and its float16 floor."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from benchmarks.ggd_model import ggd_curve
from onnx_statq.codebook import Method
from onnx_statq.codebook.predict import predict_curve
from onnx_statq.codebook.predict_rows import row_sketch_curve
from onnx_statq.codebook.predict_tensor import sketch_curve
from onnx_statq.codebook.stats import rounding_error
from onnx_statq.codebook.tensor import _encode_codebook, to_groups

sketch_module = importlib.import_module("onnx_statq.codebook.sketch")
predict_rows = importlib.import_module("onnx_statq.codebook.predict_rows")
predict_tensor = importlib.import_module("onnx_statq.codebook.predict_tensor")
BITS = range(3, 9)


def _measured(w: np.ndarray, per_channel: bool, axis: int = 0) -> dict[int, float]:
    return {b: _encode_codebook(w, axis, b, Method.SIGMA, per_channel).rel_error for b in BITS}


def _outlier_tensor(rng: np.random.Generator, c: int, m: int) -> np.ndarray:
    """Laplace weights over a decade of channel scales, 0.2% of them outliers gathered in 1% of the channels."""
    w = rng.laplace(size=(c, m)) * np.exp(rng.uniform(-1.15, 1.15, (c, 1)))
    count = w.size // 500
    rows = rng.choice(rng.choice(c, max(1, c // 100), replace=False), count)
    w[rows, rng.integers(0, m, count)] = rng.choice([-1.0, 1.0], count) * rng.uniform(8, 30, count)
    return w.astype(np.float32)


def test_rounding_error_is_float16s_own():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edge = np.array([65504.0, 65519.0, 65520.0, 7e4, np.inf, np.nan, 2.0**-25, 3 * 2.0**-25], np.float32)
    x = np.concatenate([raw, edge]).reshape(2, -1)  # every float32 bit pattern's kind, float16's edges
    with np.errstate(over="ignore", invalid="ignore"):
        d = x.astype(np.float64) - x.astype(np.float16).astype(np.float64)
        half = x[np.isfinite(x) & (np.abs(x) < 65504)].astype(np.float16).reshape(1, -1)
    expected = np.where(np.isfinite(d), d, 0.0) ** 2
    assert np.allclose(rounding_error(x), expected.mean(axis=1), rtol=1e-12, atol=0)
    assert np.all(rounding_error(half) == 0.0)


def test_one_codebook_with_outlier_channels_follows_the_per_channel_error():
    # the few channels holding outliers carry most of the 7-8 bit figure: a strided sample alone misses them
    w = _outlier_tensor(np.random.default_rng(1), 384, 384)
    measured = _measured(w, per_channel=False)
    predicted = predict_curve(w.reshape(1, -1), BITS, channels=w)
    for b in BITS:
        assert predicted[b] == pytest.approx(measured[b], rel=0.15), b


def test_channels_on_axis_one_read_in_memory_order():
    # a MatMul weight [in, out] has its channels on axis 1: the channel view is a transposed, non-contiguous view
    w = _outlier_tensor(np.random.default_rng(2), 512, 96).T.copy()  # [96 in, 512 out]
    view = to_groups(w, 1)
    assert not view.flags.c_contiguous
    assert sketch_curve(view, BITS) == pytest.approx(sketch_curve(np.ascontiguousarray(view), BITS), rel=1e-9)
    measured = _measured(w, per_channel=False, axis=1)
    predicted = predict_curve(w.reshape(1, -1), BITS, channels=view)
    for b in BITS:
        assert predicted[b] == pytest.approx(measured[b], rel=0.15), b


def test_tensor_longer_than_sigmas_subsample():
    rng = np.random.default_rng(3)
    w = _outlier_tensor(rng, 768, -(-sketch_module.SKETCH_SAMPLE * 5 // 4 // 768))
    assert w.size > sketch_module.SKETCH_SAMPLE
    measured = _measured(w, per_channel=False)
    predicted = predict_curve(w.reshape(1, -1), BITS, channels=w)
    for b in BITS:
        assert predicted[b] == pytest.approx(measured[b], rel=0.15), b


def test_short_rows_where_the_closed_form_model_misses():
    # depthwise 7x7 kernels: 49 weights a row, a Gaussian bulk with one to three large taps, scales over decades;
    # the closed-form model (kurtosis and a finite-sample term) was 1.5-3x off on such rows of PP-OCRv6 det
    rng = np.random.default_rng(4)
    w = rng.standard_normal((96, 49))
    for r in range(96):
        w[r, rng.choice(49, int(rng.integers(1, 4)), replace=False)] *= rng.uniform(4, 10)
    w = (w * 10.0 ** rng.uniform(-3, -1, (96, 1))).astype(np.float32)
    measured = _measured(w, per_channel=True)
    sketched = row_sketch_curve(w, BITS, half_levels=True)
    closed = ggd_curve(w, BITS, half_levels=True)
    for b in BITS:
        assert sketched[b] == pytest.approx(measured[b], rel=0.15), b
    assert max(abs(closed[b] / measured[b] - 1) for b in (3, 4, 5)) > 0.3


def test_long_rows_are_stepped_on_their_histogram_as_sigma_steps_them():
    # beyond SKETCH_BINS weights sigma steps a row on its histogram, whose coarse tail bins hold the outliers' levels
    # back: stepped on the weights instead, the prediction came out 2-4x low at 6-8 bits
    rng = np.random.default_rng(6)
    w = rng.standard_normal((16, 20000))
    for r in range(16):
        w[r, rng.choice(20000, 20, replace=False)] *= rng.uniform(5, 15, 20)
    w = (w * 10.0 ** rng.uniform(-2, 0, (16, 1))).astype(np.float32)
    assert w.shape[1] > sketch_module.SKETCH_BINS
    measured = _measured(w, per_channel=True)
    predicted = row_sketch_curve(w, BITS, half_levels=True)
    for b in BITS:
        assert predicted[b] == pytest.approx(measured[b], rel=0.2), b


def test_rows_at_float16s_floor_and_dead_rows():
    # exact rows still carry float16's rounding; a few tiny rows dominate it, so it is taken on every row
    rng = np.random.default_rng(5)
    w = np.round(rng.standard_normal((200, 24)) * 4) / 4 * 10.0 ** rng.uniform(-6, -2, (200, 1))
    w[::7] = 0.0
    w = w.astype(np.float32)
    measured = _measured(w, per_channel=True)
    predicted = row_sketch_curve(w, BITS, half_levels=True)
    for b in BITS:
        assert predicted[b] == pytest.approx(measured[b], rel=0.15), b
    assert row_sketch_curve(np.zeros((8, 16), np.float32), BITS) == dict.fromkeys(BITS, 0.0)
    assert sketch_curve(np.zeros((8, 16), np.float32), BITS) == dict.fromkeys(BITS, 0.0)


def test_many_rows_of_mixed_shapes_are_sketched_by_shape():
    # more rows than SKETCH_ROWS, of kinds whose errors differ several-fold (light and heavy tails, a quarter on a
    # coarse grid, exact from some K on): strided rows drew the kinds by chance, rows spread by shape draw them all
    rng = np.random.default_rng(10)  # 32 strided rows of these: 0.77-0.90x at 4-7 bits
    g, n = 320, 192
    heavy = rng.random(g) < 0.3
    w = np.where(heavy[:, None], rng.laplace(size=(g, n)) ** 3, rng.standard_normal((g, n)))
    grid = rng.random(g) < 0.25
    w[grid] = np.round(w[grid] * 2) / 2
    w = (w * 10.0 ** rng.uniform(-3, -1, (g, 1))).astype(np.float32)
    assert g > predict_rows.SKETCH_ROWS
    picked = predict_rows._sketch_rows(w, np.arange(g))
    assert picked.size == predict_rows.SKETCH_ROWS and np.all(np.diff(picked) > 0)
    assert 0 < np.mean(grid[picked]) < 1 and 0 < np.mean(heavy[picked]) < 1
    measured = _measured(w, per_channel=True)
    predicted = row_sketch_curve(w, BITS, half_levels=True)
    for b in BITS:
        assert predicted[b] == pytest.approx(measured[b], rel=0.15), b


def test_subsample_sketch_is_sigmas_own():
    # beyond SKETCH_SAMPLE weights the levels are placed on the sketch sigma builds: the same bins, counts and means,
    # its tails taken from the evaluation sample's extremes or from a pass over the tensor alike
    w = _outlier_tensor(np.random.default_rng(9), 512, -(-sketch_module.SKETCH_SAMPLE * 3 // 2 // 512))
    row = w.reshape(-1)
    step = -(-row.size // sketch_module.SKETCH_SAMPLE)
    sub = np.ascontiguousarray(row[::step])
    sample = predict_tensor._tensor_sample(w)
    assert sample is not None and sample[5] is not None
    for tails in (False, True):
        counts, centers, edges = predict_tensor._subsample_sketch(row, sub, step, tails, sample[5])
        own = sketch_module.bin_rows(sketch_module.standardise(row[None, :], tails), sketch_module.SKETCH_BINS)
        assert np.array_equal(counts, own[0][0] * (1.0 if tails else step))
        assert np.allclose(centers, own[1][0], rtol=1e-12, atol=0) and np.array_equal(edges, own[2][0])
        again = predict_tensor._subsample_sketch(row, sub, step, tails, None)
        assert np.array_equal(counts, again[0]) and np.array_equal(centers, again[1])


def test_long_tensor_with_a_weight_whose_square_overflows_float32():
    # sigma's sketch falls back to float64 when float32 squares overflow (a corrupted weight); the predictor builds
    # the same sketch through the same function, so its curve stays finite (it was NaN at 7-8 bits with its own copy)
    w = np.random.default_rng(11).standard_normal((600, 600)).astype(np.float32)
    w[3, 5] = 1e20
    assert w.size > sketch_module.SKETCH_SAMPLE
    curve = predict_curve(w.reshape(1, -1), range(2, 9), channels=w)
    assert all(np.isfinite(v) and v >= 0 for v in curve.values())
