"""ORT format for phones: write it, with the reduced-build operator config, by onnxruntime's own tools.

ORT format is written by an onnxruntime session with ``session.save_model_format=ORT``, the call that
``onnxruntime.tools.convert_onnx_models_to_ort`` wraps, and the reduced-build operator config by that tool's
``create_config_from_models``. One difference from the tool's defaults: constant folding is off while converting.
Folding would decode every weight into the file, which would then be as large as the float model; the .ort keeps the
codebooks and indices, and the decode runs with the model (see docs/mobile.md for what that costs).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import ConfigLike
from ..errors import OutputError, UnsupportedModelError, first_line
from ..io import load_model, output_target, publish, staging_dir, zipped_size
from ..report import Report
from .ort_canonical import canonical_ort

__all__ = [
    "CONFIG_SUFFIX",
    "ORT_SUFFIX",
    "config_path",
    "is_ort_format",
    "ort_path",
    "quantize_file_ort",
    "read_config",
    "write_config",
    "write_ort",
]

ORT_SUFFIX = ".ort"
CONFIG_SUFFIX = ".required_operators.config"
# NCHWc is an x86 layout; onnxruntime's converter leaves it out for any other target, and so do we.
_DISABLED_OPTIMIZERS = ["ConstantFolding", "NchwcTransformer"]


def ort_path(path: str | os.PathLike[str]) -> Path:
    """Where ``--format ort`` writes: the output path with the suffix ``.ort``."""
    return Path(path).with_suffix(ORT_SUFFIX)


def config_path(ort_file: Path) -> Path:
    """The reduced-build operator config written beside an .ort: ``<stem>.required_operators.config``."""
    return ort_file.with_name(ort_file.stem + CONFIG_SUFFIX)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's tools print progress and log at INFO; none of it belongs in our output."""
    log = logging.getLogger("ort_format_model.utils")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def _convert(onnx_file: Path, ort_file: Path, fold: bool = False) -> None:
    """The session call inside onnxruntime's converter (Fixed style, all optimizations); constant folding off unless
    ``fold`` (the converter's own default, which writes every decoded weight into the file)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(ort_file)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.add_session_config_entry("session.qdqisint8allowed", "0")
    disabled = [o for o in _DISABLED_OPTIMIZERS if not (fold and o == "ConstantFolding")]
    ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def write_ort(
    onnx_file: str | os.PathLike[str], dst: str | os.PathLike[str], config: bool = True, fold: bool = False
) -> list[Path]:
    """Convert ``onnx_file`` to ORT format at ``dst`` atomically; with ``config``, also write the operator list a
    reduced onnxruntime build needs (``<dst stem>.required_operators.config``). Returns the files written.

    ``fold=True`` converts exactly as onnxruntime's converter does, constant folding included: right for a float
    model, but it decodes an onnx-statq model's weights into the file.
    """
    src, out = Path(onnx_file), output_target(dst)
    cfg = output_target(config_path(out)) if config else None  # checked as the .ort is, before anything is written
    with staging_dir(out, prefix=".statq-ort-") as tmpdir:
        try:
            tmp_ort = tmpdir / out.name
            try:
                with _quiet():
                    _convert(src, tmp_ort, fold)
            except Exception as exc:  # name the model as the user knows it, not by its staged copy's path
                first = first_line(exc, 300).replace(f"from {src} failed:", "failed: ")
                # the model, not the output path: an op onnxruntime does not know (the .onnx output is fine)
                raise UnsupportedModelError(f"onnxruntime cannot convert the model to ORT format: {first}") from None
            tmp_ort.write_bytes(canonical_ort(tmp_ort.read_bytes()))  # the same bytes on every run
            staged = [(tmp_ort, out)]
            if cfg is not None:
                tmp_cfg = config_path(tmp_ort)
                write_config(tmp_ort, tmp_cfg, shown_as=out)
                staged.append((tmp_cfg, cfg))
            return publish(staged)
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None


def write_config(ort_file: Path, dst: Path, shown_as: Path) -> None:
    """onnxruntime's required-operators config for a reduced build, naming the model as ``shown_as``."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    with _quiet():
        create_config_from_models([ort_file], dst, False)
    dst.write_text(dst.read_text().replace(str(ort_file), str(shown_as)))


def read_config(path: Path) -> list[tuple[str, int, list[str]]]:
    """(domain, opset, ops) lines of a required-operators config."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, opset, ops = line.strip().split(";")[:3]
            out.append((domain, int(opset), ops.split(",")))
    return out


def is_ort_format(path: Path) -> bool:
    """ORT format files are flatbuffers with the file identifier ``ORTM``."""
    with path.open("rb") as fh:
        head = fh.read(8)
    return head[4:8] == b"ORTM"


def quantize_file_ort(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: ConfigLike = None,
    *,
    verify: bool = True,
    verify_data: Any = None,
    **kwargs: Any,
) -> Report:
    """:func:`onnx_statq.api.quantize_file`, written as ORT format at ``ort_path(dst)`` (plus the operator config).

    The intermediate .onnx lives in a temporary folder next to the output and is removed; verification runs the
    .ort file itself against the float model (on ``verify_data`` if given, checked before any work).
    """
    from ..api import quantize_file, verification_data

    src_p, out = Path(src), ort_path(dst)
    given = [src_p, config, verify_data, kwargs.get("calib")]
    inputs = [Path(p) for p in given if isinstance(p, (str, os.PathLike))]
    final = output_target(out)  # through a link, the config goes beside the link's target
    for target in (final, config_path(final), config_path(out)):
        if any(os.path.realpath(target) == os.path.realpath(p) for p in inputs):
            raise OutputError(f"output path {target} would overwrite an input; inputs are never overwritten")
    checks = None if verify_data is None else verification_data(load_model(src_p, lazy=True), verify_data, verify)
    with staging_dir(out) as tmpdir:
        report = quantize_file(src_p, tmpdir / (out.stem + ".onnx"), config, verify=False, **kwargs)
        produced = [Path(p) for p in report.totals["outputs"]]
        if len(produced) > 1:
            raise OutputError("ORT format holds at most 2 GB and no external data; use --format onnx for this model")
        t0 = time.perf_counter()
        written = write_ort(produced[0], out)
        report.timings["ort_s"] = time.perf_counter() - t0
    report.totals = {
        **report.totals,
        "format": "ort",
        "onnx_bytes_after": report.totals["file_bytes_after"],
        "file_bytes_after": written[0].stat().st_size,
        "zipped_bytes_after": zipped_size(written[:1]),
        "outputs": [str(p) for p in written],
    }
    if verify:
        from ..api import verify_written

        verify_written(report, src_p, written, checks)
    return report
