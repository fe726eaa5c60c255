"""Predicted error of one codebook per row (per output channel): sigma's rule on a few rows, chosen by shape."""

from __future__ import annotations

import numpy as np

from .runs import CodebookRuns
from .sketch import PLACEMENT_PER_BIN, SKETCH_BINS, SKETCH_SAMPLE, SKETCH_STEPS
from .stats import rounding_error

__all__ = ["EQUAL_START_MAX", "ROW_PROBE", "ROW_STEPS", "ROW_VALUES", "SKETCH_ROWS", "row_sketch_curve"]

SKETCH_ROWS = 32  # per-channel codebooks: the rows whose codebooks are emulated (spread over the rows by shape)
ROW_PROBE = 64  # a row's distinct values are probed on this many of its weights, evenly strided, to order the rows
EQUAL_START_MAX = 256  # the equal-count start is stepped on rows of at most this many weights (for K >= half a row)
ROW_STEPS = 3  # centroid steps on a row of at most SKETCH_BINS weights, from each start stepped
ROW_VALUES = 4096  # a longer row's distinct values and float16 rounding are counted on this many, evenly strided


def row_sketch_curve(rows: np.ndarray, bits: range | list[int], half_levels: bool = False) -> dict[int, float]:
    """Mean over live rows of error / row power of one codebook per row of ``[G, n]``, per width.

    What is computed: sigma's rule run on ``SKETCH_ROWS`` live rows spread over them by shape (:func:`_sketch_rows`),
    every K at once: each row's cube-root-density start on its coarse asinh grid (and, where it can win, the
    equal-count start), ``ROW_STEPS`` centroid steps on the sorted row, the better kept, each level then the mean of
    its weights, and the squared error from the row's prefix sums (:func:`_short_rows`; a row longer than
    ``SKETCH_BINS``: on its histogram, :func:`_long_rows`); a row with at most K distinct values is exact. With
    ``half_levels``, the float16 rounding of every live row is added. The rows' shapes are real weights' (a Gaussian
    bulk with a few outliers, a handful of distinct values in a depthwise kernel), not a table's: the closed-form
    model (``benchmarks.ggd_model.ggd_curve``) was off by 1.5-3x on such rows of PP-OCRv6 det.
    """

    rows = np.asarray(rows)
    n = rows.shape[1]
    power = np.einsum("ij,ij->i", rows, rows, dtype=np.float64) / max(n, 1)
    live = power > 1e-12 * float(power.max(initial=0.0))
    if not live.any():
        return dict.fromkeys(bits, 0.0)
    stride = max(1, -(-n // ROW_VALUES))
    # every live row's float16 rounding (a few tiny rows dominate it), on the same strided sample of a long row
    every = bool(live.all())  # usually: then the rows are read where they are, not copied first
    sample = rows[:, ::stride] if every else rows[live, ::stride]
    rounding = float(np.mean(rounding_error(sample) / power[live])) if half_levels else 0.0
    pick = _sketch_rows(sample, np.flatnonzero(live))
    xs = np.sort(rows[pick, ::stride].astype(np.float64), axis=1)
    distinct = 1 + np.count_nonzero(np.diff(xs, axis=1), axis=1)
    ks = [1 << b for b in bits if bool((distinct > 1 << b).any())]
    out = dict.fromkeys(bits, rounding)
    if not ks:
        return out
    sse = _long_rows(rows[pick], ks) if n > SKETCH_BINS else _short_rows(xs, ks)
    for b in bits:
        if 1 << b in ks:
            err = np.where(distinct <= 1 << b, 0.0, sse[ks.index(1 << b)]) / power[pick]
            out[b] = float(np.mean(err)) + rounding
    return out


def _sketch_rows(sample: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """The rows of ``alive`` whose codebooks are emulated: all of them, or ``SKETCH_ROWS`` spread evenly over them
    ordered by their distinct values among ``ROW_PROBE`` evenly strided weights, then by kurtosis. ``sample``: the
    rows ``alive`` (a long row's strided sample), one to one.

    The error / power of a row's codebook varies from row to row mostly with these two: a row of a few distinct
    values is exact from some K on, a heavier-tailed row has the larger error at every K. Evenly strided rows
    drew both by chance; spread over this order, every kind is represented in proportion, as in a stratified
    sample. On the synthetic rows of ``benchmarks.fit_predictor`` (``python -m benchmarks.fit_predictor``), 32 rows
    so chosen put 98% of layer-widths within ±10% of the measured error, 64 strided rows 95%, 32 strided rows 82%;
    the order costs one pass over the rows, less than one centroid step of 64 rows.
    """
    if alive.size <= SKETCH_ROWS:
        return alive
    x = sample.astype(np.float32, copy=False)  # plenty for an order
    probe = np.sort(x[:, :: max(1, x.shape[1] // ROW_PROBE)], axis=1)
    distinct = np.count_nonzero(np.diff(probe, axis=1), axis=1)
    with np.errstate(over="ignore", invalid="ignore"):  # a corrupted weight's square: that row sorts last
        d = x - x.mean(axis=1, dtype=np.float64)[:, None].astype(np.float32)
        d *= d
        var = np.einsum("ij->i", d, dtype=np.float64)
        kurtosis = np.einsum("ij,ij->i", d, d, dtype=np.float64) / np.maximum(var * var, 1e-300)
    order = np.lexsort((kurtosis, distinct))
    return alive[np.sort(order[np.unique(np.linspace(0, alive.size - 1, SKETCH_ROWS).round().astype(np.int64))])]


def _short_rows(xs: np.ndarray, ks: list[int]) -> np.ndarray:
    """``[len(ks), r]`` mean squared error of sigma's codebook for each sorted row of ``xs`` (at most
    ``SKETCH_BINS`` weights): ``ROW_STEPS`` centroid steps from sigma's starts, the better kept, the error each
    run's spread (each level the mean of its weights, as fit ends).

    The equal-count start is stepped only where K is at least half the row, on rows of at most
    ``EQUAL_START_MAX`` weights: elsewhere the cube-root-density start was better on all but 0.4-3% of the rows of
    PP-OCRv6 rec and det at K >= 8, by 1.3% of a layer's error at most on rows of 192 weights or more (up to 25% on
    the synthetic rows of 24-96 weights, at K near the row's length), and its steps were half the cost of a
    per-channel prediction.
    """
    r, m = xs.shape
    lo = xs[:, :1]
    span = np.maximum(xs[:, -1:] - lo, 1e-300)
    unit = (xs - lo) / span
    runs = CodebookRuns(unit, None, [np.full(r, k) for k in ks])
    sse = runs.spread(runs.lloyd(_row_starts(xs, ks, lo, span), ROW_STEPS)).reshape(len(ks), r)
    dense = [j for j, k in enumerate(ks) if 2 * k >= m and m <= EQUAL_START_MAX]
    if dense:
        eq = CodebookRuns(unit, None, [np.full(r, ks[j]) for j in dense])
        sse[dense] = np.minimum(sse[dense], eq.spread(eq.lloyd(eq.equal_count(), ROW_STEPS)).reshape(len(dense), r))
    return sse * (span[:, 0] ** 2 / m)[None, :]  # mean squared error per row


def _row_starts(xs: np.ndarray, ks: list[int], lo: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Per sorted row and K, sigma's start: K quantiles of the cube-root density on the row's coarse asinh grid, in
    the row's range units, flat width by width, row by row (as :class:`CodebookRuns` lays its codebooks out)."""

    r, m = xs.shape
    coarse = int(max(16, m // PLACEMENT_PER_BIN))
    mu = xs.mean(axis=1, keepdims=True)
    sd = xs.std(axis=1, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    ulo, uhi = np.arcsinh((xs[:, :1] - mu) / sd), np.arcsinh((xs[:, -1:] - mu) / sd)
    edges = (mu + sd * np.sinh(ulo + (uhi - ulo) * np.linspace(0.0, 1.0, coarse + 1)[None, :]) - lo) / span
    band = 2.0 * np.arange(r)[:, None]  # rows laid end to end, as in CodebookRuns
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
    # np.interp of each row's quantiles, every K and row in one search, flat width by width, row by row
    t = np.concatenate([np.broadcast_to((np.arange(k) + 0.5) / k, (r, k)).ravel() for k in ks])
    row = np.concatenate([np.repeat(np.arange(r), k) for k in ks])
    j = np.searchsorted((dens + band).ravel(), t + 2.0 * row, side="right") - 1 - row * (c + 1)
    j = np.clip(j, 0, c - 1) + row * (c + 1)
    d0, d1 = dens.ravel()[j], dens.ravel()[j + 1]
    e0, e1 = edges.ravel()[j], edges.ravel()[j + 1]
    f = np.where(d1 > d0, (t - d0) / np.where(d1 > d0, d1 - d0, 1.0), 0.0)
    return e0 + np.clip(f, 0.0, 1.0) * (e1 - e0)


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
