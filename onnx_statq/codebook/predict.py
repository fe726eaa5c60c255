"""Predict a codebook's error at every K from a tensor's statistics alone, with no clustering run on the weights.

The model behind ``--bits auto`` and the default bit allocation. Three statistics per codebook row suffice:

* the variance sets the scale: the error of an optimal K-level quantizer is ``variance * d(shape, K)``;
* the kurtosis sets the shape: real weights are heavy-tailed, so ``d`` is read from a table of the optimal
  quantizer's error for generalised Gaussians (exponent 0.25 to 4), the family member with the row's kurtosis.
  The table is exact for small K, where high-resolution theory (Panter-Dite) is not;
* the row length ``n`` corrects for the finite sample: with K levels over only n weights, the levels fit the
  sample rather than the distribution, and the error falls by ``1 / (1 + a (K/n)^p (kurtosis/3)^q)``: more for
  heavy tails, and saturating as K nears n. Fitted on generalised-Gaussian samples with the ``sigma`` method, never
  on the benchmark models (``python -m benchmarks.fit_predictor`` refits the constants; they are its last run,
  within ±15% of 81% of its samples). Levels stored in float16 add their rounding error.

A row with at most K distinct values is predicted exact (error 0, or the float16 rounding), as :func:`fit` makes it.

One codebook over a tensor with output channels is measured per channel (the mean of error / channel power), which
the whole tensor's moments cannot predict. Given the channel view (``predict_curve(..., channels=)``),
:func:`sketch_curve` predicts that figure instead: levels placed on a histogram of a sample of the tensor as
``sigma`` places them, applied to the sample channel by channel (any tail shape, no table, no fitted constant).
On the benchmark models (``benchmarks.bench_alloc`` part (a), offline) this took one-codebook layers from 72% to
82% of layer-widths within ±15% for K >= 8, at about 1.7x the prediction's time.
"""

from __future__ import annotations

from math import gamma

import numpy as np

from .ggd_table import GGD_BETAS, GGD_ERROR, GGD_KS
from .stats import few_distinct

__all__ = [
    "FINITE_A",
    "FINITE_P",
    "FINITE_Q",
    "finite_sample",
    "ggd_kurtosis",
    "predict_curve",
    "predict_rel_error",
    "sketch_curve",
    "unit_error",
]

FINITE_A = 3.413
FINITE_P = 0.824
FINITE_Q = 0.686


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


def finite_sample(k: int, n: int, kurtosis: np.ndarray) -> np.ndarray:
    """Measured over population error of a K-level codebook fitted on n weights of the given kurtosis."""
    heavy = (np.maximum(kurtosis, 1.0) / 3.0) ** FINITE_Q
    return 1.0 / (1.0 + FINITE_A * (k / n) ** FINITE_P * heavy)


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


def predict_curve(
    rows: np.ndarray, bits: range | list[int], half_levels: bool = False, channels: np.ndarray | None = None
) -> dict[int, float]:
    """Predicted relative error (mean over rows of error / row power) for each width in ``bits``.

    ``rows`` is the ``[G, n]`` group view the codebooks are fitted on: one row for a per-tensor codebook.
    ``half_levels``: the levels are stored in float16, so a row held exactly still has their rounding error.
    ``channels``: for one codebook over a tensor with output channels, their ``[C, m]`` view; the prediction is
    then of the mean over channels of error / channel power, as :attr:`EncodedTensor.rel_error` measures it
    (:func:`sketch_curve`), instead of the whole tensor's error / power.
    """
    if channels is not None and rows.shape[0] == 1 and channels.shape[0] > 1:
        return _exact_rows(rows, bits, half_levels, sketch_curve(channels, bits))
    power, var, kurt = _moments(rows)
    live = power > 1e-12 * float(power.max(initial=0.0))
    n = rows.shape[1]
    # Which rows are held exactly: one distinct-value count per row at the largest K that needs the test serves
    # every smaller K (a row is exact at K when it has at most K distinct values), instead of one scan per width.
    checked = [b for b in bits if (1 << b) * 8 >= n or rows.shape[0] == 1]
    distinct = _distinct_counts(rows, 1 << max(checked)) if checked else None
    # float16 levels add their own rounding to every weight: what an exact row keeps, and, independent of the
    # placement error, what an inexact one adds (it dominates in channels of ~1e-5 weights, near float16's floor)
    exact_error = _rounding_error(rows) if half_levels else np.zeros(rows.shape[0])
    out = {}
    for b in bits:
        k = 1 << b
        err = var * unit_error(kurt, k) * finite_sample(k, n, kurt) + exact_error
        if distinct is not None and b in checked:
            err = np.where(distinct <= k, exact_error, err)
        out[b] = float(np.mean(err[live] / power[live])) if live.any() else 0.0
    return out


def _exact_rows(rows: np.ndarray, bits: range | list[int], half: bool, curve: dict[int, float]) -> dict[int, float]:
    """``curve`` with the widths at which the single row ``rows`` is held exactly set to its rounding error."""
    distinct = int(_distinct_counts(rows, 1 << max(bits))[0])
    if distinct > 1 << max(bits):
        return curve
    power = max(float(np.mean(np.square(rows, dtype=np.float64))), 1e-300)
    exact = float(_rounding_error(rows)[0]) / power if half else 0.0
    return {b: exact if distinct <= 1 << b else v for b, v in curve.items()}


SKETCH_CHANNELS = 256  # channels a sketch curve looks at (evenly strided)
SKETCH_VALUES = 1 << 15  # weights its histogram holds, at least SKETCH_PER_CHANNEL of each channel it keeps
SKETCH_EVAL = 1 << 15  # of those, the weights the levels are applied to
SKETCH_PER_CHANNEL = 32
SKETCH_BINS = 1024
SKETCH_STEPS = 20


def _channel_sample(channels: np.ndarray, size: int) -> np.ndarray:
    """An evenly strided ``[C', m]`` float64 sample: at most ``SKETCH_CHANNELS`` channels and about ``size``
    weights, with enough of each channel for its own error / power."""
    c, m = channels.shape
    kept = channels[:: -(-c // SKETCH_CHANNELS)]
    step = max(1, min(-(-kept.size // size), m // SKETCH_PER_CHANNEL))
    return kept[:, ::step].astype(np.float64)


def sketch_curve(channels: np.ndarray, bits: range | list[int]) -> dict[int, float]:
    """Mean over channels of error / channel power of one codebook for the whole tensor, for each width.

    Panter-Dite in practice, for any tail shape: levels start at the quantiles of the cube-root density of a
    histogram of the tensor (a sample of it), and a few centroid steps on that histogram (``SKETCH_BINS`` bins, not
    on the weights) correct them for small K, as ``sigma`` does; the levels are then applied to the sample, channel
    by channel. The histogram holds every weight of a tensor up to ``SKETCH_VALUES``, so for those the levels fit
    the sample as a fitted codebook does (no finite-sample term); larger tensors have K/n small enough not to need
    one. Nothing here is fitted to any model.
    """
    from .fit import PLACEMENT_PER_BIN, _sketch, _SortedRuns  # fit imports nothing of this module: no cycle

    flat = _channel_sample(channels, SKETCH_VALUES).reshape(1, -1)
    sample = _channel_sample(channels, SKETCH_EVAL)
    counts, centers, edges = _sketch(flat, SKETCH_BINS)
    merge = 1 << max(0, int(np.log2(SKETCH_BINS / max(16, channels.size // PLACEMENT_PER_BIN))))
    coarse = counts[0].reshape(-1, merge).sum(axis=1)  # the placement density, on a coarse grid: see sigma_levels
    width = np.maximum(np.diff(edges[0, ::merge]), 1e-300)
    cum = np.concatenate([[0.0], np.cumsum(np.cbrt(coarse / width) * width)])
    used = counts[0] > 0
    runs = _SortedRuns(centers[:, used], counts[:, used])
    power = np.einsum("ij,ij->i", sample, sample)
    live = power > 1e-12 * float(power.max(initial=0.0))
    out = {}
    for b in bits:
        k = 1 << b
        start = np.interp((np.arange(k) + 0.5) / k * cum[-1], cum, edges[0, ::merge])
        levels = np.sort(runs.lloyd(start[None, :], SKETCH_STEPS)[0][0])
        d = sample - levels[np.searchsorted((levels[1:] + levels[:-1]) / 2, sample)]
        err = np.einsum("ij,ij->i", d, d)
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
