"""``--update`` reruns of the benchmarks: rows replaced in place and marked, bad previous files refused."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks import rerun


def _rows() -> list[dict]:
    return [
        {"task": "a", "variant": "float", "value": 1.0},
        {"task": "a", "variant": "sigma/auto/4", "value": 0.9},
        {"task": "b", "variant": "float", "value": 1.0},
    ]


def test_a_rerun_row_replaces_its_old_row_in_place_and_is_marked(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"machine": {"commit": "old", "date": "d0"}, "limit": None, "rows": _rows()}))
    data = rerun.previous(path, {"commit": "new", "dirty": False, "date": "d1"}, None)
    rows, machine = data["rows"], data["machine"]
    row = {"task": "a", "variant": "sigma/auto/4", "value": 0.95}
    rerun.mark(row, machine, "a sigma/auto/4")
    rerun.put(rows, row, ("task", "variant"))
    assert [r["value"] for r in rows] == [1.0, 0.95, 1.0]
    assert rows[1]["measured"] == {"commit": "new", "date": "d1"} and "measured" not in rows[0]
    assert machine["commit"] == "old"  # the first run's record stays, the update is listed under it
    assert "at commit new, d1: a sigma/auto/4." in rerun.note(machine)


def test_a_new_setting_goes_after_its_tasks_last_row():
    rows = _rows()
    rerun.put(rows, {"task": "a", "variant": "sigma/auto/3"}, ("task", "variant"))
    assert [(r["task"], r["variant"]) for r in rows][2] == ("a", "sigma/auto/3")


def test_update_refuses_a_missing_file_or_another_limit(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        rerun.previous(tmp_path / "none.json", {}, None)
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"machine": {}, "limit": 100, "rows": []}))
    with pytest.raises(SystemExit, match="limit 100"):
        rerun.previous(path, {}, None)


def test_an_update_on_another_machine_names_it(tmp_path):
    path = tmp_path / "r.json"
    first = {"commit": "old", "date": "d0", "cpu": "Intel Xeon", "cores": 2}
    path.write_text(json.dumps({"machine": first, "limit": None, "rows": _rows()}))
    same = rerun.previous(path, {"commit": "a", "dirty": False, "date": "d1", "cpu": "Intel Xeon", "cores": 2}, None)
    path.write_text(json.dumps(same))
    other = rerun.previous(path, {"commit": "b", "dirty": False, "date": "d2", "cpu": "AMD EPYC", "cores": 2}, None)
    text = rerun.note(other["machine"])
    assert "at commit a, d1:" in text  # the first run's machine: not repeated
    assert "at commit b on AMD EPYC (2 cores), d2:" in text
