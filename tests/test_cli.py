"""The CLI as users run it: the README's commands, the table and JSON, and every bad-input path."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DIGITS, EXE, REPO, cli
from onnx import TensorProto, helper

DIGITS_CALIB = DIGITS.parent / "digits_calib.npz"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def readme_demo_commands() -> list[str]:
    """The README's first command, minus the set-up steps (venv, activate, pip) this test environment has done."""
    text = (REPO / "README.md").read_text()
    first = re.search(r"```bash\n(.+?)\n```", text, re.S)
    assert first is not None
    steps = [s.strip() for s in first.group(1).split("&&")]
    return [s for s in steps if not s.startswith(("python3 -m venv", ". ", "pip "))]


def test_readme_demo_command_runs(tmp_path):
    (tmp_path / "models").symlink_to(REPO / "models")
    outputs = []
    for step in readme_demo_commands():
        argv = shlex.split(step)
        if argv[0] == "onnx-statq":
            argv = [*EXE, *argv[1:]]
        elif argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        res = subprocess.run(
            argv, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO))
        )
        assert res.returncode == 0, res.stderr
        outputs.append(res.stdout)
    assert "x smaller" in outputs[0]
    accs = [float(line.split()[-1]) for line in outputs[-1].strip().splitlines()]
    assert len(accs) == 2 and accs[1] >= accs[0] - 0.02  # quantized accuracy within 2 points of float


def test_readme_test_command_is_what_ci_runs():
    text = (REPO / "README.md").read_text()
    second = re.findall(r"```bash\n(.+?)\n```", text, re.S)[1]
    pytest_cmd = second.split("&&")[-1].strip()
    assert pytest_cmd in (REPO / ".ci" / "run").read_text()


def test_table_json_and_report(tmp_path):
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    res = cli(str(DIGITS), "-o", str(out), "--bits", "3", "--report", str(rep))
    assert res.returncode == 0, res.stderr
    assert "SQNR dB" in res.stdout and "zipped:" in res.stdout and "verify:" in res.stdout
    data = json.loads(rep.read_text())
    assert data["config"]["bits"] == 3 and len(data["layers"]) == 3
    assert data["totals"]["file_bytes_after"] == out.stat().st_size
    res = cli(str(DIGITS), "-o", str(out), "--json", "--no-verify")
    assert json.loads(res.stdout)["verify"] == {}


def test_a_report_that_fails_part_way_leaves_no_half_file(tmp_path, monkeypatch):
    from onnx_statq import io as statq_io

    real = Path.write_text

    def half(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real(self, text[: len(text) // 2], *args, **kwargs)  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(statq_io.OutputError, match="No space left"):
        statq_io.write_text_atomic(tmp_path / "r.json", '{"layers": []}')
    assert list(tmp_path.iterdir()) == []


def test_a_report_through_a_symlink_writes_its_target(tmp_path):
    from onnx_statq.io import write_text_atomic

    (tmp_path / "real.json").write_text("old")
    (tmp_path / "real.json").chmod(0o640)
    (tmp_path / "link.json").symlink_to("real.json")
    write_text_atomic(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"
    assert (tmp_path / "real.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc refuses new files on Linux")
def test_a_report_that_cannot_be_written_says_the_model_was(tmp_path):
    out = tmp_path / "q.onnx"
    res = cli(str(DIGITS), "-o", str(out), "--no-verify", "--report", "/proc/r.json")
    assert res.returncode != 0 and res.stderr.count("\n") == 1, res.stderr
    assert "cannot write" in res.stderr and f"the model itself was written: {out}" in res.stderr
    assert onnx.load(str(out)).graph.node


def test_a_name_copied_from_the_table_excludes_that_weight(tmp_path):
    out = tmp_path / "q.onnx"
    res = cli(str(DIGITS), "-o", str(out), "--no-verify")
    head, first = res.stdout.splitlines()[:2]
    assert head.split()[0] == "weight"
    name = first.split()[0]
    res = cli(str(DIGITS), "-o", str(out), "--no-verify", "--json", "--exclude", name)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert name not in {layer["name"] for layer in data["layers"]}
    assert any(s["name"] == name and "excluded" in s["reason"] for s in data["skipped"])


def test_cli_output_is_deterministic(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli(str(DIGITS), "-o", str(a), "-q", "--no-verify").returncode == 0
    assert cli(str(DIGITS), "-o", str(b), "-q", "--no-verify").returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_help_has_examples():
    res = cli("quantize", "--help")
    assert res.returncode == 0 and "Examples:" in res.stdout and "--min-size" in res.stdout


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _no_weight_model(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    m = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    p = tmp_path / "noweights.onnx"
    onnx.save(m, p)
    return p


BAD_INPUTS = {
    "missing file": (lambda t: t / "nope.onnx", [], 3),
    "not onnx": (lambda t: _write(t / "text.onnx", b"hello, I am not a model\n" * 10), [], 3),
    "truncated": (lambda t: _write(t / "trunc.onnx", DIGITS.read_bytes()[:5000]), [], 3),
    "empty file": (lambda t: _write(t / "empty.onnx", b""), [], 3),
    "no weights": (_no_weight_model, [], 5),
    "bad bits": (lambda t: DIGITS, ["--bits", "9"], 2),
    "bad method": (lambda t: DIGITS, ["--method", "magic"], 2),
    "bad config key": (lambda t: DIGITS, lambda t: ["--config", str(_write(t / "c.json", b'{"bitz": 3}'))], 2),
    "bad config syntax": (lambda t: DIGITS, lambda t: ["--config", str(_write(t / "c.toml", b"bits = = 3"))], 2),
    "bad config value": (lambda t: DIGITS, lambda t: ["--config", str(_write(t / "c.json", b'{"bits": "x"}'))], 2),
    "bad calib mask": (lambda t: DIGITS, ["--calib", str(DIGITS_CALIB), "--calib-mask", "attention_mask"], 2),
    "exclude names nothing": (lambda t: DIGITS, ["--exclude", "conv2.weights"], 2),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_error_no_output(tmp_path, case):
    make, extra, code = BAD_INPUTS[case]
    src = make(tmp_path)
    extra = extra(tmp_path) if callable(extra) else extra
    before = sha(src) if src.exists() else None
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    res = cli(str(src), "-o", str(out), *extra)
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert list(out.parent.iterdir()) == []  # no output, no temp file left behind
    if before:
        assert sha(src) == before


def test_unwritable_output(tmp_path):
    res = cli(str(DIGITS), "-o", str(tmp_path / "no" / "such" / "dir" / "q.onnx"))
    assert res.returncode == 6 and "Traceback" not in res.stderr


def test_refuses_to_overwrite_input(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(DIGITS.read_bytes())
    res = cli(str(src), "-o", str(src))
    assert res.returncode == 6 and src.read_bytes() == DIGITS.read_bytes()


def _external_model(tmp_path: Path, location: str) -> Path:
    m = onnx.load(DIGITS)
    onnx.save_model(m, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    m2 = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    for t in m2.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m2, tmp_path / "ext.onnx")
    return tmp_path / "ext.onnx"


def test_external_data_in_and_out(tmp_path):
    src = _external_model(tmp_path, "ext.data")
    out = tmp_path / "q.onnx"
    res = cli(str(src), "-o", str(out))
    assert res.returncode == 0, res.stderr
    onnx.checker.check_model(onnx.load(out))


@pytest.mark.parametrize("location", ["/etc/passwd", "../ext.data", "missing.data", "link.data"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    (tmp_path / "m").mkdir()
    src = _external_model(tmp_path / "m", location)
    os.symlink(tmp_path / "m" / "ext.data", tmp_path / "outside.data")
    os.symlink(tmp_path / "outside.data", tmp_path / "m" / "link.data")
    (tmp_path / "m" / "ext.data").rename(tmp_path / "m" / "moved.data") if location == "missing.data" else None
    res = cli(str(src), "-o", str(tmp_path / "q.onnx"))
    assert res.returncode == 4, res.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_quantized_digits_matches_float_predictions(tmp_path):
    import onnxruntime as ort

    out = tmp_path / "q.onnx"
    assert cli(str(DIGITS), "-o", str(out), "-q", "--bits", "4").returncode == 0
    data = np.load(REPO / "models" / "digits" / "digits_test.npz")
    preds = []
    for p in (DIGITS, out):
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        preds.append(s.run(None, {"input": data["x"]})[0].argmax(1))
    assert np.mean(preds[0] == preds[1]) > 0.97


def test_long_names_are_cut_in_the_middle_where_the_table_shows_them():
    from onnx_statq.summary import NAME_WIDTH, short_name

    name = "If_0_then_branch__Inline_0__encoder.0.reparam_conv.weight"
    cut = short_name(name)
    assert len(cut) == NAME_WIDTH and "..." in cut
    assert name.startswith(cut.split("...")[0]) and name.endswith(cut.split("...")[1])
    assert cut.endswith("reparam_conv.weight")  # the end, where exported names differ, is kept
    assert short_name("conv1.weight") == "conv1.weight"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_is_an_interruption_with_cleanup(capsys):
    """SIGTERM's default action ended the process at once, leaving .statq-* staging folders; it now unwinds as
    Ctrl-C does (finally blocks run) and exits 143."""
    import signal
    import threading
    import time

    from onnx_statq import cli as statq_cli

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set from the main thread only")
    cleaned = []

    def job() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_:
            statq_cli._run(job)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert exit_.value.code == 143 and cleaned == [True]
    assert capsys.readouterr().err.strip() == "onnx-statq: interrupted"


def test_calibration_options_without_calib_data_are_refused(tmp_path):
    """They did nothing, silently: a misspelt --calib-mask name passed unseen, and the report said sensitivity on."""
    out = tmp_path / "q.onnx"
    for flags, named in (
        (["--calib-mask", "no_such_input"], "--calib-mask only acts"),
        (["--calib-sensitivity", "--calib-samples", "8"], "--calib-samples, --calib-sensitivity only act"),
    ):
        res = cli(str(DIGITS), "-o", str(out), "--no-verify", *flags)
        assert res.returncode == 2 and named in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert not out.exists()
    assert (
        cli(str(DIGITS), "-o", str(out), "--no-verify", "--calib-samples", "8", "--calib", str(DIGITS_CALIB)).returncode
        == 0
    )


def test_idle_calibration_settings_are_refused(tmp_path):
    """Found by a helper: --calib-mode without --calib and sensitivity with --allocation fixed ran and did nothing
    (the report said sensitivity on); --calib-mode none, which the docs add to a calibrated command to compare,
    warns that the data and the calibration flags are idle."""
    out = tmp_path / "q.onnx"
    calib = ["--calib", str(DIGITS_CALIB)]
    for flags, said in (
        (["--calib-mode", "independent"], "--calib-mode only acts with --calib DATA"),
        ([*calib, "--allocation", "fixed", "--calib-sensitivity"], "sensitivity needs allocation 'auto'"),
    ):
        res = cli(str(DIGITS), "-o", str(out), "--no-verify", *flags)
        assert res.returncode == 2 and said in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert not out.exists()
    res = cli(str(DIGITS), "-o", str(out), "--no-verify", "-q", *calib, "--calib-mode", "none", "--calib-sensitivity")
    assert res.returncode == 0 and "the calibration data is not read (--calib-sensitivity does nothing)" in res.stderr


def test_calibration_data_a_layer_cannot_take_is_a_data_error(make_model, rng, tmp_path):
    """Data whose dynamic width does not fit the first layer went straight into the refit, which onnxruntime never
    checked: numpy's matmul error and exit 70 (found by a helper). Now one line and the data's exit code."""
    w = rng.standard_normal((64, 64)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])
    onnx.save(make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], {"w": w}), tmp_path / "m.onnx")
    np.savez(tmp_path / "bad.npz", x=rng.standard_normal((40, 32)).astype(np.float32))
    res = cli(str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "bad.npz"))
    assert res.returncode == 8 and res.stderr.count("\n") == 1, res.stderr
    assert "inputs of shape (8, 32), which its weight of shape (64, 64) cannot take" in res.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_format_ort_and_the_api_do_not_write_over_their_inputs(tmp_path):
    """--format ort writes OUT.ort and its operator config, which the guard did not check against the inputs (a
    config file named conf.ort was overwritten), and quantize_file wrote over its own config file (helper)."""
    from onnx_statq import quantize_file
    from onnx_statq.errors import OutputError

    conf = tmp_path / "conf.ort"
    conf.write_text('{"bits": 4}')
    before = sha(conf)
    res = cli(str(DIGITS), "-o", str(tmp_path / "conf.onnx"), "--config", str(conf), "--format", "ort")
    assert res.returncode == 6 and "would overwrite the input" in res.stderr and sha(conf) == before
    toml = tmp_path / "c.toml"
    toml.write_text("bits = 4\n")
    with pytest.raises(OutputError, match="would overwrite the input"):
        quantize_file(DIGITS, toml, toml)
    assert toml.read_text() == "bits = 4\n"


def test_output_through_a_link_lands_on_its_target_and_a_pipe_is_refused(tmp_path):
    """The finished file was renamed onto the output path, replacing a symbolic link (its target left as it was)
    or a pipe; as root, -o /dev/null deleted the device node (found by a helper). A link is now followed, as the
    report's path is, and a pipe or device is refused."""
    (tmp_path / "target.onnx").write_bytes(b"")
    (tmp_path / "link.onnx").symlink_to("target.onnx")
    res = cli(str(DIGITS), "-o", str(tmp_path / "link.onnx"), "--no-verify", "-q")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "link.onnx").is_symlink() and onnx.load(tmp_path / "target.onnx").graph.node
    os.mkfifo(tmp_path / "pipe")
    res = cli(str(DIGITS), "-o", str(tmp_path / "pipe"), "--no-verify", "-q")
    assert res.returncode == 6 and "is not a regular file" in res.stderr and res.stderr.count("\n") == 1
    assert (tmp_path / "pipe").is_fifo()


def test_an_output_link_is_checked_by_its_target_against_the_inputs_external_data(make_model, rng, tmp_path):
    """Through a link the data file of a large output is named after the link's target, which the overwrite guard
    did not check: a link to real/model_v2.onnx let the output's data replace the input's model_v2.onnx.data
    (found in review)."""
    from onnx_statq import quantize_file
    from onnx_statq.errors import OutputError

    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    w = rng.standard_normal((64, 64)).astype(np.float32)
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], {"w": w})
    onnx.save(m, tmp_path / "real" / "in.onnx", save_as_external_data=True, location="model_v2.onnx.data")
    (tmp_path / "links" / "model.onnx").symlink_to(tmp_path / "real" / "model_v2.onnx")
    before = sha(tmp_path / "real" / "model_v2.onnx.data")
    with pytest.raises(OutputError, match="would overwrite the input"):
        quantize_file(tmp_path / "real" / "in.onnx", tmp_path / "links" / "model.onnx", verify=False)
    assert sha(tmp_path / "real" / "model_v2.onnx.data") == before
