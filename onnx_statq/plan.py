"""The records exchanged between the graph pass and calibration, kept apart so neither imports the other."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .codebook import EncodedTensor

__all__ = [
    "RECOMMENDED_SAMPLES",
    "CalibrationMode",
    "CalibrationSummary",
    "LayerOutcome",
    "LayerPlan",
    "Refiner",
    "Sensitivity",
    "SensitivityProbe",
    "bias_input_delta",
    "bias_values",
]


def bias_input_delta(
    op: str, attrs: dict[str, Any], bias_shape: tuple[int, ...] | None, delta: np.ndarray
) -> np.ndarray | None:
    """What to add to a Conv's or Gemm's bias input (``bias_shape``; None: it has none, one is added) so that its
    output moves by ``delta``, one value per output channel; None where no bias input can do that.

    Both the calibration streams and the graph apply it, so they agree. A Gemm adds ``beta * C``: the delta is
    divided by beta, and with beta 0 no bias reaches the output. A bias input must hold one value per channel: a
    Gemm's C may be a whole matrix, a scalar or a single value, which a per-channel delta cannot be folded into
    (calibration raised ValueError on them before)."""
    scale = float(attrs.get("beta", 1.0)) if op == "Gemm" else 1.0
    # one value per output channel, along the last axis: a Gemm's C of [M, 1] broadcasts along the rows, and when
    # M equals N a per-channel delta folded into it moved each row instead (held-out SQNR 10.2 -> 8.9 dB)
    per_channel = bias_shape is None or (
        len(bias_shape) >= 1 and bias_shape[-1] == delta.size and all(d == 1 for d in bias_shape[:-1])
    )
    if scale == 0.0 or not per_channel:
        return None
    moved = delta.astype(np.float64) / scale
    return moved if bias_shape is None else moved.reshape(bias_shape)


def bias_values(base: np.ndarray | None, moved: np.ndarray, dtype: np.dtype[Any] | type = np.float32) -> np.ndarray:
    """A bias input's value once it gains ``moved``: summed in float64 and stored in ``base``'s type, or, with no
    ``base`` (a bias is added), ``moved`` in ``dtype``, the layer's weight type. The calibration streams and the graph
    both take it from here, so the stream runs the bias the graph will hold (a float16 Conv without a bias got a
    float32 one in the stream, which onnxruntime refused: a traceback)."""
    if base is None:
        return moved.astype(dtype)
    return (base.astype(np.float64) + moved.reshape(base.shape)).astype(base.dtype)


class CalibrationMode(enum.StrEnum):
    SEQUENTIAL = "sequential"  # fit each layer on the input it will really see: the quantized stream
    INDEPENDENT = "independent"  # fit each layer on float inputs: the classic, layer-by-layer approach
    NONE = "none"  # data-free


@dataclass(frozen=True)
class LayerPlan:
    weight: str
    node_index: int  # position of the consumer node in the main graph (in ``branch``'s graph, if set)
    op: str
    attrs: dict[str, Any]
    slot: int
    input_name: str
    values: np.ndarray
    encoded: EncodedTensor
    # (position of an If node in the main graph, "then_branch" or "else_branch"): the consumer sits in that branch,
    # which calibration inlines when every feed takes it (calibrate/branches.py)
    branch: tuple[int, str] | None = None
    # why the weight is not refitted, if it is not: several nodes read it (a refit fits one layer's output and would
    # move what the others see unchecked), its readers sit in deeper subgraphs, the layer's data input is a constant
    # (a MatMul of two weights). Its data-free values still enter the quantized stream before any layer reads them,
    # so that the layers after it are fitted on the inputs the file gives them
    data_free: str = ""


@dataclass
class LayerOutcome:
    encoded: EncodedTensor
    bias_delta: np.ndarray | None = None
    sqnr_before_db: float | None = None
    sqnr_after_db: float | None = None
    note: str = ""


# Fewer calibration samples than this draw a warning and a note in the CLI's summary. With 8, the benchmarks' small
# models came out worse than with 32: silero VAD 3 bits -3.23 points against -0.57 (-1.21 data-free), the PP-OCR
# direction classifier 4 bits -1.25 against -0.50; the larger CNNs read the same. See docs/calibration.md, "How many
# samples".
RECOMMENDED_SAMPLES = 32


@dataclass
class CalibrationSummary:
    outcomes: dict[str, LayerOutcome] = field(default_factory=dict)
    model_sqnr_db: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    sessions: int = 0
    mode: str = ""
    samples: int = 0
    mask_input: str | None = None  # the padding mask the MatMul refits read (calibrate/masks.py), if any
    # quantized weights the streams ran float: in the branches of an If the calibration feeds disagree on (it runs
    # whole, its stored weights inside); the model output SQNR is then withheld
    float_in_streams: int = 0
    model_sqnr_note: str = ""  # why there is no model output SQNR, when the streams ran every weight


Refiner = Callable[[onnx.ModelProto, list[LayerPlan]], CalibrationSummary]


@dataclass(frozen=True)
class SensitivityProbe:
    """One weight of the main graph for a sensitivity measurement: its float values, its values decoded at the
    reference width, and the relative weight error of those."""

    name: str
    values: np.ndarray
    quantized: np.ndarray
    rel_error: float


Sensitivity = Callable[[onnx.ModelProto, list[SensitivityProbe]], dict[str, float]]
