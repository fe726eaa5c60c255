"""Run every task on its float model and print one table row per task.

Why: the float numbers are the reference every quantized result is compared with, and the timings
tell whether a task is cheap enough for a given benchmark loop. Run from the repository root:

    python -m benchmarks.tasks.run_float [--tasks magika minilm] [--limit N]

(``python benchmarks/tasks/run_float.py`` works too.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # Run as a script: import the package from the repo root, not this folder,
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # where tasks/magika.py would shadow magika.

from benchmarks.tasks import ALL_TASKS, TASKS


def _format(value: object) -> str:
    """Four decimals for floats keeps the table narrow and stable to read."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run(names: list[str], limit: int | None) -> list[dict]:
    """Evaluate each named task on its float model; a failing task gets an error row, not a traceback."""
    rows = []
    for name in names:
        start = time.perf_counter()
        try:
            result = ALL_TASKS[name].evaluate(str(ALL_TASKS[name].default_model_path()), limit=limit)
        except Exception as exc:
            result = {"metric": "error", "value": f"{type(exc).__name__}: {exc}", "n": 0}
        rows.append({"task": name, **result, "seconds": time.perf_counter() - start})
    return rows


def print_table(rows: list[dict]) -> None:
    """Print the fixed columns first, then each task's secondary metrics as key=value."""
    fixed = ("task", "metric", "value", "n", "seconds")
    cells = [list(fixed)] + [[_format(row[k]) for k in fixed] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(fixed))]
    extras = [""] + [" ".join(f"{k}={_format(v)}" for k, v in row.items() if k not in fixed) for row in rows]
    for r, extra in zip(cells, extras, strict=True):
        print(("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + "  " + extra).rstrip())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit code 1 if any task failed."""
    parser = argparse.ArgumentParser(description="Float-model results of every benchmark task.")
    parser.add_argument("--tasks", nargs="+", choices=sorted(ALL_TASKS), default=list(TASKS))
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    args = parser.parse_args(argv)
    rows = run(args.tasks, args.limit)
    print_table(rows)
    return int(any(row["metric"] == "error" for row in rows))


if __name__ == "__main__":
    sys.exit(main())
