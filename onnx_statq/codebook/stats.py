"""One-pass summary statistics of weight rows: moments for ``inspect``, and the distinct-value counts, tail samples and
float16 rounding that :mod:`.fit` and the predictor read beside their sketches (:mod:`.sketch`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RowStats", "distinct_counts", "few_distinct", "histogram", "rounding_error", "row_stats", "sampled_beyond"]


@dataclass(frozen=True)
class RowStats:
    """Moments and range of one group of weights."""

    n: int
    mean: float
    std: float
    kurtosis: float
    lo: float
    hi: float


def row_stats(x: np.ndarray) -> RowStats:
    """Mean, standard deviation, (non-excess) kurtosis and range in a single sweep of power sums."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    mean = float(x.mean())
    d = x - mean
    d2 = d * d
    var = float(d2.mean())
    m4 = float((d2 * d2).mean())
    kurt = m4 / (var * var) if var > 0 else 0.0
    return RowStats(n=n, mean=mean, std=var**0.5, kurtosis=kurt, lo=float(x.min()), hi=float(x.max()))


def histogram(x: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts over ``bins`` equal bins of ``[lo, hi]``; bincount is several times faster than np.histogram."""
    if hi <= lo:
        out = np.zeros(bins, dtype=np.int64)
        out[0] = x.size
        return out
    scale = bins / (hi - lo)
    idx = ((x - lo) * scale).astype(np.int64)
    np.clip(idx, 0, bins - 1, out=idx)
    return np.bincount(idx, minlength=bins)


def few_distinct(x: np.ndarray, k: int, lo: float, hi: float) -> np.ndarray | None:
    """The sorted distinct values of ``x`` if there are at most ``k`` of them, else None.

    A full ``np.unique`` is a sort; a 4k-bin histogram with more than ``k`` occupied bins proves there are more than
    ``k`` distinct values without one, so the sort only runs when it is likely to pay.
    """
    if x.size <= k:
        return np.unique(x)
    if int(np.count_nonzero(histogram(x, lo, hi, 4 * k))) > k:
        return None
    u = np.unique(x)
    return u if u.size <= k else None


def rounding_error(rows: np.ndarray) -> np.ndarray:
    """Per row, the mean squared error of rounding each weight to float16 (what float16 levels add to it).

    Rounded on float32's bits (mantissa to 10 bits, ties to even; float16's subnormals on their 2^-24 grid): exact,
    and unlike numpy's float16 conversion not 20x slower on real weights, many of which are float16 subnormals.
    Beyond float16's range the tensor keeps float32 levels: no rounding.
    """
    x = np.asarray(rows)
    if x.dtype == np.float16:
        return np.zeros(x.shape[0])
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    bits = x32.view(np.uint32)
    # in place, and the subnormal and overflow masks only where the range has such weights: this runs on every
    # live row of a per-channel prediction
    r = bits >> np.uint32(13)
    r &= np.uint32(1)
    r += bits
    r += np.uint32(0x0FFF)
    r &= np.uint32(0xFFFFE000)
    r = r.view(np.float32)
    mag = np.abs(x32)
    least, most = (float(mag.min()), float(mag.max())) if mag.size else (1.0, 0.0)
    if not least >= 2.0**-14:  # also NaN
        tiny = mag < np.float32(2.0**-14)
        r[tiny] = np.round(x32[tiny] * np.float32(2.0**24)) * np.float32(2.0**-24)
    with np.errstate(invalid="ignore"):  # inf - inf: zeroed below
        d = np.subtract(x32, r, out=r) if x.dtype == np.float32 else x.astype(np.float64) - r
    if not most < 65520.0:  # also NaN
        d[~(mag < np.float32(65520.0))] = 0.0
    return np.einsum("ij,ij->i", d, d, dtype=np.float64) / max(x.shape[1], 1)


_PROBE = 4096  # values of a long row looked at first: more than K distinct among them proves the row inexact


def distinct_counts(rows: np.ndarray, k: int) -> np.ndarray:
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


def sampled_beyond(x: np.ndarray, k: int) -> np.ndarray:
    """Per row of the ``[G, n]`` array ``x``, whether an evenly strided sample of it holds more than ``k`` values.

    Proof, at the cost of sorting about ``8 k`` values, that a row is not one :func:`few_distinct` would return:
    real weights show more than K distinct values in any sample of a few times K, so the full test (a sweep of
    the row) is left to the rare row that passes. False is no proof either way. A sample with a NaN never proves
    anything (``np.unique`` counts all NaNs as one value; comparing them would count each).
    """
    n = x.shape[1]
    sample = np.sort(x[:, :: max(1, n // max(64, 8 * k))], axis=1)
    distinct = 1 + np.count_nonzero(sample[:, 1:] != sample[:, :-1], axis=1)
    return (distinct > k) & ~np.isnan(sample[:, -1])
