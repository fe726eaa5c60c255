"""The sketch ``sigma`` reads instead of the weights: counts and bin means on a grid uniform in asinh of the
standardised weight, from an evenly strided subsample of long rows with their extremes taken exactly.

Its constants are shared with the predictor (:mod:`.predict_tensor`, :mod:`.predict_rows`), which emulates sigma's
rule on sketches of its own and must see the same grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BIN_BLOCK",
    "PLACEMENT_PER_BIN",
    "SKETCH_BINS",
    "SKETCH_SAMPLE",
    "SKETCH_STEPS",
    "SKETCH_TAIL",
    "TAIL_MIN_K",
    "Standardised",
    "asinh_grid",
    "bin_index",
    "bin_rows",
    "density_starts",
    "grid_edges",
    "standardise",
    "tail_complete",
]

SKETCH_BINS = 4096
SKETCH_STEPS = 48
SKETCH_SAMPLE = 1 << 18
SKETCH_TAIL = 64  # subsample values beyond which a long row's weights are all sketched (tail_complete)
TAIL_MIN_K = 128  # from this K on (7 bits) a long row's sketch holds all its extremes: see tail_complete
PLACEMENT_PER_BIN = 32


def tail_complete(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An evenly strided subsample of long rows, each value weighted by the stride, with the row's extremes exact.

    Beyond the ``SKETCH_TAIL``-th largest deviation of the subsample, every weight of the full row is taken with
    weight 1 (and the subsample's own values there are dropped): a subsample misses most of the few outliers of a
    heavy-tailed row, and once K is large enough to give them levels (7-8 bits) a missed outlier costs more than
    the whole rest of the row: on MiniLM's and PP-OCRv6's tensors longer than the subsample, the 8-bit squared
    error fell to 0.46x (geomean; down to 0.03x) and 7-bit to 0.59x. Below ``TAIL_MIN_K`` the plain subsample is
    kept, so 2-6 bits are unchanged. Rows are padded to a common length with weight 0.
    """
    step = -(-x.shape[1] // SKETCH_SAMPLE)
    sub = x[:, ::step]
    mu = sub.mean(axis=1, keepdims=True, dtype=np.float64)
    dev = np.abs(sub - mu)
    thr = np.partition(dev, dev.shape[1] - SKETCH_TAIL, axis=1)[:, -SKETCH_TAIL:].min(axis=1, keepdims=True)
    rows, cols = np.nonzero(np.abs(x - mu) >= thr)
    per_row = np.bincount(rows, minlength=x.shape[0])
    tail = np.repeat(mu, per_row.max(initial=0), axis=1)
    tail_w = np.zeros(tail.shape)
    pos = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    tail[rows, pos], tail_w[rows, pos] = x[rows, cols], 1.0
    core_w = np.where(dev < thr, float(step), 0.0)
    return np.concatenate([sub, tail], axis=1), np.concatenate([core_w, tail_w], axis=1)


@dataclass(frozen=True)
class Standardised:
    """Rows (as sketched: possibly a subsample) in asinh of their standardised value, with the grid's range.

    Everything a sketch computes that does not depend on its number of bins: ``sigma_levels`` sketches the same
    rows at two resolutions, and the moments and the asinh are most of a sketch's cost.
    """

    x: np.ndarray
    weights: np.ndarray | None
    u: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    ulo: np.ndarray
    span: np.ndarray


def standardise(x: np.ndarray, exact_tails: bool = False) -> Standardised:
    """The bin-independent half of :func:`bin_rows` (the subsample, and with ``exact_tails`` the exact tails of
    :func:`tail_complete`)."""
    weights = None
    if x.shape[1] > SKETCH_SAMPLE and exact_tails:
        x, weights = tail_complete(x)
    elif x.shape[1] > SKETCH_SAMPLE:
        x = x[:, :: -(-x.shape[1] // SKETCH_SAMPLE)]
    return asinh_grid(x, weights)


def asinh_grid(x: np.ndarray, weights: np.ndarray | None = None) -> Standardised:
    """Rows ``x`` as they are sketched (``weights``: what each value stands for) in asinh of their standardised
    value, in float32, with each row's range. The predictor (:mod:`.predict_tensor`) builds sigma's sketch of a
    long tensor from its own sample and must land on the same grid, so both call this."""
    xf = x if x.dtype == np.float32 else x.astype(np.float32)
    mu = xf.mean(axis=1, keepdims=True, dtype=np.float64)
    u = np.subtract(xf, mu.astype(np.float32))
    with np.errstate(over="ignore", invalid="ignore"):
        sd = np.sqrt(np.square(u).mean(axis=1, keepdims=True, dtype=np.float64))
    if not np.all(np.isfinite(sd)):  # float32 squares overflow past ~1e19 (a corrupted weight): use float64
        sd = np.sqrt(np.square(x - mu).mean(axis=1, keepdims=True))
        u = x - mu.astype(x.dtype)
    sd = np.where(sd > 0, sd, 1.0)
    u /= sd.astype(u.dtype)
    np.arcsinh(u, out=u)
    ulo, uhi = u.min(axis=1, keepdims=True).astype(np.float64), u.max(axis=1, keepdims=True).astype(np.float64)
    span = np.where(uhi > ulo, uhi - ulo, 1.0)
    return Standardised(x, weights, u, mu, sd, ulo, span)


BIN_BLOCK = 1 << 16  # weights binned at a time (whole rows): the temporaries stay in cache


def bin_index(s: Standardised, bins: int, r0: int = 0, r1: int | None = None) -> np.ndarray:
    """int64 ``[r1 - r0, n]``: each value's bin of ``bins`` uniform in its row's asinh range, for rows r0:r1."""
    t = np.subtract(s.u[r0:r1], s.ulo[r0:r1], dtype=np.float64)
    t *= bins / s.span[r0:r1]
    b = t.astype(np.int64)
    np.clip(b, 0, bins - 1, out=b)
    return b


def grid_edges(s: Standardised, bins: int) -> np.ndarray:
    """``[G, bins + 1]``: the bin edges of each row's grid, in value units."""
    return s.mu + s.sd * np.sinh(s.ulo + s.span * np.linspace(0.0, 1.0, bins + 1)[None, :])


def bin_rows(s: Standardised, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, bin means and bin edges of each row of ``s`` on ``bins`` bins uniform in its asinh range.

    The asinh grid is fine in the core and coarse in the tails, so one fixed-size summary resolves both the bulk of
    a heavy-tailed tensor and its outliers; the histogram's shape, not its exact counts, is what places the levels.

    Rows are binned a block at a time: a bin belongs to one row, so its counts and sums add the same weights in the
    same order as one call over every row would.
    """
    g, n = s.u.shape
    counts, sums = np.empty((g, bins)), np.empty((g, bins))
    rows = max(1, BIN_BLOCK // max(n, 1))
    for r0 in range(0, g, rows):
        r1 = min(g, r0 + rows)
        b = bin_index(s, bins, r0, r1)
        if r1 - r0 > 1:
            b += np.arange(r1 - r0)[:, None] * bins
        flat = b.ravel()
        w = None if s.weights is None else s.weights[r0:r1].ravel()
        wx = s.x[r0:r1] if s.weights is None else s.x[r0:r1] * s.weights[r0:r1]
        counts[r0:r1] = np.bincount(flat, weights=w, minlength=(r1 - r0) * bins).reshape(r1 - r0, bins)
        sums[r0:r1] = np.bincount(flat, weights=wx.ravel(), minlength=(r1 - r0) * bins).reshape(r1 - r0, bins)
    edges = grid_edges(s, bins)
    centers = np.where(counts > 0, sums / np.maximum(counts, 1), 0.5 * (edges[:, 1:] + edges[:, :-1]))
    return counts, centers, edges


def density_starts(counts: np.ndarray, edges: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Sigma's start for one row's sketch: for each K in ``ks``, the K quantiles of the cube-root density
    (Panter-Dite: the point density that minimises squared error), flat, K by K. The fit and the predictor, which
    emulates it, must start from the same levels."""
    width = np.maximum(np.diff(edges), 1e-300)
    dens = np.concatenate([[0.0], np.cumsum(np.cbrt(counts / width) * width)])
    return np.concatenate([np.interp((np.arange(k) + 0.5) / k * dens[-1], dens, edges) for k in ks])
