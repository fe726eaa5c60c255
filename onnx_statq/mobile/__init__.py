"""Mobile deployment: ORT format for phones (:mod:`.ort_format`) and ``onnx-statq check`` (:mod:`.check`).

Both defer to onnxruntime's own tools rather than to lists of our own.
"""

from __future__ import annotations

from .check import CheckResult, EPCoverage, OpUse, check_model, raise_if_failed
from .check_format import format_check
from .ort_format import is_ort_format, ort_path, quantize_file_ort, read_config, write_ort

__all__ = [
    "CheckResult",
    "EPCoverage",
    "OpUse",
    "check_model",
    "format_check",
    "is_ort_format",
    "ort_path",
    "quantize_file_ort",
    "raise_if_failed",
    "read_config",
    "write_ort",
]
