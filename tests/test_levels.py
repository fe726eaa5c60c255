"""Level refits from few calibration rows: the held-out step towards the refit (calibrate/levels.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import REPO

from onnx_statq import quantize
from onnx_statq.calibrate import refit
from onnx_statq.calibrate.geometry import LayerGeometry
from onnx_statq.calibrate.gram import GramStats
from onnx_statq.calibrate.levels import Halves, held_out_step, normal_equations
from onnx_statq.codebook import LevelDType, encode_tensor

DIGITS = REPO / "models" / "digits" / "digits_cnn.onnx"
CALIB = REPO / "models" / "digits" / "digits_calib.npz"


def _correlated(rng: np.random.Generator, rows: int, mix: np.ndarray) -> np.ndarray:
    n = mix.shape[0]
    return ((rng.standard_normal((rows, n)) * np.linspace(3.0, 0.1, n)) @ mix).astype(np.float32)


@pytest.mark.parametrize("one", [False, True])
def test_halves_that_agree_take_the_whole_step_and_halves_that_contradict_none(rng, one):
    """Two halves with the same statistics each fit the levels the other wants: the step is 1. Halves whose targets
    pull opposite ways (each half's refit moves away from what the other half wants) get 0: the data-free levels."""
    x = rng.standard_normal((200, 32))
    g = x.T @ x
    h = g @ rng.standard_normal((32, 6))
    idx = rng.integers(0, 4, (6, 32))
    a, b = normal_equations(g, h, idx, 4, one)
    old = np.sort(rng.standard_normal((a.shape[0], 4)), axis=1)
    agree = held_out_step(a, b, old, LevelDType.FLOAT32, Halves(g / 2, h / 2), idx, one)
    assert agree == pytest.approx(np.ones(a.shape[0]), abs=1e-4)
    pull = 1e3 * g @ rng.standard_normal((32, 6))
    split = held_out_step(a, b, old, LevelDType.FLOAT32, Halves(g / 2, h / 2 + pull), idx, one)
    assert np.array_equal(split, np.zeros(a.shape[0]))


def _layer(rng: np.random.Generator, rows: int):  # type: ignore[no-untyped-def]
    w = (0.1 * rng.standard_normal((64, 16))).astype(np.float32)
    enc = encode_tensor(w, 1, 2, granularity="channel")
    mix = rng.standard_normal((64, 64)) / 8
    stats = GramStats(split=True)
    for _ in range(2):  # two batches: a fit half and a held-out half
        x = _correlated(rng, rows // 2, mix)
        stats.add(x, x)
    return w, enc, LayerGeometry("MatMul", {}, w.shape), stats, _correlated(rng, 4000, mix)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_held_out_levels_generalise_better_from_fewer_rows_than_inputs(seed):
    """16 calibration rows for 64 inputs: the plain refit passes generalised cross-validation and is worse than the
    data-free levels on fresh inputs of the same distribution; the held-out step is better than the plain refit
    (both on each of 20 seeds tried, with 40 rows on 18 and 17 of them)."""
    w, enc, geo, stats, fresh = _layer(np.random.default_rng(seed), 16)
    assert not refit.enough_rows(stats)

    def error(e) -> float:  # type: ignore[no-untyped-def]
        return float(np.sum((fresh @ (e.decoded() - w)) ** 2))

    plain = refit.refit_layer(enc, w, geo, stats, compensation=0.0).encoded
    held = refit.refit_layer(enc, w, geo, stats, compensation=0.0, held_out_levels=True).encoded
    assert error(plain) > error(enc)  # the failure the step is for
    assert error(held) < error(plain)


def test_held_out_levels_leave_layers_with_a_row_per_input_alone(rng):
    w, enc, geo, stats, _ = _layer(rng, 128)
    assert refit.enough_rows(stats)
    plain = refit.refit_layer(enc, w, geo, stats, compensation=0.0).encoded
    held = refit.refit_layer(enc, w, geo, stats, compensation=0.0, held_out_levels=True).encoded
    assert plain.codebook is not None and held.codebook is not None
    assert np.array_equal(plain.codebook.levels, held.codebook.levels)
    assert not np.array_equal(plain.codebook.levels, enc.codebook.levels)


def test_calibration_takes_the_held_out_step_only_below_the_recommended_samples(monkeypatch):
    """8 samples: the demo CNN's layers with fewer rows than inputs take the held-out step; 32 samples: none does,
    and the file is what it was before the step existed."""
    calls = []
    original = refit.held_out_step
    monkeypatch.setattr(refit, "held_out_step", lambda *a: calls.append(1) or original(*a))
    m = onnx.load(DIGITS)
    for samples, expect in ((8, True), (32, False)):
        calls.clear()
        quantize(m, bits=3, calib=CALIB, calib_samples=samples)
        assert bool(calls) is expect, samples
