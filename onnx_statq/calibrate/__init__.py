"""Calibration: data loading, the two-stream executor (onnxruntime) and least-squares refits (numpy).

Never edits the graph; the pass applies what :func:`calibrate` returns.
"""

from ..plan import CalibrationMode, CalibrationSummary, LayerOutcome, LayerPlan
from .data import InputSpec, load_calibration, model_inputs
from .session import calibrate

__all__ = [
    "CalibrationMode",
    "CalibrationSummary",
    "InputSpec",
    "LayerOutcome",
    "LayerPlan",
    "calibrate",
    "load_calibration",
    "model_inputs",
]
