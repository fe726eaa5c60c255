"""The least-squares levels of a layer's codebooks, and how far to trust them when calibration rows are few.

Pure numpy. With the assignment fixed, a layer's calibration error is a quadratic in its codebook levels ``v``:
``v^T A v - 2 v^T b + const`` per codebook, with the normal equations ``A = M^T G M``, ``b = M^T h`` of
:func:`normal_equations`. :mod:`.refit` solves them; :func:`held_out_step` decides how far a layer with fewer
calibration rows than inputs moves towards that solution.

Why a step and not the solution: generalised cross-validation (``refit.gcv_factor``) counts a codebook's levels
against its rows, which holds while the rows are many and independent. A layer with fewer rows than inputs sees a
few frames or images whose patches overlap, and a refit that fits them well can be worse on any other input: on
silero VAD calibrated with 8 frames, the refit kept by that rule lost 3.23 points of frame accuracy at 3 bits
against 1.21 data-free. So such a layer fits its levels on one half of the calibration batches, measures on the
other half how far from the data-free levels towards them lowers the error (a quadratic in the step, closed form),
both ways round, and takes that step from the data-free levels towards the levels fitted on all rows. Fitted on
half the rows, the candidate is noisier than the one it scales: if its noise falls as 1 / rows, the best step for
all rows is ``2s / (1 + s)`` for a half's ``s``, which is the step used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codebook import LevelDType

__all__ = ["Halves", "held_out_step", "normal_equations", "solve_levels", "stored"]


@dataclass(frozen=True)
class Halves:
    """The fit half of the calibration batches (``GramStats.halves``): its input Gram matrix and target cross term
    (``refit._target``). The rest is not kept: the whole is the sum of the two halves, so the rest's normal
    equations are the whole's minus the fit half's."""

    g_fit: np.ndarray
    h_fit: np.ndarray


def stored(levels: np.ndarray, dtype: LevelDType) -> np.ndarray:
    """``levels`` as the codebook will store them, back in float64."""
    return levels.astype(np.float16 if dtype == LevelDType.FLOAT16 else np.float32).astype(np.float64)


def normal_equations(g: np.ndarray, h: np.ndarray, idx: np.ndarray, k: int, one: bool) -> tuple[np.ndarray, np.ndarray]:
    """``[G, K, K]`` and ``[G, K]`` normal equations of the ``G`` codebooks: one per layer row (``idx``'s rows),
    or with ``one`` a single codebook over the tensor, whose equations are the sum of the rows'."""
    a, b = _per_channel(g, h, idx, k)
    return (a.sum(0, keepdims=True), b.sum(0, keepdims=True)) if one else (a, b)


def solve_levels(a: np.ndarray, b: np.ndarray, old: np.ndarray, dtype: LevelDType) -> np.ndarray:
    """The least-squares levels as stored; levels no weight uses, and any solve that is not finite, keep ``old``."""
    cand = stored(_ridge_solve(a, b, old), dtype)
    return np.where(np.isfinite(cand), cand, old)


def held_out_step(
    a: np.ndarray,
    b: np.ndarray,
    old: np.ndarray,
    dtype: LevelDType,
    halves: Halves,
    idx: np.ndarray,
    one: bool,
) -> np.ndarray:
    """Per codebook, the step in [0, 1] from the data-free levels ``old`` towards the levels fitted on all rows
    (``a``, ``b``), from how levels fitted on each half do on the other (see the module's note)."""
    a_fit, b_fit = normal_equations(halves.g_fit, halves.h_fit, idx, old.shape[1], one)
    halves_ab = ((a_fit, b_fit), (a - a_fit, b - b_fit))
    num = np.zeros(old.shape[0])
    den = np.zeros(old.shape[0])
    for (a_f, b_f), (a_h, b_h) in (halves_ab, halves_ab[::-1]):
        d = solve_levels(a_f, b_f, old, dtype) - old
        num += np.einsum("gk,gk->g", d, b_h - np.einsum("gkl,gl->gk", a_h, old))
        den += np.einsum("gk,gkl,gl->g", d, a_h, d)
    s = np.clip(num / np.where(den > 0, den, 1.0), 0.0, 1.0) * (den > 0)
    return 2 * s / (1 + s)


def _per_channel(g: np.ndarray, h: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel normal equations ``A_c = M_c^T G M_c``, ``b_c = M_c^T h_c`` with ``M_c`` the one-hot assignment.

    Chunks of channels go through one matrix product each, ``G [M_1 ... M_ch]``, so the cost is a few BLAS calls per
    layer instead of one Python iteration per channel. The one-hot matrices are built input-major, the layout that
    product reads, instead of channel-major and transposed by einsum (the same bits, a quarter less time on
    MiniLM's 1536-wide layers).
    """
    c, n = idx.shape
    a = np.empty((c, k, k))
    b = np.empty((c, k))
    chunk = max(1, (1 << 22) // max(n * k, 1))
    rows = np.arange(n)[:, None]
    for s in range(0, c, chunk):
        part = idx[s : s + chunk].astype(np.intp)
        ch = part.shape[0]
        onehot = np.zeros((n, ch, k))  # [n, ch, K]: M_c for every channel of the chunk
        onehot[rows, np.arange(ch)[None, :], part.T] = 1.0
        gm = (g @ onehot.reshape(n, ch * k)).reshape(n, ch, k)  # G M_c
        a[s : s + ch] = np.matmul(onehot.transpose(1, 2, 0), gm.transpose(1, 0, 2))
        b[s : s + ch] = np.einsum("ick,ic->ck", onehot, h[:, s : s + ch])
    return a, b


def _ridge_solve(a: np.ndarray, b: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Solve ``[G, K, K]`` systems with a small ridge; levels no weight uses keep their old value."""
    used = np.diagonal(a, axis1=1, axis2=2) > 0
    scale = np.where(used, np.diagonal(a, axis1=1, axis2=2), 0).sum(1) / np.maximum(used.sum(1), 1)
    a = a + (1e-6 * scale + 1e-30)[:, None, None] * np.eye(a.shape[1])[None]
    a[~used] = 0.0
    a.transpose(0, 2, 1)[~used] = 0.0
    grp, lev = np.nonzero(~used)
    a[grp, lev, lev] = 1.0
    b = np.where(used, b, 0.0)
    sol = np.linalg.solve(a, b[..., None])[..., 0]
    return np.where(used, sol, old)
