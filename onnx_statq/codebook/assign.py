"""Nearest-level assignment and decoding, the two halves every method shares."""

from __future__ import annotations

import numpy as np

from .types import Codebook

__all__ = ["assign", "assign_rows", "decode", "floor32"]


def _thresholds(levels: np.ndarray) -> np.ndarray:
    lv = levels.astype(np.float64)
    return (lv[..., 1:] + lv[..., :-1]) * 0.5


def floor32(thr: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 threshold.

    For a float32 weight ``x``, ``x > t`` exactly when ``x > floor32(t)`` (no float32 lies strictly between them),
    so float32 weights are compared in float32: half the bytes per SIMD lane, and no float64 copy of each block.
    """
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, corrected below for the upper side
        f = thr.astype(np.float32)
    return np.where(f.astype(np.float64) > thr, np.nextafter(f, np.float32(-np.inf)), f)


def _comparable(thr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Thresholds that compare with ``values`` exactly as the float64 ones do, in the weights' own type if float32."""
    return floor32(thr) if values.dtype == np.float32 else thr


def assign_rows(levels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest level of row ``g`` for every value in row ``g`` (levels sorted per row).

    Thresholds are float64 midpoints, so the result is the exact nearest level, ties going to the lower one. One
    row uses a table lookup (:func:`_assign_one`); many short rows, or rows of at most 16 levels, count the
    thresholds below each value, K-1 vectorised sweeps, which beats a Python loop over thousands of channels.
    Sweeps run a block of rows at a time, so that their temporaries stay in cache.
    """
    thr = _thresholds(np.atleast_2d(levels))
    values = np.asarray(values)
    if thr.shape[0] == 1:
        return _assign_one(thr[0], values.ravel()).reshape(values.shape)
    if thr.shape[1] >= FEW_THRESHOLDS and values.shape[1] >= SMALL_LUT_CELLS // 4:  # K-1 sweeps cost more
        return np.stack([_assign_one(t, row) for t, row in zip(thr, values, strict=True)])
    out = np.zeros(values.shape, dtype=np.uint8)
    thr = _comparable(thr, values)
    rows = max(1, BLOCK // max(values.shape[1], 1))
    for r0 in range(0, values.shape[0], rows):
        part, cut, o = values[r0 : r0 + rows], thr[r0 : r0 + rows], out[r0 : r0 + rows]
        for j in range(thr.shape[1]):
            o += part > cut[:, j : j + 1]
    return out


LUT_CELLS = 1 << 16
SMALL_LUT_CELLS = 1 << 12  # below 4 * LUT_CELLS weights, building the larger table costs more than it saves
MAX_PASSES = 8  # past this many correction sweeps, a binary search over 256 levels is as fast (measured)
FEW_THRESHOLDS = 16  # below this many thresholds (up to 16 levels), K-1 comparison sweeps beat a table lookup
BLOCK = 1 << 14  # weights per block of a sweep: its temporaries stay in cache


def _count_below(thr: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``searchsorted(thr, x, side="left")`` for a few thresholds: one comparison sweep per threshold.

    A binary search costs a mispredicted branch per step; a sweep is a vectorised compare. Counting the thresholds
    at or above each weight and subtracting keeps searchsorted's answer for NaN (the last index), which sorts last.
    """
    out = np.full(x.shape, thr.size, dtype=np.uint8)
    thr = _comparable(thr, x)
    for c0 in range(0, x.size, BLOCK):
        part, o = x[c0 : c0 + BLOCK], out[c0 : c0 + BLOCK]
        for t in thr:
            o -= part <= t
    return out


def _assign_one(thr: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest level for one row: a table lookup on a fine grid, then exact comparisons with the thresholds.

    A binary search costs ~log2(K) unpredictable branches per weight; a table of ``LUT_CELLS`` cells (fewer for
    a short row) gives the right level for almost every weight at once, and each pass of
    ``idx += x > thr[idx]`` fixes the rest exactly, so the result equals ``searchsorted(thr, x)``. Float32 weights
    stay in float32 arithmetic (NumPy 2 keeps ``float32 - float`` in float32), from a float32 origin so that the
    only error is rounding, under 0.015 cell: the cell is taken 0.05 low, which never overshoots, and the passes
    cover the two cells the weight can then be in. Up to 16 levels, comparison sweeps are faster still.
    """
    if thr.size < FEW_THRESHOLDS:
        return _count_below(thr, x)
    if x.size < SMALL_LUT_CELLS // 4:
        return np.searchsorted(thr, x, side="left").astype(np.uint8)
    cells = LUT_CELLS if x.size >= 4 * LUT_CELLS else SMALL_LUT_CELLS
    lo32, hi = np.float32(thr[0]), float(thr[-1])
    if not hi > float(lo32):
        return np.searchsorted(thr, x, side="left").astype(np.uint8)
    scale32 = np.float32((cells - 1) / (hi - float(lo32)))
    if not np.isfinite(scale32):  # a range below float32's resolution
        return np.searchsorted(thr, x, side="left").astype(np.uint8)
    edges = float(lo32) + np.arange(cells + 2) / float(scale32)
    at = np.searchsorted(thr, edges, side="left")
    at[0] = 0  # cell 0 also takes every weight below the origin
    lut = at[:cells].astype(np.uint8)
    passes = int(np.max(at[2:] - at[:cells]))
    if passes > MAX_PASSES:  # levels crowded into a few cells (far outliers stretch the grid): search instead
        return np.searchsorted(thr, x, side="left").astype(np.uint8)
    ext = np.append(_comparable(thr, x), np.inf)
    out = np.empty(x.shape, dtype=np.uint8)
    for c0 in range(0, x.size, BLOCK):
        out[c0 : c0 + BLOCK] = _lookup(x[c0 : c0 + BLOCK], lut, ext, lo32, scale32, passes)
    return out


def _lookup(
    x: np.ndarray, lut: np.ndarray, ext: np.ndarray, lo32: np.float32, scale32: np.float32, passes: int
) -> np.ndarray:
    """The table lookup and correction passes of :func:`_assign_one` on one block of weights."""
    cells = lut.size
    # float32 and float16 weights: float32 arithmetic on exact inputs
    v: np.ndarray = (x - float(lo32)) * float(scale32) if x.dtype == np.float64 else (x - lo32) * scale32
    v -= 0.05
    np.fmin(v, cells, out=v)  # np.clip, but NaN goes to the last cell: searchsorted's answer, which sorts it last
    np.maximum(v, 0, out=v)
    cell = v.astype(np.int32)
    idx = lut[np.minimum(cell, cells - 1)]
    idx[cell >= cells] = ext.size - 1
    for _ in range(passes):
        idx += x > ext[idx]
    return idx


def assign(codebook: Codebook, groups: np.ndarray) -> np.ndarray:
    """Indices (uint8, shaped like the ``[G, n]`` group view) of the nearest level in each row's codebook."""
    groups = np.asarray(groups)
    if groups.ndim != 2 or groups.shape[0] != codebook.groups:
        raise ValueError(f"expected a [{codebook.groups}, n] group view, got shape {groups.shape}")
    return assign_rows(codebook.levels, groups)


def decode(codebook: Codebook, indices: np.ndarray) -> np.ndarray:
    """The float32 ``[G, n]`` values the indices stand for; exactly what the emitted ONNX decode computes."""
    if codebook.groups == 1:  # one table: a plain gather, without take_along_axis's broadcast index
        return codebook.levels[0].take(indices.astype(np.intp)).astype(np.float32, copy=False)
    return np.take_along_axis(codebook.levels, indices.astype(np.intp), axis=1).astype(np.float32, copy=False)
