"""Graph level: structure of the output, bit-exact decode in onnxruntime, numerics against the float model."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import run, sqnr
from onnx import TensorProto, helper, numpy_helper

from onnx_statq import ConfigError, NoWeightsError, QuantConfig, StatqPass, UnsupportedModelError, quantize
from onnx_statq.codebook import Granularity, encode_tensor


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_structure_and_metadata(conv_model):
    m = conv_model()
    q = quantize(m, min_size=100)
    onnx.checker.check_model(q, full_check=True)
    before, after = ops(m), ops(q)
    for op in ("Conv", "Relu", "Gemm", "MatMul", "Reshape"):
        assert after[op] >= before[op]
    assert after["Conv"] == 2 and after["Gemm"] == 1 and after["MatMul"] == 1
    assert after["Gather"] + after["GatherElements"] + after["Cast"] >= 3  # one decode per weight
    names = set(inits(q))
    assert {"w1", "w2", "fc", "head"}.isdisjoint(names)  # replaced by codebook + indices
    assert "b1" in names  # bias untouched
    assert q.metadata_props == m.metadata_props
    assert q.doc_string == m.doc_string and q.ir_version == m.ir_version
    assert list(q.opset_import) == list(m.opset_import)
    assert all(
        t.data_type in (TensorProto.UINT8, TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT32, TensorProto.INT64)
        for t in q.graph.initializer
    )


def test_input_model_is_not_modified(conv_model):
    m = conv_model()
    before = m.SerializeToString()
    quantize(m)
    assert m.SerializeToString() == before


def test_an_unnamed_constant_value_is_not_named_in_the_callers_model(conv_model):
    """graphsurgeon's export names the TensorProto it imported, the caller's own: an unnamed Constant value came
    back with its name set to "", and the input model was no longer the same bytes."""
    m = conv_model()
    two = helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32)))
    out = m.graph.output[0].name
    m.graph.node[-1].output[0] = "pre"
    m.graph.node.extend([two, helper.make_node("Mul", ["pre", "two"], [out])])
    before = m.SerializeToString()
    calibrated = quantize(m, calib=[{"x": np.ones((2, 3, 8, 8), np.float32)}])  # both exports: calibration's too
    assert m.SerializeToString() == before and not m.graph.node[-2].attribute[0].t.HasField("name")
    assert calibrated.graph.node


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "auto"])
def test_decoded_weights_are_bit_exact_in_onnxruntime(conv_model, rng, bits, granularity):
    m = conv_model()
    q = quantize(m, bits=bits, granularity=granularity, min_size=100, allocation="fixed")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    names = ["w1", "w2", "fc", "head"]
    got = run(q, {"x": x}, names)
    axes = {"w1": 0, "w2": 0, "fc": 0, "head": 1}
    for name, value in zip(names, got, strict=False):
        w = inits(m)[name]
        expected = encode_tensor(w, axes[name], bits, "sigma", granularity, 2.0).decoded()
        assert value.dtype == np.float32
        assert np.array_equal(value, expected), name


def test_k_distinct_values_round_trip_through_the_graph(conv_model, rng):
    m = conv_model()
    values = np.linspace(-1, 1, 16).astype(np.float32)
    for t in m.graph.initializer:
        if t.name in ("w2", "fc"):
            t.CopyFrom(numpy_helper.from_array(rng.choice(values, size=tuple(t.dims)).astype(np.float32), t.name))
    q = quantize(m, bits=4, allocation="fixed")
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    w2, fc = run(q, {"x": x}, ["w2", "fc"])
    assert np.array_equal(w2, inits(m)["w2"]) and np.array_equal(fc, inits(m)["fc"])


@pytest.mark.parametrize("bits,min_db", [(8, 30.0), (4, 12.0)])
def test_output_close_to_float(conv_model, rng, bits, min_db):
    m = conv_model()
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    ref = run(m, {"x": x})[0]
    out = run(quantize(m, bits=bits), {"x": x})[0]
    assert sqnr(ref, out) > min_db


def test_auto_beats_per_tensor_on_folded_convs(conv_model, rng):
    m = conv_model()
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    ref = run(m, {"x": x})[0]
    auto = sqnr(ref, run(quantize(m, bits=3, allocation="fixed"), {"x": x})[0])
    tensor = sqnr(ref, run(quantize(m, bits=3, granularity="tensor", allocation="fixed"), {"x": x})[0])
    assert auto > tensor + 3.0


def test_quantize_takes_its_config_as_a_mapping_or_a_file(conv_model, tmp_path):
    m = conv_model()
    want = quantize(m, QuantConfig(bits=3, min_size=100)).SerializeToString()
    assert quantize(m, {"bits": 3, "min_size": 100}).SerializeToString() == want
    (tmp_path / "c.toml").write_text("bits = 3\nmin_size = 100\n")
    assert quantize(m, tmp_path / "c.toml").SerializeToString() == want
    assert quantize(m, {"bits": 5}, bits=3, min_size=100).SerializeToString() == want  # keywords override
    with pytest.raises(ConfigError, match=r"unknown config key.*bitz"):
        quantize(m, {"bitz": 3})
    with pytest.raises(ConfigError, match=r"unknown option.*bogus"):
        quantize(m, bits=3, bogus=1)
    with pytest.raises(TypeError, match="not int"):
        quantize(m, 3)


def test_keyword_options_lay_over_a_config_as_the_cli_flags_do(conv_model, tmp_path):
    """Found by a helper: a keyword bits=3 over a config with bits = "auto" kept auto mode, with_options(bits=3)
    still said "auto", and a keyword exclude replaced the file's list where the CLI and the Olive pass add to it."""
    auto = QuantConfig(bits="auto", target_sqnr=20)
    assert auto.with_options(bits=3).to_dict()["bits"] == 3
    assert auto.layered(bits=3).to_dict()["bits"] == 3 and auto.layered(bits=3).target_sqnr is None
    assert QuantConfig(avg_bits=3.5).layered(bits=3).avg_bits is None  # a width replaces the file's target
    assert QuantConfig(avg_bits=3.5).layered(size_ratio=6).avg_bits is None
    assert QuantConfig(exclude=("conv2",)).layered(exclude=["head"]).exclude == ("conv2", "head")
    (tmp_path / "c.toml").write_text('bits = "auto"\ntarget_sqnr = 20\nmin_size = 100\nexclude = ["conv2"]\n')
    m = conv_model()
    from_file = quantize(m, tmp_path / "c.toml", bits=3, exclude=["head"], allocation="fixed")
    direct = quantize(m, QuantConfig(bits=3, min_size=100, exclude=("conv2", "head"), allocation="fixed"))
    assert from_file.SerializeToString() == direct.SerializeToString()


def test_skip_in_a_node_entry_wins_over_its_op_type_and_reaches_into_a_holder(make_model, rng):
    """skip was a plain bool, so a node's skip = false could not keep a weight its op type's entry skipped; and
    skip = true on an If's node or op-type entry was accepted and did nothing (found by a helper)."""
    w = {k: rng.standard_normal((64, 64)).astype(np.float32) for k in ("w0", "w1", "wt")}
    then = helper.make_graph(
        [helper.make_node("MatMul", ["h1", "wt"], ["t"], name="then_mm")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 64])],
        [numpy_helper.from_array(w.pop("wt"), "wt")],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["h1"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4, 64])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
        helper.make_node("MatMul", ["h0", "w1"], ["h1"], name="mm1"),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64]),
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
    ]
    m = make_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], w)

    def quantized(config: dict) -> set[str]:
        return {layer.name for layer in StatqPass(QuantConfig.from_dict(config))(m).report.layers}

    assert quantized({"op_types": {"MatMul": {"skip": True}}, "nodes": {"mm1": {"skip": False}}}) == {"w1"}
    assert quantized({"exclude": ["MatMul"], "nodes": {"mm0": {"skip": False}}}) == {"w0"}
    assert quantized({"nodes": {"branch": {"skip": True}}}) == {"w0", "w1"}
    assert quantized({"op_types": {"If": {"skip": True}}}) == {"w0", "w1"}
    assert QuantConfig.from_dict({"nodes": {"mm1": {"skip": False}}}).to_dict()["nodes"] == {"mm1": {"skip": False}}


def test_main_graph_initializers_read_in_branches_stay_in_the_main_graph(rng):
    """graphsurgeon exports an outer initializer into every subgraph that reads it: a bias both branches of an If
    add was stored twice, and a default the caller may override (an initializer that is also a graph input) was
    dropped from the inputs, then shadowed by its branch copy (found in review). Both stay once, in the main graph,
    and the override still moves the output."""
    import onnxruntime as ort

    w = rng.standard_normal((64, 64)).astype(np.float32)
    inits = {"w": w, "bias": rng.standard_normal(64).astype(np.float32), "d": np.zeros(64, np.float32)}

    def branch(name: str) -> onnx.GraphProto:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], [f"{name}m"]),
            helper.make_node("Add", [f"{name}m", "bias"], [f"{name}a"]),
        ]
        nodes.append(helper.make_node("Add", [f"{name}a", "d"], [name]))
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4, 64])])

    inputs = [
        helper.make_tensor_value_info(n, t, s)
        for n, t, s in (("x", TensorProto.FLOAT, [4, 64]), ("c", TensorProto.BOOL, []), ("d", TensorProto.FLOAT, [64]))
    ]
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch("t"), else_branch=branch("e"))],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = quantize(m, QuantConfig(bits=4, min_size=100))
    branches = [a.g for a in q.graph.node[-1].attribute]
    assert not {t.name for g in branches for t in g.initializer} & {"bias", "d"}
    assert {t.name for t in q.graph.initializer} >= {"bias", "d"} and [i.name for i in q.graph.input] == ["x", "c", "d"]
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": rng.standard_normal((4, 64)).astype(np.float32), "c": np.array(True)}
    moved = sess.run(None, {**feed, "d": np.full(64, 5.0, np.float32)})[0] - sess.run(None, feed)[0]
    np.testing.assert_allclose(moved, 5.0, rtol=1e-5)


def _loads(q: onnx.ModelProto):
    import onnxruntime as ort

    onnx.checker.check_model(q, full_check=True)
    return ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_default_domain_imported_as_ai_onnx(rng):
    """graphsurgeon kept the model's own opset list and added {"": 1} to it on export: the output's decode resolved
    at opset 1 (checker and onnxruntime refused it, exit 0 with --no-verify) and the caller's model changed too
    (found by a helper)."""
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 64]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], domain="")], "g", [x], [y], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx", 17)])
    before = m.SerializeToString()
    q = quantize(m)
    assert m.SerializeToString() == before
    assert [(o.domain, o.version) for o in q.opset_import] == [("ai.onnx", 17)]
    _loads(q)


@pytest.mark.parametrize("other", ["main", "branch", "output"])
def test_a_weight_also_read_outside_its_layers_graph_is_decoded_where_every_reader_sees_it(rng, other):
    """An initializer read as a weight in one If branch only, but also by a plain op in the main graph or the
    other branch, or returned as a graph output: its decode went into the branch, out of the other reader's
    sight, and the output was invalid (exit 0 with --no-verify; found by a helper)."""
    vi = helper.make_tensor_value_info
    w = rng.standard_normal((64, 64)).astype(np.float32)
    then = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [], [vi("t", TensorProto.FLOAT, None)]
    )
    else_node = (
        helper.make_node("Add", ["x", "w"], ["e"]) if other == "branch" else helper.make_node("Identity", ["x"], ["e"])
    )
    other_branch = helper.make_graph([else_node], "else", [], [vi("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["c"], ["y0"], then_branch=then, else_branch=other_branch)]
    nodes.append(
        helper.make_node("Mul" if other == "main" else "Identity", ["y0", "w"] if other == "main" else ["y0"], ["y"])
    )
    outputs = [vi("y", TensorProto.FLOAT, [64, 64])] + (
        [vi("w", TensorProto.FLOAT, [64, 64])] if other == "output" else []
    )
    inputs = [vi("c", TensorProto.BOOL, []), vi("x", TensorProto.FLOAT, [64, 64])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(w, "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess, ref = _loads(quantize(m, bits=8)), _loads(m)
    for c in (True, False):
        feed = {"c": np.array(c), "x": rng.standard_normal((64, 64)).astype(np.float32)}
        assert sqnr(ref.run(None, feed)[0], sess.run(None, feed)[0]) > 30


def test_a_tied_weight_reached_through_a_chain_is_stored_once(make_model, rng):
    """An embedding read by a Gather and, transposed, by the output MatMul (a tied LM head): the fold gave the
    MatMul a transposed copy and kept the table, so the file stored the weight twice (250 KB -> 64 KB instead of
    32 KB) and the two uses were quantized apart (found by a helper). And one initializer transposed in both
    branches of an If was folded once per branch."""
    e = rng.standard_normal((1000, 64)).astype(np.float32)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1000])
    nodes = [
        helper.make_node("Gather", ["e", "ids"], ["h"]),
        helper.make_node("Transpose", ["e"], ["et"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "et"], ["y"]),
    ]
    q = quantize(make_model(nodes, [ids], [y], {"e": e}), bits=4)
    assert len(q.SerializeToString()) < 0.2 * e.nbytes  # one 4-bit table; two would be over a quarter
    vi = helper.make_tensor_value_info

    def branch(name: str) -> onnx.GraphProto:
        nodes = [
            helper.make_node("Transpose", ["w"], [f"{name}t"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", f"{name}t"], [name]),
        ]
        return helper.make_graph(nodes, name, [], [vi(name, TensorProto.FLOAT, None)])

    w = rng.standard_normal((256, 256)).astype(np.float32)
    nodes = [helper.make_node("If", ["c"], ["z"], then_branch=branch("a"), else_branch=branch("b"))]
    inputs = [vi("c", TensorProto.BOOL, []), vi("x", TensorProto.FLOAT, [2, 256])]
    q = quantize(make_model(nodes, inputs, [vi("z", TensorProto.FLOAT, [2, 256])], {"w": w}), bits=4)
    assert len(q.SerializeToString()) < 0.2 * w.nbytes


def test_node_and_graph_annotations_are_kept(make_model, rng):
    """graphsurgeon dropped every node's doc_string and metadata_props (the torch exporter's module paths), the
    graph's metadata_props and the doc strings of its inputs and outputs; the README says they are kept."""
    w = rng.standard_normal((64, 64)).astype(np.float32)
    mm = helper.make_node("MatMul", ["x", "w"], ["h"], name="mm", doc_string="matmul doc")
    helper.set_metadata_props(mm, {"namespace": "model.layer0: Linear"})
    relu = helper.make_node("Relu", ["h"], ["y"], name="relu", doc_string="relu doc")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64], doc_string="input doc")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])
    m = make_model([mm, relu], [x], [y], {"w": w})
    helper.set_metadata_props(m.graph, {"graph_meta": "1"})
    q = quantize(m)
    nodes = {n.name: n for n in q.graph.node}
    assert nodes["mm"].doc_string == "matmul doc" and nodes["relu"].doc_string == "relu doc"
    assert {p.key: p.value for p in nodes["mm"].metadata_props} == {"namespace": "model.layer0: Linear"}
    assert {p.key: p.value for p in q.graph.metadata_props} == {"graph_meta": "1"}
    assert q.graph.input[0].doc_string == "input doc"


def test_external_data_left_unloaded_is_an_error_not_a_read_from_the_working_directory(
    conv_model, tmp_path, monkeypatch
):
    from onnx_statq import ExternalDataError

    onnx.save(conv_model(), tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=64)
    unloaded = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    monkeypatch.chdir(tmp_path)  # where onnx would have found m.data: the pass must not depend on that
    with pytest.raises(ExternalDataError, match=r"m\.data, which was not loaded"):
        quantize(unloaded)
    assert quantize(onnx.load(str(tmp_path / "m.onnx"))).graph.node  # loaded with its data: fine


def test_deterministic_bytes(conv_model):
    m = conv_model()
    assert quantize(m).SerializeToString() == quantize(m).SerializeToString()


def test_opset_9_uses_gather_offsets(conv_model, rng):
    m = conv_model(opset=9)
    m.graph.node[4].CopyFrom(helper.make_node("Flatten", ["r2"], ["flat"], name="flatten"))
    q = quantize(m, granularity="channel", min_size=100)
    assert ops(q)["GatherElements"] == 0 and ops(q)["Gather"] >= 4
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert sqnr(run(m, {"x": x})[0], run(q, {"x": x})[0]) > 12


def test_skips_are_reported(conv_model):
    m = conv_model()
    r = StatqPass(QuantConfig(min_size=500))(m).report
    skipped = {s.name: s.reason for s in r.skipped}
    assert "below min-size" in skipped["w1"]
    assert "not a weight input" in skipped["b1"] and "not a weight input" in skipped["fcb"]
    assert {layer.name for layer in r.layers} == {"w2", "fc", "head"}


def test_a_sparse_initializer_weight_is_kept_as_stored(rng):
    """graphsurgeon reads a sparse_initializer as float64 zeros: encoded, it gave a model onnxruntime refused."""
    dense = rng.standard_normal((64, 64)).astype(np.float32)
    dense[rng.random((64, 64)) < 0.5] = 0
    idx = np.flatnonzero(dense).astype(np.int64)
    values = numpy_helper.from_array(dense.ravel()[idx], "ws")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(idx, "ws_idx"), [64, 64])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])
    nodes = [helper.make_node("MatMul", ["x", "ws"], ["h"]), helper.make_node("MatMul", ["h", "wd"], ["y"])]
    dense_w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "wd")
    graph = helper.make_graph(nodes, "g", [x], [y], [dense_w], sparse_initializer=[sparse])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = StatqPass(QuantConfig(bits=4))(m)
    assert [layer.name for layer in res.report.layers] == ["wd"]
    assert "sparse_initializer" in {s.name: s.reason for s in res.report.skipped}["ws"]
    assert [t.values.name for t in res.model.graph.sparse_initializer] == ["ws"]  # as stored
    feed = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    assert sqnr(run(m, feed)[0], run(res.model, feed)[0]) > 15


def test_exclude_by_name_and_op_type(conv_model):
    m = conv_model()
    r = StatqPass(QuantConfig(exclude=("conv2", "MatMul"), min_size=100))(m).report
    assert {layer.name for layer in r.layers} == {"w1", "fc"}
    assert sum("excluded" in s.reason for s in r.skipped) == 2


def test_an_exclude_that_leaves_nothing_float_is_warned_about(conv_model, caplog):
    m = conv_model()
    idle = "Relu"  # an op of the model that reads no weight
    with caplog.at_level("WARNING", logger="onnx_statq"):
        StatqPass(QuantConfig(exclude=(idle, "conv2"), min_size=100))(m)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [f"exclude entry {idle!r} names no node that reads a weight: it leaves nothing float"]


def test_exclude_and_node_settings_take_weight_names(conv_model):
    # a model with unnamed nodes offers only the weight names the report's table shows
    r = StatqPass(QuantConfig(exclude=("w2",), min_size=100))(conv_model()).report
    assert {layer.name for layer in r.layers} == {"w1", "fc", "head"}
    assert "excluded" in {s.name: s.reason for s in r.skipped}["w2"]
    cfg = QuantConfig.from_dict(
        {"bits": 3, "min_size": 100, "granularity": "tensor", "allocation": "fixed", "nodes": {"w1": {"bits": 6}}}
    )
    bits = {layer.name: layer.bits for layer in StatqPass(cfg)(conv_model()).report.layers}
    assert bits["w1"] == 6 and bits["w2"] == 3


@pytest.mark.parametrize("pattern", ["w*", "conv?", "*[12]"])
def test_exclude_takes_glob_patterns(conv_model, pattern):
    # by weight name (w1, w2) or node name (conv1, conv2): both convolutions stay float, nothing else does
    r = StatqPass(QuantConfig(exclude=(pattern,), min_size=100))(conv_model()).report
    assert {layer.name for layer in r.layers} == {"fc", "head"}
    assert {s.name for s in r.skipped if "excluded" in s.reason} == {"w1", "w2"}


def test_a_name_with_pattern_characters_is_matched_as_a_name_first(make_model):
    rng = np.random.default_rng(0)
    ws = {f"fc[{i}].weight": rng.standard_normal((64, 64)).astype(np.float32) for i in range(2)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])
    nodes = [
        helper.make_node("MatMul", ["x", "fc[0].weight"], ["h"]),
        helper.make_node("MatMul", ["h", "fc[1].weight"], ["y"]),
    ]
    r = StatqPass(QuantConfig(exclude=("fc[0].weight",), min_size=100))(make_model(nodes, [x], [y], ws)).report
    assert {layer.name for layer in r.layers} == {"fc[1].weight"}
    assert {s.name for s in r.skipped if "excluded" in s.reason} == {"fc[0].weight"}


def test_an_exclude_pattern_that_matches_nothing_is_a_config_error(conv_model):
    with pytest.raises(ConfigError, match=re.escape("exclude pattern '*attention*' matches no node, weight or op")):
        StatqPass(QuantConfig(exclude=("*attention*",)))(conv_model())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"exclude": ["conv_2"]}, "exclude entry 'conv_2' names no node, weight or op type of the model (did you mean"),
        ({"exclude": ["conv"]}, "'Conv'"),
        ({"nodes": {"w9": {"bits": 8}}}, "nodes entry 'w9' names no node"),
        ({"nodes": {"MatMul": {"bits": 8}}}, "nodes entry 'MatMul'"),  # an op type belongs in op_types
        ({"exclude": ["b1"]}, "exclude entry 'b1' names a tensor no node reads as a weight (a bias"),
        ({"nodes": {"r1": {"bits": 8}}}, "nodes entry 'r1' names a tensor no node reads as a weight"),
        ({"op_types": {"conv": {"bits": 8}}}, "op_types entry 'conv' names no op type of the model (did you mean"),
    ],
)
def test_names_that_match_nothing_are_config_errors(conv_model, config, message):
    m = conv_model()
    with pytest.raises(ConfigError, match=re.escape(message)):
        StatqPass(QuantConfig.from_dict(config))(m)


def test_an_op_type_the_model_lacks_is_not_an_error(conv_model):
    # one config may serve several models: excluding Gather or LSTM where there is none changes nothing
    r = StatqPass(QuantConfig(exclude=("Gather", "LSTM"), op_types={"GRU": {"bits": 8}}, min_size=100))(conv_model())
    assert {layer.name for layer in r.report.layers} == {"w1", "w2", "fc", "head"}


def test_per_node_settings_override_op_type_and_global(conv_model):
    cfg = QuantConfig.from_dict(
        {
            "bits": 3,
            "min_size": 100,
            "granularity": "tensor",
            "allocation": "fixed",
            "op_types": {"Conv": {"bits": 5}},
            "nodes": {"conv2": {"bits": 8}},
        }
    )
    r = StatqPass(cfg)(conv_model()).report
    bits = {layer.name: layer.bits for layer in r.layers if layer.representation != "float16"}
    assert bits == {"w1": 5, "w2": 8, "fc": 3, "head": 3}


def test_no_weights_is_a_typed_error(make_model):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [helper.make_tensor_value_info("y", 1, [2])], {})
    with pytest.raises(NoWeightsError):
        quantize(m)


def test_no_weights_message_counts_the_skips_by_kind(make_model, rng):
    # the reasons name the node and carry commas; the one-line error used to cut them at the first comma, leaving
    # "not a weight input (Gemm input 2: bias" with its bracket open and "64 elements" without what was wrong
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    inits = {"w": rng.standard_normal((8, 8)).astype(np.float32), "b": rng.standard_normal(8).astype(np.float32)}
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"])
    m = make_model([node], [x], [helper.make_tensor_value_info("y", 1, [1, 8])], inits)
    with pytest.raises(NoWeightsError) as err:
        quantize(m, min_size=100)
    assert str(err.value) == "no weight to quantize (2 skipped: 1 below min-size; 1 not a weight input)"


def test_old_opset_is_refused(make_model, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    wi = helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 64])
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x, wi], [y], {"w": w}, opset=6, ir=3)
    with pytest.raises(UnsupportedModelError):
        quantize(m)


def _matmul_model(make_model, w: np.ndarray, **kw):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [x], [y], {"w": w}, **kw)


def test_constant_node_weights_and_shared_weights(make_model, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    const = helper.make_node("Constant", [], ["cw"], value=numpy_helper.from_array(w, "cw"))
    nodes = [
        const,
        helper.make_node("MatMul", ["x", "cw"], ["h"], name="a"),
        helper.make_node("MatMul", ["h", "cw"], ["y"], name="b"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    m = make_model(nodes, [x], [y], {})
    q = quantize(m, bits=6)
    assert ops(q)["Constant"] == 0 and ops(q)["MatMul"] == 2
    levels = [t for t in q.graph.initializer if t.name.endswith(".levels")]
    assert len(levels) == 1  # encoded once for both consumers
    xv = rng.standard_normal((1, 64)).astype(np.float32)
    assert sqnr(run(m, {"x": xv})[0], run(q, {"x": xv})[0]) > 25


def test_weights_inside_and_outside_if_subgraphs(make_model, rng):
    outer = rng.standard_normal((64, 64)).astype(np.float32)
    inner = rng.standard_normal((64, 64)).astype(np.float32)
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "outer"], ["t"], name="then_mm")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 64])],
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "inner"], ["e"], name="else_mm")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(inner, "inner")],
    )
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="if")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    c = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    m = make_model(nodes, [x, c], [y], {"outer": outer})
    report = StatqPass(QuantConfig(bits=6))(m).report
    assert {layer.name for layer in report.layers} == {"outer", "inner"}
    for holder in ("if", "If", "i?"):  # the If by name, by op type, by pattern: the weights it holds (it excluded none)
        with pytest.raises(NoWeightsError, match="2 excluded"):
            StatqPass(QuantConfig(bits=6, exclude=(holder,)))(m)
    q = quantize(m, bits=6)
    onnx.checker.check_model(q, full_check=True)
    xv = rng.standard_normal((1, 64)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": xv, "cond": np.array(cond)}
        assert sqnr(run(m, feeds)[0], run(q, feeds)[0]) > 25


@pytest.mark.parametrize("op", ["MatMul", "Gather"])
def test_weight_read_only_in_both_branches_of_an_if(make_model, rng, op):
    """An initializer that only the two branches of an If read is decoded in the If's graph, which both see: in the
    first branch's graph the other branch could not read it (the model failed the checker)."""
    w = rng.standard_normal((64, 64)).astype(np.float32)
    operand = "x" if op == "MatMul" else "ids"

    def branch(name: str) -> onnx.GraphProto:
        inputs = [operand, "w"] if op == "MatMul" else ["w", operand]
        return helper.make_graph(
            [helper.make_node(op, inputs, [name])], name, [], [helper.make_tensor_value_info(name, 1, [3, 64])]
        )

    kind = TensorProto.FLOAT if op == "MatMul" else TensorProto.INT64
    x = helper.make_tensor_value_info(operand, kind, [3, 64] if op == "MatMul" else [3])
    c = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 64])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("t"), else_branch=branch("e"), name="if")]
    m = make_model(nodes, [x, c], [y], {"w": w})
    result = StatqPass(QuantConfig(bits=6))(m)
    assert [layer.name for layer in result.report.layers] == ["w"]
    onnx.checker.check_model(result.model, full_check=True)
    xv = rng.standard_normal((3, 64)).astype(np.float32) if op == "MatMul" else np.array([0, 7, 63])
    for cond in (True, False):
        feeds = {operand: xv, "cond": np.array(cond)}
        assert sqnr(run(m, feeds)[0], run(result.model, feeds)[0]) > 25


def test_lstm_and_gather_embedding(make_model, rng):
    emb = rng.standard_normal((200, 32)).astype(np.float32)
    wih = (rng.standard_normal((1, 128, 32)) * 0.2).astype(np.float32)
    whh = (rng.standard_normal((1, 128, 32)) * 0.2).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("LSTM", ["e", "wih", "whh"], ["y"], hidden_size=32, name="lstm"),
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [5, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, 1, 32])
    m = make_model(nodes, [ids], [y], {"emb": emb, "wih": wih, "whh": whh})
    q = quantize(m, bits=6, min_size=1000)
    assert {t.name for t in q.graph.initializer}.isdisjoint({"emb", "wih", "whh"})
    feeds = {"ids": rng.integers(0, 200, (5, 1)).astype(np.int64)}
    assert sqnr(run(m, feeds)[0], run(q, feeds)[0]) > 20


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes(make_model, rng, dtype):
    w = rng.standard_normal((64, 64)).astype(dtype)
    t = {np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}[dtype]
    x = helper.make_tensor_value_info("x", t, [1, 64])
    y = helper.make_tensor_value_info("y", t, [1, 64])
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], {"w": w})
    q = quantize(m, bits=4)
    xv = rng.standard_normal((1, 64)).astype(dtype)
    got = run(q, {"x": xv}, ["w"])[0]
    assert got.dtype == dtype
    expected = encode_tensor(w, 1, 4, "sigma", Granularity.AUTO, 2.0).decoded()
    assert np.array_equal(got, expected.astype(dtype))


def test_conv_transpose_and_gemm_without_transpose(make_model, rng):
    wt = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((8 * 10 * 10, 16)).astype(np.float32) * 0.05
    shape = np.array([0, -1], np.int64)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["c"], name="deconv"),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="gemm"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    m = make_model(nodes, [x], [y], {"wt": wt, "fc": fc, "shape": shape})
    q = quantize(m, bits=5, granularity="channel", min_size=100, allocation="fixed")
    xv = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    wt_q, fc_q = run(q, {"x": xv}, ["wt", "fc"])
    assert np.array_equal(wt_q, encode_tensor(wt, 1, 5, granularity="channel").decoded())
    assert np.array_equal(fc_q, encode_tensor(fc, 1, 5, granularity="channel").decoded())


def test_running_on_own_output_leaves_encoded_weights_alone(conv_model):
    q = quantize(conv_model(), min_size=100)
    with pytest.raises(NoWeightsError, match="already quantized by onnx-statq"):
        quantize(q, min_size=100)


def test_auto_allocation_meets_the_budget_and_favours_small_layers(conv_model):
    m = conv_model()
    r = StatqPass(QuantConfig(bits=4, min_size=100))(m).report
    bits = {layer.name: layer.bits for layer in r.layers if layer.representation != "float16"}
    sizes = {layer.name: int(np.prod(layer.shape)) for layer in r.layers if layer.name in bits}
    average = sum(bits[n] * sizes[n] for n in bits) / sum(sizes.values())
    assert average <= 4.0 and r.totals["average_index_bits"] <= 4.0
    free_tables = len(r.layers) * 32 * 2**4 / sum(int(np.prod(layer.shape)) for layer in r.layers)
    assert r.totals["average_stored_bits"] <= 4.0 + free_tables  # the budget: one float32 codebook per layer free
    head = next(layer for layer in r.layers if layer.name == "head")
    assert head.representation == "float16" or head.bits >= bits["fc"]  # 640 weights vs 32768: bits come cheap
    fixed = StatqPass(QuantConfig(bits=4, min_size=100, allocation="fixed"))(m).report
    assert {layer.bits for layer in fixed.layers if layer.representation != "float16"} == {4}


@pytest.mark.parametrize(
    "values, expect",
    [
        (np.full((64, 64), 0.25, np.float32), "exact"),
        (np.where(np.eye(64) > 0, np.nan, 1.0).astype(np.float32), "skipped"),
        (np.where(np.eye(64) > 0, np.inf, 1.0).astype(np.float32), "skipped"),
        (np.tile(np.array([-1.0, 0.0, 2.0], np.float32), 64 * 64 // 3 + 1)[: 64 * 64].reshape(64, 64), "exact"),
    ],
)
def test_degenerate_weights(make_model, values, expect, rng):
    m = _matmul_model(make_model, values)
    report = StatqPass(QuantConfig(bits=4, min_size=100))(m).report if expect == "exact" else None
    if expect == "skipped":
        with pytest.raises(NoWeightsError, match="NaN or Inf"):
            quantize(m, bits=4, min_size=100)
        return
    assert report is not None and report.layers[0].rel_error == 0.0
    q = quantize(m, bits=4, min_size=100)
    assert np.array_equal(run(q, {"x": np.zeros((1, 64), np.float32)}, ["w"])[0], values)


def test_bfloat16_constant_beside_a_weight_is_reported_not_fatal():
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    b = helper.make_tensor("b", TensorProto.BFLOAT16, [64], np.zeros(64, np.uint16).tobytes(), raw=True)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y0"]),
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["y0", "bf"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])
    graph = helper.make_graph(nodes, "g", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = StatqPass(QuantConfig(min_size=100))(model)
    assert [r.name for r in result.report.layers] == ["w"]
    assert any(s.name == "b" and "not a weight input" in s.reason for s in result.report.skipped)


def test_sibling_weights_of_one_name_each_show_their_own_prediction(rng):
    """The prediction was kept by weight name, so of two weights named W in an If's two branches the table showed
    the second's prediction for both (found by a helper)."""
    vi = helper.make_tensor_value_info

    def branch(name: str, w: np.ndarray) -> onnx.GraphProto:
        out = vi(f"o_{name}", TensorProto.FLOAT, [2, 64])
        node = helper.make_node("MatMul", ["x", "W"], [f"o_{name}"])
        return helper.make_graph([node], name, [], [out], [numpy_helper.from_array(w, "W")])

    gauss = rng.standard_normal((64, 64)).astype(np.float32)
    bimodal = (np.sign(rng.standard_normal((64, 64))) + 0.05 * rng.standard_normal((64, 64))).astype(np.float32)
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("a", gauss), else_branch=branch("b", bimodal))
    inputs = [vi("c", TensorProto.BOOL, []), vi("x", TensorProto.FLOAT, [2, 64])]
    graph = helper.make_graph([node], "g", inputs, [vi("y", TensorProto.FLOAT, [2, 64])])
    report = StatqPass(QuantConfig())(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).report
    assert [r.name for r in report.layers] == ["W", "W"]
    for r in report.layers:
        assert r.predicted_rel_error == pytest.approx(r.rel_error, rel=0.15)
    assert report.layers[0].predicted_rel_error != report.layers[1].predicted_rel_error


def test_an_ir3_model_with_a_weight_decoded_in_a_branch_loads(rng):
    """Below IR 4 an initializer must also be an input of its graph, which an If branch cannot have: the codebooks
    of a weight read in one branch only went there as initializers, and onnxruntime refused the file (found in
    review). They go there as Constant nodes."""
    vi = helper.make_tensor_value_info
    w = rng.standard_normal((64, 64)).astype(np.float32)
    then = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"])], "t", [], [vi("t", TensorProto.FLOAT, None)]
    )
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "e", [], [vi("e", TensorProto.FLOAT, None)])
    inputs = [vi("c", TensorProto.BOOL, []), vi("x", TensorProto.FLOAT, [2, 64]), vi("w", TensorProto.FLOAT, [64, 64])]
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    graph = helper.make_graph(
        [node], "g", inputs, [vi("y", TensorProto.FLOAT, [2, 64])], [numpy_helper.from_array(w, "w")]
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 3
    sess, ref = _loads(quantize(m, bits=8)), _loads(m)
    feed = {"c": np.array(True), "x": rng.standard_normal((2, 64)).astype(np.float32)}
    assert sqnr(ref.run(None, feed)[0], sess.run(None, feed)[0]) > 35
