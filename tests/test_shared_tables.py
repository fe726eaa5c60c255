"""The pass builds each table over the byte values once per graph, and every weight decoded in that graph reads it.

Per weight, the tables were most of the decode's bytes in the file; a table shared with a graph it is not in scope
for (an If branch reading its sibling's) would make the model invalid, which is why the sharing is per graph.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import run
from onnx import TensorProto, helper, numpy_helper

from onnx_statq import QuantConfig, StatqPass
from onnx_statq.codebook import encode_tensor

TABLE_OPS = {"Range", "Div", "Mod", "Mul", "Sub"}
FIXED = {"granularity": "tensor", "allocation": "fixed", "min_size": 100}


def chain(rng: np.random.Generator, n: int, opset: int) -> onnx.ModelProto:
    """``x @ w0 @ w1 ...``: ``n`` weights of the same shape, so of the same width under a fixed allocation."""
    ws = {f"w{i}": (rng.standard_normal((64, 64)) * 0.1).astype(np.float32) for i in range(n)}
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(n)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])
    y = helper.make_tensor_value_info(f"h{n}", TensorProto.FLOAT, [2, 64])
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in ws.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    return m


def table_nodes(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in g.node if n.name.startswith("statqt")]


@pytest.mark.parametrize("opset", [9, 10, 13, 14])
@pytest.mark.parametrize("bits", [3, 4, 5])
def test_weights_of_one_width_share_one_table(rng, opset, bits):
    one = StatqPass(QuantConfig(bits=bits, **FIXED))(chain(rng, 1, opset)).model
    m = chain(rng, 3, opset)
    q = StatqPass(QuantConfig(bits=bits, **FIXED))(m).model
    onnx.checker.check_model(q, full_check=True)
    tables = table_nodes(q.graph)
    assert [n.op_type for n in tables] == [n.op_type for n in table_nodes(one.graph)]  # as many as for one weight
    assert Counter(n.op_type for n in q.graph.node if n.op_type in TABLE_OPS) == Counter(
        n.op_type for n in tables if n.op_type in TABLE_OPS
    )  # no weight builds its own
    built = {o for n in tables for o in n.output}
    readers = [n for n in q.graph.node if not n.name.startswith("statqt") and built & set(n.input)]
    assert len(readers) >= 3 and {n.name.split("/")[0] for n in readers} == {"statq0", "statq1", "statq2"}
    assert len({i for n in readers for i in n.input if i in built}) == len(readers) // 3  # the same table(s) each
    names = [f"w{i}" for i in range(3)]
    got = run(q, {"x": np.ones((2, 64), np.float32)}, names)
    for name, value in zip(names, got, strict=True):
        w = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == name))
        assert np.array_equal(value, encode_tensor(w, 1, bits, "sigma", "tensor").decoded()), name


def branchy(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``h = x @ outer``, then If(cond): ``h @ a`` (``a`` a main-graph initializer only the branch reads) else
    ``h @ b`` (``b`` the else branch's own initializer)."""
    ws = {k: (rng.standard_normal((64, 64)) * 0.1).astype(np.float32) for k in ("outer", "a", "b")}

    def branch(name: str, weight: str, inits: list[onnx.TensorProto]) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [2, 64])
        return helper.make_graph([helper.make_node("MatMul", ["h", weight], [f"{name}_y"])], name, [], [out], inits)

    nodes = [
        helper.make_node("MatMul", ["x", "outer"], ["h"]),
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=branch("then", "a", []),
            else_branch=branch("else", "b", [numpy_helper.from_array(ws["b"], "b")]),
        ),
    ]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])
    c = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])
    inits = [numpy_helper.from_array(ws[k], k) for k in ("outer", "a")]
    m = helper.make_model(
        helper.make_graph(nodes, "g", [x, c], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    m.ir_version = 7
    return m, ws


def with_weights(m: onnx.ModelProto, ws: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``m`` with its weights replaced, wherever they are stored."""
    out = onnx.ModelProto.FromString(m.SerializeToString())
    for g in (out.graph, *(a.g for n in out.graph.node for a in n.attribute if a.g.name)):
        for t in g.initializer:
            if t.name in ws:
                t.CopyFrom(numpy_helper.from_array(ws[t.name], t.name))
    return out


def test_a_weight_in_an_if_branch_reads_its_own_branch_tables(rng):
    m, ws = branchy(rng)
    r = StatqPass(QuantConfig(bits=4, **FIXED))(m)
    assert {layer.name for layer in r.report.layers} == {"outer", "a", "b"}
    q = r.model
    onnx.checker.check_model(q, full_check=True)
    node_if = next(n for n in q.graph.node if n.op_type == "If")
    graphs = [q.graph, *(a.g for a in node_if.attribute)]
    for g in graphs:  # each graph builds its table and reads only its own: outer scope never needed
        built = {o for n in table_nodes(g) for o in n.output} | {t.name for t in g.initializer}
        assert [n.op_type for n in table_nodes(g)].count("Range") == 1, g.name
        reads = {i for n in g.node for i in n.input if i.startswith("statqt")}
        assert reads and reads <= built, g.name
    decoded = {k: encode_tensor(w, 1, 4, "sigma", "tensor").decoded() for k, w in ws.items()}
    reference = with_weights(m, decoded)
    xv = rng.standard_normal((2, 64)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": xv, "cond": np.array(cond)}
        assert np.array_equal(run(q, feeds)[0], run(reference, feeds)[0]), cond


def test_output_is_byte_identical_across_runs(rng):
    m, _ = branchy(rng)
    runs = [StatqPass(QuantConfig(bits=5, **FIXED))(m).model.SerializeToString() for _ in range(2)]
    assert runs[0] == runs[1]
