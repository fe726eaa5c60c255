"""Predict a codebook's error at every K from sketches of the weights, with no clustering run on them.

The model behind ``--bits auto`` and the default bit allocation. What it predicts is what the pass measures,
:attr:`EncodedTensor.rel_error`: the mean over output channels (or codebook rows) of error / power for the levels
``sigma`` would fit. That error depends on the shape of the weights in detail (a Gaussian bulk with a few outliers,
a depthwise kernel's handful of values, a few channels whose outliers carry a layer's whole 8-bit figure), which no
moment captures: the closed-form model this module started with (variance and kurtosis read off a table of
generalised Gaussians' optimal error, with a finite-sample term: ``benchmarks.ggd_model``) was within ±15% on 73% of the
benchmark models' layer-widths for K >= 8 (81% with a first histogram sketch for one-codebook tensors), 1.5-3x high
on PP-OCRv6 det's short per-channel rows and down to 0.35x at 7-8 bits on MiniLM's matrices. So the prediction runs
sigma's own rule on sketches instead:

* one codebook over a tensor (:func:`sketch_curve`): a weighted sample (every weight of a small tensor; else an
  evenly strided sample plus every extreme weight), sigma's placement and centroid steps on its histogram for every
  K at once, and the squared error weighted per channel so that it sums to the per-channel mean;
* one codebook per row (:func:`row_sketch_curve`): sigma's rule on a few rows spread over the layer's rows by their
  shape (distinct values, kurtosis), plus the float16 rounding of every row.

Neither assigns or decodes the tensor, nor fits anything to a model; the sketch sizes were chosen on synthetic
layers (``python -m benchmarks.fit_predictor``). On the benchmark models (``benchmarks.bench_alloc
--prediction-only``) the prediction is within ±15% of the measured error on 99.5% of the 936 layer-widths for
K >= 8 (98.7% at 7 bits, the worst width; 99.1% on MiniLM, the worst model), at 0.6-1.4% of a K-means sweep's time
on the real models (3.7% on the toy digits CNN, where a few milliseconds of fixed cost are most of it; before: 81%
within ±15%, at 0.9-6.9%; then 0.8-2.6% with 64 strided rows, two starts stepped everywhere and float64 sketches).

A row with at most K distinct values is predicted exact (error 0, or the float16 rounding), as :func:`fit` makes it.
"""

from __future__ import annotations

import numpy as np

from .predict_rows import row_sketch_curve
from .predict_tensor import sketch_curve
from .stats import distinct_counts, rounding_error

__all__ = ["predict_curve", "predict_rel_error"]


def predict_curve(
    rows: np.ndarray, bits: range | list[int], half_levels: bool = False, channels: np.ndarray | None = None
) -> dict[int, float]:
    """Predicted relative error (mean over rows of error / row power) for each width in ``bits``.

    ``rows`` is the ``[G, n]`` group view the codebooks are fitted on: one row for a per-tensor codebook.
    ``half_levels``: the levels are stored in float16, so a row held exactly still has their rounding error.
    ``channels``: for one codebook over a tensor with output channels, their ``[C, m]`` view; the prediction is
    then of the mean over channels of error / channel power, as :attr:`EncodedTensor.rel_error` measures it,
    instead of the whole tensor's error / power.
    """
    rows = np.asarray(rows)
    if rows.shape[0] == 1:
        view = channels if channels is not None and channels.ndim == 2 and channels.shape[0] > 1 else rows
        return _exact_rows(rows, bits, half_levels, sketch_curve(view, bits, flat=rows))
    return row_sketch_curve(rows, bits, half_levels)


def _exact_rows(rows: np.ndarray, bits: range | list[int], half: bool, curve: dict[int, float]) -> dict[int, float]:
    """``curve`` with the widths at which the single row ``rows`` is held exactly set to its rounding error."""
    distinct = int(distinct_counts(rows, 1 << max(bits))[0])
    if distinct > 1 << max(bits):
        return curve
    power = max(float(np.mean(np.square(rows, dtype=np.float64))), 1e-300)
    exact = float(rounding_error(rows)[0]) / power if half else 0.0
    return {b: exact if distinct <= 1 << b else v for b, v in curve.items()}


def predict_rel_error(w: np.ndarray, axis: int | None, bits: int, per_channel: bool = False) -> float:
    """Predicted :attr:`EncodedTensor.rel_error` of ``w`` at ``bits``: one codebook, or one per channel on ``axis``.

    For one codebook over a tensor with channels, the prediction is for the tensor as a whole (its error over its
    power); the measured figure averages per-channel ratios, so it is higher where channel scales differ a lot.
    """
    from .tensor import fits_half, to_groups  # tensor imports this module's callers; keep the import graph acyclic

    rows = to_groups(np.asarray(w), axis if per_channel and axis is not None and w.ndim > 1 else None)
    half = np.asarray(w).dtype == np.float16 or (per_channel and fits_half(np.asarray(w)))  # as the encoder does
    return predict_curve(rows, [bits], half_levels=half)[bits]
