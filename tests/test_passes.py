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
    statq = StatqIRPass(QuantConfig(bits=6, min_size=100, allocation="fixed"))
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


def test_quantize_gives_an_onnx_ir_model_back_as_it_came(conv_model, rng):
    import onnx_statq

    proto = conv_model()
    model = ir.from_proto(proto)
    before = ir.to_proto(model).SerializeToString()
    config = QuantConfig(bits=4, min_size=100)
    out = onnx_statq.quantize(model, config)
    assert isinstance(out, ir.Model)
    assert ir.to_proto(model).SerializeToString() == before  # the input model is not modified
    ops = [n.op_type for n in out.graph]
    assert "Conv" in ops and ops.count("Gather") > ops.count("Conv")  # weights decoded by table lookups
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.array_equal(run(ir.to_proto(out), {"x": x})[0], run(onnx_statq.quantize(proto, config), {"x": x})[0])


def test_an_onnx_ir_model_with_external_data_is_read_from_its_own_folder(conv_model, rng, tmp_path, monkeypatch):
    import onnx

    import onnx_statq

    onnx.save(conv_model(), tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=64)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # onnx resolves a bare reference against the working directory
    model = ir.load(str(tmp_path / "m.onnx"))
    config = QuantConfig(bits=4, min_size=100)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = run(onnx_statq.quantize(tmp_path / "m.onnx", config), {"x": x})[0]
    assert np.array_equal(run(ir.to_proto(onnx_statq.quantize(model, config)), {"x": x})[0], want)
    result = StatqIRPass(config)(model)
    assert result.modified and np.array_equal(run(ir.to_proto(result.model), {"x": x})[0], want)


def test_quantize_refuses_what_is_not_a_model():
    import onnx_statq

    with pytest.raises(TypeError, match="not dict"):
        onnx_statq.quantize({"graph": None})


def test_olive_workflow_runs_the_statq_pass(conv_model, rng, tmp_path, monkeypatch):
    """The pass inside a real Olive workflow (``pip install 'onnx-statq[olive]'``), registered by a package config."""
    monkeypatch.setenv("OLIVE_DISABLE_TELEMETRY", "1")
    pytest.importorskip("olive")
    import onnx
    from olive.workflows import run as olive_run
    from onnx_statq_passes.olive_pass import PASS_NAME, package_config

    proto = conv_model()
    src = tmp_path / "model.onnx"
    onnx.save(proto, src)
    run_config = {
        "input_model": {"type": "ONNXModel", "model_path": str(src)},
        "passes": {
            "peephole": {"type": "OnnxPeepholeOptimizer", "onnxoptimizer_optimize": False},
            "statq": {"type": PASS_NAME, "bits": 6, "min_size": 100, "allocation": "fixed", "jobs": 1},
        },
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        "log_severity_level": 3,
    }
    olive_run(run_config, package_config=package_config())
    outputs = sorted((tmp_path / "out").rglob("*.onnx"))
    assert len(outputs) == 1, outputs
    out = onnx.load(outputs[0])
    onnx.checker.check_model(out)
    assert {t.name for t in out.graph.initializer}.isdisjoint({"w1", "w2", "fc", "head"})  # all four encoded
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert sqnr(run(proto, {"x": x})[0], run(out, {"x": x})[0]) > 25


def test_olive_pass_without_weights_passes_the_model_through(make_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OLIVE_DISABLE_TELEMETRY", "1")
    pytest.importorskip("olive")
    import onnx
    from olive.model import ONNXModelHandler
    from olive.passes.olive_pass import create_pass_from_dict
    from onnx import TensorProto, helper
    from onnx_statq_passes.olive_pass import OnnxStatqQuantization

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    src = tmp_path / "relu.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], {}), src)
    statq = create_pass_from_dict(OnnxStatqQuantization, {"bits": 3}, disable_search=True)
    out = statq.run(ONNXModelHandler(model_path=str(src)), str(tmp_path / "out"))
    assert [n.op_type for n in out.load_model().graph.node] == ["Relu"]
