"""The codebook value types shared by every numerics module.

A weight tensor is handled as a 2-D *group view* ``[G, n]``: each row owns one codebook. A per-tensor codebook is
``G == 1``; a per-channel codebook puts one output channel in each row. Keeping this one shape everywhere lets the
fitting, assignment and decoding code stay free of axis bookkeeping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_BITS", "Codebook", "LevelDType", "Method"]

MAX_BITS = 8


class Method(enum.StrEnum):
    """How codebook levels are placed."""

    SIGMA = "sigma"
    KMEANS = "kmeans"
    UNIFORM = "uniform"


class LevelDType(enum.StrEnum):
    """Storage type of the codebook levels; float16 halves the cost of per-channel codebooks."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


@dataclass(frozen=True)
class Codebook:
    """Sorted levels, one row per group.

    ``levels`` is float32 of shape ``[G, K]``; every value is exactly representable in ``level_dtype`` so that an
    ONNX graph storing the levels in that type decodes to the same bits as :func:`decode`. Rows of a group with fewer
    than ``K`` distinct weights repeat their last level.
    """

    levels: np.ndarray
    bits: int
    level_dtype: LevelDType = LevelDType.FLOAT32

    @property
    def k(self) -> int:
        return int(self.levels.shape[1])

    @property
    def groups(self) -> int:
        return int(self.levels.shape[0])

    def storage_bytes(self) -> int:
        """Bytes the levels occupy in a model file."""
        return self.levels.size * (2 if self.level_dtype == LevelDType.FLOAT16 else 4)
