"""The peer benchmark's report: ratios, verdicts and tables computed from a fake results file (no model is run)."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks.peers import report


def _row(tool: str, label: str, value: float, mb: float, status: str = "ok", **kw) -> dict:
    row = {"model": "m", "tool": tool, "label": label, "family": label, "bits": kw.pop("bits", 4), "status": status}
    if status == "ok":
        row.update(metric="accuracy", value=value, n=10, file_bytes=int(mb * 1e6), zipped_bytes=int(mb * 0.9e6))
        row.update(latency_ms=1.0, float_latency_ms=1.0, load_ms=10.0, float_load_ms=5.0, quant_s=0.5)
    else:
        row["error"] = kw.pop("error", "boom")
    row.update(kw)
    return row


def _data(rows: list[dict]) -> dict:
    machine = {"lscpu_model_name": "cpu", "cpu_count": 2, "python": "3", "numpy": "2", "date": "today"}
    options = {"limit": None, "samples": 32, "runs": 20, "timeout": 60}
    return {"machine": machine, "options": options, "rows": rows, "wall_s": 60.0}


ROWS = [
    _row("float", "float", 0.90, 10.0, bits=None),
    _row("statq/4", "onnx-statq 4b", 0.89, 1.4, layer_bits={"3": 1, "4": 2}),
    _row("statq-calib/4", "onnx-statq 4b calibrated", 0.90, 1.4),
    _row("statq/8", "onnx-statq 8b", 0.90, 2.6, bits=8),
    _row("ort-dynamic/8", "ORT dynamic", 0.90, 2.6, bits=8),
    _row("ort-static-qdq/8", "ORT static", 0.0, 0.0, status="failed", bits=8, error="ValueError: bad"),
    _row("ort-nbits-rtn/4", "ORT nbits", 0.895, 1.2, weights={"total": 4, "changed": 2, "float_bytes_after": 5e6}),
    _row("onnxsim-kmeans/4", "onnxsim kmeans", 0.88, 10.5, packed_bytes=1_500_000),
    _row("onnxsim-nf4/4", "onnxsim nf4", 0.0, 0.0, status="n/a", error="nothing to quantize"),
]


def test_derive_ratios_against_float():
    rows = report.derive([dict(r) for r in ROWS])
    statq = next(r for r in rows if r["tool"] == "statq/4")
    assert statq["file_ratio"] == pytest.approx(10.0 / 1.4)
    assert statq["delta_points"] == pytest.approx(-1.0)
    assert next(r for r in rows if r["tool"] == "onnxsim-kmeans/4")["packed_ratio"] == pytest.approx(10.0 / 1.5)


def test_verdicts_follow_the_numbers():
    checks = report.verdicts(report.derive([dict(r) for r in ROWS]))
    a = next(c for c in checks if c["check"] == "a")
    assert a["ok"] is True and "Not compared: ORT static (failed" in a["text"]
    b = {c["peer"]: c for c in checks if c["check"] == "b"}
    # smaller than ORT's file? no (1.4 > 1.2 MB); and less accurate: both reasons are stated
    assert b["ort-nbits-rtn/4"]["ok"] is False
    assert not b["ort-nbits-rtn/4"]["size_ok"] and not b["ort-nbits-rtn/4"]["accuracy_ok"]
    assert "only 2 of 4 weight tensors" in b["ort-nbits-rtn/4"]["text"]
    assert b["onnxsim-kmeans/4"]["ok"] is True and "packed" in b["onnxsim-kmeans/4"]["text"]
    assert b["onnxsim-nf4/4"]["ok"] is None
    assert "ort-nbits-hqq/4" not in b  # not run: no verdict


def test_verdict_a_fails_when_an_8bit_peer_is_smaller():
    rows = [dict(r) for r in ROWS]
    next(r for r in rows if r["tool"] == "ort-dynamic/8")["file_bytes"] = 1_000_000
    a = next(c for c in report.verdicts(report.derive(rows)) if c["check"] == "a")
    assert a["ok"] is False and a["text"].startswith("**no**")


def test_markdown_has_a_row_per_tool_and_the_statuses():
    text = report.markdown(_data([dict(r) for r in ROWS]), plots={"m": "plots/m.png"})
    assert text.count("\n| ") >= len(ROWS) + 1
    assert "n/a: nothing to quantize" in text and "failed: ValueError: bad" in text
    assert "float32 storage (packed 1.50 MB)" in text and "2/4 weights" in text
    assert "![m: task metric against file size](plots/m.png)" in text
    assert "(a) smaller than every 8-bit peer: **yes**" in text


def test_markdown_keeps_the_original_run_time_and_gives_each_update_its_own():
    data = _data([dict(r) for r in ROWS])
    data["machine"]["updates"] = [
        {"commit": "abc1234", "dirty": False, "date": "later", "tools": ["statq/4"], "models": ["m"], "wall_s": 120.0},
        {"commit": "def5678", "dirty": True, "date": "old", "tools": ["float"]},  # logged before run times were
    ]
    header = report.markdown(data).split("\n### ")[0]
    assert header.splitlines()[0].endswith("run time 1.0 min.")
    assert "Rerun with `--update` at commit abc1234, later: statq/4 on m; run time 2.0 min." in header
    assert "Rerun with `--update` at commit def5678 (modified), old: float; run time ?." in header


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    paths = report.write_plots(_data([dict(r) for r in ROWS]), tmp_path)
    assert paths["m"].exists() and paths["m"].stat().st_size > 1000


def test_make_docs_run_list_parses_with_each_benchmark():
    """``make_docs --run`` is the one command behind docs/benchmarks.md: every entry must be a valid invocation."""
    import importlib

    from benchmarks.make_docs import RUNS

    for name, (script, *argv) in RUNS.items():
        module = importlib.import_module(f"benchmarks.{script}")
        parse = getattr(module, "parse_args", None)
        if parse is None:  # a benchmark without options
            assert not argv, name
            continue
        args = parse(argv)
        out = getattr(args, "out", None)
        assert out in (None, name), f"{name}: writes {out}"


def test_a_peers_update_on_another_machine_names_it():
    first = {"lscpu_model_name": "Intel Xeon", "cpu_count": 2}
    ups = [first | {"commit": "a", "date": "d1", "tools": ["t"]}, {"commit": "b", "date": "d2", "tools": ["t"]}]
    ups.append({"commit": "c", "date": "d3", "lscpu_model_name": "AMD EPYC", "cpu_count": 2, "tools": ["t"]})
    (text,) = report._reruns(first | {"updates": ups})
    assert "commit a, d1" in text and "commit b, d2" in text  # same machine, or recorded before machines were
    assert "commit c on AMD EPYC (2 cores), d3" in text
