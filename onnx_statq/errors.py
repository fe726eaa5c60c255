"""Typed errors; each carries the exit code the CLI returns for it, so scripts can tell failures apart."""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CheckFailedError",
    "ConfigError",
    "ExternalDataError",
    "MissingDependencyError",
    "ModelLoadError",
    "NoWeightsError",
    "OutputError",
    "StatqError",
    "UnsupportedModelError",
    "first_line",
]


class StatqError(Exception):
    """Base class: a problem with the user's input, reported as one line without a traceback."""

    exit_code = 1


class ConfigError(StatqError, ValueError):
    """Options or a config file that are invalid."""

    exit_code = 2


class ModelLoadError(StatqError):
    """The input is not a readable ONNX model (missing, truncated, not protobuf, fails the checker)."""

    exit_code = 3


class ExternalDataError(ModelLoadError):
    """External data is missing or points outside the model's folder."""

    exit_code = 4


class NoWeightsError(StatqError):
    """The model has no weight the pass could quantize with these options."""

    exit_code = 5


class OutputError(StatqError):
    """The output path cannot be written."""

    exit_code = 6


class UnsupportedModelError(StatqError):
    """A valid model that this pass cannot handle (for example an opset older than 7)."""

    exit_code = 7


class CalibrationError(StatqError):
    """Calibration or verification data that does not match the model."""

    exit_code = 8


class MissingDependencyError(StatqError):
    """An optional feature whose extra is not installed (``inspect --plot`` needs ``onnx-statq[plot]``)."""

    exit_code = 9


class CheckFailedError(StatqError):
    """``onnx-statq check``: the model does not load, run or convert to .ort in onnxruntime."""

    exit_code = 10


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its class name if it has none), for one-line errors: a library's
    message can run to pages (onnx's checker, onnxruntime's loader), and a user reads the first line."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]
