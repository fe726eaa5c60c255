"""Predicted error of one codebook per row (per output channel): sigma's rule on a few strided rows."""

from __future__ import annotations

import numpy as np

from .runs import CodebookRuns
from .sketch import PLACEMENT_PER_BIN, SKETCH_BINS, SKETCH_SAMPLE, SKETCH_STEPS
from .stats import rounding_error

__all__ = ["ROW_STEPS", "ROW_VALUES", "SKETCH_ROWS", "row_sketch_curve"]

SKETCH_ROWS = 64  # per-channel codebooks: the rows (evenly strided) whose codebooks are emulated
ROW_STEPS = 4  # centroid steps on a row of at most SKETCH_BINS weights, from each of sigma's two starts
ROW_VALUES = 4096  # a longer row's distinct values and float16 rounding are counted on this many, evenly strided


def row_sketch_curve(rows: np.ndarray, bits: range | list[int], half_levels: bool = False) -> dict[int, float]:
    """Mean over live rows of error / row power of one codebook per row of ``[G, n]``, per width.

    What is computed: sigma's rule run on ``SKETCH_ROWS`` evenly strided live rows, every K at once: each row's
    cube-root-density start on its coarse asinh grid and the equal-count start, ``ROW_STEPS`` centroid steps from
    each on the sorted row, the better kept, each level then the mean of its weights, and the squared error from the
    row's prefix sums (a row longer than ``SKETCH_BINS``: on its histogram, :func:`_long_rows`); a row with at most K
    distinct values is exact. With ``half_levels``, the float16 rounding of every live row is added. The rows' shapes
    are real weights' (a Gaussian bulk with a few outliers, a handful of distinct values in a depthwise kernel), not a
    table's: the closed-form model (``benchmarks.ggd_model.ggd_curve``) was off by 1.5-3x on such rows of PP-OCRv6
    det.
    """

    rows = np.asarray(rows)
    n = rows.shape[1]
    power = np.einsum("ij,ij->i", rows, rows, dtype=np.float64) / max(n, 1)
    live = power > 1e-12 * float(power.max(initial=0.0))
    if not live.any():
        return dict.fromkeys(bits, 0.0)
    stride = max(1, -(-n // ROW_VALUES))
    # every live row's float16 rounding (a few tiny rows dominate it), on the same strided sample of a long row
    rounding = float(np.mean(rounding_error(rows[live, ::stride]) / power[live])) if half_levels else 0.0
    alive = np.flatnonzero(live)
    pick = alive[np.unique(np.linspace(0, alive.size - 1, min(alive.size, SKETCH_ROWS)).astype(np.int64))]
    xs = np.sort(rows[pick, ::stride].astype(np.float64), axis=1)
    r, m = xs.shape
    distinct = 1 + np.count_nonzero(np.diff(xs, axis=1), axis=1)
    ks = [1 << b for b in bits if bool((distinct > 1 << b).any())]
    out = dict.fromkeys(bits, rounding)
    if not ks:
        return out
    if n > SKETCH_BINS:
        sse = _long_rows(rows[pick], ks)
    else:
        lo = xs[:, :1]
        span = np.maximum(xs[:, -1:] - lo, 1e-300)
        runs = CodebookRuns((xs - lo) / span, None, [np.full(r, k) for k in ks])
        # the better of sigma's two starts, each after its steps and a last mean (the error: each run's spread)
        sse = np.minimum(
            runs.spread(runs.lloyd(_row_starts(xs, ks, lo, span), ROW_STEPS)),
            runs.spread(runs.lloyd(runs.equal_count(), ROW_STEPS)),
        )
        sse = sse.reshape(len(ks), r) * (span[:, 0] ** 2 / m)[None, :]  # mean squared error per row
    for b in bits:
        if 1 << b in ks:
            err = np.where(distinct <= 1 << b, 0.0, sse[ks.index(1 << b)]) / power[pick]
            out[b] = float(np.mean(err)) + rounding
    return out


def _row_starts(xs: np.ndarray, ks: list[int], lo: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Per sorted row and K, sigma's start: K quantiles of the cube-root density on the row's coarse asinh grid, in
    the row's range units, flat width by width, row by row (as :class:`_Runs` lays its codebooks out)."""

    r, m = xs.shape
    coarse = int(max(16, m // PLACEMENT_PER_BIN))
    mu = xs.mean(axis=1, keepdims=True)
    sd = xs.std(axis=1, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    ulo, uhi = np.arcsinh((xs[:, :1] - mu) / sd), np.arcsinh((xs[:, -1:] - mu) / sd)
    edges = (mu + sd * np.sinh(ulo + (uhi - ulo) * np.linspace(0.0, 1.0, coarse + 1)[None, :]) - lo) / span
    band = 2.0 * np.arange(r)[:, None]  # rows laid end to end, as in _Runs
    keyed = ((xs - lo) / span + band).ravel()
    pos = np.searchsorted(keyed, (edges[:, 1:-1] + band).ravel(), side="left").reshape(r, coarse - 1)
    pos = np.concatenate([np.zeros((r, 1), np.int64), pos - (np.arange(r) * m)[:, None], np.full((r, 1), m)], 1)
    return _quantiles(np.diff(pos, axis=1).astype(np.float64), edges, ks)


def _quantiles(counts: np.ndarray, edges: np.ndarray, ks: list[int]) -> np.ndarray:
    """Per row of bin ``counts`` on ``edges`` (``[r, c]``, ``[r, c + 1]``), the K quantiles of the cube-root density
    for each K, flat width by width, row by row: sigma's start, every row at once."""
    r, c = counts.shape
    width = np.maximum(np.diff(edges, axis=1), 1e-300)
    dens = np.cumsum(np.cbrt(counts / width) * width, axis=1)
    dens = np.concatenate([np.zeros((r, 1)), dens / np.maximum(dens[:, -1:], 1e-300)], axis=1)
    band = 2.0 * np.arange(r)[:, None]
    flat_dens = (dens + band).ravel()
    out = []
    for k in ks:  # np.interp of each row's quantiles, all rows at once
        t = (np.arange(k) + 0.5)[None, :] / k
        j = np.searchsorted(flat_dens, (t + band).ravel(), side="right").reshape(r, k) - 1
        j = np.clip(j - (np.arange(r) * (c + 1))[:, None], 0, c - 1)
        d0, d1 = np.take_along_axis(dens, j, 1), np.take_along_axis(dens, j + 1, 1)
        e0, e1 = np.take_along_axis(edges, j, 1), np.take_along_axis(edges, j + 1, 1)
        f = np.where(d1 > d0, (t - d0) / np.where(d1 > d0, d1 - d0, 1.0), 0.0)
        out.append((e0 + np.clip(f, 0.0, 1.0) * (e1 - e0)).ravel())
    return np.concatenate(out)


def _long_rows(x: np.ndarray, ks: list[int]) -> np.ndarray:
    """``[len(ks), r]`` mean squared error of sigma's codebook for each row of ``x`` longer than ``SKETCH_BINS``.

    Sigma does not step such a row on its weights but on its fine histogram (``SKETCH_BINS`` bins on the row's asinh
    grid, of its subsample beyond ``SKETCH_SAMPLE``), whose coarse tail bins hold its outliers' levels back: run on
    the weights, the same rule came out 2-4x low at 6-8 bits on rows of 20,000 weights with 0.1% outliers. So the
    histogram is built as sigma builds it, with each bin's exact power sums, and stepped as sigma steps it; the error
    is then each run's spread (each level the mean of its weights, as fit ends).
    """

    x = x[:, :: -(-x.shape[1] // SKETCH_SAMPLE)].astype(np.float64)
    r, m = x.shape
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    u = np.arcsinh((x - mu) / sd)
    ulo, uhi = u.min(axis=1, keepdims=True), u.max(axis=1, keepdims=True)
    span_u = np.where(uhi > ulo, uhi - ulo, 1.0)
    b = np.clip(((u - ulo) * (SKETCH_BINS / span_u)).astype(np.int64), 0, SKETCH_BINS - 1)
    b += (np.arange(r) * SKETCH_BINS)[:, None]
    flat, vals = b.ravel(), x.ravel()
    cnt, s1, s2 = (np.bincount(flat, v, r * SKETCH_BINS).reshape(r, SKETCH_BINS) for v in (None, vals, vals * vals))
    edges = mu + sd * np.sinh(ulo + span_u * np.linspace(0.0, 1.0, SKETCH_BINS + 1)[None, :])
    lo, span = edges[:, :1], np.maximum(edges[:, -1:] - edges[:, :1], 1e-300)
    pts = np.where(cnt > 0, s1 / np.maximum(cnt, 1.0), 0.5 * (edges[:, 1:] + edges[:, :-1]))
    # in each row's range units: points, and their exact first and second power sums
    norm1 = (s1 - lo * cnt) / span
    norm2 = (s2 - 2 * lo * s1 + lo * lo * cnt) / (span * span)
    runs = CodebookRuns((pts - lo) / span, cnt, [np.full(r, k) for k in ks], sums=(norm1, norm2))
    coarse = int(min(SKETCH_BINS, max(16, m // PLACEMENT_PER_BIN)))
    cum = np.concatenate([np.zeros((r, 1)), np.cumsum(cnt, axis=1)], axis=1)
    at = np.linspace(0.0, SKETCH_BINS, coarse + 1)
    coarse_cum = np.stack([np.interp(at, np.arange(SKETCH_BINS + 1.0), row) for row in cum])
    coarse_edges = (mu + sd * np.sinh(ulo + span_u * np.linspace(0.0, 1.0, coarse + 1)[None, :]) - lo) / span
    levels = runs.lloyd(_quantiles(np.diff(coarse_cum, axis=1), coarse_edges, ks), SKETCH_STEPS)
    return runs.spread(levels).reshape(len(ks), r) * (span[:, 0] ** 2 / m)[None, :]
