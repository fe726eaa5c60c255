"""How much one calibration draw decides: the same calibrated settings on several draws of the calibration data.

``bench_calibration`` calibrates each model on one draw and its intervals resample the evaluation set, not that draw.
On the small models (silero VAD, the PP-OCR direction classifier) the draw moves the result by more than the bars
it is checked against, so this script repeats the calibrated rows on other draws (``calibration_feeds(n, seed)``)
and reports each draw's loss against float, their mean and range, and how many draws land under data-free, which
needs no calibration data and so has one figure per setting.

    python -m benchmarks.bench_draws                      # silero_vad and ppocr_cls, 8 and 32 samples, 4 and 3 bits
    python -m benchmarks.bench_draws --tasks silero_vad --samples 8 --seeds 99,7
    python -m benchmarks.bench_draws --tasks ppocr_rec,minilm,magika --samples 32 --modes sequential,independent

The first seed of each task is the one ``bench_calibration`` uses. Writes benchmarks/results/<out>.json and .md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import the package from the repo root, not this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as bench_calibration (see there)

from benchmarks import bench_calibration as bc
from benchmarks import paired
from benchmarks.bench_models import RESULTS_DIR, machine_info
from benchmarks.tasks import ALL_TASKS
from benchmarks.tasks._common import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("silero_vad", "ppocr_cls")
OTHER_SEEDS = (7, 123, 5, 2024)  # after each task's own CALIB_SEED


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="tasks whose calibration_feeds take a seed")
    p.add_argument("--samples", default="8,32", help="calibration sample counts")
    p.add_argument("--bits", default="4,3")
    p.add_argument("--modes", default="sequential", help="calibrated modes (sequential, independent)")
    p.add_argument("--seeds", default="", help="draws (default: the task's CALIB_SEED, then 7,123,5,2024)")
    p.add_argument("--out", default="draws")
    p.add_argument("--draw", default="", help=argparse.SUPPRESS)  # TASK:SAMPLES:SEED, one draw (run_task's child)
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    seeded = [t for t, mod in ALL_TASKS.items() if "seed" in inspect.signature(mod.calibration_feeds).parameters]
    for task in args.tasks:
        if task not in seeded:
            p.error(f"{task}: its calibration_feeds takes no seed (tasks that do: {', '.join(seeded)})")
    args.samples = [int(x) for x in args.samples.split(",")]
    args.bits = [int(x) for x in args.bits.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    args.seeds = [int(x) for x in args.seeds.split(",") if x]
    return args


def _row(task: str, samples: int | None, seed: int | None, setting: bc.Setting, full: dict[str, Any]) -> dict:
    keep = ("value", "delta_points", "output_sqnr_db", "file_bytes", "calib_run_s", "calib_fit_s")
    return {"task": task, "samples": samples, "seed": seed, "bits": setting.bits, "mode": setting.mode} | {
        k: full.get(k) for k in keep
    }


def run_draw(task: str, samples: int, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every calibrated setting on one draw, in this process (see :func:`run_task`)."""
    ctx, _ = bc.prepare_task(task, samples, None, seed=seed)
    rows = []
    for bits in args.bits:
        for mode in args.modes:
            setting = bc.Setting(bits, mode)
            rows.append(_row(task, samples, seed, setting, bc.quantized_row(ctx, setting)))
    return rows


def run_task(task: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The float and data-free rows, then each draw in a process of its own.

    Why processes: espeak-ng, which speaks silero VAD's clips, gives other audio for the same text once it has
    spoken other text in the process, so a draw made after another is not the draw a fresh process makes (and the
    first seed would not be bench_calibration's draw)."""
    seeds = args.seeds or [ALL_TASKS[task].CALIB_SEED, *OTHER_SEEDS]
    ctx, float_row = bc.prepare_task(task, min(args.samples), None)
    rows = [{"task": task, "setting": "float", "value": float_row["value"]}]
    for bits in args.bits:
        free = bc.Setting(bits, "none")
        rows.append(_row(task, None, None, free, bc.quantized_row(ctx, free)))
    for samples in args.samples:
        for seed in seeds:
            cmd = [sys.executable, "-m", "benchmarks.bench_draws", "--draw", f"{task}:{samples}:{seed}"]
            cmd += ["--bits", ",".join(map(str, args.bits)), "--modes", ",".join(args.modes)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"bench_draws: the draw {task}:{samples}:{seed} failed: {last}")
            for r in json.loads(done.stdout.strip().splitlines()[-1]):
                rows.append(r)
                print(f"{task} {samples} samples seed {seed} {r['mode']}/{r['bits']}: {r['delta_points']:+.2f}")
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task, samples, bits and mode: every draw's loss, their mean, range and how many are under data-free."""
    out = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("samples") is not None:
            groups.setdefault((r["task"], r["samples"], r["bits"], r["mode"]), []).append(r)
    for (task, samples, bits, mode), rs in groups.items():
        free = next(r for r in rows if r["task"] == task and r.get("mode") == "none" and r["bits"] == bits)
        deltas = [r["delta_points"] for r in rs]
        out.append(
            {
                "task": task,
                "samples": samples,
                "bits": bits,
                "mode": mode,
                "seeds": [r["seed"] for r in rs],
                "deltas": deltas,
                "mean": statistics.fmean(deltas),
                "min": min(deltas),
                "max": max(deltas),
                "data_free": free["delta_points"],
                "under_data_free": sum(d < free["delta_points"] - 1e-9 for d in deltas),
            }
        )
    return out


def markdown(summ: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        f"Measured on {machine['cpu']} ({machine['cores']} cores), onnxruntime {machine['onnxruntime']}, onnx-statq "
        f"commit {machine['commit'] or '?'}{', modified' if machine['dirty'] else ''}, {machine['date']}. Points "
        "against float; the first seed of each task is the one bench_calibration uses.",
        "",
        "| task | samples | setting | each draw (seed: points) | mean | range | data-free | draws under data-free |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summ:
        each = ", ".join(f"{seed}: {d:+.2f}" for seed, d in zip(s["seeds"], s["deltas"], strict=True))
        lines.append(
            f"| {s['task']} | {s['samples']} | {bc.MODE_SHORT[s['mode']]}/{s['bits']} | {each} | {s['mean']:+.2f} | "
            f"{s['min']:+.2f} to {s['max']:+.2f} | {s['data_free']:+.2f} | {s['under_data_free']} of "
            f"{len(s['deltas'])} |"
        )
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> None:
    """JSON and markdown, each written to a temporary file and renamed (never half a file)."""
    summ = summary(rows)
    options = {k: getattr(args, k) for k in ("tasks", "samples", "bits", "modes", "seeds")}
    payload = {"machine": machine, "options": options, "summary": summ, "rows": rows}
    text = paired.dumps(bc._json_safe(payload), indent=1) + "\n"
    write_text_atomic(RESULTS_DIR / f"{args.out}.json", text)
    write_text_atomic(RESULTS_DIR / f"{args.out}.md", markdown(summ, machine))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.draw:
        task, samples, seed = args.draw.split(":")
        print(json.dumps(run_draw(task, int(samples), int(seed), args)))
        return 0
    machine = machine_info()
    print(f"{machine['cpu']}, {machine['cores']} cores; tasks {args.tasks}, samples {args.samples}", flush=True)
    rows: list[dict[str, Any]] = []
    for task in args.tasks:
        rows += run_task(task, args)
        write(rows, machine, args)
    print(markdown(summary(rows), machine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
