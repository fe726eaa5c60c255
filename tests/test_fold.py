"""Weights computed from constants by data-movement ops (PyTorch's LSTM gate reordering): folded, then encoded."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import run, sqnr
from onnx import TensorProto, helper, numpy_helper

from onnx_statq import NoWeightsError, QuantConfig, StatqPass, quantize


def _ints(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64), name))


def _gate_reordered_lstm(make_model, rng, hidden: int = 32, feat: int = 16, extra_reader: bool = False):
    """LSTM whose W and R are ``Unsqueeze(Concat(Slice(C, gate) ...))`` of Constant nodes, as torch exports them."""
    nodes = []
    for name, cols in (("wih", feat), ("whh", hidden)):
        value = (rng.standard_normal((4 * hidden, cols)) * 0.2).astype(np.float32)
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        parts = []
        for gate, k in enumerate((0, 3, 1, 2)):  # torch i,f,g,o -> onnx i,o,f,c
            nodes += [_ints(f"{name}_s{gate}", [k * hidden]), _ints(f"{name}_e{gate}", [(k + 1) * hidden])]
            nodes.append(helper.make_node("Slice", [name, f"{name}_s{gate}", f"{name}_e{gate}"], [f"{name}_g{gate}"]))
            parts.append(f"{name}_g{gate}")
        nodes.append(helper.make_node("Concat", parts, [f"{name}_cat"], axis=0))
        nodes.append(_ints(f"{name}_ax", [0]))
        nodes.append(helper.make_node("Unsqueeze", [f"{name}_cat", f"{name}_ax"], [f"{name}_w"]))
    nodes.append(helper.make_node("LSTM", ["x", "wih_w", "whh_w"], ["y"], hidden_size=hidden, name="lstm"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 1, 2, hidden])]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["wih_cat"], ["w_out"], name="peek"))
        outputs.append(helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [4 * hidden, feat]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 2, feat])
    return make_model(nodes, [x], outputs, {})


def test_gate_reordered_lstm_weights_are_folded_and_encoded(make_model, rng):
    m = _gate_reordered_lstm(make_model, rng)
    report = StatqPass(QuantConfig(bits=6, min_size=1000))(m).report
    assert len(report.layers) == 2 and {layer.op for layer in report.layers} == {"LSTM"}
    q = quantize(m, bits=6, min_size=1000)
    onnx.checker.check_model(q, full_check=True)
    left = Counter(n.op_type for n in q.graph.node)
    assert left["Slice"] == 0 and left["Concat"] == 0 and left["Unsqueeze"] == 0  # the chains are gone
    assert not any(n.op_type == "Constant" and n.output[0] in ("wih", "whh") for n in q.graph.node)
    feeds = {"x": rng.standard_normal((6, 2, 16)).astype(np.float32)}
    assert sqnr(run(m, feeds)[0], run(q, feeds)[0]) > 25


def test_folding_alone_is_exact(make_model, rng):
    """At 8 bits on weights with 200 distinct values the codebook is exact: any difference would be the fold's."""
    m = _gate_reordered_lstm(make_model, rng)
    for node in m.graph.node:
        if node.output[0] in ("wih", "whh"):
            t = node.attribute[0].t
            v = numpy_helper.to_array(t)
            v = (np.round(v * 40) / 40).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(v, t.name))
    q = quantize(m, bits=8, min_size=1000, allocation="fixed")
    feeds = {"x": rng.standard_normal((6, 2, 16)).astype(np.float32)}
    np.testing.assert_array_equal(run(m, feeds)[0], run(q, feeds)[0])


def test_chain_with_another_reader_is_left_alone(make_model, rng):
    m = _gate_reordered_lstm(make_model, rng, extra_reader=True)
    report = StatqPass(QuantConfig(bits=6, min_size=1000))(m).report
    assert [layer.name for layer in report.layers] == ["whh_w.folded"]  # wih's chain is also read by "peek"
    q = quantize(m, bits=6, min_size=1000)
    assert Counter(n.op_type for n in q.graph.node)["Slice"] == 4


def test_weight_computed_from_an_input_is_not_folded(make_model, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Concat", ["w", "extra"], ["wc"], axis=0),
        helper.make_node("MatMul", ["x", "wc"], ["y"], name="mm"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, None])
    extra = helper.make_tensor_value_info("extra", TensorProto.FLOAT, [None, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])
    m = make_model(nodes, [x, extra], [y], {"w": w})
    with pytest.raises(NoWeightsError):
        StatqPass(QuantConfig(min_size=1000))(m)


def test_transposed_constant_matmul_weight(make_model, rng):
    w = rng.standard_normal((32, 48)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 48])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 32])
    m = make_model(nodes, [x], [y], {"w": w})
    q = quantize(m, bits=6, min_size=100)
    assert "Transpose" not in Counter(n.op_type for n in q.graph.node)
    assert "w" not in {t.name for t in q.graph.initializer}
    feeds = {"x": rng.standard_normal((3, 48)).astype(np.float32)}
    assert sqnr(run(m, feeds)[0], run(q, feeds)[0]) > 25


def test_one_source_read_by_lstms_in_both_branches_is_stored_once(make_model, rng):
    """silero VAD's layout: the gate-reordering chains sit inside If branches, their source constants outside."""
    hidden, feat = 32, 16
    values = {
        n: (rng.standard_normal((4 * hidden, c)) * 0.2).astype(np.float32) for n, c in (("wih", feat), ("whh", hidden))
    }

    def branch(tag: str) -> onnx.GraphProto:
        nodes = []
        for name in values:
            parts = []
            for gate, k in enumerate((0, 3, 1, 2)):
                s, e = f"{tag}{name}_s{gate}", f"{tag}{name}_e{gate}"
                nodes += [_ints(s, [k * hidden]), _ints(e, [(k + 1) * hidden])]
                nodes.append(helper.make_node("Slice", [name, s, e], [f"{tag}{name}_g{gate}"]))
                parts.append(f"{tag}{name}_g{gate}")
            nodes.append(helper.make_node("Concat", parts, [f"{tag}{name}_cat"], axis=0))
            nodes.append(_ints(f"{tag}{name}_ax", [0]))
            nodes.append(helper.make_node("Unsqueeze", [f"{tag}{name}_cat", f"{tag}{name}_ax"], [f"{tag}{name}_w"]))
        nodes.append(helper.make_node("LSTM", ["x", f"{tag}wih_w", f"{tag}whh_w"], [f"{tag}y"], hidden_size=hidden))
        out = helper.make_tensor_value_info(f"{tag}y", TensorProto.FLOAT, [6, 1, 2, hidden])
        return helper.make_graph(nodes, tag, [], [out])

    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v, n)) for n, v in values.items()]
    nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=branch("t"), else_branch=branch("e")))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 2, feat])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 1, 2, hidden])
    m = make_model(nodes, [x, cond], [y], {})
    report = StatqPass(QuantConfig(bits=6, min_size=1000))(m).report
    assert len(report.layers) == 2  # wih and whh, each encoded once for both branches
    q = quantize(m, bits=6, min_size=1000)
    onnx.checker.check_model(q, full_check=True)
    assert q.ByteSize() < m.ByteSize() / 3
    xv = rng.standard_normal((6, 2, feat)).astype(np.float32)
    for c in (True, False):
        feeds = {"x": xv, "cond": np.array(c)}
        assert sqnr(run(m, feeds)[0], run(q, feeds)[0]) > 25


def test_shared_shape_and_axes_constants_do_not_stop_a_fold(make_model, rng):
    """The chain's small integer constants (a Reshape's shape, an Unsqueeze's axes) are often shared with other
    nodes; the check for a weight something else also reads counted them, and the LSTM's and a Reshape's weights
    went unquantized (NoWeightsError; found in review). Only weight data counts now."""
    m = _gate_reordered_lstm(make_model, rng)
    shared_axes = next(n for n in m.graph.node if n.output[0] == "wih_ax")
    m.graph.node.append(helper.make_node("Unsqueeze", ["x", "wih_ax"], ["x4"], name="uses_the_axes"))
    m.graph.output.append(helper.make_tensor_value_info("x4", TensorProto.FLOAT, None))
    assert shared_axes.op_type == "Constant"
    report = StatqPass(QuantConfig(bits=6, min_size=1000))(m).report
    assert len(report.layers) == 2 and {layer.op for layer in report.layers} == {"LSTM"}
    w = rng.standard_normal((64, 64)).astype(np.float32)
    shape = np.array([64, 64], np.int64)
    nodes = [
        helper.make_node("Reshape", ["w", "shape"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["y"]),  # the same shape initializer, on an activation
    ]
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [64, 64]) for n in ("x", "y"))
    assert [
        r.op for r in StatqPass(QuantConfig())(make_model(nodes, [x], [y], {"w": w, "shape": shape})).report.layers
    ] == ["MatMul"]


def test_two_weights_that_hold_equal_values_stay_two(make_model, rng):
    """Folded chains were shared by their bytes alone, so two weights holding equal values became one: an exclude
    or a width set for one layer then applied to both (found in review). Only chains from one source share."""
    w = rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["a"], ["at"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "at"], ["h"], name="mm_a"),
        helper.make_node("Transpose", ["b"], ["bt"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "bt"], ["y"], name="mm_b"),
    ]
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 64]) for n in ("x", "y"))
    m = make_model(nodes, [x], [y], {"a": w, "b": w.copy()})
    report = StatqPass(QuantConfig(exclude=("mm_b",)))(m).report
    assert [(r.name, r.consumers) for r in report.layers] == [("at.folded", ("mm_a",))]


def test_an_overridable_initializer_is_not_folded(make_model, rng):
    """An initializer that is also a graph input is a default the caller may override: folding its Transpose gave
    the layer a copy the override no longer reached (found in review)."""
    w = rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 64]) for n in ("x", "y"))
    m = make_model(nodes, [x, helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 64])], [y], {"w": w})
    with pytest.raises(NoWeightsError):
        StatqPass(QuantConfig())(m)


def test_shapes_written_as_value_ints_and_bfloat16_chains(make_model, rng):
    """A shape Constant written with value_ints counted as weight data, so its other reader stopped the fold; and a
    bfloat16 weight behind a Transpose crashed the fold (exit 70), its dtype being ONNX's type number to numpy
    (both found in review)."""
    w = rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["shape"], value_ints=[64, 64]),
        helper.make_node("Reshape", ["w", "shape"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["y"]),
    ]
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [64, 64]) for n in ("x", "y"))
    assert [r.op for r in StatqPass(QuantConfig())(make_model(nodes, [x], [y], {"w": w})).report.layers] == ["MatMul"]
    bf16 = helper.make_tensor("b", TensorProto.BFLOAT16, [64, 64], np.zeros(64 * 64, np.uint16).tolist())
    nodes = [
        helper.make_node("Transpose", ["b"], ["bt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xb", "bt"], ["yb"]),
    ]
    xb, yb = (helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [2, 64]) for n in ("xb", "yb"))
    m = helper.make_model(
        helper.make_graph(nodes, "g", [xb], [yb], [bf16]), opset_imports=[helper.make_opsetid("", 17)]
    )
    with pytest.raises(NoWeightsError):
        StatqPass(QuantConfig())(m)
