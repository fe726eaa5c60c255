"""Predicted error of one codebook over a whole tensor: sigma's own placement on a weighted sketch of it."""

from __future__ import annotations

import numpy as np

from .runs import CodebookRuns
from .sketch import (
    PLACEMENT_PER_BIN,
    SKETCH_BINS,
    SKETCH_SAMPLE,
    SKETCH_STEPS,
    TAIL_MIN_K,
    asinh_grid,
    bin_index,
    density_starts,
    grid_edges,
)
from .sketch import SKETCH_TAIL as FIT_TAIL

__all__ = ["SKETCH_CHANNELS", "SKETCH_PER_CHANNEL", "SKETCH_TAIL", "SKETCH_VALUES", "SMALL_STEPS", "sketch_curve"]

# Sketch sizes, chosen on synthetic layers by ``python -m benchmarks.fit_predictor`` (the cheapest setting within one
# point of the best share within ±15%), never on the benchmark models.
SKETCH_VALUES = 1 << 14  # weights of a tensor its sketch holds (evenly strided), besides the exact tails
SKETCH_TAIL = 0.25  # the tails taken exactly: about this fraction of SKETCH_VALUES, of the largest deviations
SKETCH_CHANNELS = 512  # beyond this many channels, evenly strided ones are sketched, SKETCH_PER_CHANNEL weights each
SKETCH_PER_CHANNEL = 32
SMALL_STEPS = 4  # centroid steps on a tensor of at most SKETCH_BINS weights, from each of sigma's two starts


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
    # everything from here on in units of the sample's range, so that every K's levels share one sorted key space
    runs = CodebookRuns((pts - lo) / span, w, [np.array([k]) for k in ks])
    if x.size > SKETCH_SAMPLE:  # sigma places from its own subsample of the tensor: so do we (see _placed)
        levels = (_placed(x.reshape(1, -1) if flat is None else flat, ks, extremes) - lo) / span
    else:
        steps = SMALL_STEPS if small else SKETCH_STEPS
        levels = runs.lloyd((density_starts(counts, edges, ks) - lo) / span, steps)
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

    row = x[0]
    step = -(-row.size // SKETCH_SAMPLE)
    sub = np.ascontiguousarray(row[::step])  # both sketches' subsample, taken once
    out: dict[int, np.ndarray] = {}
    for tails in (False, True):
        group = [k for k in ks if (k >= TAIL_MIN_K) == tails]
        if not group:
            continue
        counts, centers, edges = _subsample_sketch(row, sub, step, tails, extremes)
        used = counts > 0
        pts, w = centers[used], counts[used]
        lo, span = float(pts[0]), float(pts[-1] - pts[0]) or 1.0
        start = density_starts(counts, edges, group)  # the coarse grid is this one
        runs = CodebookRuns((pts - lo) / span, w, [np.array([k]) for k in group])
        levels = lo + span * runs.lloyd((start - lo) / span, SKETCH_STEPS)
        out.update(zip(group, np.split(levels, np.cumsum(group)[:-1]), strict=True))
    return np.concatenate([out[k] for k in ks])


def _subsample_sketch(
    row: np.ndarray, sub: np.ndarray, step: int, tails: bool, extremes: tuple[np.ndarray, float, float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, bin means and bin edges of the sketch sigma builds of the tensor ``row`` (longer than
    ``SKETCH_SAMPLE``) from its subsample ``sub`` (every ``step``-th weight): the same subsample (a thinner one lost
    2-5 points of layer-widths within ±15%).

    With ``tails``, every weight beyond the deviation sigma's subsample has ``SKETCH_TAIL`` weights past is in it
    exactly (as :func:`~onnx_statq.codebook.sketch.tail_complete` makes it), taken from ``extremes`` (values, mean,
    threshold: every weight of the tensor deviating more than the threshold) when those hold them all, else from
    one pass over the tensor. Each subsampled weight stands for ``step``: the sums are scaled, not weighted.
    """
    vals, far, dropped = sub, np.empty(0, sub.dtype), np.empty(0, np.int64)
    if tails:
        mu = float(sub.mean(dtype=np.float64))
        dev = np.abs(sub - np.float64(mu))  # in float64, as tail_complete compares them
        thr = float(np.partition(dev, dev.size - FIT_TAIL)[dev.size - FIT_TAIL])
        if extremes is not None and extremes[2] + abs(extremes[1] - mu) < thr:
            far = extremes[0][np.abs(extremes[0] - mu) >= thr].astype(sub.dtype)
        else:
            far = row[np.abs(row - np.asarray(mu, row.dtype)) >= thr].astype(sub.dtype)
        vals = np.concatenate([sub, far])
        dropped = np.flatnonzero(dev >= thr)  # the subsample's own values past thr: the tails are in exactly instead
    grid = asinh_grid(vals[None, :])  # sigma's own grid for these values (standardise's second half)
    b = bin_index(grid, SKETCH_BINS)[0]
    b_sub, b_far = b[: sub.size], b[sub.size :]
    b_sub[dropped] = SKETCH_BINS  # counted in a bin past the grid, cut off below
    counts = np.bincount(b_sub, minlength=SKETCH_BINS + 1)[:SKETCH_BINS] * float(step)
    sums = np.bincount(b_sub, sub, SKETCH_BINS + 1)[:SKETCH_BINS] * float(step)
    if far.size:
        counts += np.bincount(b_far, minlength=SKETCH_BINS)
        sums += np.bincount(b_far, far, SKETCH_BINS)
    edges = grid_edges(grid, SKETCH_BINS)[0]
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
    # a flat search and divmod: np.nonzero of a 2-D mask took several times as long, for a few thousand hits
    found = np.divmod(np.flatnonzero((mem > mu + thr) | (mem < mu - thr)), mem.shape[1])
    rows, cols = found[::-1] if flip else found
    tail, strided = np.zeros(c, dtype=bool), np.zeros(c, dtype=bool)
    tail[rows], strided[kept] = True, True
    extra = np.flatnonzero(tail & ~strided)
    chans = np.concatenate([kept, extra])
    sampled, core_mask = core, dev.reshape(core.shape) <= thr  # the tails are counted exactly, below
    if extra.size:
        more = x[extra, ::step]
        sampled = np.concatenate([core, more])
        core_mask = np.concatenate([core_mask, np.abs(more.astype(np.float64) - mu) <= thr])
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
