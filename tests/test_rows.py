"""Embedding tables decoded after the lookup (graph/rows.py): row packing, bit-exactness against the whole-table
decode, the graph's structure, and the cases that fall back to the whole decode."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import _model, run
from onnx import TensorProto, helper, numpy_helper

import onnx_statq.graph.pass_ as pass_module
from onnx_statq import QuantConfig, StatqPass
from onnx_statq.codebook import packed_bytes
from onnx_statq.codebook.packing import pack_rows, rows_packable, unpack_rows
from onnx_statq.codebook.tensor import encode_half
from onnx_statq.graph.model_io import export_graph
from onnx_statq.graph.rows import decode_after_lookup
from onnx_statq.graph.tables import ByteTables
from onnx_statq.graph.weights import find_weights
from onnx_statq.report import Report


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_rows_round_trip(bits, rng):
    idx = rng.integers(0, 1 << bits, (37, 24)).astype(np.uint8)
    planes = pack_rows(idx, bits)
    assert sum(p.data.nbytes for p in planes) == packed_bytes(idx.size, bits)  # no tail: whole bytes per row
    assert all(p.data.shape == (37, 24 * p.width // 8) for p in planes)
    assert np.array_equal(unpack_rows(planes), idx)
    rows = np.array([[3, -1], [0, 36]])  # any shape of row indices, negative ones from the end, as Gather takes
    assert np.array_equal(unpack_rows(planes, rows), idx[rows])


def test_rows_packable():
    assert rows_packable(24, 3) and rows_packable(4, 4) and rows_packable(1, 8)
    assert not rows_packable(12, 3)  # the 1-bit plane needs rows of a multiple of 8
    assert not rows_packable(6, 2)
    with pytest.raises(ValueError):
        pack_rows(np.zeros((2, 12), np.uint8), 3)


def embedding_model(rng, vocab=300, width=64, opset=13, ids_shape=(2, 5), ids_type=TensorProto.INT64):
    emb = rng.standard_normal((vocab, width)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed")]
    ids = helper.make_tensor_value_info("ids", ids_type, list(ids_shape))
    out = helper.make_tensor_value_info("e", TensorProto.FLOAT, [*ids_shape, width])
    return _model(nodes, [ids], [out], {"emb": emb}, opset=opset)


def both(model, config, monkeypatch):
    """The model quantized with the decode after the lookup, and with the whole table decoded."""
    after = StatqPass(config)(model)
    with monkeypatch.context() as m:
        m.setattr(pass_module, "row_lookup_reason", lambda w, enc: "forced whole")
        whole = StatqPass(config)(model)
    return after, whole


def run_ort(model, feeds, fold=True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not fold:  # as an ORT-format model runs: the decode is not folded at session creation
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_lookup_decode_equals_whole_decode(bits, granularity, rng, monkeypatch):
    model = embedding_model(rng)
    config = QuantConfig(bits=bits, granularity=granularity, allocation="fixed")
    after, whole = both(model, config, monkeypatch)
    (layer,) = after.report.layers
    assert layer.decode == "rows" and whole.report.layers[0].decode == "whole"
    assert layer.bytes_after == whole.report.layers[0].bytes_after
    onnx.checker.check_model(after.model, full_check=True)
    ids = rng.integers(-300, 300, (2, 5)).astype(np.int64)
    expected = run_ort(whole.model, {"ids": ids})
    for fold in (True, False):
        assert np.array_equal(run_ort(after.model, {"ids": ids}, fold), expected)


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 14, 17])
@pytest.mark.parametrize("bits", [3, 4, 6])
def test_lookup_decode_at_every_opset(opset, bits, rng, monkeypatch):
    model = embedding_model(rng, opset=opset, ids_shape=(4,), ids_type=TensorProto.INT32)
    after, whole = both(model, QuantConfig(bits=bits, allocation="fixed"), monkeypatch)
    onnx.checker.check_model(after.model, full_check=True)
    ids = rng.integers(0, 300, (4,)).astype(np.int32)
    assert np.array_equal(run_ort(after.model, {"ids": ids}, fold=False), run_ort(whole.model, {"ids": ids}))


@pytest.mark.parametrize("ids_shape", [(), (7,), (2, 3, 4)])
def test_lookup_decode_any_ids_rank(ids_shape, rng, monkeypatch):
    model = embedding_model(rng, ids_shape=ids_shape)
    after, whole = both(model, QuantConfig(bits=3), monkeypatch)
    ids = np.asarray(rng.integers(0, 300, ids_shape), dtype=np.int64)
    got = run_ort(after.model, {"ids": ids})
    assert got.shape == (*ids_shape, 64)
    assert np.array_equal(got, run_ort(whole.model, {"ids": ids}))


def test_structure_keeps_the_table_packed(rng):
    model = embedding_model(rng, vocab=400, width=64)
    q = StatqPass(QuantConfig(bits=3, granularity="tensor", allocation="fixed"))(model).model
    sizes = {t.name: int(np.prod(t.dims)) for t in q.graph.initializer}
    assert max(sizes.values()) == 400 * 64 * 2 // 8  # the 2-bit plane; no tensor holds the table's 25,600 values
    assert sum(v for k, v in sizes.items() if ".rows" in k) == 400 * 64 * 3 // 8
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["Gather"] == 5  # two planes' rows and their byte tables, then the levels
    assert ops["Shape"] == 1 and ops["Transpose"] == 2
    (last,) = [n for n in q.graph.node if "e" in n.output]
    assert last.name == "embed" and last.op_type == "Gather"  # the lookup keeps its name


def test_two_lookups_share_one_packed_table(rng, monkeypatch):
    emb = rng.standard_normal((256, 32)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "a"], ["ea"], name="ga"),
        helper.make_node("Gather", ["emb", "b"], ["eb"], name="gb"),
        helper.make_node("Add", ["ea", "eb"], ["y"]),
    ]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, [3]) for n in "ab"]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 32])
    model = _model(nodes, ins, [out], {"emb": emb})
    result, whole = both(model, QuantConfig(bits=4), monkeypatch)
    assert result.report.layers[0].decode == "rows"
    assert sum(".rows" in t.name for t in result.model.graph.initializer) == 1
    feeds = {"a": np.array([0, 5, 255]), "b": np.array([7, 7, 1])}
    assert np.array_equal(run(result.model, feeds)[0], run(whole.model, feeds)[0])


def test_falls_back_to_the_whole_decode(rng):
    """A table also read as a MatMul weight (tied embeddings), or rows that do not fill whole bytes."""
    emb = rng.standard_normal((64, 32)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "emb_t"], ["logits"], name="head"),
        helper.make_node("MatMul", ["x", "emb"], ["y"], name="tied"),
    ]
    ins = [helper.make_tensor_value_info("ids", TensorProto.INT64, [3]), helper.make_tensor_value_info("x", 1, [2, 64])]
    outs = [helper.make_tensor_value_info("logits", 1, [3, 64]), helper.make_tensor_value_info("y", 1, [2, 32])]
    tied = _model(nodes, ins, outs, {"emb": emb, "emb_t": np.ascontiguousarray(emb.T)})
    report = StatqPass(QuantConfig(bits=4))(tied).report
    assert {layer.name: layer.decode for layer in report.layers}["emb"] == "whole"
    narrow = embedding_model(rng, width=12)  # 12 weights a row: the 1-bit plane of 3 bits needs multiples of 8
    result = StatqPass(QuantConfig(bits=3, allocation="fixed"))(narrow)
    assert result.report.layers[0].decode == "whole"
    ids = np.array([[1, 2, 3, 4, 5], [0, 0, 0, 0, 299]])
    assert run(result.model, {"ids": ids})[0].shape == (2, 5, 12)


def test_float16_table_and_constant_node(rng):
    """A table in a Constant node, decoded as float16 rows: the Constant node goes, the lookup casts its rows."""
    emb = rng.standard_normal((50, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["emb"], value=numpy_helper.from_array(emb, "v")),
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [3])
    model = _model(nodes, [ids], [helper.make_tensor_value_info("e", 1, [3, 16])], {})
    graph = gs.import_onnx(model)
    (w,) = find_weights(graph, QuantConfig(), Report())
    n = iter(range(10**6))
    decode_after_lookup(
        w, encode_half(emb, 1), np.dtype(np.float32), 13, lambda s: f"{s}{next(n)}", "q", ByteTables(str, 13)
    )
    out = export_graph(graph, model)
    onnx.checker.check_model(out, full_check=True)
    assert [node.op_type for node in out.graph.node] == ["Gather", "Cast"]
    feeds = {"ids": np.array([49, 0, -1])}
    assert np.array_equal(run(out, feeds)[0], emb.astype(np.float16).astype(np.float32)[feeds["ids"]])
