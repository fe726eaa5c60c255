"""Numerics level: fit / assign / decode / pack in pure numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_statq.codebook import (
    Granularity,
    LevelDType,
    Method,
    Representation,
    assign,
    decode,
    encode_tensor,
    fit,
    pack,
    packed_bytes,
    unpack,
)
from onnx_statq.codebook.fit import kmeans_levels

METHODS = list(Method)


def mse(x: np.ndarray, method: Method, bits: int) -> float:
    cb = fit(x, bits, method)
    return float(np.mean((decode(cb, assign(cb, x)) - x) ** 2))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_exact_round_trip_with_k_distinct_values(method, bits, rng):
    k = 1 << bits
    values = np.sort(rng.standard_normal(k)).astype(np.float32)
    x = rng.choice(values, size=(3, 500)).astype(np.float32)
    x[:, :k] = values  # every row holds exactly K distinct values
    cb = fit(x, bits, method)
    out = decode(cb, assign(cb, x))
    assert out.dtype == np.float32
    assert np.array_equal(out, x)


@pytest.mark.parametrize("method", METHODS)
def test_levels_sorted_and_assignment_is_nearest(method, rng):
    x = rng.standard_t(3, size=(4, 3000))
    cb = fit(x, 3, method)
    assert np.all(np.diff(cb.levels, axis=1) >= 0)
    idx = assign(cb, x)
    brute = np.abs(x[:, :, None] - cb.levels[:, None, :].astype(np.float64)).argmin(axis=2)
    chosen = np.abs(x - np.take_along_axis(cb.levels, idx.astype(int), 1))
    best = np.abs(x - np.take_along_axis(cb.levels, brute, 1))
    assert np.array_equal(chosen, best)


def test_large_row_uses_table_assignment_and_stays_exact(rng):
    x = rng.standard_t(4, size=(1, 300_000))
    cb = fit(x, 5, Method.SIGMA)
    idx = assign(cb, x)
    thr = (cb.levels[0, 1:].astype(np.float64) + cb.levels[0, :-1]) / 2
    assert np.array_equal(idx[0], np.searchsorted(thr, x[0], side="left"))


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dist", ["normal", "laplace", "t3"])
def test_sigma_close_to_kmeans(bits, dist, rng):
    x = {"normal": rng.standard_normal, "laplace": lambda n: rng.laplace(size=n), "t3": lambda n: rng.standard_t(3, n)}
    data = x[dist](50_000).reshape(1, -1)
    ratio = mse(data, Method.SIGMA, bits) / mse(data, Method.KMEANS, bits)
    assert ratio < 1.05


def _naive_three_sigma_mse(x: np.ndarray, bits: int) -> float:
    """The paper's literal rule: K equal bins over mean +/- 3 std, each level the mean of its bin."""
    k = 1 << bits
    lo, hi = x.mean() - 3 * x.std(), x.mean() + 3 * x.std()
    b = np.clip(((x - lo) / (hi - lo) * k).astype(int), 0, k - 1)
    levels = np.array([x[b == j].mean() if np.any(b == j) else 0 for j in range(k)])
    return float(np.mean((x - levels[b]) ** 2))


def test_sigma_error_keeps_falling_with_bits(rng):
    """A fixed three-sigma clip stops improving as K grows; the statistical placement must not."""
    data = rng.laplace(size=200_000).reshape(1, -1)
    errs = [mse(data, Method.SIGMA, b) for b in range(2, 9)]
    assert all(b < a * 0.5 for a, b in itertools.pairwise(errs))
    assert errs[-1] < _naive_three_sigma_mse(data[0], 8) / 10


def test_kmeans_is_a_fixed_point(rng):
    x = rng.standard_normal((1, 5000))
    lv = kmeans_levels(x, 16)[0]
    thr = (lv[1:] + lv[:-1]) / 2
    idx = np.searchsorted(thr, x[0], side="left")
    means = np.array([x[0][idx == j].mean() for j in range(16)])
    assert np.allclose(means, lv)
    assert len(np.unique(idx)) == 16  # uses all K levels


def test_float16_levels_are_representable(rng):
    cb = fit(rng.standard_normal((5, 300)), 4, Method.SIGMA, LevelDType.FLOAT16)
    assert np.array_equal(cb.levels.astype(np.float16).astype(np.float32), cb.levels)


def test_constant_and_tiny_rows(rng):
    for x in (np.full((1, 100), 0.5), np.zeros((2, 7)), np.array([[1.0, 2.0]])):
        cb = fit(x, 4, Method.SIGMA)
        assert np.array_equal(decode(cb, assign(cb, x)), x.astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(bits, n, seed):
    idx = np.random.default_rng(seed).integers(0, 1 << bits, size=n).astype(np.uint8)
    p = pack(idx, bits)
    assert np.array_equal(unpack(p), idx)
    assert p.nbytes() == packed_bytes(n, bits)


def test_three_bits_cost_three_bits():
    assert packed_bytes(8000, 3) == 3000
    assert packed_bytes(8000, 4) == 4000


def test_auto_granularity_picks_channels_when_scales_differ(rng):
    from conftest import folded_conv_weights

    w = folded_conv_weights(rng, 64, 32)
    enc = encode_tensor(w, 0, 4, granularity=Granularity.AUTO)
    per_tensor = encode_tensor(w, 0, 4, granularity=Granularity.TENSOR)
    assert enc.representation == Representation.CHANNEL
    assert enc.rel_error < per_tensor.rel_error / 3


def test_auto_granularity_keeps_one_codebook_when_channels_agree(rng):
    w = (rng.standard_normal((256, 128)) * 0.05).astype(np.float32)
    assert encode_tensor(w, 1, 4).representation == Representation.TENSOR


def test_depthwise_falls_back_to_float16(rng):
    w = (rng.standard_normal((128, 1, 3, 3)) * np.exp(rng.uniform(-3, 1, (128, 1, 1, 1)))).astype(np.float32)
    enc = encode_tensor(w, 0, 4)
    assert enc.representation == Representation.FLOAT16
    assert np.array_equal(enc.decoded(), w.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_decoded_layout_follows_channel_axis(axis, rng):
    w = rng.standard_normal((6, 5, 40)).astype(np.float32)
    enc = encode_tensor(w, axis, 8, granularity=Granularity.CHANNEL)
    assert enc.decoded().shape == w.shape
    assert np.max(np.abs(enc.decoded() - w)) < 0.05


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    n=st.integers(1, 400),
    bits=st.integers(1, 8),
    method=st.sampled_from(list(Method)),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_fit_assign_decode_properties(rows, n, bits, method, dtype, seed):
    """Any shape, K, method and dtype: sorted levels, nearest assignment, bounded error, exact when few values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(4, size=(rows, n)) * rng.uniform(1e-3, 10)).astype(dtype)
    cb = fit(x, bits, method)
    idx = assign(cb, x)
    out = decode(cb, idx)
    assert idx.dtype == np.uint8 and int(idx.max()) < (1 << bits)
    assert np.all(np.diff(cb.levels, axis=1) >= 0)
    span = x.max(axis=1, keepdims=True).astype(np.float64) - x.min(axis=1, keepdims=True)
    assert np.all(np.abs(out - x.astype(np.float32)) <= span + 1e-6)
    if n <= (1 << bits):
        assert np.array_equal(out, x.astype(np.float32))
