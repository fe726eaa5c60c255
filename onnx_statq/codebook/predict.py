"""Predict a codebook's error at every K from sketches of the weights, with no clustering run on them.

The model behind ``--bits auto`` and the default bit allocation. What it predicts is what the pass measures,
:attr:`EncodedTensor.rel_error`: the mean over output channels (or codebook rows) of error / power for the levels
``sigma`` would fit. That error depends on the shape of the weights in detail (a Gaussian bulk with a few outliers,
a depthwise kernel's handful of values, a few channels whose outliers carry a layer's whole 8-bit figure), which no
moment captures: the closed-form model this module started with (variance and kurtosis read off a table of
generalised Gaussians' optimal error, with a finite-sample term: :func:`ggd_curve`) was within ±15% on 73% of the
benchmark models' layer-widths for K >= 8 (81% with a first histogram sketch for one-codebook tensors), 1.5-3x high
on PP-OCRv6 det's short per-channel rows and down to 0.35x at 7-8 bits on MiniLM's matrices. So the prediction runs
sigma's own rule on sketches instead:

* one codebook over a tensor (:func:`sketch_curve`): a weighted sample (every weight of a small tensor; else an
  evenly strided sample plus every extreme weight), sigma's placement and centroid steps on its histogram for every
  K at once, and the squared error weighted per channel so that it sums to the per-channel mean;
* one codebook per row (:func:`row_sketch_curve`): sigma's rule on a few evenly strided rows, plus the float16
  rounding of every row.

Neither assigns or decodes the tensor, nor fits anything to a model; the sketch sizes were chosen on synthetic
layers (``python -m benchmarks.fit_predictor``). On the benchmark models (``benchmarks.bench_alloc
--prediction-only``) the prediction is within ±15% of the measured error on 99.5% of the 936 layer-widths for
K >= 8 (98.7% at 7 bits, the worst width; 99.1% on MiniLM, the worst model), at 0.7-2.3% of a K-means sweep's time
(before: 81%, at 0.9-6.9%).

A row with at most K distinct values is predicted exact (error 0, or the float16 rounding), as :func:`fit` makes it.
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
    "ggd_curve",
    "ggd_kurtosis",
    "predict_curve",
    "predict_rel_error",
    "row_sketch_curve",
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


def ggd_curve(rows: np.ndarray, bits: range | list[int], half_levels: bool = False) -> dict[int, float]:
    """The closed-form model: relative error of per-row codebooks from each row's variance, kurtosis and length.

    Mean over live rows of ``variance * unit_error(kurtosis, K) * finite_sample(K, n, kurtosis) / power``, plus the
    float16 rounding with ``half_levels``; a row with at most K distinct values is exact. No longer what
    :func:`predict_curve` uses (see the module docstring); ``benchmarks.fit_predictor`` refits its constants and
    compares it with the sketches on synthetic rows.
    """
    power, var, kurt = _moments(rows)
    live = power > 1e-12 * float(power.max(initial=0.0))
    n = rows.shape[1]
    distinct = _distinct_counts(rows, 1 << max(bits))
    exact_error = _rounding_error(rows) if half_levels else np.zeros(rows.shape[0])
    out = {}
    for b in bits:
        k = 1 << b
        err = var * unit_error(kurt, k) * finite_sample(k, n, kurt) + exact_error
        err = np.where(distinct <= k, exact_error, err)
        out[b] = float(np.mean(err[live] / power[live])) if live.any() else 0.0
    return out


def predict_curve(
    rows: np.ndarray, bits: range | list[int], half_levels: bool = False, channels: np.ndarray | None = None
) -> dict[int, float]:
    """Predicted relative error (mean over rows of error / row power) for each width in ``bits``.

    ``rows`` is the ``[G, n]`` group view the codebooks are fitted on: one row for a per-tensor codebook.
    ``half_levels``: the levels are stored in float16, so a row held exactly still has their rounding error.
    ``channels``: for one codebook over a tensor with output channels, their ``[C, m]`` view; the prediction is
    then of the mean over channels of error / channel power, as :attr:`EncodedTensor.rel_error` measures it,
    instead of the whole tensor's error / power.
    """
    rows = np.asarray(rows)
    if rows.shape[0] == 1:
        view = channels if channels is not None and channels.ndim == 2 and channels.shape[0] > 1 else rows
        return _exact_rows(rows, bits, half_levels, sketch_curve(view, bits, flat=rows))
    return row_sketch_curve(rows, bits, half_levels)


def _exact_rows(rows: np.ndarray, bits: range | list[int], half: bool, curve: dict[int, float]) -> dict[int, float]:
    """``curve`` with the widths at which the single row ``rows`` is held exactly set to its rounding error."""
    distinct = int(_distinct_counts(rows, 1 << max(bits))[0])
    if distinct > 1 << max(bits):
        return curve
    power = max(float(np.mean(np.square(rows, dtype=np.float64))), 1e-300)
    exact = float(_rounding_error(rows)[0]) / power if half else 0.0
    return {b: exact if distinct <= 1 << b else v for b, v in curve.items()}


# Sketch sizes, chosen on synthetic layers by ``python -m benchmarks.fit_predictor`` (the cheapest setting within one
# point of the best share within ±15%), never on the benchmark models.
SKETCH_VALUES = 1 << 14  # weights of a tensor its sketch holds (evenly strided), besides the exact tails
SKETCH_TAIL = 0.25  # the tails taken exactly: about this fraction of SKETCH_VALUES, of the largest deviations
SKETCH_CHANNELS = 512  # beyond this many channels, evenly strided ones are sketched, SKETCH_PER_CHANNEL weights each
SKETCH_PER_CHANNEL = 32
SMALL_STEPS = 4  # centroid steps on a tensor of at most SKETCH_BINS weights, from each of sigma's two starts
SKETCH_ROWS = 64  # per-channel codebooks: the rows (evenly strided) whose codebooks are emulated
ROW_STEPS = 4  # centroid steps on a row of at most SKETCH_BINS weights, from each of sigma's two starts
ROW_VALUES = 4096  # a longer row's distinct values and float16 rounding are counted on this many, evenly strided


def sketch_curve(channels: np.ndarray, bits: range | list[int], flat: np.ndarray | None = None) -> dict[int, float]:
    """Mean over channels of error / channel power of one codebook for the whole ``[C, m]`` tensor, per width.

    ``flat``: the tensor as the codebook is fitted on it (``[1, n]``, in its own order), if already at hand.

    What is computed: a weighted sample of the tensor (:func:`_tensor_sample`) binned on the fine asinh grid sigma
    uses (``SKETCH_BINS`` bins), and on it, for every K at once, sigma's placement: the cube-root-density start on
    its coarse grid, then sigma's ``SKETCH_STEPS`` centroid steps on the histogram, and each level the mean of its
    weights. A tensor of at most ``SKETCH_BINS`` weights is kept whole and sorted, and stepped ``SMALL_STEPS`` times
    from that start and from the equal-count one (sigma tries both there), the better kept; one longer than sigma's
    own subsample is placed on that subsample (:func:`_placed`). Each weight of the sample carries 1 / (its
    channel's power), so the squared error summed over the histogram at the placed levels is the mean of the
    per-channel ratios directly. No weight of the tensor is assigned or decoded.
    """
    from .fit import PLACEMENT_PER_BIN, SKETCH_BINS, SKETCH_SAMPLE, SKETCH_STEPS  # fit imports nothing of this module

    x = np.asarray(channels)
    x = x.reshape(1, -1) if x.ndim != 2 else x
    ks = [1 << b for b in bits]
    sample = _tensor_sample(x)
    if sample is None or not ks:
        return dict.fromkeys(bits, 0.0)
    vals, place_w, err_w, mu, sd, extremes = sample
    coarse = int(min(SKETCH_BINS, max(16, x.size // PLACEMENT_PER_BIN)))
    small = place_w is None and vals.size <= SKETCH_BINS
    if small:  # sigma's centroid steps run on the weights themselves
        order = np.argsort(vals, kind="stable")
        pts, w, e = vals[order], np.ones(vals.size), err_w[order]
        lo, hi = float(pts[0]), float(pts[-1])
        edges = mu + sd * np.sinh(np.linspace(np.arcsinh((lo - mu) / sd), np.arcsinh((hi - mu) / sd), coarse + 1))
        pos = np.concatenate([[0], np.searchsorted(pts, edges[1:-1], side="left"), [pts.size]])
        counts = np.diff(pos).astype(np.float64)
        e1, e2 = e * pts, e * pts * pts
    else:  # on the fine histogram of the sample: counts and means per bin, and the error weights' power sums
        place_w = np.ones(vals.size) if place_w is None else place_w
        u = np.arcsinh((vals - mu) / sd)
        ulo, uhi = float(u.min()), float(u.max())
        span_u = uhi - ulo if uhi > ulo else 1.0
        b = np.minimum(((u - ulo) * (SKETCH_BINS / span_u)).astype(np.int64), SKETCH_BINS - 1)
        hist = np.bincount(b, place_w, SKETCH_BINS)
        used = hist > 0
        w = hist[used].astype(np.float64)
        pts = np.bincount(b, place_w * vals, SKETCH_BINS)[used] / w
        ev = err_w * vals
        e = np.bincount(b, err_w, SKETCH_BINS)[used]
        e1 = np.bincount(b, ev, SKETCH_BINS)[used]
        e2 = np.bincount(b, ev * vals, SKETCH_BINS)[used]
        # the coarse grid's counts, read off the fine cumulative counts (the grids share their span)
        cum = np.concatenate([[0.0], np.cumsum(hist)])
        counts = np.diff(np.interp(np.linspace(0.0, SKETCH_BINS, coarse + 1), np.arange(SKETCH_BINS + 1.0), cum))
        edges = mu + sd * np.sinh(np.linspace(ulo, ulo + span_u, coarse + 1))
        lo, hi = float(pts[0]), float(pts[-1])
    span = hi - lo
    if not span > 0:
        return dict.fromkeys(bits, 0.0)
    width = np.maximum(np.diff(edges), 1e-300)
    dens = np.concatenate([[0.0], np.cumsum(np.cbrt(counts / width) * width)])
    start = np.concatenate([np.interp((np.arange(k) + 0.5) / k * dens[-1], dens, edges) for k in ks])
    # everything from here on in units of the sample's range, so that every K's levels share one sorted key space
    runs = _Runs((pts - lo) / span, w, [np.array([k]) for k in ks])
    if x.size > SKETCH_SAMPLE:  # sigma places from its own subsample of the tensor: so do we (see _placed)
        levels = (_placed(x.reshape(1, -1) if flat is None else flat, ks, extremes) - lo) / span
    else:
        steps = SMALL_STEPS if small else SKETCH_STEPS
        levels = runs.lloyd((start - lo) / span, steps)
        if small:
            levels = runs.better(levels, runs.lloyd(runs.equal_count(), steps))
    levels = runs.means(levels)  # as fit ends: each level the mean of its weights
    err = runs.weighted_sse(levels, e, e1, e2, lo, span)
    return {b: float(max(v, 0.0)) for b, v in zip(bits, err, strict=True)}


def _placed(x: np.ndarray, ks: list[int], extremes: tuple[np.ndarray, float, float] | None = None) -> np.ndarray:
    """Sigma's levels, every K in ``ks`` flat, for the ``[1, n]`` tensor ``x`` longer than its subsample, before
    the last mean: placed and stepped on the sketch :func:`~onnx_statq.codebook.fit.sigma_levels` itself builds (an
    evenly strided subsample, with every extreme weight from ``TAIL_MIN_K`` on, :func:`_subsample_sketch`). A fuller
    sample is not the same placement: on synthetic tensors with outlier channels, sigma's subsample left the bulk
    more levels, and a placement on all the weights over-predicted the per-channel error by 10-20% at 5-8 bits.
    ``extremes``: the evaluation sample's exact tails, which usually hold sigma's."""
    from .fit import SKETCH_STEPS, TAIL_MIN_K

    out: dict[int, np.ndarray] = {}
    for tails in (False, True):
        group = [k for k in ks if (k >= TAIL_MIN_K) == tails]
        if not group:
            continue
        counts, centers, edges = _subsample_sketch(x, tails, extremes)
        width = np.maximum(np.diff(edges), 1e-300)
        dens = np.concatenate([[0.0], np.cumsum(np.cbrt(counts / width) * width)])  # the coarse grid is this one
        used = counts > 0
        pts, w = centers[used], counts[used]
        lo, span = float(pts[0]), float(pts[-1] - pts[0]) or 1.0
        start = np.concatenate([np.interp((np.arange(k) + 0.5) / k * dens[-1], dens, edges) for k in group])
        runs = _Runs((pts - lo) / span, w, [np.array([k]) for k in group])
        levels = lo + span * runs.lloyd((start - lo) / span, SKETCH_STEPS)
        out.update(zip(group, np.split(levels, np.cumsum(group)[:-1]), strict=True))
    return np.concatenate([out[k] for k in ks])


def _subsample_sketch(
    x: np.ndarray, tails: bool, extremes: tuple[np.ndarray, float, float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, bin means and bin edges of the sketch sigma builds of the ``[1, n]`` tensor ``x`` (longer than
    ``SKETCH_SAMPLE``): the same subsample (a thinner one lost 2-5 points of layer-widths within ±15%).

    With ``tails``, every weight beyond the deviation sigma's subsample has ``SKETCH_TAIL`` weights past is in it
    exactly (as :func:`~onnx_statq.codebook.fit._tail_complete` makes it), taken from ``extremes`` (values, mean,
    threshold: every weight of the tensor deviating more than the threshold) when those hold them all, else from
    one pass over the tensor. The grid is :func:`~onnx_statq.codebook.fit._sketch`'s.
    """
    from .fit import SKETCH_BINS, SKETCH_SAMPLE
    from .fit import SKETCH_TAIL as FIT_TAIL

    row = x[0]
    step = -(-row.size // SKETCH_SAMPLE)
    vals = row[::step].astype(np.float64)
    weights = np.full(vals.size, float(step))
    if tails:
        mu = float(vals.mean())
        dev = np.abs(vals - mu)
        thr = float(np.partition(dev, dev.size - FIT_TAIL)[dev.size - FIT_TAIL])
        if extremes is not None and extremes[2] + abs(extremes[1] - mu) < thr:
            far = extremes[0][np.abs(extremes[0] - mu) >= thr]
        else:
            far = row[np.abs(row - np.asarray(mu, row.dtype)) >= thr].astype(np.float64)
        weights[dev >= thr] = 0.0
        vals = np.concatenate([vals, far])
        weights = np.concatenate([weights, np.ones(far.size)])
    mean = float(vals.mean())
    sd = float(vals.std()) or 1.0
    u = np.arcsinh((vals - mean) / sd)
    ulo, uhi = float(u.min()), float(u.max())
    span = uhi - ulo if uhi > ulo else 1.0
    b = np.minimum(((u - ulo) * (SKETCH_BINS / span)).astype(np.int64), SKETCH_BINS - 1)
    counts = np.bincount(b, weights, SKETCH_BINS)
    sums = np.bincount(b, weights * vals, SKETCH_BINS)
    edges = mean + sd * np.sinh(ulo + span * np.linspace(0.0, 1.0, SKETCH_BINS + 1))
    centers = np.where(counts > 0, sums / np.maximum(counts, 1e-300), 0.5 * (edges[1:] + edges[:-1]))
    return counts, centers, edges


_Sample = tuple[np.ndarray, np.ndarray | None, np.ndarray, float, float, tuple[np.ndarray, float, float] | None]


def _tensor_sample(x: np.ndarray) -> _Sample | None:
    """Values, placement weights (None: all 1), error weights, mean and deviation of a ``[C, m]`` tensor's sketch,
    and its exact tails (values, mean, threshold) if it took them.

    Placement weights make the sample's histogram the tensor's; error weights are 1 / (channel power * live
    channels), times what each sampled weight stands for, so that their weighted squared error is the mean of the
    per-channel ratios. Beyond ``SKETCH_VALUES`` weights, a strided sample misses the few large weights that
    dominate the error of their channels at 6-8 bits (on MiniLM's attention matrices a handful of the 384 channels
    carry most of the 8-bit figure): every weight beyond a deviation that about ``SKETCH_TAIL * SKETCH_VALUES``
    weights exceed is taken exactly, and every channel holding one is sketched. None when no channel is live.
    """
    c, m = x.shape
    n = c * m
    # a channel view of a transposed tensor (MatMul weights, channels on axis 1) is read in its memory order
    flip = not x.flags.c_contiguous and x.T.flags.c_contiguous
    mem = x.T if flip else x
    power = np.einsum("ij,ij->j" if flip else "ij,ij->i", mem, mem, dtype=np.float64)
    mu = float(np.sum(mem, dtype=np.float64)) / n
    sd = float(np.sqrt(max(float(power.sum()) / n - mu * mu, 0.0))) or 1.0
    live = power > 1e-12 * float(power.max(initial=0.0))  # as channel_rel_error: dead channels carry no signal
    if not live.any():
        return None
    inv = np.where(live, 1.0 / np.maximum(power, 1e-300), 0.0) / int(live.sum())
    if n <= SKETCH_VALUES:
        return x.astype(np.float64).ravel(), None, np.repeat(inv, m), mu, sd, None
    kept = np.arange(0, c, max(1, -(-c * SKETCH_PER_CHANNEL // SKETCH_VALUES)) if c > SKETCH_CHANNELS else 1)
    step = max(1, -(-kept.size * m // SKETCH_VALUES))
    core = x[kept, ::step]
    dev = np.abs(core.astype(np.float64) - mu).ravel()
    t = int(min(max(8.0, SKETCH_TAIL * SKETCH_VALUES * dev.size / n), dev.size // 4))  # sample values past thr
    thr = float(np.partition(dev, dev.size - t - 1)[dev.size - t - 1])
    found = np.nonzero((mem > mu + thr) | (mem < mu - thr))
    rows, cols = found[::-1] if flip else found
    tail = np.zeros(c, dtype=bool)
    tail[rows] = True
    extra = np.flatnonzero(tail)
    extra = extra[np.isin(extra, kept, invert=True)]
    chans = np.concatenate([kept, extra])
    sampled = np.concatenate([core, x[extra, ::step]]) if extra.size else core
    core_mask = np.abs(sampled.astype(np.float64) - mu) <= thr  # the tails are counted exactly, below
    # each sampled core weight stands for its channel's other core weights; a channel without tails sketched among
    # the strided ones stands for every such channel (its weight in the mean), a tail channel for itself
    stands = (m - np.bincount(rows, minlength=c)[chans]) / np.maximum(core_mask.sum(axis=1), 1)
    plain = live & ~tail
    share = np.where(tail[chans], 1.0, plain.sum() / max(int(plain[kept].sum()), 1))
    density = np.where(tail[chans], 1.0, (c - int(tail.sum())) / max(int((~tail[kept]).sum()), 1))  # in the histogram
    grid = np.broadcast_to(np.arange(chans.size)[:, None], sampled.shape)[core_mask]
    far = x[rows, cols].astype(np.float64)
    vals = np.concatenate([sampled[core_mask], far])
    per = np.concatenate([stands[grid], np.ones(rows.size)])
    place_w = per * np.concatenate([density[grid], np.ones(rows.size)])
    err_w = per * np.concatenate([(share * inv[chans])[grid], inv[rows]])
    return vals, place_w, err_w, mu, sd, (far, mu, thr)


def row_sketch_curve(rows: np.ndarray, bits: range | list[int], half_levels: bool = False) -> dict[int, float]:
    """Mean over live rows of error / row power of one codebook per row of ``[G, n]``, per width.

    What is computed: sigma's rule run on ``SKETCH_ROWS`` evenly strided live rows, every K at once: each row's
    cube-root-density start on its coarse asinh grid and the equal-count start, ``ROW_STEPS`` centroid steps from
    each on the sorted row, the better kept, each level then the mean of its weights, and the squared error from the
    row's prefix sums (a row longer than ``SKETCH_BINS``: on its histogram, :func:`_long_rows`); a row with at most K
    distinct values is exact. With ``half_levels``, the float16 rounding
    of every live row is added. The rows' shapes are real weights' (a Gaussian bulk with a few outliers, a handful of
    distinct values in a depthwise kernel), not a table's: the closed-form model (:func:`ggd_curve`) was off by
    1.5-3x on such rows of PP-OCRv6 det.
    """
    from .fit import SKETCH_BINS

    rows = np.asarray(rows)
    n = rows.shape[1]
    power = np.einsum("ij,ij->i", rows, rows, dtype=np.float64) / max(n, 1)
    live = power > 1e-12 * float(power.max(initial=0.0))
    if not live.any():
        return dict.fromkeys(bits, 0.0)
    stride = max(1, -(-n // ROW_VALUES))
    # every live row's float16 rounding (a few tiny rows dominate it), on the same strided sample of a long row
    rounding = float(np.mean(_rounding_error(rows[live, ::stride]) / power[live])) if half_levels else 0.0
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
        runs = _Runs((xs - lo) / span, None, [np.full(r, k) for k in ks])
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
    from .fit import PLACEMENT_PER_BIN

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
    from .fit import PLACEMENT_PER_BIN, SKETCH_BINS, SKETCH_SAMPLE, SKETCH_STEPS

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
    runs = _Runs((pts - lo) / span, cnt, [np.full(r, k) for k in ks], sums=(norm1, norm2))
    coarse = int(min(SKETCH_BINS, max(16, m // PLACEMENT_PER_BIN)))
    cum = np.concatenate([np.zeros((r, 1)), np.cumsum(cnt, axis=1)], axis=1)
    at = np.linspace(0.0, SKETCH_BINS, coarse + 1)
    coarse_cum = np.stack([np.interp(at, np.arange(SKETCH_BINS + 1.0), row) for row in cum])
    coarse_edges = (mu + sd * np.sinh(ulo + span_u * np.linspace(0.0, 1.0, coarse + 1)[None, :]) - lo) / span
    levels = runs.lloyd(_quantiles(np.diff(coarse_cum, axis=1), coarse_edges, ks), SKETCH_STEPS)
    return runs.spread(levels).reshape(len(ks), r) * (span[:, 0] ** 2 / m)[None, :]


class _Runs:
    """Sorted points (rows of them) and many codebooks at once, for centroid steps from prefix sums.

    Rows hold values in ``[0, 1]`` (their range's units) and are laid end to end at offsets ``2 * row``, so one
    binary search serves every row; the levels of every (width, row) are one flat array in the same key space,
    ordered width by width, row by row, so a step costs one ``searchsorted`` and a few gathers whatever the number
    of widths. ``sizes[j][row]`` is K of width ``j``.
    """

    def __init__(
        self,
        points: np.ndarray,
        weights: np.ndarray | None,
        sizes: list[np.ndarray],
        sums: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        pts = np.atleast_2d(points)
        self.r, self.m = pts.shape
        self.key = (pts + 2.0 * np.arange(self.r)[:, None]).ravel()
        flat = pts.ravel()
        wv = np.ones(flat.size) if weights is None else np.asarray(weights, np.float64).ravel()
        # prefix sums of weight, weight * x, weight * x^2; ``sums``: the last two exactly, where a point is a bin
        s1, s2 = (wv * flat, wv * flat * flat) if sums is None else (sums[0].ravel(), sums[1].ravel())
        self.cw = np.concatenate([[0.0], np.cumsum(wv)])
        self.cs = np.concatenate([[0.0], np.cumsum(s1)])
        self.cs2 = np.concatenate([[0.0], np.cumsum(s2)])
        per = np.concatenate(sizes).astype(np.int64)  # K per segment, segments width by width, row by row
        self.per = per
        self.row = np.tile(np.arange(self.r), len(sizes))  # the row of each segment
        off = np.concatenate([[0], np.cumsum(per)])
        self.first, self.last = off[:-1], off[1:] - 1
        seg = np.repeat(np.arange(per.size), per)
        self.offset = 2.0 * self.row[seg]  # key offset of each level
        self.order_key = 4.0 * seg  # keeps segments apart when the levels are made non-decreasing
        self.start = self.row * self.m
        # one binary search gives every bound: per segment, its row's start, the K-1 midpoints, its row's end
        self.lo_slot = np.arange(off[-1]) + seg
        inner = np.ones(off[-1], dtype=bool)
        inner[self.first] = False
        self.inner = np.flatnonzero(inner)  # levels with a midpoint below them
        self.inner_slot = self.lo_slot[self.inner]
        self.slots = np.empty(off[-1] + per.size)
        self.slots[self.lo_slot[self.first]] = 2.0 * self.row - 0.5
        self.slots[self.lo_slot[self.last] + 1] = 2.0 * self.row + 1.5
        self.inner_offset = self.offset[self.inner]

    def _search(self, levels: np.ndarray) -> np.ndarray:
        mid = levels[self.inner] + levels[self.inner - 1]
        mid *= 0.5
        mid += self.inner_offset
        self.slots[self.inner_slot] = mid
        return np.searchsorted(self.key, self.slots, side="right")

    def bounds(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = self._search(levels)
        return at[self.lo_slot], at[self.lo_slot + 1]

    def _means(self, levels: np.ndarray, at: np.ndarray) -> np.ndarray:
        lo, hi = at[self.lo_slot], at[self.lo_slot + 1]
        cnt = self.cw[hi] - self.cw[lo]
        full = cnt > 0
        out = levels.copy()
        np.divide(self.cs[hi] - self.cs[lo], cnt, out=out, where=full)
        if not full.all():  # an empty level keeps its value, which may now be out of order: make each codebook
            out += self.order_key  # non-decreasing
            np.maximum.accumulate(out, out=out)
            out -= self.order_key
        return out

    def means(self, levels: np.ndarray) -> np.ndarray:
        return self._means(levels, self._search(levels))

    def lloyd(self, levels: np.ndarray, steps: int) -> np.ndarray:
        prev = None
        for _ in range(steps):
            at = self._search(levels)
            if prev is not None and (at == prev).all():
                break
            prev = at
            levels = self._means(levels, at)
        return levels

    def equal_count(self) -> np.ndarray:
        """Each codebook's equal-count start (unit weights): the means of K runs of equal length."""
        parts = []
        for k in np.unique(self.per):
            segs = np.flatnonzero(self.per == k)
            b = np.round(np.linspace(0, self.m, int(k) + 1)).astype(np.int64)[None, :] + self.start[segs, None]
            cnt = b[:, 1:] - b[:, :-1]
            run = self.cs[b[:, 1:]] - self.cs[b[:, :-1]]
            parts.append((segs, np.where(cnt > 0, run / np.maximum(cnt, 1), 0.0)))
        out = np.empty(self.offset.size)
        for segs, lv in parts:
            out[(self.first[segs, None] + np.arange(lv.shape[1])[None, :]).ravel()] = lv.ravel()
        return np.maximum.accumulate(out + self.order_key) - self.order_key

    def sse(self, levels: np.ndarray) -> np.ndarray:
        """Per codebook, the squared error of its (weighted) points, in range units squared."""
        lo, hi = self.bounds(levels)
        s2, s1, s0 = (self.cs2[hi] - self.cs2[lo]), (self.cs[hi] - self.cs[lo]), (self.cw[hi] - self.cw[lo])
        return np.add.reduceat(s2 - 2 * levels * s1 + levels * levels * s0, self.first)

    def spread(self, levels: np.ndarray) -> np.ndarray:
        """Per codebook, the squared error once each level is the mean of its points: each run's spread."""
        lo, hi = self.bounds(levels)
        s2, s1, s0 = (self.cs2[hi] - self.cs2[lo]), (self.cs[hi] - self.cs[lo]), (self.cw[hi] - self.cw[lo])
        return np.add.reduceat(np.maximum(s2 - s1 * s1 / np.maximum(s0, 1e-300), 0.0), self.first)

    def better(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per codebook, whichever of ``a`` and ``b`` has the lower squared error."""
        return np.where(np.repeat(self.sse(b) < self.sse(a), self.per), b, a)

    def weighted_sse(
        self, levels: np.ndarray, e: np.ndarray, e1: np.ndarray, e2: np.ndarray, lo: float, span: float
    ) -> np.ndarray:
        """Per codebook (one row only), the error weights' squared error, from their power sums in value units."""
        a, b = self.bounds(levels)
        p0, p1, p2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (e, e1, e2))
        lv = lo + span * levels
        return np.add.reduceat((p2[b] - p2[a]) - 2 * lv * (p1[b] - p1[a]) + lv * lv * (p0[b] - p0[a]), self.first)


def _rounding_error(rows: np.ndarray) -> np.ndarray:
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
    odd = (bits >> np.uint32(13)) & np.uint32(1)
    r = ((bits + np.uint32(0x0FFF) + odd) & np.uint32(0xFFFFE000)).view(np.float32)
    mag = np.abs(x32)
    tiny = mag < np.float32(2.0**-14)
    r[tiny] = np.round(x32[tiny] * np.float32(2.0**24)) * np.float32(2.0**-24)
    with np.errstate(invalid="ignore"):  # inf - inf: zeroed below
        d = x32 - r if x.dtype == np.float32 else x.astype(np.float64) - r
    wide = ~(mag < np.float32(65520.0))  # also NaN
    if wide.any():
        d[wide] = 0.0
    return np.einsum("ij,ij->i", d, d, dtype=np.float64) / max(x.shape[1], 1)


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
