"""onnx-statq: statistical codebook quantization of ONNX models, decoded by standard ONNX ops."""

from ._blas import shorten_blas_spin

shorten_blas_spin()  # before anything imports numpy: see _blas.py

from .api import quantize, quantize_file
from .codebook import Granularity, Method
from .config import LayerSettings, QuantConfig
from .errors import (
    CalibrationError,
    ConfigError,
    ExternalDataError,
    ModelLoadError,
    NoWeightsError,
    OutputError,
    StatqError,
    UnsupportedModelError,
)
from .graph.pass_ import PassResult, StatqPass
from .report import Report

__all__ = [
    "CalibrationError",
    "ConfigError",
    "ExternalDataError",
    "Granularity",
    "LayerSettings",
    "Method",
    "ModelLoadError",
    "NoWeightsError",
    "OutputError",
    "PassResult",
    "QuantConfig",
    "Report",
    "StatqError",
    "StatqPass",
    "UnsupportedModelError",
    "quantize",
    "quantize_file",
]

__version__ = "0.1.0"
