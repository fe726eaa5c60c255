"""onnx-statq as an onnx-ir pass, usable in ``onnx_ir.passes.PassManager`` next to onnx-ir's own passes.

It is a FunctionalPass: the input ``ir.Model`` is left as it was and a new model is returned, because the codebook
encoding replaces initializers by decode subgraphs and callers may still hold the float model.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from onnx_statq import NoWeightsError, QuantConfig, StatqPass
from onnx_statq.api import ir_to_proto, make_refiner
from onnx_statq.lazy import materialize
from onnx_statq.report import Report

__all__ = ["StatqIRPass"]


class StatqIRPass(ir.passes.FunctionalPass):
    """Quantize weights to codebook + low-bit indices. ``report`` holds the last run's per-layer records.

    A model with nothing to quantize passes through unmodified (``modified=False``) instead of failing the pipeline.
    """

    def __init__(self, config: QuantConfig | None = None, calib: Any = None, **calib_options: Any) -> None:
        super().__init__()
        self.config = config or QuantConfig()
        self.calib = calib
        self.calib_options = calib_options
        self.report: Report | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        proto, base = ir_to_proto(model, lazy=self.calib is None)  # calibration runs the weights in memory
        refiner = make_refiner(proto, self.calib, **self.calib_options) if self.calib is not None else None
        try:
            result = StatqPass(self.config, refiner=refiner)(proto, base_dir=base)
        except NoWeightsError:
            self.report = Report()
            if base is not None:  # a new model whose tensors do not point at files by a relative path
                materialize(proto, base)
            return ir.passes.PassResult(ir.from_proto(proto), modified=False)
        self.report = result.report
        return ir.passes.PassResult(ir.from_proto(result.model), modified=bool(result.report.layers))
