"""The Python entry points: ``quantize`` for in-memory use, ``quantize_file`` for the CLI and scripts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from .config import QuantConfig
from .errors import ConfigError, OutputError
from .graph.pass_ import PassResult, StatqPass
from .io import load_model, save_model, zipped_size
from .plan import CalibrationMode, Refiner
from .report import Report

__all__ = ["DEFAULT_CALIB_SAMPLES", "make_refiner", "quantize", "quantize_file"]

logger = logging.getLogger(__name__)

DEFAULT_CALIB_SAMPLES = 64
DEFAULT_COMPENSATION = 0.5  # measured best on PP-OCRv6 and MiniLM at 3 and 4 bits (docs/calibration.md)


def _config(config: QuantConfig | None, options: dict[str, Any]) -> QuantConfig:
    base = config or QuantConfig()
    return base.with_options(**options) if options else base


def make_refiner(
    model: onnx.ModelProto,
    calib: Any,
    samples: int | None = DEFAULT_CALIB_SAMPLES,
    mode: CalibrationMode | str = CalibrationMode.SEQUENTIAL,
    progress: Callable[[int, int, str], None] | None = None,
    compensation: float = DEFAULT_COMPENSATION,
) -> Refiner | None:
    """Load and check calibration data now (errors before any work), and return the pass's refiner."""
    mode = CalibrationMode(mode)
    if calib is None or mode == CalibrationMode.NONE:
        return None
    from .calibrate import calibrate, load_calibration, model_inputs  # onnxruntime only when calibrating

    feeds = load_calibration(calib, model_inputs(model), samples)
    if not 0.0 <= compensation <= 1.0:
        raise ConfigError(f"calibration compensation must be between 0 and 1, got {compensation}")
    return lambda m, plans: calibrate(m, feeds, plans, mode, progress, compensation=compensation)


def quantize(
    model: onnx.ModelProto | str | os.PathLike[str],
    config: QuantConfig | None = None,
    *,
    calib: Any = None,
    calib_samples: int | None = DEFAULT_CALIB_SAMPLES,
    calib_mode: CalibrationMode | str = CalibrationMode.SEQUENTIAL,
    calib_compensation: float = DEFAULT_COMPENSATION,
    **options: Any,
) -> onnx.ModelProto:
    """Quantize a model (a ModelProto, or a path to load) and return the quantized ModelProto.

    ``calib`` (an .npz or folder path, an iterable of input dicts, or a CalibrationDataReader) turns on
    calibration, sequential by default. The input proto is never modified. Keyword options override ``config``.
    """
    proto = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    refiner = make_refiner(proto, calib, calib_samples, calib_mode, None, calib_compensation)
    return StatqPass(_config(config, options), refiner=refiner)(proto).model


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: QuantConfig | None = None,
    *,
    verify: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    calib: Any = None,
    calib_samples: int | None = DEFAULT_CALIB_SAMPLES,
    calib_mode: CalibrationMode | str = CalibrationMode.SEQUENTIAL,
    calib_compensation: float = DEFAULT_COMPENSATION,
) -> Report:
    """Load, quantize, save atomically and verify in onnxruntime; returns the full report."""
    src_p, dst_p = Path(src), Path(dst)
    if dst_p.exists() and src_p.exists() and dst_p.resolve() == src_p.resolve():
        raise OutputError("output path is the input model; the input is never overwritten")
    t0 = time.perf_counter()
    data_files: list[str] = []
    model = load_model(src_p, data_files)
    refiner = make_refiner(model, calib, calib_samples, calib_mode, progress, calib_compensation)
    t1 = time.perf_counter()
    result: PassResult = StatqPass(config or QuantConfig(), progress=progress, refiner=refiner)(model)
    t2 = time.perf_counter()
    written = save_model(result.model, dst_p)
    t3 = time.perf_counter()
    report = result.report
    report.timings = {"load_s": t1 - t0, "quantize_s": t2 - t1, "save_s": t3 - t2, **report.timings}
    inputs = [src_p] + [src_p.parent / n for n in data_files]
    before, after = report.weight_bytes()
    report.totals = {
        **report.totals,
        "file_bytes_before": sum(p.stat().st_size for p in inputs),
        "file_bytes_after": sum(p.stat().st_size for p in written),
        "zipped_bytes_before": zipped_size(inputs),
        "zipped_bytes_after": zipped_size(written),
        "weights_quantized": len(report.layers),
        "weights_skipped": len(report.skipped),
        "weight_bytes_before": before,
        "weight_bytes_after": after,
        "outputs": [str(p) for p in written],
    }
    if verify:
        from .verify import compare  # onnxruntime is only needed when verifying

        t4 = time.perf_counter()
        report.verify = compare(src_p, written[0])
        report.timings["verify_s"] = time.perf_counter() - t4
    return report
