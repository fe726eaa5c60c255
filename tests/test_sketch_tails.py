"""Long rows (beyond the sketch's subsample) keep their outliers at 7-8 bits, and nothing changes below."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from onnx_statq.codebook import Method, assign, decode, fit

fit_module = importlib.import_module("onnx_statq.codebook.fit")
sketch_module = importlib.import_module("onnx_statq.codebook.sketch")


def _heavy_row(seed: int) -> np.ndarray:
    """A row longer than the subsample: a Gaussian bulk with 24 isolated outliers, as in transformer FFN weights."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(3 * sketch_module.SKETCH_SAMPLE // 2)
    x[rng.choice(x.size, 24, replace=False)] = rng.choice([-1.0, 1.0], 24) * rng.uniform(15, 40, 24)
    return x.reshape(1, -1)


def _mse(x: np.ndarray, bits: int) -> float:
    cb = fit(x, bits, Method.SIGMA)
    return float(np.mean((decode(cb, assign(cb, x)) - x) ** 2))


def test_outliers_get_levels_at_8_bits(monkeypatch):
    x = _heavy_row(0)
    with_tails = _mse(x, 8)
    monkeypatch.setattr(fit_module, "TAIL_MIN_K", 1 << 9)  # the plain subsample at every K: outliers mostly missed
    without = _mse(x, 8)
    assert with_tails < 0.5 * without, (with_tails, without)


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_below_7_bits_the_sketch_is_unchanged(monkeypatch, bits):
    x = _heavy_row(1)
    levels = fit(x, bits, Method.SIGMA).levels
    monkeypatch.setattr(fit_module, "TAIL_MIN_K", 1 << 9)
    assert np.array_equal(levels, fit(x, bits, Method.SIGMA).levels)
