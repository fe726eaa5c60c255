"""The fast paths of fit and assign give exactly what the straightforward code they replace gives."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from onnx_statq.codebook import assign_rows, fit
from onnx_statq.codebook.assign import floor32
from onnx_statq.codebook.stats import few_distinct, sampled_beyond

fit_module = importlib.import_module("onnx_statq.codebook.fit")
sketch_module = importlib.import_module("onnx_statq.codebook.sketch")
assign_module = importlib.import_module("onnx_statq.codebook.assign")


def _reference_sketch(x: np.ndarray, bins: int, exact_tails: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sketch as one function over every row at once (before it was split into standardise and bin_rows)."""
    weights = None
    if x.shape[1] > sketch_module.SKETCH_SAMPLE and exact_tails:
        x, weights = sketch_module.tail_complete(x)
    elif x.shape[1] > sketch_module.SKETCH_SAMPLE:
        x = x[:, :: -(-x.shape[1] // sketch_module.SKETCH_SAMPLE)]
    g = x.shape[0]
    xf = x.astype(np.float32)
    mu = xf.mean(axis=1, keepdims=True, dtype=np.float64)
    sd = np.sqrt(np.square(xf - mu.astype(np.float32)).mean(axis=1, keepdims=True, dtype=np.float64))
    sd = np.where(sd > 0, sd, 1.0)
    u = np.arcsinh((xf - mu.astype(xf.dtype)) / sd.astype(xf.dtype))
    ulo, uhi = u.min(axis=1, keepdims=True).astype(np.float64), u.max(axis=1, keepdims=True).astype(np.float64)
    span = np.where(uhi > ulo, uhi - ulo, 1.0)
    b = np.clip(((u - ulo) * (bins / span)).astype(np.int64), 0, bins - 1)
    flat = (b if g == 1 else np.arange(g)[:, None] * bins + b).ravel()
    wflat = None if weights is None else weights.ravel()
    counts = np.bincount(flat, weights=wflat, minlength=g * bins).reshape(g, bins).astype(np.float64)
    wx = x if weights is None else x * weights
    sums = np.bincount(flat, weights=wx.ravel(), minlength=g * bins).reshape(g, bins)
    edges = mu + sd * np.sinh(ulo + span * np.linspace(0.0, 1.0, bins + 1)[None, :])
    centers = np.where(counts > 0, sums / np.maximum(counts, 1), 0.5 * (edges[:, 1:] + edges[:, :-1]))
    return counts, centers, edges


@pytest.mark.parametrize(
    ("shape", "tails"), [((1, 5000), False), ((37, 3000), False), ((3, 70000), False), ((1, 400_000), True)]
)
def test_one_standardisation_gives_the_same_sketch_at_every_resolution(shape, tails):
    x = np.random.default_rng(3).standard_t(3, size=shape) * 0.05
    std = sketch_module.standardise(x, tails)
    for bins in (16, 953, 4096):
        got = sketch_module.bin_rows(std, bins)
        for a, b in zip(got, _reference_sketch(x, bins, tails), strict=True):
            assert np.array_equal(a, b)


def test_python_lloyd_steps_match_numpy(monkeypatch):
    rng = np.random.default_rng(5)
    for x in (rng.standard_t(3, size=(1, 5000)), np.round(rng.normal(size=(1, 3000)), 1), np.zeros((1, 5000))):
        want = {}
        for scalar in (False, True):
            monkeypatch.setattr(fit_module, "SCALAR_MAX_K", 16 if scalar else 0)
            want[scalar] = [fit(x, bits).levels for bits in (1, 2, 3, 4)]
        for a, b in zip(want[False], want[True], strict=True):
            assert np.array_equal(a, b)


def test_floor32_keeps_every_comparison():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(size=20000).astype(np.float32), np.array([0, -0.0, 1, np.inf, -np.inf], "f4")])
    t = np.concatenate(
        [
            x[:200].astype(np.float64),  # exactly representable
            x[:200].astype(np.float64) + 1e-12,  # just above a float32
            x[:200].astype(np.float64) - 1e-12,
            np.array([0.0, 1e300, -1e300, 3.5e38, -3.5e38, np.inf, -np.inf]),
        ]
    )
    f = floor32(t)
    assert f.dtype == np.float32 and np.all(f.astype(np.float64) <= t)
    assert np.array_equal(x[:, None] > t[None, :], x[:, None] > f[None, :])


@pytest.mark.parametrize("k", [2, 4, 16, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sweeps_and_small_tables_equal_searchsorted(k, dtype):
    rng = np.random.default_rng(k)
    for n in (100, 1500, 5000, 70000):
        x = (rng.standard_t(3, size=n) * 0.02).astype(dtype)
        x[:3] = [np.nan, 0.0, -0.0]
        levels = np.sort(np.quantile(x[3:].astype(np.float64), (np.arange(k) + 0.5) / k))
        thr = (levels[1:] + levels[:-1]) * 0.5
        assert np.array_equal(assign_rows(levels[None, :], x[None, :])[0], np.searchsorted(thr, x, side="left"))


@pytest.mark.parametrize("bits", [3, 6])  # sweeps over blocks of rows; a table per row
def test_multi_row_blocks_equal_one_row_at_a_time(bits):
    x = (np.random.default_rng(2).standard_t(3, size=(40, 9000)) * 0.02).astype(np.float32)
    cb = fit(x, bits, level_dtype="float16")
    together = assign_rows(cb.levels, x)
    alone = np.stack(
        [
            np.searchsorted((lv[1:] + lv[:-1]) * 0.5, row)
            for lv, row in zip(cb.levels.astype(np.float64), x, strict=True)
        ]
    )
    assert np.array_equal(together, alone)


def test_sampled_beyond_only_proves_rows_few_distinct_rejects():
    rng = np.random.default_rng(4)
    rows = np.stack(
        [
            rng.normal(size=6000),
            rng.choice([0.5, -1.0, 2.0], size=6000),
            np.where(np.arange(6000) == 4321, 9.0, rng.choice([0.0, 1.0], size=6000)),  # a value the sample misses
            np.full(6000, np.nan),
        ]
    )
    for k in (2, 4, 256):
        beyond = sampled_beyond(rows, k)
        for row, proved in zip(rows, beyond, strict=True):
            if proved:
                assert few_distinct(row, k, float(row.min()), float(row.max())) is None
    assert list(sampled_beyond(rows, 2)) == [True, True, False, False]
