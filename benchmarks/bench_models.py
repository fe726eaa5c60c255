"""Accuracy, size and speed of onnx-statq on the real task models, for every method and bit width.

Why: the unit tests prove the codebooks are built correctly; only a real task metric measured before
and after quantization shows what a user loses. This script runs each task of ``benchmarks.tasks``
on its float model once, then on one quantized copy per (method, granularity, bits), and writes

- ``benchmarks/results/models.json``: every row plus the machine it ran on, rewritten after each row
  so an interrupted run keeps what it measured;
- ``benchmarks/results/models.md``: the same as markdown tables for ``docs/benchmarks.md``, with the
  issue's acceptance criteria marked PASS/FAIL per model.

Run from the repository root (a full run takes 20-40 minutes on 2 cores)::

    python -m benchmarks.bench_models [--quick] [--tasks digits,magika,ppocr_rec,minilm]
        [--bits 8,4,3,2] [--methods sigma,kmeans,uniform] [--granularities auto] [--allocation auto|fixed]
        [--out NAME] [--update] [--no-extras]

``--update`` reruns only the selected rows (tasks x settings, the float row of each task included) and puts them in
place of the same rows of the existing ``NAME.json``, each marked with its own commit and date; the page says which
rows were rerun. For a change that moves only some rows, without rerunning the rest. ``--no-extras`` leaves out the
extra settings (channel and tensor codebooks at 4 bits) that a full run adds.

``--tasks`` defaults to ``benchmarks.tasks.TASKS`` and also accepts the extra tasks (ppocr_det,
ppocr_cls), which run only when named.

``--quick`` evaluates only the first 100 samples of each task, with sigma at 4 and 3 bits, and writes
``models_quick.*`` so it never overwrites the full results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import the package from the repo root, not this folder,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # where tasks/magika.py would shadow magika.

import numpy as np
import onnx
import onnxruntime as ort

import onnx_statq
from benchmarks import paired, rerun
from benchmarks.tasks import ALL_TASKS, TASKS
from benchmarks.tasks._common import write_text_atomic
from onnx_statq.api import quantize_file
from onnx_statq.config import QuantConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_LIMIT = 100

# The acceptance criteria: data-free default (sigma, auto) at 4 bits.
ACCEPT_BITS, ACCEPT_METHOD, ACCEPT_GRANULARITY = 4, "sigma", "auto"
ACCEPT_MAX_LOSS = {"magika": 1.0, "ppocr_rec": 1.0, "minilm": 2.0}  # points of the task's main metric
ACCEPT_MIN_RATIO = 6.5  # file size before / after
# The rows a full run adds to the grid: the forced representations, to show what "auto" chooses between.
EXTRA_VARIANTS = (("sigma", "channel", 4), ("sigma", "tensor", 4))


@dataclass(frozen=True)
class Variant:
    """One quantization setting to benchmark; ``method is None`` is the float reference."""

    method: str | None = None
    granularity: str | None = None
    bits: int | None = None

    @property
    def label(self) -> str:
        return "float" if self.method is None else f"{self.method}/{self.granularity}/{self.bits}"


def _csv(kind: type, text: str) -> list[Any]:
    """Parse a comma-separated option; empty items are dropped so a trailing comma is harmless."""
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options; a value left unset takes the quick or the full default, so --quick can still be narrowed."""
    parser = argparse.ArgumentParser(description="Task accuracy and size of quantized real models.")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_LIMIT} samples, sigma at 4 and 3 bits")
    parser.add_argument("--tasks", type=lambda s: _csv(str, s), default=list(TASKS))
    parser.add_argument("--bits", type=lambda s: _csv(int, s), default=None)
    parser.add_argument("--methods", type=lambda s: _csv(str, s), default=None)
    parser.add_argument("--granularities", type=lambda s: _csv(str, s), default=["auto"])
    parser.add_argument(
        "--allocation",
        choices=("auto", "fixed"),
        default="auto",
        help="bits per layer: the default allocation (auto), or the given bits in every layer (fixed)",
    )
    parser.add_argument("--out", default=None, help="output name under benchmarks/results (default models)")
    parser.add_argument(
        "--update",
        action="store_true",
        help="rerun only the selected rows and put them in place of the same rows (task, setting) of the existing "
        "<out>.json; each rerun row records its own commit and date",
    )
    parser.add_argument(
        "--no-extras", action="store_true", help=f"leave out the extra settings {', '.join(map(str, EXTRA_VARIANTS))}"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tasks) - set(ALL_TASKS))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(ALL_TASKS)}")
    args.bits = args.bits or ([4, 3] if args.quick else [8, 4, 3, 2])
    args.methods = args.methods or (["sigma"] if args.quick else ["sigma", "kmeans", "uniform"])
    args.out = args.out or ("models_quick" if args.quick else "models")
    args.limit = QUICK_LIMIT if args.quick else None
    return args


def variants(methods: list[str], granularities: list[str], bits: list[int], extras: bool) -> list[Variant]:
    """The grid in reading order (method, then granularity, then bits from wide to narrow), extras last."""
    grid = [Variant(m, g, b) for m in methods for g in granularities for b in bits]
    if extras:
        grid += [v for v in (Variant(*e) for e in EXTRA_VARIANTS) if v not in grid]
    return grid


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, core count, library versions, commit and date."""
    return {
        "cpu": _lscpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "onnx_statq": getattr(onnx_statq, "__version__", "unknown"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "onnx_statq")),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _lscpu_model() -> str:
    """The 'Model name' line of lscpu, falling back to platform.processor() where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown"


def _git(*args: str) -> str:
    """Read-only git query in the repository; empty when git or the repository is not there."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS_DIR.parent.parent)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _secondary(result: dict[str, Any]) -> dict[str, float]:
    """Float-valued extras of a task result (line_accuracy, mrr, ...): the main value and counts excluded."""
    return {k: v for k, v in result.items() if k not in ("metric", "value", "n") and isinstance(v, float)}


def evaluate_row(task: str, model_path: Path, limit: int | None) -> dict[str, Any]:
    """Run the task's evaluator and time it."""
    start = time.perf_counter()
    result = ALL_TASKS[task].evaluate(str(model_path), limit=limit)
    return {
        "metric": result["metric"],
        "value": float(result["value"]),
        "secondary": _secondary(result),
        "n": result.get("n"),
        "units": result.get("units"),  # per evaluation unit, for paired comparisons (benchmarks/paired.py)
        "eval_s": time.perf_counter() - start,
    }


def float_row(task: str, limit: int | None) -> dict[str, Any]:
    """The reference row: the float model, its size, and ratio 1."""
    path = Path(ALL_TASKS[task].default_model_path())
    row = {"task": task, "variant": "float", "method": None, "granularity": None, "bits": None}
    row.update(evaluate_row(task, path, limit))
    size = path.stat().st_size
    row.update(file_bytes=size, file_ratio=1.0, zipped_ratio=1.0, delta_points=0.0)
    row["secondary_delta_points"] = {k: 0.0 for k in row["secondary"]}
    return row


def quantized_row(
    task: str, variant: Variant, ref: dict[str, Any], limit: int | None, allocation: str = "auto"
) -> dict[str, Any]:
    """Quantize the float model to a temporary folder, evaluate the copy, and compare with the reference."""
    row: dict[str, Any] = {
        "task": task,
        "variant": variant.label,
        "method": variant.method,
        "granularity": variant.granularity,
        "bits": variant.bits,
    }
    config = QuantConfig(
        bits=variant.bits, method=variant.method, granularity=variant.granularity, allocation=allocation
    )
    with tempfile.TemporaryDirectory(prefix="statq-bench-") as tmp:
        dst = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        report = quantize_file(ALL_TASKS[task].default_model_path(), dst, config, verify=False)
        row["quantize_total_s"] = time.perf_counter() - start
        row.update(evaluate_row(task, dst, limit))
    totals = report.totals
    row.update(
        quantize_s=report.timings.get("quantize_s"),
        file_bytes=totals["file_bytes_after"],
        file_ratio=totals["file_bytes_before"] / totals["file_bytes_after"],
        zipped_ratio=totals["zipped_bytes_before"] / totals["zipped_bytes_after"],
        delta_points=100.0 * (row["value"] - ref["value"]),
        layers=dict(sorted(Counter(str(r.representation) for r in report.layers).items())),
        skipped=len(report.skipped),
    )
    row["secondary_delta_points"] = {
        k: 100.0 * (v - ref["secondary"][k]) for k, v in row["secondary"].items() if k in ref["secondary"]
    }
    return row


def error_row(task: str, variant: Variant, exc: BaseException) -> dict[str, Any]:
    """A failed setting is recorded and reported, not allowed to stop the other rows."""
    return {
        "task": task,
        "variant": variant.label,
        "method": variant.method,
        "granularity": variant.granularity,
        "bits": variant.bits,
        "error": f"{type(exc).__name__}: {exc}",
    }


def acceptance(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """PASS/FAIL of the issue's criteria, per model that the criteria name, from the sigma/auto/4 row."""
    label = Variant(ACCEPT_METHOD, ACCEPT_GRANULARITY, ACCEPT_BITS).label
    out = []
    for task, max_loss in ACCEPT_MAX_LOSS.items():
        row = next((r for r in rows if r["task"] == task and r["variant"] == label), None)
        if row is None:
            continue
        if "error" in row:
            out.append({"task": task, "status": "FAIL", "reason": row["error"]})
            continue
        loss, ratio = -row["delta_points"] + 0.0, row["file_ratio"]  # + 0.0 turns -0.0 into 0.0
        ok = paired.loss_within(loss, max_loss) and ratio >= ACCEPT_MIN_RATIO
        ref = next((r for r in rows if r["task"] == task and r["variant"] == "float"), {})
        pair = paired.compare(ref.get("units"), row.get("units"))  # float minus quantized: the loss
        out.append(
            {
                "task": task,
                "metric": row["metric"],
                "loss_points": loss,
                "max_loss_points": max_loss,
                "file_ratio": ratio,
                "min_file_ratio": ACCEPT_MIN_RATIO,
                "loss_interval": None if pair is None else [pair.low, pair.high],
                "status": "PASS" if ok else "FAIL",
                "indicative_only": limit is not None,
            }
        )
    return out


def _fmt_layers(layers: dict[str, int] | None) -> str:
    """'tensor 12, channel 3' — how many weights each representation took."""
    return ", ".join(f"{k} {v}" for k, v in (layers or {}).items()) or "-"


def _fmt_secondary(row: dict[str, Any]) -> str:
    """Secondary metrics with their change, e.g. 'mrr 0.5210 (-0.59)'."""
    deltas = row.get("secondary_delta_points", {})
    parts = []
    for key, value in row.get("secondary", {}).items():
        delta = f" ({deltas[key]:+.2f})" if key in deltas and row["variant"] != "float" else ""
        parts.append(f"{key} {value:.4f}{delta}")
    return "; ".join(parts) or "-"


def table_cells(row: dict[str, Any]) -> list[str]:
    """One table line for the console and the markdown; an error row says why it failed."""
    head = [row["variant"]]
    if "error" in row:
        return [*head, "ERROR", "", "", "", "", "", row["error"][:100]]
    quant = row.get("quantize_s")
    return [
        *head,
        f"{row['value']:.4f}",
        f"{row['delta_points']:+.2f}",
        f"{row['file_ratio']:.2f}x",
        f"{row['zipped_ratio']:.2f}x",
        "-" if quant is None else f"{quant:.2f}",
        _fmt_layers(row.get("layers")),
        _fmt_secondary(row),
    ]


HEADERS = ["setting", "metric", "Δ points", "file ×", "zipped ×", "quant s", "layers", "secondary (Δ points)"]


def print_row(row: dict[str, Any]) -> None:
    """Console line with fixed-ish widths, flushed so a background run can be followed in its log."""
    widths = [22, 8, 9, 8, 9, 8, 34]
    cells = table_cells(row)
    print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1], flush=True)


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], limit: int | None) -> str:
    """The whole results page: machine, acceptance, then one table per task."""
    lines = [
        f"Measured on {machine['cpu']} ({machine['cores']} cores), Python {machine['python']}, "
        f"onnxruntime {machine['onnxruntime']}, onnx-statq {machine['onnx_statq']} "
        f"(commit {machine['commit'] or '?'}{', modified' if machine['dirty'] else ''}), {machine['date']}."
    ]
    lines[0] += rerun.note(machine)
    if limit is not None:
        lines.append(f"\n**Quick run: only the first {limit} samples of each task; indicative only.**")
    lines += ["", *_acceptance_md(acceptance(rows, limit))]
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        ref = task_rows[0]
        metric = ref.get("metric", "?")
        lines += [
            "",
            f"### {task} ({metric}, n={ref.get('n', '?')})",
            "",
            "| " + " | ".join(HEADERS) + " |",
            "|" + "---|" * len(HEADERS),
        ]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in table_cells(r)) + " |" for r in task_rows]
    lines += [
        "",
        "Δ points: change of the task metric ×100 against the float model (negative = worse). "
        "file × / zipped ×: float size divided by quantized size, raw and deflated. quant s: time of the "
        "quantization pass alone. layers: weights per stored representation.",
    ]
    return "\n".join(lines) + "\n"


def _acceptance_md(checks: list[dict[str, Any]]) -> list[str]:
    """Acceptance table: 4-bit sigma/auto loss and file ratio against the issue's limits."""
    lines = [
        f"Acceptance (issue): at {ACCEPT_BITS} bits, data-free default ({ACCEPT_METHOD}/{ACCEPT_GRANULARITY}), "
        f"loss <= 1 point on magika and PP-OCRv6 (char accuracy), <= 2 points top-1 on MiniLM, "
        f"file >= {ACCEPT_MIN_RATIO}x smaller. 95% interval: of the loss, by a paired bootstrap over the evaluation "
        "units (files, lines, queries; `benchmarks/paired.py`): how much the evaluation set can tell.",
        "",
        "| model | metric | loss (points) | 95% interval | limit | file × | limit | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        if "reason" in c:
            lines.append(f"| {c['task']} | | | | | | | FAIL ({c['reason'][:80]}) |")
            continue
        lines.append(
            f"| {c['task']} | {c['metric']} | {c['loss_points']:.2f} | {paired.band(c.get('loss_interval'))} | "
            f"<= {c['max_loss_points']:g} | "
            f"{c['file_ratio']:.2f}x | >= {c['min_file_ratio']:g}x | **{c['status']}** |"
        )
    return lines


def write_results(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> None:
    """Rewrite JSON and markdown atomically, so a reader or a crash never sees half a file."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    options = {k: getattr(args, k) for k in ("tasks", "bits", "methods", "granularities", "allocation", "quick")}
    payload = {
        "machine": machine,
        "limit": args.limit,
        "acceptance": acceptance(rows, args.limit),
        "rows": rows,
        "options": getattr(args, "first_options", None) or options,
    }
    for suffix, text in (
        (".json", paired.dumps(payload, indent=2) + "\n"),
        (".md", markdown(rows, machine, args.limit)),
    ):
        write_text_atomic(RESULTS_DIR / (args.out + suffix), text)


def run_task(
    task: str, grid: list[Variant], args: argparse.Namespace, sink: list[dict[str, Any]], machine: dict[str, Any]
) -> None:
    """Float reference, then each setting of the grid; results appended to ``sink`` and saved after each row."""
    print(f"\n== {task}", flush=True)
    print("  ".join(h.ljust(w) for h, w in zip(HEADERS, [22, 8, 9, 8, 9, 8, 34, 0], strict=True)), flush=True)
    try:
        ref = float_row(task, args.limit)
    except Exception as exc:  # a missing model must not hide the other tasks' numbers
        keep(sink, error_row(task, Variant(), exc), machine, args)
        print_row(error_row(task, Variant(), exc))
        write_results(sink, machine, args)
        return
    for variant in [Variant(), *grid]:
        if variant.method is None:
            row = ref
        else:
            try:
                row = quantized_row(task, variant, ref, args.limit, args.allocation)
            except Exception as exc:  # one failing setting is a result, not a crash
                row = error_row(task, variant, exc)
        keep(sink, row, machine, args)
        print_row(row)
        write_results(sink, machine, args)


def keep(sink: list[dict[str, Any]], row: dict[str, Any], machine: dict[str, Any], args: argparse.Namespace) -> None:
    """Append ``row``; with ``--update``, put it in place of the old one and mark it with this run's commit."""
    rerun.keep(sink, row, machine, ("task", "variant") if args.update else None)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit code 1 if any row failed."""
    args = parse_args(argv)
    grid = variants(args.methods, args.granularities, args.bits, extras=not (args.quick or args.no_extras))
    machine = machine_info()
    print(
        f"{machine['cpu']}, {machine['cores']} cores, onnxruntime {machine['onnxruntime']}; "
        f"{len(grid)} settings x {len(args.tasks)} tasks, limit={args.limit}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    if args.update:
        data = rerun.previous(RESULTS_DIR / f"{args.out}.json", machine, args.limit)
        rows, machine, args.first_options = data["rows"], data["machine"], data.get("options")
    for task in args.tasks:
        run_task(task, grid, args, rows, machine)
    for check in acceptance(rows, args.limit):
        print(f"acceptance {check['task']}: {check['status']}", flush=True)
    print(f"wrote {RESULTS_DIR / (args.out + '.json')} and .md", flush=True)
    return int(any("error" in r for r in rows))


if __name__ == "__main__":
    sys.exit(main())
