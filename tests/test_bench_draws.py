"""``bench_draws``: the summary over calibration draws, and which tasks it accepts."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks import bench_draws


def _rows() -> list[dict]:
    rows = [{"task": "t", "setting": "float", "value": 0.9}]
    rows.append({"task": "t", "samples": None, "seed": None, "bits": 3, "mode": "none", "delta_points": -1.0})
    for seed, d in ((1, -0.5), (2, -1.5), (3, -1.0)):
        rows.append({"task": "t", "samples": 8, "seed": seed, "bits": 3, "mode": "sequential", "delta_points": d})
    return rows


def test_summary_gives_each_draw_their_mean_range_and_the_draws_under_data_free():
    (s,) = bench_draws.summary(_rows())
    assert (s["task"], s["samples"], s["bits"], s["mode"]) == ("t", 8, 3, "sequential")
    assert s["seeds"] == [1, 2, 3] and s["deltas"] == [-0.5, -1.5, -1.0]
    assert s["mean"] == pytest.approx(-1.0) and (s["min"], s["max"]) == (-1.5, -0.5)
    assert s["data_free"] == -1.0 and s["under_data_free"] == 1  # equal to data-free is not under it
    assert "| t | 8 | seq/3 | 1: -0.50, 2: -1.50, 3: -1.00 | -1.00 |" in bench_draws.markdown([s], _machine())


def _machine() -> dict:
    return {"cpu": "cpu", "cores": 2, "onnxruntime": "x", "commit": "c", "dirty": False, "date": "d"}


def test_a_task_whose_calibration_data_takes_no_seed_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_draws.parse_args(["--tasks", "ppocr_det"])  # its pages are one fixed draw
    err = capsys.readouterr().err
    assert "ppocr_det: its calibration_feeds takes no seed" in err and "magika" in err  # the tasks that do
    tasks = ["silero_vad", "ppocr_cls", "ppocr_rec", "minilm", "magika"]
    assert bench_draws.parse_args(["--tasks", ",".join(tasks)]).tasks == tasks
