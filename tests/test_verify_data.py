"""``--verify-data``: the check on the user's inputs instead of random ones, and its bad-input paths."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import onnx
import pytest
from conftest import DIGITS, REPO, cli, run, sqnr
from onnx import TensorProto, helper

from onnx_statq.api import quantize_file
from onnx_statq.errors import CalibrationError
from onnx_statq.summary import LOW_RANDOM_SQNR_DB, _verify_lines

DIGITS_CALIB = REPO / "models" / "digits" / "digits_calib.npz"


def test_readme_verify_data_command_runs(tmp_path):
    """The README's inline example, run as written (from a folder holding the bundled models)."""
    text = " ".join((REPO / "README.md").read_text().split())
    found = re.search(r"`(onnx-statq [^`]*--verify-data [^`]*)`", text)
    assert found is not None, "the README shows a --verify-data command"
    (tmp_path / "models").symlink_to(REPO / "models")
    res = cli(*shlex.split(found.group(1))[1:], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "on 64 samples of models/digits/digits_calib.npz" in res.stdout


def test_figures_are_those_of_the_data(tmp_path):
    """SQNR and argmax agreement recomputed by hand in onnxruntime on the same samples, float against output."""
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    res = cli(str(DIGITS), "-o", str(out), "--verify-data", str(DIGITS_CALIB), "--report", str(rep), "-q")
    assert res.returncode == 0, res.stderr
    v = json.loads(rep.read_text())["verify"]
    assert v["source"] == "data" and v["samples"] == 64 and v["data"] == str(DIGITS_CALIB)
    x = np.load(DIGITS_CALIB)["input"]
    (a,) = run(onnx.load(DIGITS), {"input": x})
    (b,) = run(onnx.load(out), {"input": x})
    assert v["min_sqnr_db"] == pytest.approx(sqnr(a, b), abs=1e-6)
    agree = float(np.mean(a.argmax(-1) == b.argmax(-1)))
    assert v["argmax_agreement"] == {"logits": pytest.approx(agree)}
    random = json.loads(cli(str(DIGITS), "-o", str(out), "--json").stdout)["verify"]
    assert random["source"] == "random" and random["min_sqnr_db"] != v["min_sqnr_db"]


def test_api_takes_an_iterable_and_the_ort_format(tmp_path):
    x = np.load(DIGITS_CALIB)["input"]
    feeds = [{"input": x[:8]}, {"input": x[8:20]}]
    r = quantize_file(DIGITS, tmp_path / "q.onnx", verify_data=feeds)
    assert r.verify["source"] == "data" and r.verify["feeds"] == 2 and r.verify["data"] == "the given feeds"
    assert "samples" not in r.verify  # whole feeds, not samples on a first axis
    res = cli(str(DIGITS), "-o", str(tmp_path / "q.ort"), "--format", "ort", "--verify-data", str(DIGITS_CALIB))
    assert res.returncode == 0, res.stderr
    assert "on 64 samples of" in res.stdout


@pytest.fixture
def dynamic_model(tmp_path, make_model):
    """A MatMul whose input width is symbolic: data of the wrong width passes the shape check, fails in the model."""
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "K"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])
    path = tmp_path / "dyn.onnx"
    onnx.save(make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [x], [y], {"w": w}), path)
    return path


@pytest.mark.parametrize(
    "case, code",
    [("wrong name", 8), ("missing", 8), ("no verify", 2), ("float fails", 8), ("is the output", 6)],
)
def test_bad_verification_data(tmp_path, dynamic_model, case, code):
    model, out = DIGITS, tmp_path / "q.onnx"
    data = tmp_path / "v.npz"
    extra: list[str] = []
    if case == "wrong name":
        np.savez(data, x=np.zeros((4, 1, 8, 8), np.float32))
    elif case == "missing":
        data = tmp_path / "absent.npz"
    elif case == "no verify":
        np.savez(data, input=np.zeros((4, 1, 8, 8), np.float32))
        extra = ["--no-verify"]
    elif case == "float fails":
        model = dynamic_model
        np.savez(data, x=np.zeros((4, 3), np.float32))
    else:
        np.savez(data, input=np.zeros((4, 1, 8, 8), np.float32))
        out = data
    before = data.read_bytes() if data.exists() else None
    res = cli(str(model), "-o", str(out), "--verify-data", str(data), *extra)
    assert res.returncode == code, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert case == "is the output" or not out.exists()
    assert (data.read_bytes() if data.exists() else None) == before  # the input is never touched
    if case == "float fails":  # the check ran after the pass: its output was removed
        assert "verification data" in res.stderr and set(tmp_path.iterdir()) == {model, data}


def test_float_model_failing_on_the_data_is_a_calibration_error(tmp_path, dynamic_model):
    with pytest.raises(CalibrationError, match="float model fails on the verification data"):
        quantize_file(dynamic_model, tmp_path / "q.onnx", verify_data=[{"x": np.zeros((2, 3), np.float32)}])
    assert not (tmp_path / "q.onnx").exists()


def test_summary_points_to_verify_data_only_when_random_inputs_read_low():
    def lines(source: str, db: float) -> list[str]:
        v = {"source": source, "min_sqnr_db": db, "outputs": {"y": db}, "feeds": 1, "samples": 8, "data": "d.npz"}
        return _verify_lines(v)

    assert any("--verify-data" in s for s in lines("random", LOW_RANDOM_SQNR_DB - 1))
    assert not any("--verify-data" in s for s in lines("random", LOW_RANDOM_SQNR_DB + 1))
    assert not any("--verify-data" in s for s in lines("data", 1.0))
    assert "on 8 samples of d.npz: 1.0 dB" in lines("data", 1.0)[0]


def test_random_inputs_the_float_model_refuses_point_to_verify_data(tmp_path, dynamic_model):
    """Random inputs give the symbolic width 16, which the 64-row weight refuses: the check is skipped, not failed,
    and the summary says how to run it on real inputs."""
    res = cli(str(dynamic_model), "-o", str(tmp_path / "q.onnx"), "--min-size", "100")
    assert res.returncode == 0, res.stderr
    assert "verify: skipped: the float model fails on generated inputs (dynamic dims get small sizes)" in res.stdout
    assert "verify: note: --verify-data DATA runs the check on your inputs" in res.stdout


def test_positions_where_the_float_model_overflows_are_left_out_of_the_sqnr():
    """A float16 model whose own output overflows on random inputs read 'nan dB' with a numpy RuntimeWarning."""
    import math
    import warnings

    from onnx_statq.verify import _OutputStats

    ref = np.array([[1.0, np.inf, 3.0]], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning
        same_overflow = _OutputStats()
        same_overflow.add(ref, np.array([[1.0, np.inf, 3.5]], np.float16))
        assert same_overflow.sqnr_db() == pytest.approx(10 * math.log10(10 / 0.25))  # the finite positions
        new_overflow = _OutputStats()
        new_overflow.add(ref, np.array([[np.inf, np.inf, 3.0]], np.float16))
        assert new_overflow.sqnr_db() == -math.inf  # the quantized model overflows where the float one did not
