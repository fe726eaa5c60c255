"""Many 1-D codebooks over sorted points at once, stepped from prefix sums: the predictor's engine."""

from __future__ import annotations

import numpy as np

__all__ = ["CodebookRuns"]


class CodebookRuns:
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
        self.hi_slot = self.lo_slot + 1
        inner = np.ones(off[-1], dtype=bool)
        inner[self.first] = False
        self.inner = np.flatnonzero(inner)  # levels with a midpoint below them
        self.inner_slot = self.lo_slot[self.inner]
        self.pair = self.inner - 1  # each inner level's pair (level below, level) among all adjacent pairs
        self.slots = np.empty(off[-1] + per.size)
        self.slots[self.lo_slot[self.first]] = 2.0 * self.row - 0.5
        self.slots[self.lo_slot[self.last] + 1] = 2.0 * self.row + 1.5
        self.inner_offset = self.offset[self.inner]

    def _search(self, levels: np.ndarray) -> np.ndarray:
        # a step is a few dozen numpy calls on small arrays, run up to SKETCH_STEPS times per prediction: each call
        # saved counts (every adjacent pair summed at once, then the inner ones picked; one row needs no offset)
        mid = (levels[1:] + levels[:-1])[self.pair]
        mid *= 0.5
        if self.r > 1:
            mid += self.inner_offset
        self.slots[self.inner_slot] = mid
        return np.searchsorted(self.key, self.slots, side="right")

    def bounds(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = self._search(levels)
        return at[self.lo_slot], at[self.hi_slot]

    def _means(self, levels: np.ndarray, at: np.ndarray) -> np.ndarray:
        # the prefix sums at every bound, then their differences over each level's run (bounds lo_slot, lo_slot + 1)
        cw, cs = self.cw[at], self.cs[at]
        cnt = (cw[1:] - cw[:-1])[self.lo_slot]
        full = cnt > 0
        out = levels.copy()
        np.divide((cs[1:] - cs[:-1])[self.lo_slot], cnt, out=out, where=full)
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
            if prev is not None and np.array_equal(at, prev):
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
