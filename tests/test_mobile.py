"""Mobile: ``--format ort`` (onnxruntime's ORT format, atomically) and ``onnx-statq check``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import REPO
from onnx import TensorProto, helper, numpy_helper

from onnx_statq import quantize
from onnx_statq.cli import main
from onnx_statq.errors import CheckFailedError, OutputError, UnsupportedModelError
from onnx_statq.mobile import check_model, format_check, is_ort_format, raise_if_failed


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture
def conv_file(conv_model, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    return path


def _with_op(model: onnx.ModelProto, domain: str, op: str) -> onnx.ModelProto:
    """The model with ``op`` of ``domain`` applied to its output (two inputs, as ComplexMul takes)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    out = m.graph.output[0]
    m.graph.node.append(helper.make_node(op, [out.name, out.name], ["z"], name="odd", domain=domain))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 10]))
    m.opset_import.append(helper.make_opsetid(domain, 1))
    return m


def test_format_ort_loads_and_matches_the_onnx_output(conv_file, tmp_path, rng):
    out = tmp_path / "out"
    out.mkdir()
    res = invoke(str(conv_file), "-o", str(out / "q.onnx"), "--format", "ort", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert sorted(p.name for p in out.iterdir()) == ["q.ort", "q.required_operators.config"]  # no .onnx, no temp
    ort_file = out / "q.ort"
    assert is_ort_format(ort_file) and report["totals"]["format"] == "ort"
    assert report["totals"]["file_bytes_after"] == ort_file.stat().st_size
    assert report["verify"]["min_sqnr_db"] > 10  # verified on the .ort itself

    assert invoke(str(conv_file), "-o", str(tmp_path / "q.onnx"), "--no-verify", "-q").exit_code == 0
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (want,) = _session(tmp_path / "q.onnx").run(None, {"x": x})
    (got,) = _session(ort_file).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))

    # the decode stays in the file: it is much smaller than the float model in ORT format would be
    assert ort_file.stat().st_size < 0.5 * conv_file.stat().st_size
    config = (out / "q.required_operators.config").read_text()
    assert "Gather" in config and "Cast" in config and ".statq" not in config


def test_format_ort_writes_the_same_bytes_every_run(conv_file, tmp_path):
    """onnxruntime lays the resolver out differently on each conversion (4 files from 5 runs, before the rewrite)."""
    seen = set()
    args = (str(conv_file), "-o", str(tmp_path / "q.onnx"), "--format", "ort", "--no-verify", "-q")
    for _ in range(4):
        assert invoke(*args).exit_code == 0
        seen.add(((tmp_path / "q.ort").read_bytes(), (tmp_path / "q.required_operators.config").read_text()))
    assert len(seen) == 1


@pytest.fixture
def raw_ort(conv_file, tmp_path):
    from onnx_statq.mobile.ort_format import _convert

    raw = tmp_path / "raw.ort"
    _convert(conv_file, raw)
    return raw.read_bytes()


def test_the_rewritten_ort_runs_as_onnxruntime_wrote_it(raw_ort, tmp_path, rng):
    from onnx_statq.mobile.ort_canonical import ALIGN, canonical_ort

    (tmp_path / "raw.ort").write_bytes(raw_ort)
    fixed = tmp_path / "fixed.ort"
    fixed.write_bytes(canonical_ort(raw_ort))
    assert len(fixed.read_bytes()) % ALIGN == 0 and canonical_ort(fixed.read_bytes()) == fixed.read_bytes()
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (want,) = _session(tmp_path / "raw.ort").run(None, {"x": x})
    assert np.array_equal(_session(fixed).run(None, {"x": x})[0], want)
    assert canonical_ort(b"not a flatbuffer") == b"not a flatbuffer"


def test_ort_files_of_other_lengths_in_front_of_the_model_rewrite_the_same(raw_ort, monkeypatch, tmp_path, rng):
    """onnxruntime's part before the model is sometimes 8 bytes longer: the result must not depend on its length
    (it did while the padding followed the input's length). Valid files of other lengths are made here by writing
    a string nothing refers to in front of the model, at 8-byte alignment."""
    from onnx_statq.mobile import ort_canonical as oc

    want = bytes(oc.canonical_ort(raw_ort))
    real = oc._write_resolver
    variants = []
    for extra in range(1, 40, 5):
        monkeypatch.setattr(oc, "ALIGN", 8)
        monkeypatch.setattr(
            oc, "_write_resolver", lambda f, b, r, s, n=extra: (b.CreateString(b"x" * n), real(f, b, r, s))[1]
        )
        variants.append(bytes(oc.canonical_ort(raw_ort)))
        monkeypatch.undo()
    assert len({len(v) % 64 for v in variants}) > 1  # lengths that the old padding rule told apart
    (tmp_path / "v.ort").write_bytes(variants[0])
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert _session(tmp_path / "v.ort").run(None, {"x": x})[0].shape == (2, 10)  # each variant is a valid file
    assert all(bytes(oc.canonical_ort(v)) == want for v in variants)


def test_a_failed_rewrite_keeps_onnxruntimes_file_and_says_so(raw_ort, monkeypatch, caplog):
    from onnx_statq.mobile import ort_canonical as oc

    def fail(*args: object) -> None:
        raise RuntimeError("flatbuffers: cannot grow buffer beyond 2 gigabytes")

    monkeypatch.setattr(oc, "_rebuild", fail)
    assert oc.canonical_ort(raw_ort) is raw_ort
    assert "not the same bytes from run to run" in caplog.text


def test_format_ort_failure_leaves_nothing(conv_model, tmp_path):
    src = tmp_path / "odd.onnx"
    onnx.save(_with_op(conv_model(), "com.example", "Frobnicate"), src)
    out = tmp_path / "out"
    out.mkdir()
    res = invoke(str(src), "-o", str(out / "q.onnx"), "--format", "ort", "--no-verify")
    assert res.exit_code == UnsupportedModelError.exit_code, res.output  # the model's doing, not the path's (was 6)
    assert "ORT format" in res.output and len(res.output.strip().splitlines()) == 1
    assert ".statq" not in res.output  # not the path of the staged copy, which is gone by then
    assert list(out.iterdir()) == []


def test_check_a_model_without_inputs(tmp_path):
    """Its graph folds to constants, and onnxruntime's usability checker divided by its 0 nodes (exit 70)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Relu", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    res = invoke("check", str(tmp_path / "m.onnx"), "--json")
    assert res.exit_code == 0, res.output


def test_format_ort_report_cannot_take_the_ort_files_name(conv_file, tmp_path):
    out = tmp_path / "q.onnx"
    for report in ("q.ort", "q.required_operators.config"):
        res = invoke(str(conv_file), "-o", str(out), "--format", "ort", "--report", str(tmp_path / report))
        assert res.exit_code == 6 and "the report and the output are the same file" in res.output
    assert list(tmp_path.iterdir()) == [conv_file]


def test_check_good_model(conv_file):
    res = invoke("check", str(conv_file))
    assert res.exit_code == 0, res.output
    assert "loads and runs" in res.output and "result: OK" in res.output
    assert any(line.startswith("ai.onnx:Conv") and "kernel" in line for line in res.output.splitlines())
    res = invoke("check", str(conv_file), "--json")
    data = json.loads(res.output)
    assert data["ok"] and data["cpu"]["loads"] and data["cpu"]["runs"] and data["ort_format"]["ok"]
    ops = {(o["domain"], o["op"]): o for o in data["ops"]}
    assert ops["ai.onnx", "Conv"]["cpu"] == "kernel" and ops["ai.onnx", "Conv"]["nodes"] == 2
    assert ops["ai.onnx", "Conv"]["opset"] == 13 and ops["ai.onnx", "Conv"]["nnapi"]
    eps = {e["ep"] for e in data["execution_providers"]}
    assert eps == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}


def test_check_quantized_model_and_its_ort(conv_file, tmp_path):
    q = tmp_path / "q.onnx"
    assert invoke(str(conv_file), "-o", str(q), "-q", "--no-verify").exit_code == 0
    result = check_model(q)
    assert result.ok and result.has_decode
    assert {e.view for e in result.eps} == {"loaded", "stored"}
    assert {o.op for o in result.ops} >= {"Cast", "Gather"}  # tensor and channel decodes
    assert invoke(str(conv_file), "-o", str(q), "-q", "--no-verify", "--format", "ort").exit_code == 0
    res = invoke("check", str(tmp_path / "q.ort"))
    assert res.exit_code == 0, res.output
    assert "is ORT format" in res.output and "loads and runs" in res.output
    assert check_model(tmp_path / "q.ort").has_decode  # read from the .ort's own nodes (it said false)
    assert not check_model(conv_file).has_decode


@pytest.mark.parametrize("domain, op", [("com.example", "Frobnicate"), ("com.microsoft", "ComplexMul")])
def test_check_op_without_cpu_kernel(conv_model, tmp_path, domain, op):
    """A made-up domain's op, and a contrib op that onnxruntime knows but has no CPU kernel for."""
    src = tmp_path / "odd.onnx"
    onnx.save(_with_op(conv_model(), domain, op), src)
    result = check_model(src)
    data = result.to_dict()
    assert not data["ok"] and not data["cpu"]["loads"] and not data["ort_format"]["ok"]
    assert data["cpu"]["missing_kernels"] == [f"{domain}:{op} (opset 1)"]
    row = next(line for line in format_check(result).splitlines() if line.startswith(f"{domain}:{op}"))
    assert "missing" in row
    with pytest.raises(CheckFailedError, match=f"no onnxruntime CPU kernel for {domain}:{op}"):
        raise_if_failed(result)


def test_check_failure_from_the_command_line(conv_model, tmp_path):
    """As a user sees it: the report on stdout, one error line on stderr, exit code 10."""
    src = tmp_path / "odd.onnx"
    onnx.save(_with_op(conv_model(), "com.example", "Frobnicate"), src)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-m", "onnx_statq.cli", "check", str(src)], capture_output=True, text=True, env=env
    )
    assert res.returncode == CheckFailedError.exit_code == 10
    assert "com.example:Frobnicate" in res.stdout and "result: FAILED" in res.stdout
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnx-statq: error: check failed: no onnxruntime CPU kernel for")
    assert "Traceback" not in res.stderr


def _framed_model(path) -> None:
    """Frames of 64 samples from a [batch, samples] input: random inputs (dynamic dims of 2 and 16) cannot reshape,
    as silero VAD's reflect padding refuses them; 64 real samples can."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 64])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_check_runs_on_given_data_where_random_inputs_fail(tmp_path):
    src, data = tmp_path / "framed.onnx", tmp_path / "frames.npz"
    _framed_model(src)
    np.savez(data, x=np.ones((3, 64), np.float32))  # 3 frames of 64 samples, one feed
    on_random = check_model(src)
    assert on_random.loads and not on_random.runs
    assert any("--data DATA" in p and "random inputs" in p for p in on_random.problems)
    on_data = check_model(src, data=data)
    assert on_data.ok and on_data.runs and on_data.inputs == {"x": [3, 64]}
    assert on_data.to_dict()["cpu"]["inputs_from"] == str(data)
    res = invoke("check", str(src), "--data", str(data))
    assert res.exit_code == 0 and f"loads and runs on {data} (x 3x64)" in res.output, res.output
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "onnx_statq.cli", "check", str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 10 and "loads, but fails on random inputs" in res.stdout
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # onnxruntime's own error log stays quiet


def test_check_data_that_does_not_match_is_a_calibration_error(tmp_path):
    src, data = tmp_path / "framed.onnx", tmp_path / "wrong.npz"
    _framed_model(src)
    np.savez(data, frames=np.ones((2, 64), np.float32))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "onnx_statq.cli", "check", str(src), "--data", str(data)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 8, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "missing inputs ['x']" in err[0] and "Traceback" not in res.stderr
    assert "check --data feed 0" in err[0]  # names the option the data came from


def test_check_counts_a_models_external_data_in_its_size(conv_model, tmp_path):
    """check gave the .onnx file's size alone for a model whose weights are in an external data file."""
    onnx.save(conv_model(), tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=1024)
    res = invoke("check", str(tmp_path / "m.onnx"), "--json")
    assert res.exit_code == 0, res.output
    total = (tmp_path / "m.onnx").stat().st_size + (tmp_path / "m.data").stat().st_size
    assert json.loads(res.output)["file_bytes"] == total


def test_format_ort_checks_its_operator_config_path_as_its_model_path(conv_file, tmp_path):
    """The .required_operators.config went unchecked: a folder there left the .ort behind (exit 6), a pipe was
    replaced (exit 0), a link was replaced, not followed; through a link on the .ort, the config went beside its
    target, over an input there (found by a helper)."""
    out = tmp_path / "a"
    out.mkdir()
    (out / "a.required_operators.config").mkdir()
    res = invoke(str(conv_file), "-o", str(out / "a.onnx"), "--format", "ort", "--no-verify")
    assert res.exit_code == OutputError.exit_code and "is a directory" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["a.required_operators.config"]
    pipe = tmp_path / "b"
    pipe.mkdir()
    os.mkfifo(pipe / "a.required_operators.config")
    res = invoke(str(conv_file), "-o", str(pipe / "a.onnx"), "--format", "ort", "--no-verify")
    assert res.exit_code == OutputError.exit_code and (pipe / "a.required_operators.config").is_fifo()
    linked = tmp_path / "c"
    (linked / "real").mkdir(parents=True)
    (linked / "a.required_operators.config").symlink_to(linked / "real" / "t.config")
    assert invoke(str(conv_file), "-o", str(linked / "a.onnx"), "--format", "ort", "--no-verify").exit_code == 0
    assert (linked / "a.required_operators.config").is_symlink() and (linked / "real" / "t.config").read_text()


def test_check_finds_a_decode_inside_subgraphs(tmp_path, rng):
    """check looked for onnx-statq's decode in the main graph only: a model whose weights all sit in If branches
    got only the 'loaded' NNAPI/CoreML estimate, its .ort too (found by a helper)."""
    vi = helper.make_tensor_value_info
    w = rng.standard_normal((64, 64)).astype(np.float32)

    def branch(name: str) -> onnx.GraphProto:  # each branch with a weight of its own, decoded there
        out = [vi(name, TensorProto.FLOAT, [2, 64])]
        weight = [numpy_helper.from_array(w, f"w_{name}")]
        return helper.make_graph([helper.make_node("MatMul", ["x", f"w_{name}"], [name])], name, [], out, weight)

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("t"), else_branch=branch("e"))
    inputs = [vi("c", TensorProto.BOOL, []), vi("x", TensorProto.FLOAT, [2, 64])]
    graph = helper.make_graph([node], "g", inputs, [vi("y", TensorProto.FLOAT, [2, 64])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    assert (
        invoke(str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--format", "ort", "--no-verify").exit_code
        == 0
    )
    onnx.save(quantize(str(tmp_path / "m.onnx")), tmp_path / "q.onnx")
    for model in ("q.onnx", "q.ort"):
        res = invoke("check", str(tmp_path / model), "--json")
        assert json.loads(res.output)["has_decode"] is True, model
