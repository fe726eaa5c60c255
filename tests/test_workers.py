"""The per-weight numerics on a thread pool (``jobs``): the same bytes as one at a time, in order, within budget."""

from __future__ import annotations

import json
import threading
import time

import pytest
from test_cli import DIGITS, cli

import onnx_statq.workers as workers
from onnx_statq import QuantConfig, StatqPass, quantize
from onnx_statq.errors import ConfigError
from onnx_statq.graph import pass_
from onnx_statq.workers import MAX_DEFAULT_JOBS, default_jobs, ordered_map


@pytest.mark.parametrize(
    "options",
    [
        {},  # auto granularity and allocation: first encodes, alternatives, predicted curves, re-encodes
        {"bits": "auto", "target_sqnr": 30.0},  # the re-encode loop that adds bits until the measured error meets it
        {"granularity": "channel", "allocation": "fixed", "bits": 3},
    ],
)
def test_any_number_of_jobs_writes_the_same_bytes(conv_model, monkeypatch, options):
    m = conv_model()
    threads: set[str] = set()
    encode = pass_.StatqPass._encode

    def spying(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(pass_.StatqPass, "_encode", spying)
    one = StatqPass(QuantConfig(min_size=100, jobs=1, **options))(m)
    assert threads == {threading.main_thread().name}
    many = StatqPass(QuantConfig(min_size=100, jobs=4, **options))(m)
    assert any(t.startswith("statq") for t in threads)  # the pool did run, or this test would compare nothing
    assert len(one.report.layers) == 4
    assert many.model.SerializeToString() == one.model.SerializeToString()
    assert many.report.layers == one.report.layers and many.report.predicted == one.report.predicted
    assert many.report.totals == one.report.totals


def test_progress_is_reported_in_order_from_the_calling_thread(conv_model):
    calls: list[tuple[int, int, str, str]] = []

    def progress(done: int, total: int, name: str) -> None:
        calls.append((done, total, name, threading.current_thread().name))

    StatqPass(QuantConfig(min_size=100, jobs=3), progress=progress)(conv_model())
    assert [c[:3] for c in calls] == [(0, 4, "w1"), (1, 4, "w2"), (2, 4, "fc"), (3, 4, "head"), (4, 4, "")]
    assert {c[3] for c in calls} == {threading.main_thread().name}


def test_results_keep_the_input_order_when_later_items_finish_first():
    def slow_first(i: int) -> int:
        time.sleep(0.05 if i == 0 else 0.0)
        return i * i

    assert ordered_map(slow_first, list(range(6)), jobs=3) == [i * i for i in range(6)]


def test_items_do_run_at_the_same_time():
    together = threading.Barrier(2, timeout=10)  # breaks, failing the test, unless two items wait in it at once

    def meet(i: int) -> int:
        together.wait()
        return i

    assert ordered_map(meet, [0, 1], jobs=2) == [0, 1]


def test_the_first_error_in_input_order_is_raised_and_the_rest_dropped():
    started: list[int] = []

    def fail_at_1(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("item 1")
        time.sleep(0.01)
        return i

    with pytest.raises(ValueError, match="item 1"):
        ordered_map(fail_at_1, list(range(50)), jobs=2)
    assert len(started) < 50


def test_weights_above_the_byte_budget_run_one_at_a_time(monkeypatch):
    monkeypatch.setattr(workers, "BYTES_IN_FLIGHT", 100)
    lock = threading.Lock()
    running: list[int] = []
    peaks: list[int] = []

    def work(nbytes: int) -> int:
        with lock:
            running.append(nbytes)
            peaks.append(sum(running) if len(running) > 1 else 0)
        time.sleep(0.02)
        with lock:
            running.remove(nbytes)
        return nbytes

    sizes = [150, 60, 30, 150, 10, 10, 80, 20]
    assert ordered_map(work, sizes, jobs=4, sizes=sizes) == sizes
    assert max(peaks) <= 100  # a 150-byte weight only ever ran alone
    assert max(peaks) > 0  # and the small ones did share the budget


def test_sizes_must_match_the_items():
    with pytest.raises(ValueError, match="2 sizes for 3 items"):
        ordered_map(lambda i: i, [1, 2, 3], jobs=2, sizes=[1, 2])


@pytest.mark.parametrize("bad", [0, -2, True, 2.0, "2", [2]])
def test_jobs_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="jobs must be a positive integer"):
        QuantConfig(jobs=bad)
    with pytest.raises(ConfigError):
        QuantConfig.from_dict({"jobs": bad})


def test_jobs_default_follows_the_cpus_up_to_a_cap(monkeypatch):
    assert QuantConfig().jobs is None and QuantConfig().workers == default_jobs()
    assert QuantConfig.from_dict({"jobs": 3}).workers == 3
    assert QuantConfig.from_dict(QuantConfig(jobs=5).to_dict()).jobs == 5
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    assert default_jobs() == MAX_DEFAULT_JOBS
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert default_jobs() == 1


def test_cli_jobs_flag_same_output_and_recorded(tmp_path):
    one, three, rep = tmp_path / "one.onnx", tmp_path / "three.onnx", tmp_path / "r.json"
    assert cli(str(DIGITS), "-o", str(one), "-q", "--no-verify", "--jobs", "1").returncode == 0
    res = cli(str(DIGITS), "-o", str(three), "-q", "--no-verify", "--jobs", "3", "--report", str(rep))
    assert res.returncode == 0, res.stderr
    assert three.read_bytes() == one.read_bytes()
    assert json.loads(rep.read_text())["config"]["jobs"] == 3
    bad = cli(str(DIGITS), "-o", str(tmp_path / "bad.onnx"), "--jobs", "0")
    assert bad.returncode == 2 and "--jobs" in bad.stderr and not (tmp_path / "bad.onnx").exists()


def test_quantize_takes_jobs_as_an_option(conv_model):
    m = conv_model()
    a, b = quantize(m, min_size=100, jobs=1), quantize(m, min_size=100, jobs=2)
    assert a.SerializeToString() == b.SerializeToString()
    assert {"w1", "w2", "fc", "head"}.isdisjoint(t.name for t in b.graph.initializer)  # every weight was encoded


def test_jobs_also_run_the_calibration_batches_with_the_same_bytes(conv_model, rng, monkeypatch):
    """``jobs`` reaches the calibration executor (its batches on a pool of that size), and the calibrated model is
    the same bytes for any number of threads."""
    from onnx_statq.calibrate import executor

    seen: list[int] = []
    init = executor.StreamExecutor.__init__

    def spying(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        seen.append(self._pool._max_workers if self._pool is not None else 1)

    monkeypatch.setattr(executor.StreamExecutor, "__init__", spying)
    m = conv_model()
    feeds = [{"x": rng.standard_normal((4, 3, 8, 8)).astype("float32")} for _ in range(4)]
    one = quantize(m, QuantConfig(min_size=100, bits=3, jobs=1), calib=feeds, calib_samples=None)
    many = quantize(m, QuantConfig(min_size=100, bits=3, jobs=3), calib=feeds, calib_samples=None)
    assert seen == [1, 3]
    assert many.SerializeToString() == one.SerializeToString()
