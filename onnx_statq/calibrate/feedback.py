"""Error-feedback assignment (GPTQ/OBQ-style) with each weight's codebook as the grid.

Pure numpy. The layer's calibration error per output row ``c`` is ``w^T G w - 2 w^T h_c + ||y_c||^2`` with ``G`` the
quantized-stream input Gram matrix and ``h`` the target cross term of :func:`refit._target`. Its unconstrained
minimiser is the *target weights* ``W_t = W_f + (G + dI)^-1 (h - G W_f^T)^T``: the float weights when the refit
target is the float weights on the quantized inputs (compensation 0, plain GPTQ), corrected for the upstream error
the target asks to compensate otherwise. The error is then ``(w - w_t)^T G (w - w_t)`` plus a constant, the GPTQ
objective, so the input columns are visited one at a time (largest ``G`` diagonal first, "act order"), each weight
goes to its nearest codebook level, and the rounding error is spread over the columns not yet assigned through the
upper Cholesky factor of ``(G + dI)^-1``, in blocks so that most of the work is matrix products.

Only the assignment comes out of here; the refit then fits the codebook levels to it, and the caller keeps whichever
of this and the nearest-level assignment gives the lower calibration error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DAMP", "feedback_assign", "target_weights"]

DAMP = 0.01  # ridge on G, relative to its mean diagonal (GPTQ's usual 1%)
BLOCK = 128  # columns per lazy-update block


def _damped(g: np.ndarray, damp: float) -> np.ndarray:
    diag = np.diagonal(g)
    mean = float(diag.mean()) if diag.size else 0.0
    h = g + (damp * mean + 1e-12 * max(mean, 1e-30)) * np.eye(g.shape[0])
    dead = diag <= 0  # inputs that are always zero: any weight is exact there, keep the column well-posed
    h[dead, dead] = max(mean, 1.0)
    return h


def _inv_lower(low: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by blocks: about n^3/3 flops, a sixth of a general inverse."""
    n = low.shape[0]
    if n <= 256:
        return np.linalg.inv(low)
    m = n // 2
    a_inv, c_inv = _inv_lower(low[:m, :m]), _inv_lower(low[m:, m:])
    out = np.zeros_like(low)
    out[:m, :m], out[m:, m:] = a_inv, c_inv
    out[m:, :m] = -c_inv @ (low[m:, :m] @ a_inv)
    return out


def _cholesky(hd: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor, damping more if ``hd`` is numerically singular."""
    extra, mean = 0.0, float(np.diagonal(hd).mean())
    for _ in range(6):
        try:
            return np.linalg.cholesky(hd + extra * np.eye(hd.shape[0]) if extra else hd)
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-3 * mean, 1e-12)
    raise np.linalg.LinAlgError("Gram matrix could not be factorised")


def target_weights(wf: np.ndarray, g: np.ndarray, h: np.ndarray, damp: float | None = None) -> np.ndarray:
    """``[C, n]`` weights minimising the (damped) calibration error; ``wf`` when ``h == G wf^T``."""
    resid = h - g @ wf.T
    if not np.any(resid):
        return wf.copy()
    inv = _inv_lower(_cholesky(_damped(g, DAMP if damp is None else damp)))  # hd^-1 = inv^T inv
    return wf + (inv.T @ (inv @ resid)).T


def _inverse_cholesky(hd: np.ndarray) -> np.ndarray:
    """Upper ``U`` with ``U^T U = hd^-1`` (GPTQ's ``Hinv``) without forming the inverse: with ``R`` reversing the
    order, ``R hd R = L L^T`` gives ``hd = U' U'^T`` for the upper ``U' = R L R``, so ``U = U'^-1 = R L^-1 R``."""
    rev = np.arange(hd.shape[0])[::-1]
    return _inv_lower(_cholesky(hd[np.ix_(rev, rev)]))[np.ix_(rev, rev)]


def _nearest(levels: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and value of the nearest level of each row's sorted codebook (``levels`` ``[C, K]`` or ``[1, K]``,
    ``w`` ``[C]``); a weight halfway between two levels goes to the lower one."""
    mid = 0.5 * (levels[:, 1:] + levels[:, :-1])
    if levels.shape[0] == 1:
        idx = np.searchsorted(mid[0], w, side="left")
        return idx, levels[0][idx]
    idx = np.count_nonzero(w[:, None] > mid, axis=1)
    return idx, np.take_along_axis(levels, idx[:, None], 1)[:, 0]


def feedback_assign(
    w_target: np.ndarray,
    g: np.ndarray,
    levels: np.ndarray,
    group: np.ndarray | None = None,
    damp: float | None = None,
    act_order: bool = True,
    block: int = BLOCK,
) -> np.ndarray:
    """Level indices ``[C, n]`` for ``w_target`` (``[C, n]``) assigned with error feedback under ``G``.

    ``levels`` is ``[G, K]``: one codebook per group; ``group`` (``[C, n]`` ints, None: all group 0) says which
    codebook each weight uses. Deterministic: the column order is a stable sort and ties go to the lower level.
    """
    c, n = w_target.shape
    levels = np.asarray(levels, np.float64)
    gid = np.zeros((c, n), np.intp) if group is None else np.asarray(group, np.intp)
    order = np.argsort(-np.diagonal(g), kind="stable") if act_order else np.arange(n)
    w = np.array(w_target[:, order], np.float64)
    gid = gid[:, order]
    uinv = _inverse_cholesky(_damped(g[np.ix_(order, order)], DAMP if damp is None else damp))
    idx = np.zeros((c, n), np.intp)
    if levels.shape[0] == 1:
        row_levels: np.ndarray | None = levels  # one codebook for every weight
    elif bool(np.all(gid == gid[:, :1])):
        row_levels = levels[gid[:, 0]]  # one codebook per row
    else:
        row_levels = None
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2]  # a view: updates land in w
        u1 = uinv[i1:i2, i1:i2]
        err = np.empty((c, i2 - i1))
        for j in range(i2 - i1):
            lv = row_levels if row_levels is not None else levels[gid[:, i1 + j]]
            k, q = _nearest(lv, w1[:, j])
            idx[:, i1 + j] = k
            e = (w1[:, j] - q) / u1[j, j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            err[:, j] = e
        if i2 < n:
            w[:, i2:] -= err @ uinv[i1:i2, i2:]
    out = np.empty_like(idx)
    out[:, order] = idx
    return out
