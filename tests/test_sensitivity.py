"""With calibration data, each layer's error is weighed by how much it moves the model's outputs."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnx_statq import QuantConfig, StatqPass
from onnx_statq.api import make_refiner
from onnx_statq.calibrate.sensitivity import measure_sensitivities
from onnx_statq.codebook import encode_tensor
from onnx_statq.plan import SensitivityProbe


def _loud_and_quiet(make_model, rng):
    """y = x @ A + 0.01 * (z @ B): B's errors reach the output 10,000 times weaker (in power) than A's. B is twice
    A's size, so that one bit taken from it pays for one more bit of A and its doubled codebook."""
    a = rng.standard_normal((128, 128)).astype(np.float32)
    b = rng.standard_normal((256, 128)).astype(np.float32)
    scale = np.array(0.01, np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["ya"], name="loud"),
        helper.make_node("MatMul", ["z", "B"], ["yb"], name="quiet"),
        helper.make_node("Mul", ["yb", "s"], ["ybs"]),
        helper.make_node("Add", ["ya", "ybs"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 128])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 128])
    return make_model(nodes, [x, z], [y], {"A": a, "B": b, "s": scale}), a, b


def _feeds(rng):
    return [
        {"x": rng.standard_normal((8, 128)).astype(np.float32), "z": rng.standard_normal((8, 256)).astype(np.float32)}
        for _ in range(2)
    ]


def test_sensitivity_follows_the_output_scale(make_model, rng):
    m, a, b = _loud_and_quiet(make_model, rng)
    feeds = _feeds(rng)
    probes = []
    for name, w in (("A", a), ("B", b)):
        enc = encode_tensor(w, 1, 3)
        probes.append(SensitivityProbe(name, w, enc.decoded(), enc.rel_error))
    s = measure_sensitivities(m, feeds, probes)
    assert s["A"] > 1000 * s["B"] > 0
    assert 0.3 < s["A"] < 3  # alone at the output, A's relative error is about the output's


def test_calibrated_allocation_gives_the_loud_layer_the_bits(make_model, rng):
    m, _, _ = _loud_and_quiet(make_model, rng)
    feeds = _feeds(rng)
    free = {r.name: r.bits for r in StatqPass(QuantConfig(bits=3))(m).report.layers}
    assert free["A"] <= free["B"]  # the same statistics: data-free, no reason to favour A
    unweighted = StatqPass(QuantConfig(bits=3), refiner=make_refiner(m, feeds))(m).report
    assert not unweighted.sensitivity  # off by default
    report = StatqPass(QuantConfig(bits=3, sensitivity=True), refiner=make_refiner(m, feeds))(m).report
    bits = {r.name: r.bits for r in report.layers}
    assert bits["A"] > bits["B"]
    assert report.sensitivity["A"] > report.sensitivity["B"]


def test_cli_flag_reports_the_sensitivities(make_model, rng, tmp_path):
    import json

    import onnx
    from click.testing import CliRunner

    from onnx_statq.cli import main

    m, _, _ = _loud_and_quiet(make_model, rng)
    src, out, calib = tmp_path / "m.onnx", tmp_path / "q.onnx", tmp_path / "calib.npz"
    onnx.save(m, src)
    feeds = _feeds(rng)
    np.savez(calib, x=np.concatenate([f["x"] for f in feeds]), z=np.concatenate([f["z"] for f in feeds]))
    args = [str(src), "-o", str(out), "--bits", "3", "--calib", str(calib), "--calib-sensitivity", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["sensitivity"]["A"] > report["sensitivity"]["B"]
    assert report["config"]["sensitivity"] is True
