"""How much a difference between two task scores on the same evaluation set can be trusted.

The checks the benchmarks make (sequential >= independent >= data-free, within 2 points of float, auto beats
3 bits everywhere) compare two models on the same lines, queries or files, and several of them are decided by one
or two of several hundred. Every task's ``evaluate`` therefore also returns its metric per evaluation unit (a file,
a query, a text line, a page, a clip) as ``units``: a numerator and a denominator per unit (``{"num": [...],
"den": [...]}``) whose sums give the metric (an accuracy is (correct, 1) per sample; character accuracy
(characters right, characters) per line; box F1 (2 x matched, predicted + true boxes) per page; frame accuracy
(frames right, frames) per clip, since the frames of one clip are not independent).

Two rows of the same task are then compared unit by unit: a paired bootstrap over the units (both models resampled
with the same draw) gives an interval for the difference, and the units each model gets better show where it comes
from. The interval is a statement about the evaluation set, not about the calibration data or the quantization,
which the bootstrap does not resample.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BOOTSTRAP_ROUNDS", "Paired", "band", "compare", "dumps", "loss_within", "units"]

BOOTSTRAP_ROUNDS = 4000
LEVEL = 0.95
SEED = 20261128  # fixed: the same rows give the same interval on every run


def units(num: Sequence[float] | np.ndarray, den: Sequence[float] | np.ndarray | float = 1.0) -> dict[str, list[float]]:
    """Per-unit numerators and denominators, JSON-ready (whole numbers as ints); ``den`` a scalar for one per unit."""
    n = np.asarray(num, dtype=np.float64).ravel()
    d = np.broadcast_to(np.asarray(den, dtype=np.float64), n.shape)
    return {"num": [_compact(v) for v in n], "den": [_compact(v) for v in d]}


def _compact(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
# a list of plain numbers as json.dumps(indent=...) lays it out, one per line (strings never hold a newline)
_NUMBER_LIST = re.compile(rf"\[\n\s*({_NUMBER}(?:,\n\s*{_NUMBER})*)\n\s*\]")


def dumps(data: Any, indent: int = 2) -> str:
    """``json.dumps`` with every list of plain numbers on one line: a results file holds a row's units (up to a few
    thousand numbers) without a line for each."""
    text = json.dumps(data, indent=indent)
    return _NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)


POINTS_DECIMALS = 9  # far finer than one unit of any evaluation set (400 images: 0.25 points)


def loss_within(loss: float, limit: float) -> bool:
    """Whether a loss in points is at most ``limit``. Scores are ratios of counts, so a loss of exactly the bar
    comes out of ``100 * (a - b)`` a rounding above it (2 images of 400: 0.5000000000000004 points) and must not
    fail it; rounding to ``POINTS_DECIMALS`` cannot lift a loss of one unit more over the bar."""
    return round(loss, POINTS_DECIMALS) <= limit


def band(interval: Sequence[float] | None) -> str:
    """``[low, high]`` in signed points as every results table prints it; ``-`` where there is none."""
    return "-" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


@dataclass(frozen=True)
class Paired:
    """``a`` against ``b``: the difference in points, its bootstrap interval, and the units each one wins."""

    delta: float
    low: float
    high: float
    better: int  # units where a scores higher than b
    worse: int
    n: int

    @property
    def clear(self) -> bool:
        """The interval excludes zero: the evaluation set separates the two."""
        return self.low > 0 or self.high < 0

    def text(self) -> str:
        return (
            f"{self.delta:+.2f} {band((self.low, self.high))}, better on {self.better}, "
            f"worse on {self.worse} of {self.n}"
        )


def _array(rows: Any) -> np.ndarray | None:
    """``[n, 2]`` (numerator, denominator) from a row's ``units``; None when missing or empty."""
    if not isinstance(rows, dict) or "num" not in rows or "den" not in rows:
        return None
    arr = np.stack([np.asarray(rows["num"], np.float64), np.asarray(rows["den"], np.float64)], axis=1)
    return arr if arr.ndim == 2 and arr.shape[0] > 0 else None


def compare(a_units: Any, b_units: Any, rounds: int = BOOTSTRAP_ROUNDS) -> Paired | None:
    """``a`` against ``b`` (each a row's ``units``) in points, or None where either lacks them or they differ in
    length (rows from different evaluation sets or from before units were recorded). A unit's denominator may
    differ between the two (box F1 counts each model's own predicted boxes)."""
    a, b = _array(a_units), _array(b_units)
    if a is None or b is None or a.shape != b.shape:
        return None
    n = a.shape[0]

    def points(x: np.ndarray) -> np.ndarray:
        return 100.0 * x[..., 0] / np.maximum(x[..., 1], 1e-300)

    delta = float(points(a.sum(axis=0)) - points(b.sum(axis=0)))
    draws = np.random.default_rng(SEED).integers(0, n, size=(rounds, n))
    draws += (np.arange(rounds) * n)[:, None]
    counts = np.bincount(draws.ravel(), minlength=rounds * n).reshape(rounds, n).astype(np.float64)
    boot = points(counts @ a) - points(counts @ b)
    tail = 100.0 * (1.0 - LEVEL) / 2.0
    low, high = (float(v) for v in np.percentile(boot, [tail, 100.0 - tail]))
    sa, sb = a[:, 0] / np.maximum(a[:, 1], 1e-300), b[:, 0] / np.maximum(b[:, 1], 1e-300)
    return Paired(delta, low, high, int(np.sum(sa > sb)), int(np.sum(sa < sb)), n)
