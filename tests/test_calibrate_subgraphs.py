"""Calibration runs the main graph's weights; weights inside If/Loop/Scan bodies stay data-free, and say so."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_statq import QuantConfig, StatqPass
from onnx_statq.api import make_refiner


def test_weights_in_if_branches_are_reported_not_calibrated(make_model, rng):
    outer = rng.standard_normal((64, 64)).astype(np.float32)
    inner = rng.standard_normal((64, 64)).astype(np.float32)
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["h", "inner"], ["t"], name="then_mm")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 64])],
        [numpy_helper.from_array(inner, "inner")],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4, 64])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "outer"], ["h"], name="mm"),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other, name="if"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])
    c = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])
    m = make_model(nodes, [x, c], [y], {"outer": outer})
    feeds = [{"x": rng.standard_normal((4, 64)).astype(np.float32), "cond": np.array(True)} for _ in range(4)]
    report = StatqPass(QuantConfig(bits=4), refiner=make_refiner(m, feeds))(m).report
    assert report.calibration["layers_calibrated"] == 1  # outer
    assert report.calibration["not_calibrated_in_subgraphs"] == 1  # inner
    assert report.calibration["model_output_sqnr_db"] is None  # the stream never saw inner's error: no figure
    assert {layer.name for layer in report.layers} == {"outer", "inner"}
