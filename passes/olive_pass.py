"""onnx-statq as a Microsoft Olive pass: ``OnnxStatqQuantization``, an ONNX model in, an ONNX model out.

Olive finds a pass by its ``type`` in a *package config* (the JSON that maps pass names to module paths); a
third-party pass is added by handing Olive a package config that lists it, which :func:`package_config` builds from
Olive's own (so every built-in pass stays available)::

    from olive.workflows import run
    from onnx_statq_passes.olive_pass import package_config

    run(run_config, package_config=package_config())

On the command line, write it once with ``python -m onnx_statq_passes.olive_pass > statq_olive.json`` and run
``olive run --config run.json --package-config statq_olive.json``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from olive.hardware.accelerator import AcceleratorSpec
from olive.model import ONNXModelHandler
from olive.model.utils import resolve_onnx_path
from olive.package_config import OlivePackageConfig
from olive.passes import Pass
from olive.passes.onnx.common import get_external_data_config, model_proto_to_olive_model
from olive.passes.pass_config import BasePassConfig, ParamCategory, PassConfigParam

from onnx_statq import NoWeightsError, QuantConfig, StatqPass
from onnx_statq.api import DEFAULT_CALIB_MASK, DEFAULT_CALIB_SAMPLES, DEFAULT_COMPENSATION, make_refiner

__all__ = ["PASS_NAME", "OnnxStatqQuantization", "package_config"]

PASS_NAME = "OnnxStatqQuantization"
_QUANT_OPTIONS = ("bits", "method", "granularity", "min_size", "allocation", "avg_bits", "jobs")


class OnnxStatqQuantization(Pass):
    """Weights to codebook + low-bit indices, decoded by standard ONNX ops (plain onnxruntime runs the result).

    The options are those of ``QuantConfig`` (``config_file``: a .toml/.json with per-node and per-op-type
    settings, which the other options override) plus the calibration options of ``onnx_statq.quantize``. A model
    with nothing to quantize passes through unchanged instead of failing the workflow.
    """

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        return {
            "bits": PassConfigParam(type_=int, default_value=None, description="Index bits per weight, 1-8. [4]"),
            "method": PassConfigParam(type_=str, default_value=None, description="sigma (default), kmeans, uniform."),
            "granularity": PassConfigParam(type_=str, default_value=None, description="auto, tensor, channel."),
            "min_size": PassConfigParam(type_=int, default_value=None, description="Skip smaller weights. [1024]"),
            "allocation": PassConfigParam(type_=str, default_value=None, description="auto (default) or fixed."),
            "avg_bits": PassConfigParam(type_=float, default_value=None, description="Average bits (auto allocation)."),
            "jobs": PassConfigParam(
                type_=int, default_value=None, description="Threads for the numerics (same output). [one per CPU, <= 8]"
            ),
            "exclude": PassConfigParam(
                type_=list, default_value=None, description="Node names, weight names or op types to skip."
            ),
            "config_file": PassConfigParam(
                type_=str, default_value=None, category=ParamCategory.PATH, description="A .toml or .json QuantConfig."
            ),
            "calib": PassConfigParam(
                type_=str,
                default_value=None,
                category=ParamCategory.DATA,
                description="Calibration data: an .npz named like the inputs, or a folder of .npz feeds.",
            ),
            "calib_samples": PassConfigParam(type_=int, default_value=DEFAULT_CALIB_SAMPLES, description="At most."),
            "calib_mode": PassConfigParam(
                type_=str, default_value="sequential", description="sequential, independent or none."
            ),
            "calib_compensation": PassConfigParam(
                type_=float | None, default_value=DEFAULT_COMPENSATION, description="0-1; None: 0 on MatMul, 0.5 else."
            ),
            "calib_mask": PassConfigParam(
                type_=str, default_value=DEFAULT_CALIB_MASK, description="Padding-mask input: a name, auto or none."
            ),
            **get_external_data_config(),
        }

    def _run_for_config(
        self, model: ONNXModelHandler, config: type[BasePassConfig], output_model_path: str
    ) -> ONNXModelHandler:
        output_model_path = resolve_onnx_path(output_model_path, Path(model.model_path).name)
        proto = model.load_model()
        statq = _quant_config(config)
        refiner = None
        if config.calib:
            refiner = make_refiner(
                proto,
                config.calib,
                config.calib_samples,
                config.calib_mode,
                None,
                config.calib_compensation,
                mask=config.calib_mask,
            )
        with contextlib.suppress(NoWeightsError):  # nothing to quantize: the model goes on unchanged
            proto = StatqPass(statq, refiner=refiner)(proto).model
        return model_proto_to_olive_model(proto, output_model_path, config)


def _quant_config(config: Any) -> QuantConfig:
    base = QuantConfig.from_file(config.config_file) if config.config_file else QuantConfig()
    changes: dict[str, Any] = {k: getattr(config, k) for k in _QUANT_OPTIONS}
    return base.layered(**changes, exclude=tuple(config.exclude or ()) or None)


def package_config() -> dict[str, Any]:
    """Olive's own package config with ``OnnxStatqQuantization`` added: hand it to ``olive.workflows.run``."""
    data = json.loads(Path(OlivePackageConfig.get_default_config_path()).read_text())
    data["passes"][PASS_NAME] = {
        "module_path": f"onnx_statq_passes.olive_pass.{OnnxStatqQuantization.__name__}",
        "supported_providers": ["*"],
        "supported_accelerators": ["*"],
        "supported_precisions": ["*"],
        "supported_algorithms": [],
        "supported_quantization_encodings": [],
    }
    return data


if __name__ == "__main__":
    print(json.dumps(package_config(), indent=2))
