"""Codebook fitting: the statistical method, exact 1-D k-means, and a uniform grid.

Every method maps a ``[G, n]`` group view to float64 levels ``[G, K]``; :func:`fit` then replaces rows that hold at
most K distinct values by exactly those values (so such tensors round-trip without error), rounds the levels to their
storage type and sorts them.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable

import numpy as np

from .assign import assign_rows
from .sketch import (
    BIN_BLOCK,
    PLACEMENT_PER_BIN,
    SKETCH_BINS,
    SKETCH_STEPS,
    TAIL_MIN_K,
    bin_rows,
    density_starts,
    standardise,
)
from .stats import few_distinct, sampled_beyond
from .types import MAX_BITS, Codebook, LevelDType, Method

__all__ = [
    "fit",
    "kmeans_levels",
    "sigma_levels",
    "uniform_levels",
]

logger = logging.getLogger(__name__)

KMEANS_MAX_ITER = 10000
SCALAR_MAX_K = 16  # up to this many levels, one row's Lloyd steps run faster in Python floats than in NumPy


def _level_means(
    values: np.ndarray, idx: np.ndarray, k: int, weights: np.ndarray | None, prev: np.ndarray
) -> np.ndarray:
    """Per-row, per-level (weighted) mean of ``values`` under assignment ``idx``; empty levels keep ``prev``.

    Counted a block of rows at a time (each level belongs to one row, so its sums add the same values in the same
    order as one count over every row would), to keep the temporaries in cache.
    """
    g, n = values.shape
    counts, sums = np.empty(g * k), np.empty(g * k)
    rows = max(1, BIN_BLOCK // max(n, 1))
    for r0 in range(0, g, rows):
        r1 = min(g, r0 + rows)
        part = idx[r0:r1]
        flat = part.astype(np.int64) if r1 - r0 == 1 else (np.arange(r1 - r0)[:, None] * k + part)
        flat = flat.ravel()
        w = None if weights is None else weights[r0:r1]
        wv = values[r0:r1] if w is None else values[r0:r1] * w
        counts[r0 * k : r1 * k] = np.bincount(flat, weights=None if w is None else w.ravel(), minlength=(r1 - r0) * k)
        sums[r0 * k : r1 * k] = np.bincount(flat, weights=wv.ravel(), minlength=(r1 - r0) * k)
    out = prev.copy()
    used = counts.reshape(g, k) > 0
    out[used] = sums.reshape(g, k)[used] / counts.reshape(g, k)[used]
    return np.sort(out, axis=1)


class _SortedRuns:
    """Rows of sorted values with weights, laid end to end so that one binary search serves every row.

    In one dimension every cluster is a contiguous run of sorted values, so a Lloyd step is K-1 binary searches and
    prefix-sum differences: O(GK log(Gm)) instead of O(GmK). Row ``g`` is mapped into ``[2g, 2g + 1]`` to keep rows
    apart in the shared search. A step runs on arrays of only ``G(K+1)`` entries, so its cost is the number of NumPy
    calls: the weight and value prefix sums are gathered together, and the run boundaries are written into a buffer
    that already holds each row's start and end.
    """

    def __init__(self, values: np.ndarray, weights: np.ndarray) -> None:
        g, m = values.shape
        self.lo = values[:, :1]
        self.span = np.maximum(values[:, -1:] - self.lo, 1e-300)
        self.off = 2.0 * np.arange(g)[:, None]
        self.keyed = ((values - self.lo) / self.span + self.off).ravel()
        self.cw = np.concatenate(([0.0], np.cumsum(weights.ravel())))
        self.cs = np.concatenate(([0.0], np.cumsum((values * weights).ravel())))
        self.cs2 = np.concatenate(([0.0], np.cumsum((values * values * weights).ravel())))
        self.cws = np.stack([self.cw, self.cs], axis=1)  # one gather fetches both sums of a run
        self.start = (np.arange(g) * m)[:, None]
        self.end = self.start + m

    def _bounds(self, levels: np.ndarray) -> np.ndarray:
        """:meth:`bounds` without its floating-point error state (the caller sets it once for many steps)."""
        g = levels.shape[0]
        thr = ((levels[:, 1:] + levels[:, :-1]) * 0.5 - self.lo) / self.span + self.off
        inner = self.keyed.searchsorted(thr.ravel(), side="right").reshape(thr.shape)
        if g > 1:  # one row's search stays in [0, m]; several rows' may land in a neighbour's range
            np.maximum(inner, self.start, out=inner)
            np.minimum(inner, self.end, out=inner)
        out = np.empty((g, levels.shape[1] + 1), dtype=inner.dtype)
        out[:, :1], out[:, 1:-1], out[:, -1:] = self.start, inner, self.end
        return out

    def bounds(self, levels: np.ndarray) -> np.ndarray:
        """Run boundaries ``[G, K+1]`` of the nearest-level clusters (ties to the lower level)."""
        with np.errstate(over="ignore"):  # a constant row's span is 1e-300: its thresholds may be +-inf, still right
            return self._bounds(levels)

    def means(self, bounds: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """Per-run weighted means, sorted per row; an empty run keeps its level from ``prev``."""
        ends = self.cws[bounds]
        run = ends[:, 1:] - ends[:, :-1]
        cnt, sums = run[..., 0], run[..., 1]
        out = np.array(prev, dtype=np.float64)
        np.divide(sums, cnt, out=out, where=cnt > 0)
        out.sort(axis=1)
        return out

    def sse(self, levels: np.ndarray) -> np.ndarray:
        """Per-row squared error of nearest-level assignment, from prefix sums."""
        b = self.bounds(levels)
        cnt = self.cw[b[:, 1:]] - self.cw[b[:, :-1]]
        s1 = self.cs[b[:, 1:]] - self.cs[b[:, :-1]]
        s2 = self.cs2[b[:, 1:]] - self.cs2[b[:, :-1]]
        return np.sum(s2 - 2 * levels * s1 + cnt * levels * levels, axis=1)

    def lloyd(self, levels: np.ndarray, max_steps: int) -> tuple[np.ndarray, int]:
        """Centroid steps until no boundary moves or ``max_steps``; returns levels and the steps taken."""
        if levels.shape[0] == 1 and levels.shape[1] <= SCALAR_MAX_K and self._scalar_safe(levels):
            return self._lloyd_one(levels, max_steps)
        bounds = None
        with np.errstate(over="ignore"):  # see bounds
            for step in range(max_steps):
                new = self._bounds(levels)
                if bounds is not None and bool((new == bounds).all()):
                    return levels, step
                bounds = new
                levels = self.means(bounds, levels)
        return levels, max_steps

    def _scalar_safe(self, levels: np.ndarray) -> bool:
        """Whether Python floats reproduce NumPy's steps: no NaN (NumPy sorts it last) and no overflowing sum."""
        return bool(np.isfinite(levels).all() and np.isfinite(self.cws[-1]).all() and not np.isnan(self.keyed).any())

    def _lloyd_one(self, levels: np.ndarray, max_steps: int) -> tuple[np.ndarray, int]:
        """:meth:`lloyd` for one row of at most ``SCALAR_MAX_K`` levels, in Python floats.

        The same IEEE operations in the same order (bisect_right is searchsorted's side="right"), so the same
        levels; a step costs a few microseconds instead of about fifteen NumPy calls. NumPy's sort may order -0.0
        and 0.0 differently from Python's, so a step whose levels hold a zero is sorted by NumPy.
        """
        keyed, cw, cs = self.keyed.tolist(), self.cw.tolist(), self.cs.tolist()
        lo, span, off = float(self.lo[0, 0]), float(self.span[0, 0]), float(self.off[0, 0])
        m = len(keyed)
        lv = levels[0].tolist()
        bounds = None
        for step in range(max_steps):
            thr = [((a + b) * 0.5 - lo) / span + off for a, b in zip(lv[1:], lv[:-1], strict=True)]
            new = [0, *(bisect_right(keyed, t) for t in thr), m]
            if new == bounds:
                return np.array([lv]), step
            bounds = new
            out = []
            for j, prev in enumerate(lv):
                cnt = cw[new[j + 1]] - cw[new[j]]
                out.append((cs[new[j + 1]] - cs[new[j]]) / cnt if cnt > 0 else prev)
            lv = np.sort(np.array(out)).tolist() if 0.0 in out else sorted(out)
        return np.array([lv]), max_steps


def sigma_levels(x: np.ndarray, k: int, steps: int = SKETCH_STEPS) -> np.ndarray:
    """Levels from the weights' statistics: a one-sweep sketch, closed-form placement, a few refinement steps.

    The sketch (counts and means on an asinh grid) is the only statistic the placement reads. Levels start at the
    quantiles of the cube-root density (Panter-Dite: the point density that minimises squared error), so the
    clipping range widens with K and follows the tails instead of sitting at a fixed three sigma. The density comes
    from a coarse sketch (``PLACEMENT_PER_BIN`` weights per bin on average): the cube root of a sparse histogram is
    flat, and would spread levels into empty tails. At most ``steps`` centroid steps then correct the
    high-resolution approximation for small K and sparse tails, on a fine sketch, or on the weights themselves
    when a row is no longer than the sketch (there, an equal-count start is also tried, as K nears the row length);
    a last sweep sets each level to the mean of its weights.
    """
    g, n = x.shape
    coarse = int(min(SKETCH_BINS, max(16, n // PLACEMENT_PER_BIN)))
    tails = k >= TAIL_MIN_K
    std = standardise(x, tails)  # shared by the coarse and the fine sketch
    sketch = bin_rows(std, coarse)
    counts, _, edges = sketch
    levels = np.stack([density_starts(counts[r], edges[r], [k]) for r in range(g)])
    if n <= SKETCH_BINS:
        xs = np.sort(x, axis=1)
        runs = _SortedRuns(xs, np.ones_like(xs))
        levels, _ = runs.lloyd(levels, steps)
        start = np.round(np.linspace(0, n, k + 1)).astype(np.int64)[None, :] + runs.start
        alt, _ = runs.lloyd(runs.means(start, np.zeros((g, k))), steps)
        levels = np.where((runs.sse(alt) < runs.sse(levels))[:, None], alt, levels)
    else:
        fine_counts, centers, _ = sketch if coarse == SKETCH_BINS else bin_rows(std, SKETCH_BINS)
        levels, _ = _SortedRuns(centers, fine_counts).lloyd(levels, steps)
    return _level_means(x, assign_rows(levels, x), k, None, levels)


def kmeans_levels(x: np.ndarray, k: int) -> np.ndarray:
    """1-D Lloyd k-means per row, run to convergence: the Deep Compression baseline, made strong.

    Runs on the sorted values (see :class:`_SortedRuns`), so converging costs little even at K=256. Lloyd only finds
    a local optimum, so it starts twice, deterministically, and keeps the better result per row: from K equal-count
    runs (uses all K levels) and from the cube-root-density placement (follows heavy tails, where equal-count
    starts leave the outliers with too few levels).
    """
    g, n = x.shape
    xs = np.sort(x, axis=1)
    runs = _SortedRuns(xs, np.ones_like(xs))
    start = np.round(np.linspace(0, n, k + 1)).astype(np.int64)[None, :] + runs.start
    best = None
    for init in (runs.means(start, np.zeros((g, k))), sigma_levels(x, k)):
        levels, steps = runs.lloyd(np.sort(init, axis=1), KMEANS_MAX_ITER)
        if steps == KMEANS_MAX_ITER:
            logger.debug("k-means stopped after %d iterations before converging (k=%d, n=%d)", steps, k, n)
        if best is None:
            best = levels
        else:
            better = runs.sse(levels) < runs.sse(best)
            best = np.where(better[:, None], levels, best)
    assert best is not None
    return best


def uniform_levels(x: np.ndarray, k: int) -> np.ndarray:
    """Evenly spaced levels over each row's range: plain asymmetric integer quantization."""
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    return lo + (hi - lo) * np.linspace(0.0, 1.0, k)[None, :]


_METHODS: dict[Method, Callable[[np.ndarray, int], np.ndarray]] = {
    Method.SIGMA: sigma_levels,
    Method.KMEANS: kmeans_levels,
    Method.UNIFORM: uniform_levels,
}


def fit(
    groups: np.ndarray,
    bits: int,
    method: Method | str = Method.SIGMA,
    level_dtype: LevelDType | str = LevelDType.FLOAT32,
) -> Codebook:
    """Fit one codebook of ``2**bits`` levels per row of the ``[G, n]`` group view."""
    groups = np.asarray(groups)
    if groups.ndim != 2 or groups.size == 0:
        raise ValueError(f"fit expects a non-empty [G, n] group view, got shape {groups.shape}")
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be between 1 and {MAX_BITS}, got {bits}")
    k = 1 << bits
    # no method writes into x: a C-contiguous float64 view is its own copy (same values, same layout)
    x = groups if groups.dtype == np.float64 and groups.flags.c_contiguous else groups.astype(np.float64)
    levels = _METHODS[Method(method)](x, k)
    ldt = LevelDType(level_dtype)
    np_dtype = np.float16 if ldt == LevelDType.FLOAT16 else np.float32
    table = np.sort(levels.astype(np_dtype).astype(np.float32), axis=1)
    for g in np.flatnonzero(~sampled_beyond(x, k)):  # most rows are proved to hold more than K values
        exact = few_distinct(x[g], k, float(x[g].min()), float(x[g].max()))
        if exact is not None:
            lv = np.sort(exact.astype(np_dtype).astype(np.float32))
            table[g, : lv.size] = lv
            table[g, lv.size :] = lv[-1]
    return Codebook(levels=table, bits=bits, level_dtype=ldt)
