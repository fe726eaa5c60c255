"""Toolchain adapters, each tested inside its toolchain."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run, sqnr

ir = pytest.importorskip("onnx_ir")
pytest.importorskip("onnx_ir.passes.common")

import onnx_ir.passes.common  # noqa: E402, F401  (registers ir.passes.common)
from onnx_statq_passes.onnx_ir_pass import StatqIRPass  # noqa: E402

from onnx_statq import QuantConfig  # noqa: E402


def test_onnx_ir_pass_manager_with_builtin_passes(conv_model, rng):
    proto = conv_model()
    model = ir.from_proto(proto)
    statq = StatqIRPass(QuantConfig(bits=6, min_size=100))
    manager = ir.passes.PassManager(
        [ir.passes.common.RemoveUnusedNodesPass(), statq, ir.passes.common.RemoveUnusedNodesPass()], steps=1
    )
    result = manager(model)
    assert result.modified
    assert statq.report is not None and {layer.name for layer in statq.report.layers} == {"w1", "w2", "fc", "head"}
    out = ir.to_proto(result.model)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert sqnr(run(proto, {"x": x})[0], run(out, {"x": x})[0]) > 25
    assert len(model.graph.initializers) == len(proto.graph.initializer)  # functional: input model untouched


def test_onnx_ir_pass_without_weights_is_a_no_op(make_model):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], {})
    result = StatqIRPass()(ir.from_proto(m))
    assert not result.modified
