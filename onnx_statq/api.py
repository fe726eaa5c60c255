"""The Python entry points: ``quantize`` for in-memory use, ``quantize_file`` for the CLI and scripts."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, overload

import onnx

from .config import ConfigLike, QuantConfig
from .errors import ConfigError, ExternalDataError, OutputError
from .graph.pass_ import PassResult, StatqPass
from .io import ZipSizer, load_model, read_external, save_model, zipped_size
from .plan import CalibrationMode, CalibrationSummary, LayerPlan, Refiner, SensitivityProbe
from .report import Report
from .workers import default_jobs

__all__ = [
    "DEFAULT_CALIB_MASK",
    "DEFAULT_CALIB_SAMPLES",
    "VERIFY_MAX_SAMPLES",
    "ir_to_proto",
    "make_refiner",
    "quantize",
    "quantize_file",
    "verification_data",
]

logger = logging.getLogger(__name__)

DEFAULT_CALIB_SAMPLES = 64
DEFAULT_CALIB_MASK = "auto"  # an input named attention_mask, if the model has one (calibrate/masks.py)
DEFAULT_COMPENSATION = None  # per op type: 0 on MatMul, 0.5 elsewhere (calibrate/session.py, docs/calibration.md)
VERIFY_MAX_SAMPLES = 256  # the check holds the float model's outputs on every verification sample at once


def _config(config: Any, options: dict[str, Any]) -> QuantConfig:
    """``config`` as a QuantConfig: one already, a mapping of its options, or a .json / .toml file, each checked as
    strictly as the CLI's ``--config``; keyword ``options`` are laid over it as the CLI's flags are
    (:meth:`QuantConfig.layered`)."""
    if config is None:
        base = QuantConfig()
    elif isinstance(config, QuantConfig):
        base = config
    elif isinstance(config, Mapping):
        base = QuantConfig.from_dict(config)
    elif isinstance(config, (str, os.PathLike)):
        base = QuantConfig.from_file(Path(config))
    else:
        raise TypeError(f"config takes a QuantConfig, a mapping or a config file path, not {type(config).__name__}")
    return base.layered(**options) if options else base


class _Calibration:
    """The pass's refiner over loaded calibration feeds; it also measures layer sensitivities for the allocation."""

    def __init__(
        self,
        feeds: list[dict[str, Any]],
        mode: CalibrationMode,
        progress: Callable[[int, int, str], None] | None,
        compensation: float | None,
        jobs: int | None,
        mask_input: str | None = None,
    ) -> None:
        self.feeds, self.mode, self.progress, self.compensation = feeds, mode, progress, compensation
        self.jobs = default_jobs() if jobs is None else jobs
        self.mask_input = mask_input

    def __call__(self, model: onnx.ModelProto, plans: list[LayerPlan]) -> CalibrationSummary:
        from .calibrate import calibrate

        return calibrate(
            model,
            self.feeds,
            plans,
            self.mode,
            self.progress,
            compensation=self.compensation,
            jobs=self.jobs,
            mask_input=self.mask_input,
        )

    def sensitivities(self, model: onnx.ModelProto, probes: list[SensitivityProbe]) -> dict[str, float]:
        from .calibrate.sensitivity import measure_sensitivities

        return measure_sensitivities(model, self.feeds, probes, self.mask_input)


def make_refiner(
    model: onnx.ModelProto,
    calib: Any,
    samples: int | None = DEFAULT_CALIB_SAMPLES,
    mode: CalibrationMode | str = CalibrationMode.SEQUENTIAL,
    progress: Callable[[int, int, str], None] | None = None,
    compensation: float | None = DEFAULT_COMPENSATION,
    jobs: int | None = None,
    mask: str | None = DEFAULT_CALIB_MASK,
) -> Refiner | None:
    """Load and check calibration data now (errors before any work), and return the pass's refiner (which the
    pass also asks for layer sensitivities, see :class:`~onnx_statq.graph.pass_.StatqPass`). ``jobs``: threads
    running calibration batches at once (None: one per CPU, as the config's default); the result is the same.
    ``mask``: the ``[batch, sequence]`` input whose zeros mark padding the MatMul refits leave out; ``"auto"``
    takes an input named ``attention_mask``, ``"none"`` fits every position (:mod:`onnx_statq.calibrate.masks`)."""
    mode = CalibrationMode(mode)
    if calib is None or mode == CalibrationMode.NONE:
        return None
    from .calibrate import load_calibration, model_inputs  # onnxruntime only when calibrating
    from .calibrate.masks import feed_masks, resolve_mask_input

    specs = model_inputs(model)
    mask_input = resolve_mask_input(mask, specs)
    feeds = load_calibration(calib, specs, samples)
    feed_masks(feeds, mask_input)  # a mask of the wrong shape is an error now, not halfway through calibration
    if compensation is not None and not 0.0 <= compensation <= 1.0:
        raise ConfigError(f"calibration compensation must be between 0 and 1, got {compensation}")
    return _Calibration(feeds, mode, progress, compensation, jobs, mask_input)


@overload
def quantize(
    model: onnx.ModelProto | str | os.PathLike[str], config: ConfigLike = None, **options: Any
) -> onnx.ModelProto: ...


@overload
def quantize(model: Any, config: ConfigLike = None, **options: Any) -> Any: ...


def quantize(
    model: Any,
    config: ConfigLike = None,
    *,
    calib: Any = None,
    calib_samples: int | None = DEFAULT_CALIB_SAMPLES,
    calib_mode: CalibrationMode | str = CalibrationMode.SEQUENTIAL,
    calib_compensation: float | None = DEFAULT_COMPENSATION,
    calib_mask: str | None = DEFAULT_CALIB_MASK,
    **options: Any,
) -> Any:
    """Quantize a model and return it as the kind of object it came as: an ``onnx.ModelProto`` for a ModelProto or
    a path to load, an ``onnx_ir.Model`` for an ``onnx_ir.Model`` (so a toolchain on either IR keeps its own).

    ``calib`` (an .npz or folder path, an iterable of input dicts, or a CalibrationDataReader) turns on
    calibration, sequential by default. The input model is never modified. Keyword options override ``config``.
    """
    lazy = _lazy(calib, calib_mode)
    proto, back, base = _as_proto(model, lazy)
    cfg = _config(config, options)
    refiner = make_refiner(proto, calib, calib_samples, calib_mode, None, calib_compensation, cfg.workers, calib_mask)
    return back(StatqPass(cfg, refiner=refiner)(proto, base_dir=base).model)


def _as_proto(model: Any, lazy: bool) -> tuple[onnx.ModelProto, Callable[[onnx.ModelProto], Any], Path | None]:
    """The model as a ModelProto, how to give the result back in the caller's kind, and the folder the pass reads
    external weights from (None: none left on disk). An ``onnx_ir.Model`` is recognised without importing
    onnx_ir (an optional extra): a caller holding one has imported it."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, lazy=lazy), _same, Path(model).parent if lazy else None
    if isinstance(model, onnx.ModelProto):
        return model, _same, None
    ir = sys.modules.get("onnx_ir")
    if ir is not None and isinstance(model, ir.Model):
        proto, base = ir_to_proto(model, lazy)
        return proto, ir.from_proto, base
    raise TypeError(f"quantize takes an onnx.ModelProto, an onnx_ir.Model or a path, not {type(model).__name__}")


def ir_to_proto(model: Any, lazy: bool = True) -> tuple[onnx.ModelProto, Path | None]:
    """An ``onnx_ir.Model`` as a ModelProto for the pass, and the folder of its external weights if they stay on
    disk (``lazy``; else they are read into the proto). onnx_ir keeps a loaded model's large tensors in their
    files and ``to_proto`` writes references to them, which onnx would resolve against the working directory."""
    import onnx_ir as ir

    proto = ir.to_proto(model)
    folders = {
        str(v.const_value.base_dir)
        for g in model.graphs()
        for v in g.initializers.values()
        if isinstance(v.const_value, ir.ExternalTensor)
    }
    if len(folders) > 1:
        raise ExternalDataError(f"the model's external data is in several folders: {', '.join(sorted(folders))}")
    if not folders:
        return proto, None
    folder = Path(folders.pop())
    read_external(proto, folder, lazy, f"the onnx_ir model (folder {folder})")
    return proto, folder if lazy else None


def _same(model: onnx.ModelProto) -> onnx.ModelProto:
    return model


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: ConfigLike = None,
    *,
    verify: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    calib: Any = None,
    calib_samples: int | None = DEFAULT_CALIB_SAMPLES,
    calib_mode: CalibrationMode | str = CalibrationMode.SEQUENTIAL,
    calib_compensation: float | None = DEFAULT_COMPENSATION,
    calib_mask: str | None = DEFAULT_CALIB_MASK,
    verify_data: Any = None,
) -> Report:
    """Load, quantize, save atomically and verify in onnxruntime; returns the full report.

    ``verify_data`` (the forms ``calib`` takes) makes the check run on those inputs instead of random ones."""
    src_p, dst_p = Path(src), Path(dst)
    given = [calib, verify_data, config]  # the config as a file path too
    _refuse_overwrite(dst_p, [src_p, *(Path(p) for p in given if isinstance(p, (str, os.PathLike)))])
    t0 = time.perf_counter()
    data_files: list[str] = []
    lazy = _lazy(calib, calib_mode)
    model = load_model(src_p, data_files, lazy=lazy)
    _refuse_overwrite(dst_p, [src_p.parent / n for n in data_files])
    checks = verification_data(model, verify_data, verify)
    inputs = [src_p] + [src_p.parent / n for n in data_files]
    zipped_before = ZipSizer(inputs)  # deflating a large input takes as long as the pass: run it alongside
    try:
        cfg = _config(config, {})
        refiner = make_refiner(
            model, calib, calib_samples, calib_mode, progress, calib_compensation, cfg.workers, calib_mask
        )
        t1 = time.perf_counter()
        base = src_p.parent if lazy else None
        result: PassResult = StatqPass(cfg, progress=progress, refiner=refiner)(model, base_dir=base)
        t2 = time.perf_counter()
        written = save_model(result.model, dst_p)
    except BaseException:
        zipped_before.cancel()
        raise
    t3 = time.perf_counter()
    report = result.report
    del model, result, refiner  # nothing of the model stays in memory while the sizes and the check run
    report.timings = {"load_s": t1 - t0, "quantize_s": t2 - t1, "save_s": t3 - t2, **report.timings}
    before, after = report.weight_bytes()
    report.totals = {
        **report.totals,
        "file_bytes_before": sum(p.stat().st_size for p in inputs),
        "file_bytes_after": sum(p.stat().st_size for p in written),
        "zipped_bytes_before": zipped_before.result(),
        "zipped_bytes_after": zipped_size(written),
        "weights_quantized": len(report.layers),
        "weights_skipped": len(report.skipped),
        "weight_bytes_before": before,
        "weight_bytes_after": after,
        "outputs": [str(p) for p in written],
    }
    if verify:
        verify_written(report, src_p, written, checks)
    return report


def verification_data(
    model: onnx.ModelProto, source: Any, verify: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """Verification feeds from ``source``, checked against ``model``'s inputs before any work (the checks
    calibration data gets), at most ``VERIFY_MAX_SAMPLES`` samples, and what the report says of them; None
    without a source. Data for a check that will not run is an error, not silently dropped."""
    if source is None:
        return None
    if not verify:
        raise ConfigError("verification data was given with verification off")
    from .calibrate.data import feed_samples, load_calibration, model_inputs

    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    feeds = load_calibration(path or source, model_inputs(model), VERIFY_MAX_SAMPLES, what="verification")
    if path is None:
        return feeds, {"data": "the given feeds"}
    if path.is_file():  # an .npz: samples on the first axis; a folder's feeds are whole feeds, counted as such
        return feeds, {"data": str(path), "samples": sum(feed_samples(f) for f in feeds)}
    return feeds, {"data": str(path)}


def verify_written(
    report: Report,
    src: Path,
    written: list[Path],
    checks: tuple[list[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Compare ``written[0]`` with ``src`` in onnxruntime, on ``checks`` (from :func:`verification_data`) or random
    inputs; a failed check removes every written file, so a failed run leaves no output behind."""
    from .verify import compare  # onnxruntime is only needed when verifying

    t0 = time.perf_counter()
    try:
        report.verify = compare(src, written[0], feeds=checks[0] if checks else None)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    if checks and "skipped" not in report.verify:
        report.verify.update(checks[1])
    report.timings["verify_s"] = time.perf_counter() - t0


def _lazy(calib: Any, calib_mode: CalibrationMode | str) -> bool:
    """Leave external weights on disk until the pass reads each (:mod:`onnx_statq.lazy`), unless calibrating:
    calibration runs onnxruntime on the model in memory."""
    return calib is None or calib_mode == CalibrationMode.NONE


def _refuse_overwrite(dst: Path, inputs: list[Path]) -> None:
    """Refuse an output path (or its ``.data`` file) that is one of the inputs: the inputs are never modified."""
    targets = {os.path.realpath(dst), os.path.realpath(dst) + ".data"}  # through a link, the data goes by its target
    for p in inputs:
        if os.path.realpath(p) in targets:
            raise OutputError(f"output path {dst} would overwrite the input {p}; inputs are never overwritten")
