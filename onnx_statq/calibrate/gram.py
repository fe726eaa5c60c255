"""The Gram statistics a layer's refit solves from, with a held-out half for choices that could overfit.

With small calibration sets, a layer with a large fan-in sees fewer patch rows than it has inputs: its Gram matrix is
rank deficient, and an assignment that pushes each weight's error into the directions the calibration data never
excites (the error feedback of :mod:`.feedback`) looks better on those rows and is worse on any other input. Measured
on silero VAD at 3 bits with 32 calibration frames, feedback took sequential calibration from -0.65 points (without
it) to -6.53, while with 128 frames it helped (-0.23). So the statistics also keep the even batches apart:
:meth:`GramStats.halves` gives a fit half and the held-out rest, and :mod:`.refit` keeps the feedback assignment of
a layer only when, fitted on one half, it beats the plain assignment on the other. The Grams are sums over rows, so
the held-out half is the whole minus the fit half, at the cost of one more set of products on half of the rows.
Halves of the same few clips agree on what neither excites, so :mod:`.refit` also tries the feedback only on a layer
with at least one row per input (``refit.FEEDBACK_MIN_ROWS_PER_INPUT``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_ROWS", "GramStats", "row_step"]

MAX_ROWS = 8192  # patch rows kept per layer over all batches: enough for Gram statistics, bounded cost

_FIELDS = ("gqq", "gqf", "gff", "sum_q", "sum_f")

_Terms = tuple[tuple[np.ndarray, ...], int]  # (one batch's terms of _FIELDS, in that order; its rows)


def row_step(rows: int, row_cap: int | None) -> int:
    """The stride that leaves at most ``row_cap`` of ``rows`` patch rows (1: keep them all)."""
    return 1 if row_cap is None or rows <= row_cap else -(-rows // row_cap)


def _terms(pq: np.ndarray, pf: np.ndarray, row_cap: int = MAX_ROWS) -> _Terms:
    """One batch's Gram terms, strided down to ``row_cap`` rows. The products run in float32 (BLAS at twice the
    speed of float64, which was most of the calibration time) and accumulate in float64 for the solves."""
    step = row_step(pq.shape[0], row_cap)
    if step > 1:  # unstrided, ``pq is pf`` still tells independent mode below
        pq, pf = pq[::step], pf[::step]
    pq32, pf32 = pq.astype(np.float32, copy=False), pf.astype(np.float32, copy=False)
    gqq = (pq32.T @ pq32).astype(np.float64)
    same = pq is pf  # independent mode: both streams are the float one
    gqf = gqq if same else (pq32.T @ pf32).astype(np.float64)
    gff = gqq if same else (pf32.T @ pf32).astype(np.float64)
    return (gqq, gqf, gff, pq.sum(0, dtype=np.float64), pf.sum(0, dtype=np.float64)), pq.shape[0]


@dataclass
class GramStats:
    """Sufficient statistics of (quantized-stream patches P_q, float-stream patches P_f).

    ``split``: also accumulate every other batch into :attr:`half`, for :meth:`halves`. Whole batches, not rows:
    neighbouring patch rows of one image overlap, so a row-wise split would hold out nearly the same data.
    """

    gqq: np.ndarray | None = None
    gqf: np.ndarray | None = None
    gff: np.ndarray | None = None
    sum_q: np.ndarray | None = None
    sum_f: np.ndarray | None = None
    rows: int = 0
    split: bool = False
    half: GramStats | None = None
    batches: int = 0

    def add(self, pq: np.ndarray, pf: np.ndarray, row_cap: int = MAX_ROWS, only: bool = False) -> None:
        """Accumulate one batch, strided down to ``row_cap`` rows; an even batch's products also enter the
        held-out split (the same arrays: they were computed twice before, a quarter more Gram work per layer).

        ``only``: this is the layer's only batch, which whole batches could not split. With a split, its rows, which
        come sample by sample, enter as two batches, the first half of the samples and the rest, so that the
        held-out half is other samples. Before, a single batch held nothing out and the feedback was kept on its
        calibration error alone: magika calibrated on one batch of 8 files lost 1.06 points at 3 bits against 0.50
        data-free (0.44 with the split), and 0.19 at 4 bits where data-free gains 0.06 (a 0.19 gain with the split;
        `docs/calibration.md`)."""
        if only and self.split and pq.shape[0] >= 2:
            m = pq.shape[0] // 2
            head, tail = pf[:m], pf[m:]
            self.add(head if pq is pf else pq[:m], head, row_cap)
            self.add(tail if pq is pf else pq[m:], tail, row_cap)
            return
        parts = _terms(pq, pf, row_cap)
        self._accumulate(parts)
        if self.split and self.batches % 2 == 0:
            self.half = self.half or GramStats()
            self.half._accumulate(parts)
        self.batches += 1

    def _accumulate(self, parts: _Terms) -> None:
        sums, rows = parts
        if self.gqq is None:
            self.gqq, self.gqf, self.gff, self.sum_q, self.sum_f = sums
        else:
            for name, p in zip(_FIELDS, sums, strict=True):
                setattr(self, name, getattr(self, name) + p)
        self.rows += rows

    def halves(self) -> tuple[GramStats, GramStats] | None:
        """(fit half, held-out rest), or None without a split or with too few rows to hold any out."""
        if self.half is None or self.half.gqq is None or self.rows - self.half.rows < 1:
            return None
        rest = GramStats(rows=self.rows - self.half.rows)
        for name in _FIELDS:
            setattr(rest, name, getattr(self, name) - getattr(self.half, name))
        return self.half, rest
