"""Padding-aware calibration: MatMul refits fit the positions a [batch, sequence] mask marks as real."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import cli
from onnx import TensorProto, helper, numpy_helper

from onnx_statq import ConfigError, QuantConfig, StatqPass, quantize
from onnx_statq.api import make_refiner
from onnx_statq.calibrate import model_inputs
from onnx_statq.calibrate.masks import real_rows, resolve_mask_input

N_IN, N_OUT, T = 32, 64, 12


def _token_model(rng: np.random.Generator, mask_name: str = "attention_mask") -> onnx.ModelProto:
    """y = x @ W for x [batch, seq, 32], with a [batch, seq] int64 mask input (read into a second output)."""
    w = numpy_helper.from_array(rng.normal(size=(N_IN, N_OUT)).astype(np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"], name="proj"),
            helper.make_node("Cast", [mask_name], ["m"], to=TensorProto.FLOAT),
        ],
        "tokens",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", N_IN]),
            helper.make_tensor_value_info(mask_name, TensorProto.INT64, ["b", "s"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N_OUT]),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, ["b", "s"]),
        ],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _padded_feeds(rng: np.random.Generator, mask_name: str = "attention_mask") -> list[dict[str, np.ndarray]]:
    """Sentences of 3-12 real tokens padded to 12; the padded positions carry large values along two directions,
    as a transformer's padding rows can: a fit that counts them spends its levels on them."""
    feeds = []
    for _ in range(4):
        lengths = rng.integers(3, T + 1, size=4)
        mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
        x = rng.normal(size=(4, T, N_IN)).astype(np.float32)
        pad = 40.0 * rng.normal(size=(4, T, 2)).astype(np.float32)
        x[..., :2] = np.where(mask[..., None] == 1, x[..., :2], pad)
        feeds.append({"x": x, mask_name: mask})
    return feeds


def _real_error(model: onnx.ModelProto, q: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> float:
    """Squared output error of ``q`` against ``model`` at the real positions of ``feeds``."""
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    err = 0.0
    for f in feeds:
        keep = f["attention_mask"] == 1
        d = ref.run(["y"], f)[0][keep].astype(np.float64) - out.run(["y"], f)[0][keep]
        err += float(np.sum(d * d))
    return err


def test_resolve_mask_input():
    specs = model_inputs(_token_model(np.random.default_rng(0)))
    assert resolve_mask_input("auto", specs) == "attention_mask"
    assert resolve_mask_input("none", specs) is None
    assert resolve_mask_input(None, specs) is None
    assert resolve_mask_input("attention_mask", specs) == "attention_mask"
    with pytest.raises(ConfigError, match="no input named 'ids'"):
        resolve_mask_input("ids", specs)
    with pytest.raises(ConfigError, match="not \\[batch, sequence\\]"):
        resolve_mask_input("x", specs)
    other = model_inputs(_token_model(np.random.default_rng(0), mask_name="pad"))
    assert resolve_mask_input("auto", other) is None  # auto takes the conventional name only


def test_real_rows_selects_marked_positions_of_token_inputs_only():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[True, True, False], [True, False, False]])
    np.testing.assert_array_equal(real_rows(x, mask), np.stack([x[0, 0], x[0, 1], x[1, 0]]))
    assert real_rows(x, None) is x
    assert real_rows(x, np.zeros((2, 3), bool)) is x  # padding only: fitted whole
    assert real_rows(x, np.ones((3, 2), bool)) is x  # axes that are not the mask's
    flat = x.reshape(6, 4)
    assert real_rows(flat, mask) is flat  # rows that are not [batch, sequence] positions


def test_masked_calibration_fits_the_real_tokens_better():
    rng = np.random.default_rng(3)
    model = _token_model(rng)
    feeds = _padded_feeds(rng)
    cfg = QuantConfig(bits=2, min_size=1)
    masked = quantize(model, cfg, calib=feeds)  # auto: the attention_mask input
    whole = quantize(model, cfg, calib=feeds, calib_mask="none")
    named = quantize(model, cfg, calib=feeds, calib_mask="attention_mask")
    assert masked.SerializeToString() == named.SerializeToString()
    # same assignment, levels fitted to the real rows: the least-squares optimum there, so strictly better than the
    # levels fitted to every row (equal only if the mask were not applied)
    assert masked.SerializeToString() != whole.SerializeToString()
    assert _real_error(model, masked, feeds) < 0.99 * _real_error(model, whole, feeds)


def test_report_names_the_mask_and_a_bad_mask_fails_before_work():
    rng = np.random.default_rng(4)
    model = _token_model(rng)
    feeds = _padded_feeds(rng)
    for choice, expect in (("auto", "attention_mask"), ("none", None)):
        refiner = make_refiner(model, feeds, None, "sequential", mask=choice)
        report = StatqPass(QuantConfig(bits=3, min_size=1), refiner=refiner)(model).report
        assert report.calibration["mask_input"] == expect
    with pytest.raises(ConfigError):
        make_refiner(model, feeds, None, "sequential", mask="x")


def test_model_output_sqnr_counts_the_real_positions_only():
    from onnx_statq.calibrate.session import model_output_sqnr

    mask = np.array([[True, False]])
    ref = [{"y": np.array([[[1.0, 1.0], [5.0, 5.0]]], np.float32), "s": np.array([[2.0, 9.0]], np.float32)}]
    out = [{"y": np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32), "s": np.array([[2.0, 0.0]], np.float32)}]
    # real position: signal 1 + 1 + 4, noise 1; with the padded one too: signal 6 + 50 + 81, noise 1 + 50 + 81
    assert model_output_sqnr(ref, out, [mask]) == pytest.approx(10 * np.log10(6.0))
    assert model_output_sqnr(ref, out) == pytest.approx(10 * np.log10(137.0 / 132.0))
    assert model_output_sqnr(ref, out, [None]) == model_output_sqnr(ref, out)


def test_sensitivity_counts_the_real_positions_only():
    from onnx_statq.calibrate.sensitivity import _relative_error

    mask = np.array([[True, False]])
    ref = [[np.array([[[2.0], [1.0]]])]]
    out = [[np.array([[[1.0], [0.0]]])]]
    # real position: error 1 over power 4; with the padded one: 2 over 5
    assert _relative_error(ref, out, [mask]) == pytest.approx(0.25)
    assert _relative_error(ref, out) == pytest.approx(0.4)


def test_cli_reports_the_mask(tmp_path):
    rng = np.random.default_rng(6)
    src, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(_token_model(rng), src)
    feeds = _padded_feeds(rng)
    np.savez(calib, **{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    args = [str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(calib), "--min-size", "1", "--no-verify"]
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "padding from attention_mask left out" in res.stdout + res.stderr
    res = cli(*args, "--calib-mask", "none", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["calibration"]["mask_input"] is None
