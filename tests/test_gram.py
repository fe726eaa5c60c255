"""The held-out half of the calibration statistics: exact sums, split by batch, and the feedback guard it drives."""

from __future__ import annotations

import numpy as np

from onnx_statq.calibrate.gram import GramStats


def test_halves_split_by_batch_and_add_up(rng):
    batches = [(rng.standard_normal((20, 6)), rng.standard_normal((20, 6))) for _ in range(5)]
    stats = GramStats(split=True)
    for q, f in batches:
        stats.add(q, f)
    parts = stats.halves()
    assert parts is not None
    fit, held = parts
    assert (fit.rows, held.rows) == (60, 40)  # batches 0, 2, 4 against 1, 3
    even_q = np.concatenate([q for q, _ in batches[::2]])
    odd_q, odd_f = (np.concatenate([b[i] for b in batches[1::2]]) for i in (0, 1))
    np.testing.assert_allclose(fit.gqq, even_q.T @ even_q, rtol=1e-5, atol=1e-3)  # float32 products
    np.testing.assert_allclose(held.gqf, odd_q.T @ odd_f, rtol=1e-5, atol=1e-3)  # float32 products
    np.testing.assert_allclose(held.sum_f, odd_f.sum(0), rtol=1e-5, atol=1e-3)  # float32 products


def test_no_halves_without_split_or_with_one_batch(rng):
    whole = GramStats()
    whole.add(rng.standard_normal((8, 3)), rng.standard_normal((8, 3)))
    assert whole.halves() is None
    one = GramStats(split=True)
    one.add(rng.standard_normal((8, 3)), rng.standard_normal((8, 3)))
    assert one.halves() is None  # one batch not marked as the only one: nothing held out


def test_the_only_batch_is_split_by_samples(rng):
    """A layer with one calibration batch (an API caller's single feed, an .npz of 8 samples) still gets a held-out
    half: its first rows (the first samples) against the rest. Without a split the flag changes nothing."""
    q, f = rng.standard_normal((9, 3)), rng.standard_normal((9, 3))
    one = GramStats(split=True)
    one.add(q, f, only=True)
    parts = one.halves()
    assert parts is not None
    fit, held = parts
    assert (fit.rows, held.rows, one.rows) == (4, 5, 9)
    np.testing.assert_allclose(fit.gqf, q[:4].T @ f[:4], rtol=1e-5, atol=1e-5)  # float32 products
    np.testing.assert_allclose(held.gqq, q[4:].T @ q[4:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one.gff, f.T @ f, rtol=1e-5, atol=1e-5)
    plain = GramStats()
    plain.add(q, f, only=True)
    assert plain.halves() is None and plain.batches == 1
