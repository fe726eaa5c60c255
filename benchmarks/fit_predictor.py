"""Refit the predictor's finite-sample constants (FINITE_A, FINITE_P, FINITE_Q in onnx_statq/codebook/predict.py).

    python -m benchmarks.fit_predictor

On generalised-Gaussian samples only (exponents 0.5 to 2, row lengths 32 to 65,536, K 4 to 256), never on the
benchmark models: the ratio ``r`` of the error ``sigma`` measures to the table's population error is fitted as
``1 / (1 + a (K/n)^p (kurtosis/3)^q)`` by least squares on ``log(1/r - 1)``, over every K/n below 1 (rows with at
most K distinct values are exact, and predicted so). Heavier tails lose more to the finite sample (q > 0), and the
loss saturates as K nears n instead of falling exponentially. Prints the constants and the spread of the fitted
model; the values in predict.py came from this script (seed 1).
"""

from __future__ import annotations

from math import gamma

import numpy as np

import onnx_statq.codebook.predict as predict
from onnx_statq.codebook import Method
from onnx_statq.codebook.tensor import _encode_codebook

BETAS = (0.5, 0.7, 1.0, 1.5, 2.0)
LENGTHS = (32, 64, 144, 288, 576, 1152, 2304, 4608, 9216, 16384, 65536)


def _sample(rng: np.random.Generator, beta: float, size: tuple[int, int]) -> np.ndarray:
    scale = np.sqrt(gamma(1 / beta) / gamma(3 / beta))
    magnitude = rng.gamma(1 / beta, 1.0, size) ** (1 / beta)
    return (scale * magnitude * rng.choice([-1.0, 1.0], size)).astype(np.float32)


def ratios(seed: int = 1) -> np.ndarray:
    """Rows of (beta, n, K, measured / population-predicted)."""
    rng = np.random.default_rng(seed)
    out = []
    for beta in BETAS:
        for n in LENGTHS:
            rows = 32 if n <= 4608 else 1
            w = _sample(rng, beta, (rows, n))
            for bits in range(2, 9):
                k = 1 << bits
                measured = _encode_codebook(w, 0 if rows > 1 else None, bits, Method.SIGMA, rows > 1).rel_error
                population = _population(w, bits)
                if population > 0:  # rows with at most K distinct values are exact, and predicted so
                    out.append((beta, n, k, measured / population))
    return np.array(out)


def _population(w: np.ndarray, bits: int) -> float:
    """The table's prediction with the finite-sample term switched off (an infinitely long row)."""
    saved = predict.FINITE_A
    predict.FINITE_A = 0.0
    try:
        return predict.predict_curve(w, [bits])[bits]
    finally:
        predict.FINITE_A = saved


def fit_constants(r: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """``a, p, q`` of ``1 / (1 + a t^p (kurtosis/3)^q)``, ``t = K/n``, and the mask of the rows fitted."""
    t = r[:, 2] / r[:, 1]
    kurt = np.array([predict.ggd_kurtosis(b) for b in r[:, 0]])
    keep = (t < 1.0) & (r[:, 3] > 0) & (r[:, 3] < 0.99)
    design = np.column_stack([np.ones(keep.sum()), np.log(t[keep]), np.log(kurt[keep] / 3)])
    coef, *_ = np.linalg.lstsq(design, np.log(1 / r[keep, 3] - 1), rcond=None)
    return float(np.exp(coef[0])), float(coef[1]), float(coef[2]), keep


def main() -> None:
    r = ratios()
    a, p, q, keep = fit_constants(r)
    t = r[:, 2] / r[:, 1]
    kurt = np.array([predict.ggd_kurtosis(b) for b in r[:, 0]])
    spread = r[keep, 3] * (1 + a * t[keep] ** p * (kurt[keep] / 3) ** q)
    print(f"FINITE_A = {a:.3f}\nFINITE_P = {p:.3f}\nFINITE_Q = {q:.3f}")
    print(f"measured / model over the fitted range: median {np.median(spread):.3f}, "
          f"p10 {np.percentile(spread, 10):.3f}, p90 {np.percentile(spread, 90):.3f}, "
          f"within ±15% {100 * np.mean(np.abs(spread - 1) <= 0.15):.0f}%, n={keep.sum()}")


if __name__ == "__main__":
    main()
