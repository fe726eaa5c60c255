"""Optimal K-level quantizer error of unit-variance generalised Gaussians: the shape table of the closed-form
error model (:mod:`benchmarks.ggd_model`).

``p(x) ~ exp(-|x/a|^beta)``: beta 2 is Gaussian, 1 Laplace, below 1 the heavy tails of real weights. Each entry
is the squared error of Lloyd-Max levels for that density (run on a fine grid of the density, not on any data),
so the table is a property of the distributions alone. The constants below are what :func:`compute_table` prints;
a test regenerates some of them, so they cannot drift from the code.
"""

from __future__ import annotations

from math import gamma

import numpy as np

__all__ = ["GGD_BETAS", "GGD_ERROR", "GGD_KS", "compute_table", "lloyd_max_error"]

GGD_KS = [2, 4, 8, 16, 32, 64, 128, 256]
GGD_BETAS = [0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.7, 2.0, 2.5, 3.0, 4.0]

GRID = 200_001
MAX_STEPS = 20_000


def _density(beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid points and their probability masses; the grid is uniform in asinh(x), fine at the cusp of heavy tails."""
    a = np.sqrt(gamma(1 / beta) / gamma(3 / beta))  # unit variance
    lim = a * 40.0 ** (1 / beta)  # density below exp(-40) is cut
    u = np.linspace(-np.arcsinh(lim / a), np.arcsinh(lim / a), GRID)
    x = a * np.sinh(u)
    p = np.exp(-((np.abs(x) / a) ** beta)) * np.cosh(u)  # density times dx/du
    return x, p / p.sum()


def lloyd_max_error(beta: float, k: int) -> float:
    """Squared error of the Lloyd-Max quantizer with ``k`` levels, started at the cube-root-density quantiles."""
    x, p = _density(beta)
    dx = np.gradient(x)
    cdf = np.cumsum(np.cbrt(p / dx) * dx)
    levels = np.interp((np.arange(k) + 0.5) / k, cdf / cdf[-1], x)
    cp = np.concatenate([[0.0], np.cumsum(p)])
    cpx = np.concatenate([[0.0], np.cumsum(p * x)])
    for _ in range(MAX_STEPS):
        cut = np.concatenate([[0], np.searchsorted(x, (levels[1:] + levels[:-1]) / 2), [x.size]])
        mass = cp[cut[1:]] - cp[cut[:-1]]
        new = np.where(mass > 0, (cpx[cut[1:]] - cpx[cut[:-1]]) / np.maximum(mass, 1e-300), levels)
        done = np.max(np.abs(new - levels)) < 1e-12
        levels = new
        if done:
            break
    cut = np.concatenate([[0], np.searchsorted(x, (levels[1:] + levels[:-1]) / 2), [x.size]])
    owner = np.repeat(np.arange(k), np.diff(cut))
    return float(np.sum(p * (x - levels[owner]) ** 2))


def compute_table(betas: list[float] = GGD_BETAS, ks: list[int] = GGD_KS) -> list[list[float]]:
    return [[lloyd_max_error(b, k) for k in ks] for b in betas]


# fmt: off
GGD_ERROR = [
    [7.339352e-01, 3.710880e-01, 1.455032e-01, 4.680853e-02, 1.330633e-02, 3.540696e-03, 9.125092e-04, 2.311994e-04],
    [7.153943e-01, 3.426785e-01, 1.288024e-01, 4.038096e-02, 1.132982e-02, 2.996785e-03, 7.703673e-04, 1.949913e-04],
    [6.979514e-01, 3.190722e-01, 1.158981e-01, 3.561738e-02, 9.895197e-03, 2.605648e-03, 6.684970e-04, 1.690826e-04],
    [6.811513e-01, 2.990141e-01, 1.055985e-01, 3.194164e-02, 8.806060e-03, 2.310857e-03, 5.919904e-04, 1.496919e-04],
    [6.647466e-01, 2.816755e-01, 9.717023e-02, 2.901714e-02, 7.950930e-03, 2.080749e-03, 5.327626e-04, 1.345394e-04],
    [6.486020e-01, 2.664812e-01, 9.013500e-02, 2.663372e-02, 7.261596e-03, 1.896270e-03, 4.849112e-04, 1.224284e-04],
    [6.168515e-01, 2.409723e-01, 7.903484e-02, 2.298103e-02, 6.232481e-03, 1.618604e-03, 4.131383e-04, 1.042772e-04],
    [5.857468e-01, 2.202642e-01, 7.102198e-02, 2.035842e-02, 5.472581e-03, 1.420288e-03, 3.619371e-04, 9.132837e-05],
    [5.592062e-01, 2.037558e-01, 6.419393e-02, 1.828749e-02, 4.901878e-03, 1.270534e-03, 3.235935e-04, 8.163058e-05],
    [5.271268e-01, 1.886054e-01, 5.881712e-02, 1.667016e-02, 4.457680e-03, 1.154136e-03, 2.937998e-04, 7.410006e-05],
    [5.000000e-01, 1.761949e-01, 5.447599e-02, 1.537254e-02, 4.102229e-03, 1.061120e-03, 2.699954e-04, 6.808420e-05],
    [4.568969e-01, 1.571160e-01, 4.790193e-02, 1.342051e-02, 3.569054e-03, 9.217554e-04, 2.343683e-04, 5.908213e-05],
    [4.244442e-01, 1.431703e-01, 4.316305e-02, 1.202265e-02, 3.188440e-03, 8.224285e-04, 2.089902e-04, 5.267211e-05],
    [3.888249e-01, 1.281440e-01, 3.810828e-02, 1.053996e-02, 2.785922e-03, 7.175325e-04, 1.822091e-04, 4.590968e-05],
    [3.633802e-01, 1.174818e-01, 3.454776e-02, 9.501014e-03, 2.504698e-03, 6.443500e-04, 1.635395e-04, 4.119668e-05],
    [3.344785e-01, 1.052659e-01, 3.049131e-02, 8.323484e-03, 2.186850e-03, 5.617294e-04, 1.424783e-04, 3.588131e-05],
    [3.155366e-01, 9.704711e-02, 2.777669e-02, 7.539423e-03, 1.975748e-03, 5.069204e-04, 1.285139e-04, 3.235828e-05],
    [2.928932e-01, 8.670860e-02, 2.438066e-02, 6.562539e-03, 1.713236e-03, 4.388373e-04, 1.111714e-04, 2.798308e-05],
]
# fmt: on

if __name__ == "__main__":
    for row in compute_table():
        print("    [" + ", ".join(f"{v:.6e}" for v in row) + "],")
