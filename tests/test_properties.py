"""Property-based tests of the codebook numerics: fit / assign / decode / pack / unpack / encode_tensor.

Random shapes, every K (bits 1..8), float16 / float32 / float64 inputs, every method and granularity, and value
distributions from constant rows to 60 decades of dynamic range. Examples are kept few and small so the file runs in
seconds; hypothesis shrinks any failure to a minimal case.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnx_statq.codebook import (
    MAX_BITS,
    Granularity,
    LevelDType,
    Method,
    Representation,
    assign,
    assign_rows,
    decode,
    encode_tensor,
    fit,
    pack,
    packed_bytes,
    unpack,
)
from onnx_statq.codebook.assign import LUT_CELLS

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.float16, np.float32, np.float64]
KINDS = ["normal", "heavy", "uniform", "few", "constant", "outliers", "sparse"]


def _values(rng: np.random.Generator, kind: str, shape: tuple[int, ...], dtype: type, scale: float) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "heavy":
        x = rng.standard_t(2, size=shape)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, size=shape)
    elif kind == "few":
        x = rng.choice(rng.standard_normal(3), size=shape)
    elif kind == "constant":
        x = np.full(shape, rng.standard_normal())
    elif kind == "outliers":
        x = rng.standard_normal(shape)
        x.flat[rng.integers(0, x.size, size=max(1, x.size // 50))] *= 1e3
    else:  # mostly zeros
        x = rng.standard_normal(shape) * (rng.uniform(size=shape) < 0.05)
    with np.errstate(over="ignore"):  # float16 outliers may round to inf: they become 0 below
        out = (x * scale).astype(dtype)
    return np.where(np.isfinite(out), out, 0).astype(dtype)


@st.composite
def weights(draw, max_rows: int = 5, max_n: int = 300, ndim: int = 2) -> np.ndarray:
    """A float16/32/64 array from one of KINDS, scaled anywhere within the dtype's comfortable range."""
    dtype = draw(st.sampled_from(DTYPES))
    decades = 4 if dtype == np.float16 else 30
    scale = 10.0 ** draw(st.floats(-decades, decades))
    if ndim == 2:
        shape: tuple[int, ...] = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_n)))
    else:
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return _values(rng, draw(st.sampled_from(KINDS)), shape, dtype, scale)


BITS = st.integers(1, MAX_BITS)
METHOD = st.sampled_from(list(Method))
LEVELS = st.sampled_from(list(LevelDType))


def _nearest_ok(levels: np.ndarray, x: np.ndarray, idx: np.ndarray) -> bool:
    """Every value's level is a nearest one (float64 distances, with a rounding slack of a few ulps)."""
    lv = levels.astype(np.float64)[:, None, :]
    xv = x.astype(np.float64)[:, :, None]
    dist = np.abs(xv - lv)
    chosen = np.take_along_axis(dist, idx.astype(np.intp)[:, :, None], axis=2)[:, :, 0]
    slack = 4 * np.finfo(np.float64).eps * (np.abs(x.astype(np.float64)) + np.abs(levels).max(axis=1, keepdims=True))
    return bool(np.all(chosen <= dist.min(axis=2) + slack))


@SETTINGS
@given(x=weights(), bits=BITS, method=METHOD, level_dtype=LEVELS)
def test_fit_levels_are_finite_sorted_and_storable(x, bits, method, level_dtype):
    if level_dtype == LevelDType.FLOAT16:
        assume(np.abs(x.astype(np.float64)).max() < 6e4 and x.dtype != np.float64)
    cb = fit(x, bits, method, level_dtype)
    assert cb.levels.shape == (x.shape[0], 1 << bits) and cb.levels.dtype == np.float32 and cb.k == 1 << bits
    assert np.all(np.isfinite(cb.levels))
    assert np.all(np.diff(cb.levels, axis=1) >= 0)
    store = np.float16 if level_dtype == LevelDType.FLOAT16 else np.float32
    assert np.array_equal(cb.levels.astype(store).astype(np.float32), cb.levels)  # exactly storable
    lo, hi = x.min(axis=1).astype(np.float64), x.max(axis=1).astype(np.float64)
    tol = 1e-3 * np.maximum(np.abs(lo), np.abs(hi)) + 1e-30  # float16 rounding of the extremes
    if level_dtype == LevelDType.FLOAT16:
        tol += 2.0**-25  # half the step of float16's subnormals
    assert np.all(cb.levels.min(axis=1) >= lo - tol) and np.all(cb.levels.max(axis=1) <= hi + tol)


@SETTINGS
@given(x=weights(), bits=BITS, method=METHOD)
def test_assign_is_a_nearest_level_below_k(x, bits, method):
    cb = fit(x, bits, method)
    idx = assign(cb, x)
    assert idx.dtype == np.uint8 and idx.shape == x.shape
    assert int(idx.max()) < cb.k
    assert _nearest_ok(cb.levels, x, idx)
    out = decode(cb, idx)
    assert out.dtype == np.float32 and out.shape == x.shape and np.all(np.isfinite(out))


@SETTINGS
@given(
    rows=st.integers(1, 4),
    n=st.integers(1, 300),
    bits=BITS,
    method=METHOD,
    dtype=st.sampled_from(DTYPES),
    level_dtype=LEVELS,
    distinct=st.integers(1, 256),
    seed=st.integers(0, 2**32 - 1),
)
def test_at_most_k_distinct_values_round_trip_exactly(rows, n, bits, method, dtype, level_dtype, distinct, seed):
    rng = np.random.default_rng(seed)
    pool = np.unique(rng.standard_normal(min(distinct, 1 << bits)).astype(np.float16)).astype(dtype)
    x = rng.choice(pool, size=(rows, n)).astype(dtype)  # float16 values: storable in any level dtype
    cb = fit(x, bits, method, level_dtype)
    np.testing.assert_array_equal(decode(cb, assign(cb, x)), x.astype(np.float32))


@SETTINGS
@given(x=weights(), bits=BITS, method=METHOD, level_dtype=LEVELS)
def test_fit_is_deterministic(x, bits, method, level_dtype):
    if level_dtype == LevelDType.FLOAT16:
        assume(np.abs(x.astype(np.float64)).max() < 6e4)
    a = fit(x, bits, method, level_dtype)
    b = fit(x.copy(), bits, method, level_dtype)
    assert np.array_equal(a.levels, b.levels) and a.level_dtype == b.level_dtype
    assert np.array_equal(assign(a, x), assign(b, x.copy()))


@settings(max_examples=60, deadline=None)
@given(bits=BITS, data=st.data())
def test_pack_unpack_is_the_identity(bits, data):
    n = data.draw(st.one_of(st.integers(0, 40), st.integers(0, 3000)))
    idx = data.draw(hnp.arrays(np.uint8, n, elements=st.integers(0, (1 << bits) - 1)))
    p = pack(idx, bits)
    out = unpack(p)
    assert out.dtype == np.uint8 and np.array_equal(out, idx)
    assert p.n == n and p.nbytes() == packed_bytes(n, bits)
    assert p.nbytes() * 8 <= n * bits + 8 * 8  # b bits per index, plus a tail of fewer than 8 whole bytes


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(1, MAX_BITS - 1), n=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
def test_pack_refuses_an_index_that_does_not_fit(bits, n, seed):
    idx = np.random.default_rng(seed).integers(0, 1 << bits, size=n).astype(np.uint8)
    idx[n // 2] = 1 << bits
    with pytest.raises(ValueError):
        pack(idx, bits)


@SETTINGS
@given(x=weights(max_rows=6, max_n=120), bits=BITS, method=METHOD)
def test_many_row_and_one_row_assignment_agree(x, bits, method):
    """The vectorised many-row path and the per-row binary search give the same indices, ties included."""
    cb = fit(x, bits, method)
    together = assign_rows(cb.levels, x)
    alone = np.concatenate([assign_rows(cb.levels[g : g + 1], x[g : g + 1]) for g in range(x.shape[0])])
    assert np.array_equal(together, alone)


@settings(max_examples=8, deadline=None)
@given(bits=st.integers(3, MAX_BITS), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS))
def test_lookup_table_assignment_equals_binary_search(bits, seed, kind):
    """Rows long enough for the 65536-cell lookup table assign exactly what searchsorted on midpoints assigns."""
    rng = np.random.default_rng(seed)
    x = _values(rng, kind, (1, 4 * LUT_CELLS + 17), np.float32, 1.0)
    levels = np.sort(rng.choice(x.ravel(), size=1 << bits)).astype(np.float32)[None, :]
    thr = (levels[0, 1:].astype(np.float64) + levels[0, :-1]) * 0.5
    want = np.searchsorted(thr, x[0], side="left")
    assert np.array_equal(assign_rows(levels, x)[0], want)


@st.composite
def tensors(draw):
    w = draw(weights(ndim=0))
    axis = draw(st.one_of(st.none(), st.integers(0, w.ndim - 1)))
    return w, axis


@SETTINGS
@given(wa=tensors(), bits=BITS, method=METHOD, granularity=st.sampled_from(list(Granularity)))
def test_encode_tensor_decodes_to_the_shape_within_the_range(wa, bits, method, granularity):
    w, axis = wa
    enc = encode_tensor(w, axis, bits, method, granularity)
    out = enc.decoded()
    assert out.shape == w.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.isfinite(enc.rel_error) and enc.rel_error >= 0 and enc.stored_bytes > 0
    if enc.representation == Representation.FLOAT16:
        assert np.array_equal(out, w.astype(np.float16).astype(np.float32))
        return
    assert enc.codebook is not None and enc.indices is not None
    assert int(enc.indices.max()) < enc.codebook.k and enc.codebook.bits == bits
    assert set(np.unique(out).tolist()) <= set(np.unique(enc.codebook.levels).tolist())
    w64 = w.astype(np.float64)
    tol = 1e-3 * np.abs(w64).max() + 1e-30
    if enc.codebook.level_dtype == LevelDType.FLOAT16:
        tol += 2.0**-25  # half the step of float16's subnormals
    assert out.min() >= w64.min() - tol and out.max() <= w64.max() + tol


@SETTINGS
@given(wa=tensors(), bits=BITS, method=METHOD, granularity=st.sampled_from([Granularity.TENSOR, Granularity.CHANNEL]))
def test_encoding_a_decoded_tensor_again_changes_nothing(wa, bits, method, granularity):
    """Decoded weights hold at most K values per codebook group, so a second encoding reproduces them exactly."""
    w, axis = wa
    once = encode_tensor(w, axis, bits, method, granularity).decoded()
    twice = encode_tensor(once, axis, bits, method, granularity).decoded()
    np.testing.assert_array_equal(twice, once)


@SETTINGS
@given(wa=tensors(), bits=BITS, method=METHOD, granularity=st.sampled_from(list(Granularity)))
def test_encode_tensor_is_deterministic(wa, bits, method, granularity):
    w, axis = wa
    a = encode_tensor(w, axis, bits, method, granularity)
    b = encode_tensor(w.copy(), axis, bits, method, granularity)
    assert a.representation == b.representation and a.rel_error == b.rel_error
    assert np.array_equal(a.decoded(), b.decoded())


@settings(max_examples=20, deadline=None)
@given(x=weights(), bits=BITS, k=st.integers(-20, 20))
def test_uniform_levels_scale_exactly_with_a_power_of_two(x, bits, k):
    x = x.astype(np.float64)
    assume(np.abs(x).max() * 2.0**k < 1e30 and (np.abs(x[x != 0]).min(initial=1.0) * 2.0**k) > 1e-30)
    a, b = fit(x, bits, Method.UNIFORM), fit(x * 2.0**k, bits, Method.UNIFORM)
    np.testing.assert_array_equal(b.levels, (a.levels.astype(np.float64) * 2.0**k).astype(np.float32))


@pytest.mark.parametrize("offset, spread", [(1.0, 1e-3), (1e3, 1e-2), (1e6, 0.1)])
def test_lookup_table_assignment_of_offset_float32_weights(offset, spread):
    """Regression: float32 weights far from zero. The table used to compute cells in float32 from an origin that
    float32 cannot hold, and put up to 65% of such weights on a farther level."""
    rng = np.random.default_rng(0)
    x = (offset + rng.standard_normal(4 * LUT_CELLS + 5) * spread).astype(np.float32)
    levels = np.sort(rng.choice(x, 16)).astype(np.float32)
    thr = (levels[1:].astype(np.float64) + levels[:-1]) * 0.5
    assert np.array_equal(assign_rows(levels[None, :], x[None, :])[0], np.searchsorted(thr, x, side="left"))
