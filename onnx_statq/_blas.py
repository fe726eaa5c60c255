"""OpenBLAS's spin-wait, shortened for this process when onnx-statq is the first to load numpy.

After each call, OpenBLAS keeps its worker threads spinning for about 2^28 cycles (~0.1 s) before they sleep. In
calibration every layer's fit (numpy) is followed at once by the next segment's onnxruntime runs on the same cores,
and the spinning workers take those cores: PP-OCRv6 recognition's calib run fell from 2.6-2.7 to 2.0-2.1 s with
``OPENBLAS_THREAD_TIMEOUT=4`` (workers sleep right after their work), detection's from 13.1 to 11.4 s, MiniLM's
from 1.21 to 1.06 s, with the fits no slower and the same output files. OpenBLAS reads the variable only when it
loads, so it is set here, before any import of numpy, and only if numpy is not loaded yet and the user has not set
it: the CLI always gets it; a program that imports numpy first keeps OpenBLAS's default (set the variable yourself).
"""

from __future__ import annotations

import os
import sys

__all__ = ["SPIN_TIMEOUT", "shorten_blas_spin"]

SPIN_TIMEOUT = "4"  # OpenBLAS's minimum: 2^4 cycles


def shorten_blas_spin() -> None:
    """Set ``OPENBLAS_THREAD_TIMEOUT`` unless numpy is already loaded (too late) or the user has set it."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", SPIN_TIMEOUT)
