"""What calibration buys on the real task models, and what it costs, against data-free quantization.

Why: calibration is only worth its extra input (data) and time if it recovers task accuracy that the
data-free pass loses, and if its cost stays near a few forward passes. The unit tests cannot show either;
this script measures both on the task models of ``benchmarks.tasks``:

- for each task, the float model is evaluated once; then for each bit width (4, 3, 2) the model is
  quantized with calibration mode ``none`` (data-free), ``independent`` and ``sequential``, and the copy
  evaluated; at 3 bits ``sequential`` is also run with compensation 0.0 and 1.0 on every layer (the default
  is 0 on MatMul, 0.5 on the others) to show the effect of the refit target;
- the calibration feeds come from ``task.calibration_feeds(n)`` (data disjoint from the evaluation);
- each row records the task metric and its change in points, the model-output SQNR on the calibration
  feeds (measured here for every row, including data-free, and as the pass reports it), the pass time
  split into ``calib_run_s`` (onnxruntime streams) and ``calib_fit_s`` (patch Gram matrices and the
  solves), and the time of one float forward pass over the same feeds measured in this process right
  before and after the row, so calibration cost reads as a multiple of one float pass (timings are
  noisy on a shared machine; ratios within one run much less so).

Outputs, rewritten atomically after every row so an interrupted run keeps what it measured:
``benchmarks/results/calibration.json`` and ``calibration.md`` (``calibration_quick.*`` with ``--quick``).

Run from the repository root (a full run takes 40-60 minutes on 2 cores)::

    python -m benchmarks.bench_calibration [--quick] [--tasks digits,magika,ppocr_rec,minilm]
        [--bits 4,3,2] [--samples N] [--modes none,independent,sequential] [--compensations 0,1]
        [--feedback default|on|off|both] [--out NAME] [--update]

``--update`` reruns only the selected rows (tasks x settings, each task's float row included) and puts them in place
of the same rows of the existing ``NAME.json``, each marked with its own commit and date (``benchmarks/rerun.py``).

``--feedback both`` runs every calibrated setting with and without the error-feedback (GPTQ-style) assignment
(rows labelled ``+fb``/``-fb`` where they differ from the pass default; ``calib fit s`` then shows the time of
the feedback assignment in brackets). ``--modes`` and ``--compensations ''`` narrow the grid.

``--tasks`` defaults to ``benchmarks.tasks.TASKS`` and also accepts the extra tasks (ppocr_det, ppocr_cls),
which run only when named.

``--quick`` evaluates only the first 100 samples (magika, ppocr_rec; digits always runs in full), at
4 and 3 bits, and skips minilm unless ``--tasks`` names it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import the package from the repo root, not this folder,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # where tasks/magika.py would shadow magika.

# As the CLI runs (onnx_statq/_blas.py, SPIN_TIMEOUT): OpenBLAS's workers sleep right after each call instead of
# spinning on the cores the next segment's onnxruntime runs need. OpenBLAS reads this only when numpy loads it, hence
# here; the value is repeated because importing it would import the package after the sys.path fix and before numpy,
# which the import sorter does not keep.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np
import onnx
import onnxruntime as ort

import onnx_statq.calibrate  # the pass imports it lazily; load it now (see main()) and wrap it (error_feedback)
from benchmarks import paired, rerun
from benchmarks.bench_models import QUICK_LIMIT, RESULTS_DIR, _csv, _git, evaluate_row, machine_info
from benchmarks.tasks import ALL_TASKS, TASKS
from benchmarks.tasks._common import make_session, write_text_atomic
from onnx_statq.api import DEFAULT_COMPENSATION, quantize_file
from onnx_statq.calibrate import model_inputs
from onnx_statq.calibrate.data import feed_samples
from onnx_statq.calibrate.masks import AUTO as AUTO_MASK
from onnx_statq.calibrate.masks import feed_masks, resolve_mask_input
from onnx_statq.calibrate.session import DEFAULT_ERROR_FEEDBACK, model_output_sqnr
from onnx_statq.config import QuantConfig
from onnx_statq.report import Report

DEFAULT_SAMPLES = 32
TASK_SAMPLES = {"digits": 64}  # digits ships exactly 64 calibration images; use them all
MODES = ("none", "independent", "sequential")
MODE_SHORT = {"none": "data-free", "independent": "indep", "sequential": "seq"}
COMPENSATION_BITS = 3
EXTRA_COMPENSATIONS = (0.0, 1.0)
FLOAT_PASS_REPEATS = 3  # per measurement; a calibrated row is bracketed by two measurements (before and after)
QUICK_SKIP = ("minilm",)  # its 600-pair evaluation dominates a quick run; name it in --tasks to keep it

# Targets from the calibration brief.
MAX_LOSS_4BIT = 0.5  # points of the main metric, calibrated (sequential, default compensation) vs float
MAX_LOSS_3BIT = 2.0
MAX_RUN_X_FLOAT = 4.0  # calib_run_s at most this many float passes over the same feeds


@dataclass(frozen=True)
class Setting:
    """One quantized configuration: bit width, calibration mode and refit-target compensation."""

    bits: int
    mode: str
    compensation: float | None = DEFAULT_COMPENSATION
    error_feedback: bool = DEFAULT_ERROR_FEEDBACK

    @property
    def label(self) -> str:
        """'seq/3', 'seq/3 c=0' when the compensation is not the default, '+fb'/'-fb' when the error-feedback
        assignment is not the default: short enough for a table column."""
        base = f"{MODE_SHORT[self.mode]}/{self.bits}"
        if self.mode == "none":
            return base
        if self.compensation != DEFAULT_COMPENSATION:
            base = f"{base} c={self.compensation:g}"
        if self.error_feedback != DEFAULT_ERROR_FEEDBACK:
            base += " +fb" if self.error_feedback else " -fb"
        return base


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options; unset values take the quick or the full default, so --quick can still be narrowed."""
    parser = argparse.ArgumentParser(description="Task accuracy and cost of calibrated vs data-free quantization.")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_LIMIT} samples, 4 and 3 bits, no minilm")
    parser.add_argument("--tasks", type=lambda s: _csv(str, s), default=None)
    parser.add_argument("--bits", type=lambda s: _csv(int, s), default=None)
    parser.add_argument("--samples", type=int, default=None, help="calibration samples (default 32; digits 64)")
    parser.add_argument("--out", default=None, help="output name under benchmarks/results (default calibration)")
    parser.add_argument(
        "--modes", type=lambda s: _csv(str, s), default=list(MODES), help=f"subset of {','.join(MODES)} (default all)"
    )
    parser.add_argument(
        "--compensations",
        type=lambda s: _csv(float, s) if s else [],
        default=list(EXTRA_COMPENSATIONS),
        help=f"extra sequential compensations at {COMPENSATION_BITS} bits (default 0,1; '' for none)",
    )
    parser.add_argument(
        "--feedback",
        choices=("default", "on", "off", "both"),
        default="default",
        help="error-feedback (GPTQ-style) assignment in calibrated rows: the pass default, on, off, or both",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="rerun only the selected rows and put them in place of the same rows (task, setting) of <out>.json",
    )
    args = parser.parse_args(argv)
    if args.tasks is None:
        args.tasks = [t for t in TASKS if not (args.quick and t in QUICK_SKIP)]
    unknown = sorted(set(args.tasks) - set(ALL_TASKS))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(ALL_TASKS)}")
    if args.samples is not None and args.samples < 1:
        parser.error("--samples must be at least 1")
    if set(args.modes) - set(MODES):
        parser.error(f"unknown mode(s) {sorted(set(args.modes) - set(MODES))}; known: {', '.join(MODES)}")
    args.bits = args.bits or ([4, 3] if args.quick else [4, 3, 2])
    args.out = args.out or ("calibration_quick" if args.quick else "calibration")
    args.limit = QUICK_LIMIT if args.quick else None
    return args


FEEDBACK_CHOICES = {
    "default": (DEFAULT_ERROR_FEEDBACK,),
    "on": (True,),
    "off": (False,),
    "both": (False, True),
}


def settings(
    bits: list[int],
    modes: list[str] | tuple[str, ...] = MODES,
    compensations: list[float] | tuple[float, ...] = EXTRA_COMPENSATIONS,
    feedback: str = "default",
) -> list[Setting]:
    """The grid in reading order: per bit width the modes (each calibrated one with every error-feedback choice),
    then the sequential compensation variants at 3 bits."""
    grid = []
    fbs = FEEDBACK_CHOICES[feedback]
    for b in bits:
        for m in (m for m in MODES if m in modes):
            grid += [Setting(b, m)] if m == "none" else [Setting(b, m, error_feedback=f) for f in fbs]
        if b == COMPENSATION_BITS and "sequential" in modes:
            grid += [Setting(b, "sequential", c, f) for c in compensations for f in fbs]
    return grid


@contextlib.contextmanager
def error_feedback(on: bool):  # type: ignore[no-untyped-def]
    """Run the pass's calibration with or without the error-feedback assignment.

    The public API has no option for it yet, so the package's ``calibrate`` (looked up by ``api.make_refiner`` at
    call time) is wrapped for the duration of one quantization.
    """
    pkg = onnx_statq.calibrate
    original = pkg.calibrate
    pkg.calibrate = functools.partial(original, error_feedback=on)  # type: ignore[assignment]
    try:
        yield
    finally:
        pkg.calibrate = original


def samples_for(task: str, override: int | None) -> int:
    """Calibration sample count: the --samples value, else the task's default."""
    return override if override is not None else TASK_SAMPLES.get(task, DEFAULT_SAMPLES)


def run_outputs(sess: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """All outputs of one pass over every feed, keyed by output name."""
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, feed), strict=True)) for feed in feeds]


def time_float_passes(sess: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> list[float]:
    """Seconds of each of a few float forward passes over all feeds; callers take the median."""
    times = []
    for _ in range(FLOAT_PASS_REPEATS):
        start = time.perf_counter()
        for feed in feeds:
            sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return times


def padding_masks(model: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray | None]:
    """Per feed, the padding mask the pass's default (``--calib-mask auto``) reads, or None."""
    specs = model_inputs(onnx.load(str(model), load_external_data=False))
    return feed_masks(feeds, resolve_mask_input(AUTO_MASK, specs))


@dataclass
class TaskContext:
    """What every row of one task shares: model, calibration feeds, float session and reference results."""

    name: str
    model: Path
    feeds: list[dict[str, np.ndarray]]
    session: ort.InferenceSession
    float_outputs: list[dict[str, np.ndarray]]
    ref: dict[str, Any]
    limit: int | None
    masks: list[np.ndarray | None]  # per feed, the padding mask the pass reads by default (None: none)


def prepare_task(
    task: str, samples: int, limit: int | None, seed: int | None = None
) -> tuple[TaskContext, dict[str, Any]]:
    """Build the feeds, open the float session, evaluate the float model; returns the context and float row.
    ``seed``: another draw of the calibration data, for the tasks whose feeds take one (``bench_draws``)."""
    module = ALL_TASKS[task]
    model = Path(module.default_model_path())
    start = time.perf_counter()
    feeds = module.calibration_feeds(samples) if seed is None else module.calibration_feeds(samples, seed=seed)
    feeds_s = time.perf_counter() - start
    start = time.perf_counter()
    sess = make_session(model)
    session_s = time.perf_counter() - start
    float_outputs = run_outputs(sess, feeds)  # also the warm-up for the timed passes
    row: dict[str, Any] = {"task": task, "setting": "float", "bits": None, "mode": None, "compensation": None}
    row.update(evaluate_row(task, model, limit))
    row.update(
        delta_points=0.0,
        secondary_delta_points={k: 0.0 for k in row["secondary"]},
        calib_samples=sum(feed_samples(f) for f in feeds),
        calib_feeds=len(feeds),
        calib_build_s=feeds_s,
        float_session_s=session_s,
        float_pass_s=statistics.median(time_float_passes(sess, feeds)),
        file_bytes=model.stat().st_size,
    )
    ctx = TaskContext(task, model, feeds, sess, float_outputs, row, limit, padding_masks(model, feeds))
    return ctx, row


def _layer_summary(report: Report) -> dict[str, Any]:
    """How many weights each calibration outcome took, and the median per-layer output-SQNR gain."""
    notes = Counter(r.calibration or "not planned" for r in report.layers)
    gains = [
        r.output_sqnr_calibrated_db - r.output_sqnr_datafree_db
        for r in report.layers
        if r.output_sqnr_calibrated_db is not None
        and r.output_sqnr_datafree_db is not None
        and math.isfinite(r.output_sqnr_calibrated_db)
        and math.isfinite(r.output_sqnr_datafree_db)
    ]
    return {
        "layer_notes": dict(sorted(notes.items())),
        "layer_sqnr_gain_median_db": statistics.median(gains) if gains else None,
        "layer_sqnr_gain_min_db": min(gains) if gains else None,
    }


def quantized_row(ctx: TaskContext, setting: Setting) -> dict[str, Any]:
    """Quantize with one setting into a temporary folder, evaluate, and compare with the float row."""
    row = _row_head(ctx.name, setting)
    calibrated = setting.mode != "none"
    # The float pass is timed right before and right after the quantization it scales, so that both see the same
    # machine load (other jobs share the 2 cores; a single pass moved by 3x between rows in a trial run).
    before = time_float_passes(ctx.session, ctx.feeds) if calibrated else []
    with tempfile.TemporaryDirectory(prefix="statq-calib-") as tmp:
        dst = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        with error_feedback(setting.error_feedback):
            report = quantize_file(
                ctx.model,
                dst,
                QuantConfig(bits=setting.bits),
                verify=False,
                calib=ctx.feeds if calibrated else None,
                calib_samples=None,  # a list of feeds is counted in feeds, not samples: pass them all
                calib_mode=setting.mode,
                calib_compensation=setting.compensation,
            )
        row["quantize_total_s"] = time.perf_counter() - start
        if calibrated:
            passes = before + time_float_passes(ctx.session, ctx.feeds)
            row.update(float_pass_s=statistics.median(passes), float_pass_samples_s=passes)
        # the pass's own measure (real tokens only where there is a padding mask), applied to data-free rows too
        out = run_outputs(make_session(dst), ctx.feeds)
        row["output_sqnr_db"] = model_output_sqnr(ctx.float_outputs, out, ctx.masks)
        row.update(evaluate_row(ctx.name, dst, ctx.limit))
    timings, cal = report.timings, report.calibration
    row.update(
        delta_points=100.0 * (row["value"] - ctx.ref["value"]),
        secondary_delta_points={
            k: 100.0 * (v - ctx.ref["secondary"][k]) for k, v in row["secondary"].items() if k in ctx.ref["secondary"]
        },
        quantize_s=timings.get("quantize_s"),
        calib_run_s=timings.get("calib_run_s"),
        calib_fit_s=timings.get("calib_fit_s"),
        calib_feedback_s=timings.get("calib_feedback_s"),
        report_output_sqnr_db=cal.get("model_output_sqnr_db"),
        calib_samples=cal.get("samples"),
        calib_sessions=cal.get("sessions"),
        layers_calibrated=cal.get("layers_calibrated"),
        file_bytes=report.totals.get("file_bytes_after"),
        file_ratio=report.totals["file_bytes_before"] / report.totals["file_bytes_after"],
        allocation=report.config.get("allocation"),
        layer_bits=dict(sorted(Counter(r.bits for r in report.layers).items())),
        layers=dict(sorted(Counter(str(r.representation) for r in report.layers).items())),
        **_layer_summary(report),
    )
    if calibrated and row["calib_run_s"] is not None and row["float_pass_s"]:
        row["run_x_float"] = row["calib_run_s"] / row["float_pass_s"]
        row["calib_x_float"] = (row["calib_run_s"] + (row["calib_fit_s"] or 0.0)) / row["float_pass_s"]
    return row


def _row_head(task: str, setting: Setting) -> dict[str, Any]:
    """The identifying fields every row starts with, errors included."""
    return {
        "task": task,
        "setting": setting.label,
        "bits": setting.bits,
        "mode": setting.mode,
        "compensation": setting.compensation if setting.mode != "none" else None,
        "error_feedback": setting.error_feedback if setting.mode != "none" else None,
    }


def error_row(task: str, setting: Setting | None, exc: BaseException) -> dict[str, Any]:
    """A failed setting is recorded and reported, not allowed to stop the other rows."""
    head = _row_head(task, setting) if setting else {"task": task, "setting": "float", "bits": None, "mode": None}
    return {**head, "error": f"{type(exc).__name__}: {exc}"}


def _json_safe(value: Any) -> Any:
    """Infinite SQNRs (exact outputs) as strings, since JSON has no infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------- summary


def _find(rows: list[dict[str, Any]], task: str, bits: int, mode: str, comp: float | None = None) -> dict | None:
    """The row of one task/bits/mode (default compensation and error feedback unless given); None when not run."""
    want = None if mode == "none" else (DEFAULT_COMPENSATION if comp is None else comp)
    fb = None if mode == "none" else DEFAULT_ERROR_FEEDBACK
    for r in rows:
        same = r["task"] == task and r.get("bits") == bits and r.get("mode") == mode
        if same and r.get("compensation") == want and r.get("error_feedback", fb if mode == "none" else False) == fb:
            return r
    return None


def summary(rows: list[dict[str, Any]], bits: list[int]) -> list[dict[str, Any]]:
    """PASS/FAIL per task of the ordering (3 and 2 bits), the loss limits (4 and 3 bits) and the cost target."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        ref = next((r for r in rows if r["task"] == task and r["setting"] == "float"), None)
        if ref is None or "error" in ref:
            continue
        for b in bits:
            free, ind, seq = (_find(rows, task, b, m) for m in MODES)
            if b in (3, 2):
                out.append(_ordering_check(task, b, free, ind, seq))
            limit = {4: MAX_LOSS_4BIT, 3: MAX_LOSS_3BIT}.get(b)
            if limit is not None:
                out.append(_loss_check(task, b, seq, limit, ref))
        calibrated = [r for r in rows if r["task"] == task and r.get("mode") in MODES[1:] and "run_x_float" in r]
        if calibrated:
            worst = max(calibrated, key=lambda r: r["run_x_float"])
            out.append(
                {
                    "task": task,
                    "check": f"calib_run_s <= {MAX_RUN_X_FLOAT:g}x one float pass (worst row)",
                    "detail": f"{worst['run_x_float']:.1f}x at {worst['setting']}",
                    "status": "PASS" if worst["run_x_float"] <= MAX_RUN_X_FLOAT else "FAIL",
                }
            )
    return out


def _ordering_check(task: str, bits: int, free: dict | None, ind: dict | None, seq: dict | None) -> dict[str, Any]:
    """sequential >= independent >= data-free on the main metric (ties pass)."""
    check = f"{bits} bits: sequential >= independent >= data-free"
    missing = [n for n, r in (("data-free", free), ("independent", ind), ("sequential", seq)) if r is None]
    failed = [r["setting"] for r in (free, ind, seq) if r is not None and "error" in r]
    if missing or failed:
        return {"task": task, "check": check, "detail": f"missing {missing}, errors {failed}", "status": "FAIL"}
    assert free is not None and ind is not None and seq is not None
    ok = seq["value"] >= ind["value"] >= free["value"]
    detail = f"{seq['value']:.4f} / {ind['value']:.4f} / {free['value']:.4f}"
    steps = [("seq - indep", seq, ind), ("indep - data-free", ind, free), ("seq - data-free", seq, free)]
    compared = [(name, paired.compare(a.get("units"), b.get("units"))) for name, a, b in steps]
    found = [(name, p) for name, p in compared if p is not None]
    if found:
        detail += "; " + "; ".join(f"{name} {p.text()}" for name, p in found)
    # which of the compared steps the evaluation set separates (the interval of the difference excludes 0)
    clear = ", ".join(name for name, p in found if p.clear) or "none"
    noise = f"separated: {clear}" if found else "-"
    return {"task": task, "check": check, "detail": detail, "status": "PASS" if ok else "FAIL", "noise": noise}


def _loss_check(task: str, bits: int, seq: dict | None, limit: float, ref: dict | None = None) -> dict[str, Any]:
    """Loss of the default calibrated setting (sequential, default compensation) against the float model; with the
    float row's units, the interval of the loss and whether the bar lies outside it."""
    check = f"{bits} bits: calibrated (sequential) within {limit:g} point{'s' if limit != 1 else ''} of float"
    if seq is None or "error" in seq:
        return {"task": task, "check": check, "detail": "missing or failed", "status": "FAIL"}
    loss = -seq["delta_points"] + 0.0
    detail, noise = f"loss {loss:.2f} points", "-"
    p = paired.compare(ref.get("units"), seq.get("units")) if ref is not None else None
    if p is not None:  # float minus quantized: the loss, with its interval
        detail += f" (float - seq {p.text()})"
        noise = "bar outside the interval" if p.high < limit or p.low > limit else "bar inside the interval"
    return {
        "task": task,
        "check": check,
        "detail": detail,
        "status": "PASS" if paired.loss_within(loss, limit) else "FAIL",
        "noise": noise,
    }


# ----------------------------------------------------------------------------------------------- output


def _f(value: Any, fmt: str, empty: str = "-") -> str:
    """Format a number, or a placeholder when it is missing (data-free rows have no calibration timings)."""
    if value is None:
        return empty
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def _fmt_secondary(row: dict[str, Any]) -> str:
    """Secondary metrics with their change, e.g. 'mrr 0.5210 (-0.59)'."""
    deltas = row.get("secondary_delta_points", {})
    parts = []
    for key, value in row.get("secondary", {}).items():
        delta = f" ({deltas[key]:+.2f})" if key in deltas and row["setting"] != "float" else ""
        parts.append(f"{key} {value:.4f}{delta}")
    return "; ".join(parts) or "-"


def _fmt_notes(row: dict[str, Any]) -> str:
    """'refitted 30, bias only 2, data-free 1': what calibration did to each weight."""
    if row.get("mode") in (None, "none"):
        return "-"
    short: Counter[str] = Counter()
    for note, count in (row.get("layer_notes") or {}).items():
        short[note.split(":")[0]] += count  # 'data-free: <why>' -> 'data-free'; the reasons stay in the JSON
    return ", ".join(f"{k} {v}" for k, v in sorted(short.items()))


HEADERS = [
    "setting",
    "metric",
    "Δ points",
    "out SQNR dB",
    "pass SQNR dB",
    "quant s",
    "calib run s (sessions)",
    "calib fit s",
    "1 float pass ms",
    "run × pass",
    "file ×",
    "layer bits",
    "layers (calibration)",
    "secondary (Δ points)",
]
WIDTHS = [16, 8, 9, 11, 12, 8, 22, 11, 15, 10, 7, 18, 30]


def table_cells(row: dict[str, Any]) -> list[str]:
    """One table line for the console and the markdown; an error row says why it failed."""
    if "error" in row:
        return [row["setting"], "ERROR", *[""] * (len(HEADERS) - 3), row["error"][:160]]
    return [
        row["setting"],
        f"{row['value']:.4f}",
        f"{row['delta_points']:+.2f}",
        _f(row.get("output_sqnr_db"), ".2f"),
        _f(row.get("report_output_sqnr_db"), ".2f"),
        _f(row.get("quantize_s"), ".2f"),
        _f(row.get("calib_run_s"), ".2f") + (f" ({row['calib_sessions']})" if row.get("calib_sessions") else ""),
        _f(row.get("calib_fit_s"), ".2f")
        + (f" (fb {row['calib_feedback_s']:.2f})" if row.get("calib_feedback_s") is not None else ""),
        _f(None if row.get("float_pass_s") is None else 1000.0 * row["float_pass_s"], ".1f"),
        _f(row.get("run_x_float"), ".1f") + ("×" if row.get("run_x_float") is not None else ""),
        _f(row.get("file_ratio"), ".2f"),
        ", ".join(f"{b}b {n}" for b, n in (row.get("layer_bits") or {}).items()) or "-",
        _fmt_notes(row),
        _fmt_secondary(row),
    ]


def print_header(task: str, ctx: TaskContext | None) -> None:
    """Task banner and column names, flushed so a background run can be followed in its log."""
    extra = "" if ctx is None else f" ({len(ctx.feeds)} feeds, {ctx.ref['calib_samples']} calibration samples)"
    print(f"\n== {task}{extra}", flush=True)
    print("  ".join(h.ljust(w) for h, w in zip(HEADERS, [*WIDTHS, 0], strict=False)), flush=True)


def print_row(row: dict[str, Any]) -> None:
    """Console line with fixed-ish widths."""
    cells = table_cells(row)
    print("  ".join(c.ljust(w) for c, w in zip(cells, WIDTHS, strict=False)) + "  " + cells[-1], flush=True)


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    """The results page: machine, summary of the checks, then one table per task, then what the columns mean."""
    lines = [
        f"Measured on {machine['cpu']} ({machine['cores']} cores), {machine['platform']}, Python {machine['python']}, "
        f"onnxruntime {machine['onnxruntime']}, onnx {machine['onnx']}, numpy {machine['numpy']}, "
        f"onnx-statq {machine['onnx_statq']} (commit {machine['commit'] or '?'}"
        f"{', modified' if machine['dirty'] else ''}), {machine['date']}.{rerun.note(machine)}",
    ]
    if machine.get("commit_at_end") not in (None, machine["commit"]):
        lines.append(
            f"\nThe repository moved to commit {machine['commit_at_end']} during the run; the numbers are those of the "
            f"code loaded at the start ({machine['commit']})."
        )
    if args.limit is not None:
        lines.append(f"\n**Quick run: only the first {args.limit} evaluation samples per task; indicative only.**")
    lines += ["", "### Summary", "", "| task | check | detail | result | evaluation set |", "|---|---|---|---|---|"]
    lines += [
        f"| {c['task']} | {c['check']} | {c['detail']} | **{c['status']}** | {c.get('noise', '-')} |"
        for c in summary(rows, args.bits)
    ]
    lines += [
        "",
        "Ordering detail is sequential / independent / data-free on the main metric; ties pass. Loss checks use the "
        "default calibrated setting (sequential, default compensation: 0 on MatMul layers, 0.5 on the others).",
        "",
        "Differences are in points with a 95% paired-bootstrap interval over the evaluation units (files, queries, "
        "lines, pages, clips; both models resampled with the same draw, `benchmarks/paired.py`) and the units each "
        "side gets better. *evaluation set*: for the ordering, which steps the evaluation set separates (interval "
        "clear of 0); for a loss bar, whether the bar lies outside the loss's interval. The result column is the "
        "check on the measured values; the interval says how much one evaluation set can tell. It does not "
        "resample the calibration data, which moves some results by more (silero VAD's 3-bit rows).",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        ref = task_rows[0]
        samples = ref.get("calib_samples", "?")
        lines += [
            "",
            f"### {task} ({ref.get('metric', '?')}, n={ref.get('n', '?')}; calibration: {samples} samples in "
            f"{ref.get('calib_feeds', '?')} feeds)",
            "",
            "| " + " | ".join(HEADERS) + " |",
            "|" + "---|" * len(HEADERS),
        ]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in table_cells(r)) + " |" for r in task_rows]
        if "float_session_s" in ref:
            lines.append(
                f"\nFloat session creation {ref['float_session_s']:.2f} s (not part of the float pass); "
                f"building the calibration feeds {ref['calib_build_s']:.2f} s."
            )
    lines += [
        "",
        "Settings: data-free = `calib_mode='none'`; indep = independent (each layer refitted on float inputs); seq = "
        "sequential (each layer refitted on the inputs the already-quantized layers produce); `c=` is the "
        "compensation of the refit target (default: 0 on MatMul layers, 0.5 on the others; 0 = the GPTQ target, the "
        "float weights "
        "applied to the quantized inputs the layer sees; 1 = the float layer's output on float inputs, which also "
        "compensates upstream error). All other options are defaults (sigma, auto granularity, allocation "
        f"{_allocation(rows)}: with allocation auto the bit width is an average budget and layers get the widths "
        "listed under layer bits; the allocation is decided before calibration, so it is the same in every mode).",
        "",
        "Δ points: change of the task metric ×100 against the float model (negative = worse). out SQNR: model-output "
        "SQNR of the quantized file against the float model over the calibration feeds, measured by this script "
        "(in-sample for calibrated rows; real tokens only where the model has a padding mask, as the pass counts "
        "it). pass SQNR: the same quantity as the pass reports it "
        "(`report.calibration['model_output_sqnr_db']`, only with calibration). quant s: the quantization pass "
        "including calibration; calib run s: onnxruntime work of calibration, building and running the segment "
        "sessions of both streams (their count in brackets); calib fit s: the rest of calibration, numpy work: "
        "im2col patches and Gram matrices of every layer input, then the least-squares solves (fb: of which the "
        "error-feedback assignment). 1 float pass ms: "
        "one warm float forward pass over all calibration feeds (onnxruntime CPU, full graph optimisation as in the "
        f"evaluation; median of {FLOAT_PASS_REPEATS} passes right before and {FLOAT_PASS_REPEATS} right after that "
        f"row's quantization); run × pass = calib run s / 1 float pass (target <= {MAX_RUN_X_FLOAT:g}×). layers: "
        "what calibration did to each quantized weight (the reasons for data-free ones are in the JSON).",
    ]
    return "\n".join(lines) + "\n"


def _allocation(rows: list[dict[str, Any]]) -> str:
    """The allocation mode the quantized rows ran with, as the pass's report states it."""
    found = sorted({str(r["allocation"]) for r in rows if r.get("allocation")})
    return "/".join(found) or "?"


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the results file records: the first run's when ``--update`` replaces some of its rows."""
    own = {k: getattr(args, k) for k in ("tasks", "bits", "samples", "quick", "modes", "compensations", "feedback")}
    return getattr(args, "first_options", None) or own


def write_results(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> None:
    """Rewrite JSON and markdown atomically, so a reader or a crash never sees half a file."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    options = run_options(args)
    payload = {
        "machine": machine,
        "limit": args.limit,
        "options": options,
        "summary": summary(rows, options["bits"]),
        "rows": rows,
    }
    texts = ((".json", paired.dumps(_json_safe(payload), indent=2) + "\n"), (".md", markdown(rows, machine, args)))
    for suffix, text in texts:
        write_text_atomic(RESULTS_DIR / (args.out + suffix), text)


def run_task(task: str, args: argparse.Namespace, sink: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    """Float reference, then every setting; rows appended to ``sink`` and saved after each one."""
    limit = None if task == "digits" else args.limit  # digits ignores limit anyway; say so in the JSON
    try:
        ctx, ref = prepare_task(task, samples_for(task, args.samples), limit)
    except Exception as exc:  # a missing model or dataset must not hide the other tasks' numbers
        print_header(task, None)
        row = error_row(task, None, exc)
        keep(sink, row, machine, args)
        print_row(row)
        write_results(sink, machine, args)
        return
    print_header(task, ctx)
    keep(sink, ref, machine, args)
    print_row(ref)
    write_results(sink, machine, args)
    for setting in settings(args.bits, args.modes, args.compensations, args.feedback):
        try:
            row = quantized_row(ctx, setting)
        except Exception as exc:  # one failing setting is a result, not a crash
            row = error_row(task, setting, exc)
        keep(sink, row, machine, args)
        print_row(row)
        write_results(sink, machine, args)


def keep(sink: list[dict[str, Any]], row: dict[str, Any], machine: dict[str, Any], args: argparse.Namespace) -> None:
    """Append ``row``; with ``--update``, put it in place of the old one and mark it with this run's commit."""
    rerun.keep(sink, row, machine, ("task", "setting") if args.update else None)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit code 1 if any row failed."""
    args = parse_args(argv)
    machine = machine_info()  # every onnx_statq module the rows use is imported by now, so the commit is theirs
    print(
        f"{machine['cpu']}, {machine['cores']} cores, onnxruntime {machine['onnxruntime']}; tasks {args.tasks}, "
        f"bits {args.bits}, limit={args.limit}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    if args.update:
        data = rerun.previous(RESULTS_DIR / f"{args.out}.json", machine, args.limit)
        rows, machine, args.first_options = data["rows"], data["machine"], data.get("options")
    for task in args.tasks:
        run_task(task, args, rows, machine)
    (machine["updates"][-1] if args.update else machine)["commit_at_end"] = _git("rev-parse", "--short", "HEAD")
    write_results(rows, machine, args)
    print("", flush=True)
    for check in summary(rows, run_options(args)["bits"]):
        print(f"{check['task']}: {check['check']}: {check['detail']} -> {check['status']}", flush=True)
    print(f"wrote {RESULTS_DIR / (args.out + '.json')} and .md", flush=True)
    return int(any("error" in r for r in rows))


if __name__ == "__main__":
    sys.exit(main())
