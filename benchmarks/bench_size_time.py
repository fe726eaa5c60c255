"""File size, quantization time and onnxruntime cost of quantized models, against their float originals.

Why: the point of the codebook format is a smaller download at no runtime cost. For each real model (digits, magika,
PP-OCRv6 rec, MiniLM) and 8, 4, 3 and 2 bits with default options, this measures

- the wall time of ``onnx_statq.quantize_file(src, out, QuantConfig(bits=b), verify=False)`` against a plain
  ``onnx.load`` + ``onnx.save`` of the same model (median of 3) measured just before it in the same run (target: at
  most 2x);
  ``quantize_file``'s own breakdown (load / quantize / save, the rest being the zipped-size accounting) is kept too;
- the file size ratio float / quantized, raw and deflated (targets: >= 3.9x at 8 bits, >= 7.5x at 4, >= 10x at 3);
- onnxruntime session-creation time and median latency (CPU EP, one intra-op and one inter-op thread, ``WARMUP``
  warm-up runs then ``RUNS`` timed runs, float and quantized runs interleaved so that background load hits both
  alike) on the same random input. The decode subgraph only reads initializers, so onnxruntime's constant folding
  should evaluate it once when the session is created: the latency ratio should be ~1.0, with any cost showing up in
  session creation instead. As direct evidence, the node count of onnxruntime's optimized graph is compared with the
  float model's (equal when every decode was folded away). An embedding table is the exception by design: its
  decode follows the lookup (``onnx_statq.graph.rows``), so it stays in the graph and runs on the looked-up rows
  (MiniLM: "folded" no), and what that costs shows in the latency ratio.

Inputs come from ``onnx_statq.verify.random_feeds`` (symbolic dims = 2): a small input makes any per-run decode cost
stand out rather than hide behind the model's own compute (MiniLM's ``token_type_ids`` are zeroed, see
:func:`fixed_feeds`). The output SQNR on that random input is what ``onnx-statq``'s check prints by default; next to
it, the same check on real inputs (``verify.compare`` on the task's calibration feeds, as ``--verify-data`` runs it),
with the share of positions whose argmax over the last axis agrees, shows how far apart the two can read. Run from
the repository root::

    python -m benchmarks.bench_size_time [--quick]

``--quick`` runs 8 and 4 bits only, with fewer latency runs. Writes ``benchmarks/results/size_time.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.tasks._common import machine_base

if not __package__:  # Run as a script: import the package from the repo root, not this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import onnx
import onnxruntime as ort

from benchmarks.bench_calibration import samples_for
from benchmarks.tasks import TASKS
from onnx_statq import QuantConfig, quantize_file
from onnx_statq.verify import compare, random_feeds

MODELS = ("digits", "magika", "ppocr_rec", "minilm")
BITS = (8, 4, 3, 2)
QUICK_BITS = (8, 4)
SIZE_TARGETS = {8: 3.9, 4: 7.5, 3: 10.0}  # float file bytes / quantized file bytes, at least
TIME_TARGET = 2.0  # quantize_file wall / (onnx.load + onnx.save), at most
LATENCY_BAND = (0.9, 1.1)  # quantized / float median latency that counts as "no runtime cost"
WARMUP, RUNS, QUICK_RUNS = 3, 20, 10
SESSION_REPEATS = 3
BASE_REPEATS = 3
RESULTS = Path(__file__).resolve().parent / "results" / "size_time.json"


def machine_info() -> dict[str, Any]:
    """What the timings depend on: CPU, cores, library versions and the load when the run started."""
    return {
        **machine_base(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "loadavg_start": list(os.getloadavg()),
    }


def load_save_time(src: Path, tmp: Path) -> float:
    """The reference cost: read the model with onnx and write it back, nothing else; median of ``BASE_REPEATS``.

    It is cheap (well under a second even for MiniLM), so repeating it keeps one scheduling hiccup on a shared
    machine from deciding the ratio; the much longer quantize_file call is timed once.
    """
    times = []
    for _ in range(BASE_REPEATS):
        t0 = time.perf_counter()
        model = onnx.load(str(src))
        onnx.save(model, str(tmp))
        times.append(time.perf_counter() - t0)
        tmp.unlink()
    return statistics.median(times)


def session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    """CPU session with one intra-op and one inter-op thread, so latency does not depend on the other load."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def fixed_feeds(path: Path) -> dict[str, np.ndarray]:
    """``random_feeds`` of the float model, with token-type ids zeroed.

    ``random_feeds`` draws integer inputs from [0, 100) unless the name contains "mask"; BERT-style token-type
    embeddings have 2 rows, so MiniLM's ``token_type_ids`` would index out of range and the run would fail.
    """
    feeds = random_feeds(session(path))
    return {k: (np.zeros_like(v) if "token_type" in k else v) for k, v in feeds.items()}


def timed_session(path: Path) -> tuple[ort.InferenceSession, float]:
    """A session and the median of ``SESSION_REPEATS`` creation times (constant folding happens here)."""
    creations = []
    for _ in range(SESSION_REPEATS):
        t0 = time.perf_counter()
        sess = session(path)
        creations.append(time.perf_counter() - t0)
    return sess, statistics.median(creations)


def paired_latency(
    sessions: tuple[ort.InferenceSession, ort.InferenceSession], feeds: dict[str, np.ndarray], runs: int
) -> tuple[list[tuple[float, float]], list[list[np.ndarray]]]:
    """(median, min) latency in ms of each session, runs interleaved so background load hits both alike; outputs.

    The minimum is kept beside the median because on a shared machine the median can move with other jobs' memory
    traffic (a small MiniLM input is bound by reading the weights), while the minimum stays put.
    """
    outputs = []
    for s in sessions:
        for _ in range(WARMUP - 1):
            s.run(None, feeds)
        outputs.append(s.run(None, feeds))
    lat: list[list[float]] = [[], []]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feeds)
            lat[i].append(time.perf_counter() - t0)
    return [(1e3 * statistics.median(x), 1e3 * min(x)) for x in lat], outputs


def optimized_nodes(path: Path, tmpdir: Path) -> int:
    """Nodes left after onnxruntime's graph optimizations: equal to the float model's when the decode is folded."""
    out = tmpdir / "optimized.onnx"
    session(path, out)
    n = len(onnx.load(str(out), load_external_data=False).graph.node)
    for f in tmpdir.glob("optimized.onnx*"):
        f.unlink()
    return n


def sqnr_db(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    """Worst output SQNR of the quantized model on the benchmark input (a sanity check, not a quality metric)."""
    worst = math.inf
    for a, b in zip(ref, out, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        noise, signal = float(np.sum((a64 - b64) ** 2)), float(np.sum(a64**2))
        worst = min(worst, math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return worst


def quantize_row(src: Path, dst: Path, bits: int) -> dict[str, Any]:
    """Time quantize_file against load+save measured just before it, and read the sizes from its report."""
    base = load_save_time(src, dst.with_name("float_copy.onnx"))
    t0 = time.perf_counter()
    report = quantize_file(src, dst, QuantConfig(bits=bits), verify=False)
    wall = time.perf_counter() - t0
    tot, tim = report.totals, dict(report.timings)
    tim["accounting_s"] = wall - sum(tim.values())  # file sizes and the two zipped_size() deflate passes
    return {
        "bits": bits,
        "load_save_s": base,
        "quantize_file_s": wall,
        "time_ratio": wall / base,
        "core_time_ratio": (tim["load_s"] + tim["quantize_s"] + tim["save_s"]) / base,
        "timings": tim,
        "file_ratio": tot["file_bytes_before"] / tot["file_bytes_after"],
        "zipped_ratio": tot["zipped_bytes_before"] / tot["zipped_bytes_after"],
        **{k: tot[k] for k in ("file_bytes_before", "file_bytes_after", "zipped_bytes_before", "zipped_bytes_after")},
        "weights_quantized": tot["weights_quantized"],
        "weights_skipped": tot["weights_skipped"],
    }


def ort_row(src: Path, dst: Path, feeds: dict[str, np.ndarray], runs: int) -> dict[str, Any]:
    """Session creation, interleaved latency, optimized node count and output SQNR, float vs quantized."""
    fsess, fs = timed_session(src)
    qsess, qs = timed_session(dst)
    (fl, ql), (fout, qout) = paired_latency((fsess, qsess), feeds, runs)
    fn, qn = optimized_nodes(src, dst.parent), optimized_nodes(dst, dst.parent)
    return {
        "float": {"session_s": fs, "latency_ms": fl[0], "latency_min_ms": fl[1], "optimized_nodes": fn},
        "quant": {"session_s": qs, "latency_ms": ql[0], "latency_min_ms": ql[1], "optimized_nodes": qn},
        "session_ratio": qs / fs,
        "latency_ratio": ql[0] / fl[0],
        "latency_min_ratio": ql[1] / fl[1],
        "folded": fn == qn,
        "output_sqnr_db": sqnr_db(fout, qout),
    }


def data_row(name: str, src: Path, dst: Path) -> dict[str, Any]:
    """The output check on real inputs: the task's calibration feeds, as ``--verify-data`` would run it."""
    feeds = TASKS[name].calibration_feeds(samples_for(name, None))
    v = compare(src, dst, feeds=feeds)
    worst = min(v["outputs"], key=lambda k: v["outputs"][k])
    return {
        "data_sqnr_db": v["min_sqnr_db"],
        "data_argmax_agreement": v.get("argmax_agreement", {}).get(worst),
        "data_feeds": len(feeds),
    }


def bench_model(name: str, bits_list: tuple[int, ...], runs: int) -> dict[str, Any]:
    """One row per bit width: quantization cost and sizes, then onnxruntime cost of the output."""
    src = TASKS[name].default_model_path()
    src.read_bytes()  # page cache warm for both the reference and quantize_file
    feeds = fixed_feeds(src)
    rows = []
    with tempfile.TemporaryDirectory(prefix="statq-bench-") as d:
        for bits in bits_list:
            dst = Path(d) / f"q{bits}.onnx"
            rows.append(quantize_row(src, dst, bits) | ort_row(src, dst, feeds, runs) | data_row(name, src, dst))
            dst.unlink()
            print(f"  {name} {bits} bit done", file=sys.stderr)
    return {"model": name, "path": str(src), "feeds": {k: list(v.shape) for k, v in feeds.items()}, "rows": rows}


def _pass(ok: bool | None) -> str:
    """Table cell for a target check; '' where the row has no target."""
    return "" if ok is None else ("ok" if ok else "FAIL")


def checks(row: dict[str, Any]) -> dict[str, bool | None]:
    """The targets for one row: size (where defined for the bit width), time, and latency within the band."""
    size_t = SIZE_TARGETS.get(row["bits"])
    return {
        "size": None if size_t is None else row["file_ratio"] >= size_t,
        "time": row["time_ratio"] <= TIME_TARGET,
        "latency": LATENCY_BAND[0] <= row["latency_ratio"] <= LATENCY_BAND[1],
    }


def _size_line(model: str, r: dict[str, Any]) -> str:
    """One row of the size and time table."""
    c = checks(r)
    mb = f"{r['file_bytes_before'] / 1e6:>10.3f}{r['file_bytes_after'] / 1e6:>10.3f}"
    size = f"{r['file_ratio']:>8.2f}{r['zipped_ratio']:>8.2f}{_pass(c['size']):>6}"
    secs = f"{r['load_save_s']:>9.3f}{r['quantize_file_s']:>9.3f}{r['time_ratio']:>8.1f}{r['core_time_ratio']:>8.1f}"
    return f"{model:<10}{r['bits']:>5}{mb}{size}{secs}{r['timings']['accounting_s']:>7.2f}{_pass(c['time']):>6}"


def _ort_line(model: str, r: dict[str, Any]) -> str:
    """One row of the onnxruntime table."""
    f, q = r["float"], r["quant"]
    sess = f"{f['session_s']:>10.3f}{q['session_s']:>10.3f}{r['session_ratio']:>8.2f}"
    lat = f"{f['latency_ms']:>10.3f}{q['latency_ms']:>10.3f}{r['latency_ratio']:>8.2f}{_pass(checks(r)['latency']):>6}"
    lat += f"{r['latency_min_ratio']:>7.2f}"
    nodes = f"{f['optimized_nodes']:>7}{q['optimized_nodes']:>7}{_pass(r['folded']):>8}"
    return f"{model:<10}{r['bits']:>5}{sess}{lat}{nodes}{r['output_sqnr_db']:>9.1f}"


def _header(cols: tuple[tuple[str, int], ...]) -> str:
    """Right-aligned column titles after the model and bits columns."""
    return f"{'model':<10}{'bits':>5}" + "".join(f"{h:>{w}}" for h, w in cols)


SIZE_COLS: tuple[tuple[str, int], ...] = (
    ("float MB", 10),
    ("quant MB", 10),
    ("file x", 8),
    ("zip x", 8),
    ("size", 6),
    ("ld+sv s", 9),
)
SIZE_COLS += (("quant s", 9), ("time x", 8), ("core x", 8), ("zip s", 7), ("time", 6))
ORT_COLS: tuple[tuple[str, int], ...] = (
    ("sess f s", 10),
    ("sess q s", 10),
    ("sess x", 8),
    ("lat f ms", 10),
    ("lat q ms", 10),
    ("lat x", 8),
)
ORT_COLS += (("lat", 6), ("min x", 7), ("nd f", 7), ("nd q", 7), ("folded", 8), ("SQNR dB", 9))


def print_tables(results: list[dict[str, Any]]) -> None:
    """Size and time table, then the onnxruntime table."""
    print("\nSize and quantization time (size x = float/quantized; time x = quantize_file / (load+save), the latter")
    print("the median of 3 runs measured just before each quantize_file call)")
    print(_header(SIZE_COLS))
    for res in results:
        for r in res["rows"]:
            print(_size_line(res["model"], r))
    print(f"targets: file x >= {SIZE_TARGETS} by bits; time x <= {TIME_TARGET}. core x counts load+quantize+save")
    print("only; zip s = rest of quantize_file's wall time (file sizes and the two deflate passes of zipped_size)")
    print("\nonnxruntime (CPU EP, 1 thread): session creation (median of 3) and median latency; x = quant/float")
    print(_header(ORT_COLS))
    for res in results:
        for r in res["rows"]:
            print(_ort_line(res["model"], r))
    print(f"lat: median latency x within {LATENCY_BAND} (runs interleaved float/quant); min x: ratio of fastest runs;")
    print("nd: nodes after onnxruntime's graph optimizations, folded = same count as float; SQNR: worst output on")
    print("the benchmark input (a sanity check: random inputs, default options)")


def finite(v: Any) -> Any:
    """JSON-safe copy: non-finite floats (an exact output has infinite SQNR) become strings, as in the reports."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def main(argv: list[str] | None = None) -> int:
    """Benchmark every model, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"bits {QUICK_BITS} only, {QUICK_RUNS} latency runs")
    args = parser.parse_args(argv)
    info = machine_info()
    print(
        f"machine: {info['lscpu_model_name'] or info['processor']} | cpus {info['cpu_count']} | numpy {info['numpy']}"
        f" | onnxruntime {info['onnxruntime']} | load {info['loadavg_start']}"
    )
    bits_list, runs = (QUICK_BITS, QUICK_RUNS) if args.quick else (BITS, RUNS)
    t0 = time.perf_counter()
    results = [bench_model(name, bits_list, runs) for name in MODELS]
    print_tables(results)
    for res in results:
        for r in res["rows"]:
            r["checks"] = checks(r)
    info["loadavg_end"] = list(os.getloadavg())
    info["wall_s"] = time.perf_counter() - t0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "warmup": WARMUP,
        "runs": runs,
        "targets": {"file_ratio_min": SIZE_TARGETS, "time_ratio_max": TIME_TARGET, "latency_ratio_band": LATENCY_BAND},
        "models": results,
    }
    RESULTS.write_text(json.dumps(finite(payload), indent=1) + "\n")
    print(f"\nwrote {RESULTS} ({info['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
