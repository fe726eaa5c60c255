"""``bench_alloc``'s report: why the statistics choice can differ from what ``bits='auto'`` stores."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks import bench_alloc


def _entry(stats_bits: dict[str, int]) -> dict:
    return {"task": "t", "rows": [{"setting": "float"}, {"setting": "sweep"}, {"layer_bits": stats_bits}]}


def test_why_not_auto_counts_layers_float16_and_layouts():
    avg3 = [
        {
            "task": "t",
            "rows": [
                {"setting": "uniform 3", "layer_bits": {}},
                {
                    "setting": "auto avg 3.0",
                    "layer_bits": {"a": 4, "b": 6, "c": 2},
                    "representation_changes": {"tensor->channel": 1},
                },
            ],
        }
    ]
    text = bench_alloc._why_not_auto(_entry({"a": 4, "b": 16, "c": 3}), avg3)
    assert "2 of 3 layers differ" in text
    assert "1 of them float16 in the plan" in text
    assert "`auto` moved layouts tensor->channel 1" in text


def test_why_not_auto_is_empty_without_the_auto_row():
    assert bench_alloc._why_not_auto(_entry({"a": 4}), [{"task": "other", "rows": []}]) == ""
