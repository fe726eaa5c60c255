"""Least-squares refit of a layer's codebook and bias so its output matches the float layer's output.

Pure numpy. A layer is seen as ``Y = P @ W_rows.T`` with ``P`` the input patches (im2col for a convolution, the
flattened rows for MatMul/Gemm) and ``W_rows`` one row per output channel. With the assignment fixed, the output is
linear in the codebook values, so the refit is a K x K solve per codebook on Gram matrices accumulated over the
calibration batches: memory O(n_in^2), whatever the number of samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..codebook import Codebook, EncodedTensor, LevelDType, Representation, from_groups
from ..codebook.tensor import channel_rel_error

logger = logging.getLogger(__name__)

__all__ = ["MAX_ROWS", "GramStats", "LayerGeometry", "RefitResult", "patches", "refit_layer"]

MAX_ROWS = 32768  # patch rows kept per batch: plenty for Gram statistics, bounded cost for large feature maps


@dataclass(frozen=True)
class LayerGeometry:
    """How to turn the layer's input into patches and its weight into rows."""

    op: str
    attrs: dict[str, Any]
    weight_shape: tuple[int, ...]
    out_axis: int  # channel axis of the layer output (1 for Conv, -1 for MatMul/Gemm)

    def rows(self, w: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return w.reshape(w.shape[0], -1)
        if self.op == "Gemm" and int(self.attrs.get("transB", 0)):
            return w
        return w.T  # MatMul B [K, N] and Gemm B [K, N]

    def unrows(self, rows: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return rows.reshape(self.weight_shape)
        if self.op == "Gemm" and int(self.attrs.get("transB", 0)):
            return rows
        return rows.T


def supported(op: str, attrs: dict[str, Any], weight_shape: tuple[int, ...], slot: int) -> str | None:
    """None if the layer can be refitted, else why not (it is then kept data-free)."""
    if slot != 1:
        return "weight is not the layer's second input"
    if op == "Conv":
        if int(attrs.get("group", 1)) != 1:
            return "grouped convolution"
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or len(weight_shape) not in (3, 4):
            return "auto_pad or a kernel that is not 1-D/2-D"
        return None
    if op == "Gemm":
        if int(attrs.get("transA", 0)) or float(attrs.get("alpha", 1.0)) != 1.0:
            return "Gemm with transA or alpha"
        return None
    if op == "MatMul":
        return None if len(weight_shape) == 2 else "batched MatMul weight"
    return f"{op} is not refitted"


def patches(geo: LayerGeometry, x: np.ndarray) -> np.ndarray:
    """``[rows, n_in]`` patches whose product with ``rows(W).T`` is the layer output (without bias)."""
    if geo.op != "Conv":
        return x.reshape(-1, x.shape[-1]).astype(np.float64)
    one_d = len(geo.weight_shape) == 3
    if one_d:
        x = x[:, :, None, :]
    kh, kw = (1, geo.weight_shape[2]) if one_d else geo.weight_shape[2:]
    nd = 1 if one_d else 2
    pads = list(geo.attrs.get("pads", [0] * 2 * nd))
    strides = list(geo.attrs.get("strides", [1] * nd))
    dil = list(geo.attrs.get("dilations", [1] * nd))
    if one_d:
        pads, strides, dil = [0, pads[0], 0, pads[1]], [1, strides[0]], [1, dil[0]]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(xp, ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1), axis=(2, 3))
    win = win[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw).astype(np.float64)


@dataclass
class GramStats:
    """Sufficient statistics of (quantized-stream patches P_q, float-stream patches P_f)."""

    gqq: np.ndarray | None = None
    gqf: np.ndarray | None = None
    gff: np.ndarray | None = None
    sum_q: np.ndarray | None = None
    sum_f: np.ndarray | None = None
    rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, pq: np.ndarray, pf: np.ndarray) -> None:
        if pq.shape[0] > MAX_ROWS:
            step = -(-pq.shape[0] // MAX_ROWS)
            pq, pf = pq[::step], pf[::step]
        parts = (pq.T @ pq, pq.T @ pf, pf.T @ pf, pq.sum(0), pf.sum(0))
        if self.gqq is None:
            self.gqq, self.gqf, self.gff, self.sum_q, self.sum_f = parts
        else:
            for name, p in zip(("gqq", "gqf", "gff", "sum_q", "sum_f"), parts, strict=True):
                setattr(self, name, getattr(self, name) + p)
        self.rows += pq.shape[0]


@dataclass(frozen=True)
class RefitResult:
    encoded: EncodedTensor
    bias_delta: np.ndarray | None  # add to the layer's bias, one value per output channel
    output_sqnr_before_db: float
    output_sqnr_after_db: float
    refitted: bool


def _quad_error(w: np.ndarray, g: np.ndarray, h: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Per-channel ||P w_c - y_c||^2 from the Gram statistics."""
    return np.sum((w @ g) * w, axis=1) - 2 * np.sum(w * h.T, axis=1) + yy


def _db(err: np.ndarray, yy: np.ndarray) -> float:
    e, s = float(np.maximum(err, 0).sum()), float(yy.sum())
    return float("inf") if e <= 0 else 10 * np.log10(max(s, 1e-300) / e)


def _solve_levels(g: np.ndarray, h: np.ndarray, idx: np.ndarray, k: int, channels: list[int]) -> np.ndarray:
    """Least-squares levels shared by the rows in ``channels`` (one group), ridge-regularised."""
    a = np.zeros((k, k))
    b = np.zeros(k)
    for c in channels:
        m = np.zeros((idx.shape[1], k))
        m[np.arange(idx.shape[1]), idx[c]] = 1.0
        gm = g @ m
        a += m.T @ gm
        b += m.T @ h[:, c]
    used = np.diag(a) > 0
    sol = np.full(k, np.nan)
    au = a[np.ix_(used, used)]
    ridge = 1e-6 * np.trace(au) / max(int(used.sum()), 1) + 1e-30
    sol[used] = np.linalg.solve(au + ridge * np.eye(int(used.sum())), b[used])
    return sol


def _index_rows(enc: EncodedTensor, geo: LayerGeometry) -> np.ndarray:
    assert enc.indices is not None
    if enc.representation == Representation.TENSOR:
        full = enc.indices.reshape(enc.shape)
    else:
        full = from_groups(enc.indices, enc.shape, enc.axis)
    return geo.rows(full)


def _sorted_codebook(levels: np.ndarray, indices: np.ndarray, cb: Codebook) -> tuple[Codebook, np.ndarray]:
    """Restore the sorted-levels invariant after a refit by permuting each row's indices."""
    order = np.argsort(levels, axis=1, kind="stable")
    inverse = np.argsort(order, axis=1, kind="stable").astype(np.uint8)
    new_idx = (
        np.take_along_axis(inverse, indices.astype(np.intp), axis=1) if levels.shape[0] > 1 else inverse[0][indices]
    )
    return Codebook(np.take_along_axis(levels, order, axis=1), cb.bits, cb.level_dtype), new_idx


def _refit_levels(
    enc: EncodedTensor, geo: LayerGeometry, g: np.ndarray, h: np.ndarray, yy: np.ndarray
) -> EncodedTensor:
    assert enc.codebook is not None and enc.indices is not None
    cb = enc.codebook
    idx_rows = _index_rows(enc, geo)
    w_old = geo.rows(enc.decoded()).astype(np.float64)
    err_old = _quad_error(w_old, g, h, yy)
    c = idx_rows.shape[0]
    groups = [list(range(c))] if enc.representation == Representation.TENSOR else [[i] for i in range(c)]
    levels = cb.levels.astype(np.float64).copy()
    store = np.float16 if cb.level_dtype == LevelDType.FLOAT16 else np.float32
    for gi, chans in enumerate(groups):
        sol = _solve_levels(g, h, idx_rows, cb.k, chans)
        cand = np.where(np.isnan(sol), levels[gi], sol).astype(store).astype(np.float64)
        if not np.all(np.isfinite(cand)):
            continue
        w_new = cand[idx_rows[chans]]
        if _quad_error(w_new, g, h[:, chans], yy[chans]).sum() < err_old[chans].sum():
            levels[gi] = cand
    new_cb, new_idx = _sorted_codebook(levels.astype(np.float32), enc.indices, cb)
    probe = EncodedTensor(enc.representation, enc.shape, enc.axis, new_cb, new_idx, None, 0.0, enc.stored_bytes)
    return probe


def refit_layer(
    enc: EncodedTensor, w_float: np.ndarray, geo: LayerGeometry, stats: GramStats, refit_levels: bool = True
) -> RefitResult:
    """Refit ``enc``'s levels by least squares (assignment kept) and compute the bias correction.

    A refit is kept per codebook only when it lowers the calibration error, so calibration never makes a layer
    worse on the calibration data; the ridge term keeps near-singular Gram matrices solvable.
    """
    assert stats.gqq is not None and stats.gqf is not None and stats.gff is not None
    wf = geo.rows(w_float).astype(np.float64)
    h = stats.gqf @ wf.T
    yy = np.sum((wf @ stats.gff) * wf, axis=1)
    before = _quad_error(geo.rows(enc.decoded()).astype(np.float64), stats.gqq, h, yy)
    new = enc
    if refit_levels and enc.representation != Representation.FLOAT16:
        new = _refit_levels(enc, geo, stats.gqq, h, yy)
        new = EncodedTensor(
            new.representation,
            new.shape,
            new.axis,
            new.codebook,
            new.indices,
            None,
            channel_rel_error(w_float, new.decoded(), enc.axis),
            enc.stored_bytes,
        )
    wq = geo.rows(new.decoded()).astype(np.float64)
    after = _quad_error(wq, stats.gqq, h, yy)
    assert stats.sum_q is not None and stats.sum_f is not None
    delta = (stats.sum_f @ wf.T - stats.sum_q @ wq.T) / max(stats.rows, 1)
    return RefitResult(new, delta.astype(np.float32), _db(before, yy), _db(after, yy), new is not enc)
