"""One-pass summary statistics of a weight row, the only input the statistical method needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RowStats", "few_distinct", "histogram", "row_stats"]


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
