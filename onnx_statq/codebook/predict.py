"""Predict a codebook's error at every K from a tensor's statistics alone, with no clustering run.

The model behind ``--bits auto`` and the default bit allocation. Three statistics per codebook row suffice:

* the variance sets the scale: the error of an optimal K-level quantizer is ``variance * d(shape, K)``;
* the kurtosis sets the shape: real weights are heavy-tailed, so ``d`` is read from a table of the optimal
  quantizer's error for generalised Gaussians (exponent 0.25 to 4), the family member with the row's kurtosis.
  The table is exact for small K, where high-resolution theory (Panter-Dite) is not;
* the row length ``n`` corrects for the finite sample: with K levels over only n weights, the levels fit the
  sample rather than the distribution, and the error falls by ``exp(-a (K/n)^p)``, fitted on generalised-Gaussian
  samples with the ``sigma`` method, never on the benchmark models (``python -m benchmarks.fit_predictor`` refits
  them: 3.11 and 0.713 on its last run, within 1% of the values here). It over-shrinks once K/n passes ~0.2.

A row with at most K distinct values is predicted exact (error 0), as :func:`fit` makes it.
"""

from __future__ import annotations

from math import gamma

import numpy as np

from .ggd_table import GGD_BETAS, GGD_ERROR, GGD_KS
from .stats import few_distinct

__all__ = ["FINITE_A", "FINITE_P", "ggd_kurtosis", "predict_curve", "predict_rel_error", "unit_error"]

FINITE_A = 3.07
FINITE_P = 0.707


def ggd_kurtosis(beta: float) -> float:
    """Kurtosis of the generalised Gaussian with exponent ``beta`` (2: Gaussian, 3.0; 1: Laplace, 6.0)."""
    return gamma(5 / beta) * gamma(1 / beta) / gamma(3 / beta) ** 2


_LOG_KURT = np.log([ggd_kurtosis(b) for b in GGD_BETAS])[::-1]  # increasing, for np.interp
_LOG_ERR = np.log(np.asarray(GGD_ERROR))[::-1]


def unit_error(kurtosis: np.ndarray, k: int) -> np.ndarray:
    """Optimal K-level squared error of a unit-variance generalised Gaussian of the given kurtosis."""
    j = GGD_KS.index(k)
    lk = np.log(np.clip(kurtosis, np.exp(_LOG_KURT[0]), np.exp(_LOG_KURT[-1])))
    return np.exp(np.interp(lk, _LOG_KURT, _LOG_ERR[:, j]))


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row power (mean square), variance and kurtosis, in one sweep of power sums."""
    n = rows.shape[1]
    mean = rows.mean(axis=1, keepdims=True, dtype=np.float64)
    d2 = np.subtract(rows, mean, dtype=np.float64)  # one float64 temporary, squared in place
    np.square(d2, out=d2)
    var = d2.mean(axis=1)
    kurt = np.einsum("ij,ij->i", d2, d2) / n / np.maximum(var * var, 1e-300)
    power = var + mean[:, 0] ** 2
    return power, var, kurt


def predict_curve(rows: np.ndarray, bits: range | list[int], half_levels: bool = False) -> dict[int, float]:
    """Predicted relative error (mean over rows of error / row power) for each width in ``bits``.

    ``rows`` is the ``[G, n]`` group view the codebooks are fitted on: one row for a per-tensor codebook.
    ``half_levels``: the levels are stored in float16, so a row held exactly still has their rounding error.
    """
    power, var, kurt = _moments(rows)
    live = power > 1e-12 * float(power.max(initial=0.0))
    n = rows.shape[1]
    # Which rows are held exactly: one distinct-value count per row at the largest K that needs the test serves
    # every smaller K (a row is exact at K when it has at most K distinct values), instead of one scan per width.
    checked = [b for b in bits if (1 << b) * 8 >= n or rows.shape[0] == 1]
    distinct = _distinct_counts(rows, 1 << max(checked)) if checked else None
    exact_error = _rounding_error(rows) if half_levels and checked else 0.0
    out = {}
    for b in bits:
        k = 1 << b
        shrink = np.exp(-FINITE_A * (k / n) ** FINITE_P)
        err = var * unit_error(kurt, k) * shrink
        if distinct is not None and b in checked:
            err = np.where(distinct <= k, exact_error, err)
        out[b] = float(np.mean(err[live] / power[live])) if live.any() else 0.0
    return out


def _rounding_error(rows: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float16's range the tensor keeps float32 levels
        d = rows.astype(np.float64) - rows.astype(np.float16).astype(np.float64)
    d = np.where(np.isfinite(d), d, 0.0)
    return (d * d).mean(axis=1)


_PROBE = 4096  # values of a long row looked at first: more than K distinct among them proves the row inexact


def _distinct_counts(rows: np.ndarray, k: int) -> np.ndarray:
    """Per row, its number of distinct values if at most ``k``, else ``k + 1``.

    Short rows (per-channel rows are only tested when ``8 K >= n``) are counted exactly on their sorted copies, all
    at once. A long row is first probed on an evenly strided sample, where real weights already show more than K
    distinct values; only a row that passes the probe gets the full test.
    """
    g, n = rows.shape
    if n <= _PROBE:
        ordered = np.sort(rows, axis=1)
        counts = 1 + np.count_nonzero(np.diff(ordered, axis=1), axis=1) if n else np.zeros(g, np.int64)
        return np.minimum(counts, k + 1).astype(np.int64)
    out = np.full(g, k + 1, dtype=np.int64)
    for i, row in enumerate(rows):
        if np.unique(row[:: n // _PROBE]).size > k:
            continue
        values = few_distinct(row, k, float(row.min()), float(row.max()))
        if values is not None:
            out[i] = values.size
    return out


def predict_rel_error(w: np.ndarray, axis: int | None, bits: int, per_channel: bool = False) -> float:
    """Predicted :attr:`EncodedTensor.rel_error` of ``w`` at ``bits``: one codebook, or one per channel on ``axis``.

    For one codebook over a tensor with channels, the prediction is for the tensor as a whole (its error over its
    power); the measured figure averages per-channel ratios, so it is higher where channel scales differ a lot.
    """
    from .tensor import to_groups  # tensor imports this module's callers; keep the import graph acyclic

    rows = to_groups(np.asarray(w), axis if per_channel and axis is not None and w.ndim > 1 else None)
    half = per_channel or np.asarray(w).dtype == np.float16
    return predict_curve(rows, [bits], half_levels=half)[bits]
