"""``onnx-statq inspect``: the table and JSON, agreement with the pass, plots, and the missing-matplotlib path."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnx_statq import QuantConfig, StatqPass
from onnx_statq.cli import main
from onnx_statq.errors import MissingDependencyError
from onnx_statq.inspect import inspect_model

LEVELS = np.array([-0.75, -0.25, 0.25, 0.75, 1.5], np.float32)


@pytest.fixture
def few_levels_model(make_model, rng, tmp_path):
    """MatMul with a 64x32 weight holding exactly 5 distinct values (any codebook of K >= 5 is exact), a Gemm whose
    weight is below min-size, and a bias."""
    w = LEVELS[rng.integers(0, LEVELS.size, size=(64, 32))]
    inits = {
        "w": w,
        "small": rng.standard_normal((32, 8)).astype(np.float32),
        "b": np.zeros(8, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Gemm", ["h", "small", "b"], ["y"], name="gemm"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    path = tmp_path / "levels.onnx"
    onnx.save(make_model(nodes, [x], [y], inits), path)
    return path, w


def invoke(*args: str, **kw):
    return CliRunner().invoke(main, list(args), **kw)


def test_table_and_json_on_exact_weights(few_levels_model):
    path, w = few_levels_model
    res = invoke("inspect", str(path), "--bits", "3")
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.startswith("w "))
    assert "MatMul" in row and "64x32" in row and "tensor" in row and row.split()[-2:] == ["0.00e+00", "0.00e+00"]
    assert "below min-size" in res.output and "small" in res.output
    assert "not a weight input" in res.output  # the bias, with its reason

    res = invoke("inspect", str(path), "--bits", "3", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    (t,) = data["tensors"]
    assert t["name"] == "w" and t["op"] == "MatMul" and t["shape"] == [64, 32]
    assert t["rel_error"] == 0.0 and t["sqnr_db"] == "inf"
    assert t["k"] == 8 and t["bits"] == 3 and t["representation"] == "tensor"
    w64 = w.astype(np.float64)
    assert t["mean"] == pytest.approx(w64.mean()) and t["std"] == pytest.approx(w64.std())
    d = w64 - w64.mean()
    assert t["kurtosis"] == pytest.approx((d**4).mean() / (d**2).mean() ** 2)
    reasons = {s["name"]: s["reason"] for s in data["skipped"]}
    assert "below min-size" in reasons["small"] and "not a weight input" in reasons["b"]
    assert data["totals"]["weights_quantized"] == 1
    assert t["predicted_rel_error"] == 0.0  # 5 distinct values under 8 levels: predicted exact too


def test_choices_are_the_pass_choices(conv_model):
    """inspect shows what the default pass does: same weights, representation, K, bits and error."""
    model = conv_model()
    for config in (QuantConfig(), QuantConfig(bits=3)):
        ins = inspect_model(model, config)
        report = StatqPass(config)(model).report
        got = [(t.name, t.op, t.representation, t.k, t.bits, t.rel_error) for t in ins.tensors]
        want = [(r.name, r.op, r.representation, r.k, r.bits, r.rel_error) for r in report.layers]
        assert got == want
        # the prediction the allocation used, as the pass reports it (it was the whole tensor's error / power, where
        # the pass predicts the mean over channels of a tensor codebook's per-channel ratios)
        pred = {r.name: r.predicted_rel_error for r in report.layers if r.predicted_rel_error is not None}
        assert pred and {t.name: t.predicted_rel_error for t in ins.tensors if t.name in pred} == pred
        assert sorted(s.name for s in ins.skipped) == sorted(s.name for s in report.skipped)


def test_cli_shows_a_config_and_excludes_as_a_quantization_takes_them(conv_model, tmp_path):
    src, cfg = tmp_path / "m.onnx", tmp_path / "c.toml"
    onnx.save(conv_model(), src)
    cfg.write_text('min_size = 100\ngranularity = "tensor"\nallocation = "fixed"\n[nodes.w1]\nbits = 6\n')
    res = CliRunner().invoke(main, ["inspect", str(src), "--config", str(cfg), "--exclude", "head", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    bits = {t["name"]: t["bits"] for t in data["tensors"]}
    assert bits == {"w1": 6, "w2": 4, "fc": 4}  # the config's per-weight width, head left float
    assert any(s["name"] == "head" and "excluded" in s["reason"] for s in data["skipped"])
    res = CliRunner().invoke(main, ["inspect", str(src), "--exclude", "haed"])
    assert res.exit_code == 2 and "did you mean 'head'" in res.output


def test_plot_writes_one_png_per_quantized_tensor(conv_model, tmp_path):
    pytest.importorskip("matplotlib")
    src = tmp_path / "m.onnx"
    onnx.save(conv_model(c1=64), src)  # 576 weights per channel of w2: its per-channel tables are cheap
    plots = tmp_path / "plots"
    res = invoke("inspect", str(src), "--plot", str(plots), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    pngs = sorted(plots.iterdir())
    assert len(pngs) == len(data["tensors"]) == 3  # head is below min-size
    assert all(p.suffix == ".png" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert sorted(t["plot"] for t in data["tensors"]) == [str(p) for p in pngs]
    assert {t["representation"] for t in data["tensors"]} >= {"channel", "tensor"}  # both kinds of figure drawn


def test_missing_matplotlib_is_one_line_and_its_own_exit_code(few_levels_model, tmp_path, monkeypatch):
    path, _ = few_levels_model
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    plots = tmp_path / "plots"
    res = invoke("inspect", str(path), "--plot", str(plots))
    assert res.exit_code == MissingDependencyError.exit_code == 9
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "matplotlib" in lines[0] and "onnx-statq[plot]" in lines[0]
    assert not plots.exists()  # failed before doing any work
    # without --plot, matplotlib is not needed
    assert invoke("inspect", str(path)).exit_code == 0


def test_bad_model_and_no_weights(tmp_path, make_model):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert invoke("inspect", str(bad)).exit_code == 3
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    empty = tmp_path / "relu.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], {}), empty)
    res = invoke("inspect", str(empty))
    assert res.exit_code == 0 and "no weight would be quantized" in res.output
