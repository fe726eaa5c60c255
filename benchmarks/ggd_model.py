"""The closed-form error model: a generalised Gaussian's optimal K-level error, read off a table by kurtosis.

What :func:`~onnx_statq.codebook.predict.predict_curve` started as, kept (out of the library, which no longer
uses it) because ``benchmarks.fit_predictor`` refits
its constants and scores the sketches against it on synthetic rows: it is within ±15% where weights are the
smooth, symmetric shapes its table holds, and 1.5-3x off on real short rows (a handful of values in a depthwise
kernel, a Gaussian bulk with a few outliers), which is why the prediction now runs sigma's rule on sketches.
"""

from __future__ import annotations

from math import gamma

import numpy as np

from benchmarks.ggd_table import GGD_BETAS, GGD_ERROR, GGD_KS
from onnx_statq.codebook.stats import distinct_counts, rounding_error

__all__ = ["FINITE_A", "FINITE_P", "FINITE_Q", "finite_sample", "ggd_curve", "ggd_kurtosis", "unit_error"]

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
    distinct = distinct_counts(rows, 1 << max(bits))
    exact_error = rounding_error(rows) if half_levels else np.zeros(rows.shape[0])
    out = {}
    for b in bits:
        k = 1 << b
        err = var * unit_error(kurt, k) * finite_sample(k, n, kurt) + exact_error
        err = np.where(distinct <= k, exact_error, err)
        out[b] = float(np.mean(err[live] / power[live])) if live.any() else 0.0
    return out
