"""Partial reruns of a results file (``--update``): some rows measured again, put in place of the old ones.

Why: a change that moves only a few rows (an allocation rule that changes two models' widths) should not need a
full rerun of an hour-long benchmark, and the rows it does rerun must say so. Each replaced row carries the commit and
date that measured it (``row["measured"]``), the results' machine record lists every update, and
:func:`note` says the same on the page. ``bench_models`` and ``bench_calibration`` key their rows by task and setting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MACHINE_KEYS", "elsewhere", "keep", "mark", "note", "previous", "put"]


# What names the machine in a results record: an update run on another machine says so (its rows were not measured
# where the header says; before, the page named only the first run's machine).
MACHINE_KEYS = ("cpu", "cores")


def previous(path: Path, machine: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """The existing results at ``path``, with this run logged in ``machine["updates"]`` of the first run's record.

    Refuses (one line, as the benchmarks' other argument errors) a missing file and one measured with another
    evaluation limit, whose rows could not be compared with the new ones."""
    if not path.exists():
        raise SystemExit(f"--update: {path} does not exist; run without --update first")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("limit") != limit:
        raise SystemExit(f"--update: {path} was measured with limit {data.get('limit')}, this run with {limit}")
    data["machine"].setdefault("updates", []).append(
        {k: machine.get(k) for k in ("commit", "dirty", "date", *MACHINE_KEYS)} | {"rows": []}
    )
    return data


def elsewhere(up: dict[str, Any], first: dict[str, Any], keys: Sequence[str] = MACHINE_KEYS) -> str:
    """`` on <cpu> (<n> cores)`` when the update ran on another machine than the first run, else '' (also for
    updates recorded before the machine was). ``keys``: the record's (cpu, cores) names (bench_peers has its own)."""
    cpu, cores = keys
    if up.get(cpu) is None or all(up.get(k) == first.get(k) for k in keys):
        return ""
    return f" on {up[cpu]} ({up.get(cores)} cores)"


def mark(row: dict[str, Any], machine: dict[str, Any], label: str) -> None:
    """Stamp ``row`` with the latest update's commit and date, and list ``label`` among the rows it reran."""
    update = machine["updates"][-1]
    row["measured"] = {"commit": update["commit"], "date": update["date"]}
    update["rows"].append(label)


def put(rows: list[dict[str, Any]], row: dict[str, Any], key: Sequence[str]) -> None:
    """Replace the row with the same ``key`` fields in place, or insert it after the last row of its task."""
    want = tuple(row.get(k) for k in key)
    for i, old in enumerate(rows):
        if tuple(old.get(k) for k in key) == want:
            rows[i] = row
            return
    last = max((i for i, r in enumerate(rows) if r.get("task") == row.get("task")), default=len(rows) - 1)
    rows.insert(last + 1, row)


def note(machine: dict[str, Any]) -> str:
    """One sentence per update for the page's header line: which rows were rerun, at which commit and date, and on
    which machine where it is not the first run's."""
    return "".join(
        f" Rerun with `--update` at commit {up['commit'] or '?'}{', modified' if up['dirty'] else ''}"
        f"{elsewhere(up, machine)}, {up['date']}: {', '.join(up['rows']) or 'no rows'}."
        for up in machine.get("updates", [])
    )


def keep(rows: list[dict[str, Any]], row: dict[str, Any], machine: dict[str, Any], key: Sequence[str] | None) -> None:
    """A benchmark's new ``row``: appended in a full run (``key`` None), else marked and put in place by ``key``."""
    if key is None:
        rows.append(row)
        return
    mark(row, machine, " ".join(str(row.get(k)) for k in key))
    put(rows, row, key)
