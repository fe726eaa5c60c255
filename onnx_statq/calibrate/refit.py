"""Least-squares refit of a layer's codebook and bias so its output matches the float layer's output.

Pure numpy. A layer is seen as ``Y = P @ W_rows.T`` with ``P`` the input patches (im2col for a convolution, the
flattened rows for MatMul/Gemm) and ``W_rows`` one row per output channel. With the assignment fixed, the output is
linear in the codebook values, so the refit is a K x K solve per codebook on Gram matrices accumulated over the
calibration batches: memory O(n_in^2), whatever the number of samples.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..codebook import Codebook, EncodedTensor, Representation, from_groups, to_groups
from ..codebook.tensor import channel_rel_error
from .feedback import feedback_assign, target_weights
from .geometry import LayerGeometry
from .gram import GramStats
from .levels import Halves, held_out_step, normal_equations, solve_levels, stored

logger = logging.getLogger(__name__)

__all__ = ["FEEDBACK_MIN_ROWS_PER_INPUT", "RefitResult", "enough_rows", "gcv_factor", "refit_layer"]

# The level refit costs O(out * in^2 * K): with 64 levels or more (6+ bits) a second one for the error-feedback
# candidate took minutes per MiniLM layer, and so many levels leave little for a refit to move, so that candidate
# keeps the data-free levels there.
FEEDBACK_REFIT_MAX_K = 32

# Error feedback is tried only on a layer with at least this many calibration rows (patch rows, after the row cap)
# per input. With fewer, the Gram matrix is rank deficient and the feedback assignment pushes each weight's error
# into the input directions the calibration rows never excite (:mod:`.gram`); the held-out half does not catch it
# when both halves are frames of the same few clips. silero VAD's convolutions see 0.2-0.5 rows per input with 32
# calibration frames: at 3 bits, sequential, frame accuracy -1.93 -> -0.53 points against float with this rule
# (+1.40 [+0.76, +2.09], 31 of 48 clips better, 12 worse), 4 bits -0.22 -> -0.30. The squeeze-excitation
# convolutions of the PP-OCR models (one row per image) lose their feedback too: direction classifier 3 bits
# -0.75 -> -0.50, PP-OCRv6 recognition -0.56 -> -0.60 and 4 bits -0.06 -> -0.04, detection unchanged (none of
# these separated by its evaluation set).
FEEDBACK_MIN_ROWS_PER_INPUT = 1.0


@dataclass(frozen=True)
class RefitResult:
    encoded: EncodedTensor
    bias_delta: np.ndarray | None  # add to the layer's bias, one value per output channel
    output_sqnr_before_db: float
    output_sqnr_after_db: float
    refitted: bool
    feedback_s: float = 0.0  # seconds of the error-feedback assignment and its refit (part of the fit time)


def _quad_error(w: np.ndarray, g: np.ndarray, h: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Per-channel ||P w_c - y_c||^2 from the Gram statistics."""
    return np.sum((w @ g) * w, axis=1) - 2 * np.sum(w * h.T, axis=1) + yy


def _db(err: np.ndarray, yy: np.ndarray) -> float:
    e, s = float(np.maximum(err, 0).sum()), float(yy.sum())
    return float("inf") if e <= 0 else 10 * np.log10(max(s, 1e-300) / e)


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
    enc: EncodedTensor,
    geo: LayerGeometry,
    stats: GramStats,
    h: np.ndarray,
    yy: np.ndarray,
    halves: Halves | None = None,
) -> EncodedTensor:
    """``enc`` with each codebook's levels refitted on ``stats`` towards the target ``h``/``yy``, where the refit
    passes :func:`gcv_factor` (the assignment unchanged); with ``halves``, shrunk towards the data-free levels by
    :func:`~.levels.held_out_step`."""
    assert enc.codebook is not None and enc.indices is not None and stats.gqq is not None
    g, rows = stats.gqq, stats.rows
    cb = enc.codebook
    idx_rows = _index_rows(enc, geo)
    w_old = geo.rows(enc.decoded()).astype(np.float64)
    err_old = _quad_error(w_old, g, h, yy)
    one = enc.representation == Representation.TENSOR
    a, b = normal_equations(g, h, idx_rows, cb.k, one)
    old = cb.levels.astype(np.float64)
    cand = solve_levels(a, b, old, cb.level_dtype)
    if halves is not None:  # few rows: step towards the refit only as far as held-out rows support (.levels)
        step = held_out_step(a, b, old, cb.level_dtype, halves, idx_rows, one)
        cand = stored(old + step[:, None] * (cand - old), cb.level_dtype)
    rows_of = np.zeros(idx_rows.shape[0], np.intp) if cand.shape[0] == 1 else np.arange(idx_rows.shape[0])
    err_new = _quad_error(np.take_along_axis(cand[rows_of], idx_rows.astype(np.intp), 1), g, h, yy)
    # kept where it lowers the calibration error by more than its fitted levels explain (gcv_factor): a codebook
    # over the tensor is informed by every channel's outputs, one per channel by its own; an exact fit's error may
    # come out a rounding below 0, which no factor may turn into a gain
    factor = gcv_factor((np.diagonal(a, axis1=1, axis2=2) > 0).sum(1), rows * idx_rows.shape[0] if one else rows)
    new_err = np.maximum(err_new.sum() if one else err_new, 0.0)
    old_err = err_old.sum() if one else err_old
    finite = np.isfinite(factor)
    better = finite & (new_err * np.where(finite, factor, 0.0) < old_err)
    levels = np.where(better[:, None], cand, old)
    new_cb, new_idx = _sorted_codebook(levels.astype(np.float32), enc.indices, cb)
    probe = EncodedTensor(enc.representation, enc.shape, enc.axis, new_cb, new_idx, None, 0.0, enc.stored_bytes)
    return probe


def gcv_factor(params: np.ndarray | int, equations: int | np.ndarray) -> np.ndarray:
    """What a least-squares fit's calibration error is multiplied by before it is compared with the data-free
    levels' error: generalised cross-validation (Golub, Heath and Wahba, 1979), ``1 / (1 - p/n)^2`` for ``p``
    fitted levels and ``n`` equations; infinite (never kept) when ``p >= n``.

    A refit lowers the error on the rows it was fitted on whenever it has the freedom to, and with few rows per
    level it fits them rather than the layer: a codebook of K levels per output channel sees one equation per
    calibration row, so 8 rows fit 8 levels exactly. Measured on three synthetic head layers (256-1280 inputs, low-rank
    inputs) calibrated with 8 samples at 4 bits: 3.8-8.3 dB output SQNR on held-out inputs before this rule, against
    18.6-19.5 dB data-free; with it 17.4-19.5 dB; with 32 samples 21.0-21.7 dB, as before within 0.1 dB.
    """
    free = 1.0 - np.asarray(params, np.float64) / np.maximum(np.asarray(equations, np.float64), 1.0)
    return np.where(free > 0, 1.0 / np.where(free > 0, free, 1.0) ** 2, np.inf)


def _target(stats: GramStats, wf: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P_q^T Y``, ``||Y||^2`` per channel and ``sum(Y)`` for the target ``Y = (1-lam) P_q W_f + lam P_f W_f``.

    ``lam = 1`` asks the layer to reproduce the float layer's output on float inputs, compensating upstream error
    (the paper's dependency-aware target); ``lam = 0`` asks it to reproduce the float weights on the inputs it
    sees (the GPTQ target), which leaves upstream error to the layers that caused it.
    """
    assert stats.gqq is not None and stats.gqf is not None and stats.gff is not None
    assert stats.sum_q is not None and stats.sum_f is not None
    gqq, gqf, gff = stats.gqq, stats.gqf, stats.gff
    h = ((1 - lam) * gqq + lam * gqf) @ wf.T
    cross = 0.5 * (gqf + gqf.T)
    g_yy = (1 - lam) ** 2 * gqq + 2 * lam * (1 - lam) * cross + lam**2 * gff
    yy = np.sum((wf @ g_yy) * wf, axis=1)
    y_sum = ((1 - lam) * stats.sum_q + lam * stats.sum_f) @ wf.T
    return h, yy, y_sum


def _group_rows(enc: EncodedTensor, geo: LayerGeometry) -> np.ndarray:
    """``[C, n]``: which codebook (row of ``enc.codebook.levels``) each weight of the layer rows uses."""
    assert enc.indices is not None
    if enc.representation == Representation.TENSOR:
        return np.zeros(geo.rows(np.empty(enc.shape, np.int8)).shape, np.intp)
    ids = np.broadcast_to(np.arange(enc.indices.shape[0])[:, None], enc.indices.shape)
    return geo.rows(from_groups(ids, enc.shape, enc.axis)).astype(np.intp)


def _with_rows(enc: EncodedTensor, geo: LayerGeometry, idx_rows: np.ndarray) -> EncodedTensor:
    """``enc`` with its assignment replaced by ``idx_rows`` (layer-row layout)."""
    axis = enc.axis if enc.representation == Representation.CHANNEL else None
    groups = to_groups(geo.unrows(idx_rows), axis).astype(np.uint8)
    return EncodedTensor(enc.representation, enc.shape, enc.axis, enc.codebook, groups, None, 0.0, enc.stored_bytes)


def _feedback_candidate(
    enc: EncodedTensor, geo: LayerGeometry, wf: np.ndarray, g: np.ndarray, h: np.ndarray
) -> EncodedTensor:
    """``enc``'s codebook with the error-feedback assignment towards the refit target."""
    assert enc.codebook is not None
    idx = feedback_assign(target_weights(wf, g, h), g, enc.codebook.levels, _group_rows(enc, geo))
    return _with_rows(enc, geo, idx)


def _pick(
    a: EncodedTensor, b: EncodedTensor, geo: LayerGeometry, g: np.ndarray, h: np.ndarray, yy: np.ndarray
) -> EncodedTensor:
    """The candidate with the lower calibration error: per codebook when each layer row owns one, else overall."""
    assert a.codebook is not None and b.codebook is not None and a.indices is not None and b.indices is not None
    err_a = _quad_error(geo.rows(a.decoded()).astype(np.float64), g, h, yy)
    err_b = _quad_error(geo.rows(b.decoded()).astype(np.float64), g, h, yy)
    gid = _group_rows(a, geo)
    own = a.codebook.groups == gid.shape[0] and bool(np.all(gid == gid[:, :1]))
    if a.codebook.groups == 1 or not own:
        return b if err_b.sum() < err_a.sum() else a
    take_b = np.zeros(a.codebook.groups, bool)
    take_b[gid[:, 0]] = err_b < err_a
    if not take_b.any():
        return a
    levels = np.where(take_b[:, None], b.codebook.levels, a.codebook.levels)
    idx = np.where(take_b[:, None], b.indices, a.indices)
    cb = Codebook(levels, a.codebook.bits, a.codebook.level_dtype)
    return EncodedTensor(a.representation, a.shape, a.axis, cb, idx, None, 0.0, a.stored_bytes)


def _refitted_feedback(
    enc: EncodedTensor,
    geo: LayerGeometry,
    wf: np.ndarray,
    stats: GramStats,
    h: np.ndarray,
    yy: np.ndarray,
    refit_levels: bool,
) -> EncodedTensor:
    """The feedback assignment, its levels refitted on ``stats``/``h`` when ``refit_levels`` (up to
    ``FEEDBACK_REFIT_MAX_K`` levels)."""
    assert enc.codebook is not None and stats.gqq is not None
    cand = _feedback_candidate(enc, geo, wf, stats.gqq, h)
    if refit_levels and enc.codebook.k <= FEEDBACK_REFIT_MAX_K:
        cand = _refit_levels(cand, geo, stats, h, yy)
    return cand


def _halves(stats: GramStats, wf: np.ndarray, lam: float, held_out: bool) -> Halves | None:
    """What :func:`~.levels.held_out_step` needs for a layer with fewer calibration rows than inputs (None for
    any other, without ``held_out`` or without a held-out half): its fit half's Gram matrix and target."""
    parts = None if not held_out or enough_rows(stats) else stats.halves()
    if parts is None:
        return None
    fit = parts[0]
    assert fit.gqq is not None
    return Halves(fit.gqq, _target(fit, wf, lam)[0])


def enough_rows(stats: GramStats) -> bool:
    """Whether ``stats`` hold enough rows per input for the error-feedback assignment to be tried
    (``FEEDBACK_MIN_ROWS_PER_INPUT``)."""
    assert stats.gqq is not None
    return stats.rows >= FEEDBACK_MIN_ROWS_PER_INPUT * stats.gqq.shape[0]


def _feedback_generalises(
    enc: EncodedTensor, geo: LayerGeometry, wf: np.ndarray, stats: GramStats, refit_levels: bool, lam: float
) -> bool:
    """Whether the feedback assignment, fitted on half of the calibration rows, beats the plain one (with the same
    level refit) on the other half: the guard against fitting too few rows (:mod:`.gram`). Without a held-out half
    (``GramStats(split=False)``) the feedback is tried as before."""
    parts = stats.halves()
    if parts is None:
        return True
    fit, held = parts
    assert fit.gqq is not None and held.gqq is not None
    h_fit, yy_fit, _ = _target(fit, wf, lam)
    h_held, yy_held, _ = _target(held, wf, lam)
    plain = _refit_levels(enc, geo, fit, h_fit, yy_fit) if refit_levels else enc
    cand = _refitted_feedback(enc, geo, wf, fit, h_fit, yy_fit, refit_levels)
    err = [
        float(_quad_error(geo.rows(e.decoded()).astype(np.float64), held.gqq, h_held, yy_held).sum())
        for e in (plain, cand)
    ]
    return err[1] < err[0]


def refit_layer(
    enc: EncodedTensor,
    w_float: np.ndarray,
    geo: LayerGeometry,
    stats: GramStats,
    refit_levels: bool = True,
    compensation: float = 1.0,
    error_feedback: bool = False,
    held_out_levels: bool = False,
) -> RefitResult:
    """Refit ``enc``'s levels by least squares and compute the bias correction.

    The assignment is the statistical one (nearest level) unless ``error_feedback`` and the statistics hold at least
    ``FEEDBACK_MIN_ROWS_PER_INPUT`` rows per input: then the GPTQ-style assignment of :mod:`feedback` is tried too,
    its levels refitted the same way (up to ``FEEDBACK_REFIT_MAX_K`` levels), and whichever of the two has the lower
    calibration error is kept (per codebook for per-channel codebooks).

    A refit is kept per codebook only when it lowers the calibration error, so calibration never makes a layer worse
    on the calibration data; the ridge term keeps near-singular Gram matrices solvable. ``held_out_levels`` (the
    caller's choice for small calibration sets; ``stats`` must be split): a layer with fewer rows than inputs moves
    its levels only as far towards the refit as held-out rows support (:func:`~.levels.held_out_step`).
    """
    assert stats.gqq is not None and stats.sum_q is not None
    wf = geo.rows(w_float).astype(np.float64)
    h, yy, y_sum = _target(stats, wf, compensation)
    before = _quad_error(geo.rows(enc.decoded()).astype(np.float64), stats.gqq, h, yy)
    new = enc
    feedback_s = 0.0
    if (refit_levels or error_feedback) and enc.representation != Representation.FLOAT16:
        if refit_levels:
            new = _refit_levels(enc, geo, stats, h, yy, _halves(stats, wf, compensation, held_out_levels))
        t0 = time.perf_counter()
        if (
            error_feedback
            and enough_rows(stats)
            and _feedback_generalises(enc, geo, wf, stats, refit_levels, compensation)
        ):
            cand = _refitted_feedback(enc, geo, wf, stats, h, yy, refit_levels)
            new = _pick(new, cand, geo, stats.gqq, h, yy)
        feedback_s = time.perf_counter() - t0
        if new is not enc and _same_codes(new, enc):  # every refit rejected: the layer is not "refitted"
            new = enc
        if new is not enc:
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
    delta = (y_sum - stats.sum_q @ wq.T) / max(stats.rows, 1)
    return RefitResult(new, delta.astype(np.float32), _db(before, yy), _db(after, yy), new is not enc, feedback_s)


def _same_codes(a: EncodedTensor, b: EncodedTensor) -> bool:
    """Whether two encodings store the same levels and indices."""
    if a.codebook is None or b.codebook is None or a.indices is None or b.indices is None:
        return a is b
    return np.array_equal(a.codebook.levels, b.codebook.levels) and np.array_equal(a.indices, b.indices)
