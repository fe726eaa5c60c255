"""Tiny models built in code; each fixture is a factory so tests can vary sizes and opsets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
EXE = [sys.executable, "-m", "onnx_statq.cli"]
DIGITS = REPO / "models" / "digits" / "digits_cnn.onnx"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a separate process, the repository on its path."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([*EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _model(nodes, inputs, outputs, inits, opset=13, ir=8, **kw) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], **kw)
    m.ir_version = ir
    onnx.checker.check_model(m)
    return m


def folded_conv_weights(rng: np.random.Generator, out_ch: int, in_ch: int, k: int = 3) -> np.ndarray:
    """Conv filters whose output channels have very different scales, as after folding BatchNormalization."""
    w = rng.standard_normal((out_ch, in_ch, k, k)).astype(np.float32) * 0.1
    return (w * np.exp(rng.uniform(-2.5, 1.0, size=(out_ch, 1, 1, 1)))).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def conv_model(rng):
    """Conv -> Relu -> Conv -> Flatten -> Gemm(transB=1) -> MatMul: the common weight slots in one graph."""

    def make(opset: int = 13, c1: int = 16, c2: int = 32) -> onnx.ModelProto:
        inits = {
            "w1": folded_conv_weights(rng, c1, 3),
            "b1": rng.standard_normal(c1).astype(np.float32),
            "w2": folded_conv_weights(rng, c2, c1),
            "fc": (rng.standard_normal((64, c2 * 4 * 4)) * 0.05).astype(np.float32),
            "fcb": (rng.standard_normal(64) * 0.1).astype(np.float32),
            "head": (rng.standard_normal((64, 10)) * 0.1).astype(np.float32),
            "shape": np.array([0, -1], np.int64),
        }
        nodes = [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("Reshape", ["r2", "shape"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "fc", "fcb"], ["h"], name="fc", transB=1),
            helper.make_node("MatMul", ["h", "head"], ["y"], name="head"),
        ]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
        m = _model(nodes, [x], [y], inits, opset=opset, doc_string="test model")
        helper.set_model_props(m, {"character": "a\nb\nc", "author": "tests"})
        return m

    return make


@pytest.fixture
def make_model():
    return _model


def run(model: onnx.ModelProto, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    import onnxruntime as ort

    if outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        have = {o.name for o in model.graph.output}
        for name in outputs:
            if name not in have:
                model.graph.output.append(helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in sess.get_outputs()]
    return sess.run(names, feeds)


def sqnr(ref: np.ndarray, approx: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = np.sum((ref - approx.astype(np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref**2) / noise))


def pytest_terminal_summary(terminalreporter) -> None:
    """One line for the hardening corpus (tests/test_corpus.py): inputs run, tracebacks, partial outputs."""
    import json

    runs = [
        json.loads(value)
        for reports in terminalreporter.stats.values()
        for r in reports
        if getattr(r, "when", None) == "call"
        for key, value in getattr(r, "user_properties", ())
        if key == "corpus"
    ]
    if not runs:
        return
    inputs = len([r for r in runs if r["how"] == "in-process"])
    tracebacks = sum(bool(r["traceback"]) for r in runs)
    partial = sum(bool(r["partial"] or r["leftovers"]) for r in runs)
    wrong = sum(bool(r["exit_code"] or r["stderr"] or r["result"] or r["input_changed"]) for r in runs)
    terminalreporter.write_line(
        f"corpus: {inputs} inputs ({len(runs) - inputs} also as a process), {tracebacks} tracebacks, "
        f"{partial} partial outputs, {wrong} other failures"
    )
