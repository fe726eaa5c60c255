"""What onnx-statq saves on a phone: download and app size, and what it does not: memory once the model runs.

For each real model (digits, magika, PP-OCRv6 rec, MiniLM) this writes, in a temporary folder,

- ``float.onnx`` (the original) and ``float.ort`` (onnxruntime's converter as it is, constant folding included);
- ``q4.onnx`` / ``q3.onnx``: ``quantize_file`` with ``QuantConfig(bits=4)`` / ``bits=3`` (default allocation);
- ``q4.ort`` / ``q3.ort``: ``onnx-statq --format ort``, i.e. onnxruntime's converter with constant folding off, so
  that the codebooks and indices stay in the file;
- ``q4.folded.ort`` / ``q3.folded.ort``: the quantized model through onnxruntime's converter as it is: folding
  writes the decoded float weights back into the file, but with only K distinct values per tensor, which deflate
  compresses well;

and measures each file's size raw and deflated (``onnx_statq.io.zipped_size``: zip level 6, as an APK or a download
would carry it), then, in a fresh subprocess per file (so nothing is shared between measurements), the process RSS
before the session, right after session creation (the decode is folded here for .onnx), the peak RSS (VmHWM) and the
RSS after the first run, the session creation time and the median latency over ``RUNS`` runs after ``WARMUP``
(CPU EP, one intra-op and one inter-op thread, ``random_feeds`` inputs with symbolic dims = 2). It also compares the
operators a reduced onnxruntime build needs for ``float.ort`` and ``q4.ort`` (the converter's required-operators
config): the difference is what our decode adds.

Run from the repository root (a few minutes; needs the bench extra for magika and PP-OCR, and ../shared for MiniLM)::

    python -m benchmarks.bench_mobile [--models digits magika] [--quick]

Writes ``benchmarks/results/mobile.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import the package from the repo root, not this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import onnx
import onnxruntime as ort

from benchmarks.tasks import TASKS
from benchmarks.tasks._common import machine_base
from onnx_statq import QuantConfig, quantize_file
from onnx_statq.io import zipped_size
from onnx_statq.mobile import read_config, write_ort

MODELS = ("digits", "magika", "ppocr_rec", "minilm")
BITS = (4, 3)
WARMUP, RUNS, QUICK_RUNS = 3, 20, 5
RESULTS = Path(__file__).resolve().parent / "results" / "mobile.json"

# Runs in a fresh interpreter: numbers from /proc/self/status (kB), so RSS covers everything onnxruntime allocates.
_PROBE = r"""
import ctypes, json, statistics, sys, time
import numpy as np
import onnxruntime as ort
from onnx_statq.verify import random_feeds

def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields

def trimmed():  # RSS once glibc has handed freed heap back (what the process really holds); None off glibc
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return status()["VmRSS"]

path, warmup, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
opts.log_severity_level = 3
base = status()
t0 = time.perf_counter()
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
create = time.perf_counter() - t0
after_session = status()
session_trimmed = trimmed()
feeds = random_feeds(sess)
feeds = {k: (np.zeros_like(v) if "token_type" in k else v) for k, v in feeds.items()}
sess.run(None, feeds)
after_run = status()
run_trimmed = trimmed()
for _ in range(warmup - 1):
    sess.run(None, feeds)
lat = []
for _ in range(runs):
    t = time.perf_counter()
    sess.run(None, feeds)
    lat.append(time.perf_counter() - t)
print(json.dumps({
    "rss_before_bytes": base["VmRSS"],
    "rss_session_bytes": after_session["VmRSS"],
    "peak_rss_session_bytes": after_session["VmHWM"],
    "rss_session_trimmed_bytes": session_trimmed,
    "rss_first_run_bytes": after_run["VmRSS"],
    "rss_first_run_trimmed_bytes": run_trimmed,
    "peak_rss_first_run_bytes": after_run["VmHWM"],
    "session_s": create,
    "latency_ms": 1e3 * statistics.median(lat),
    "latency_min_ms": 1e3 * min(lat),
}))
"""


def machine_info() -> dict[str, Any]:
    return {
        **machine_base(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "loadavg_start": list(os.getloadavg()),  # latencies move with other jobs on a shared machine; sizes do not
    }


def probe(path: Path, runs: int) -> dict[str, Any]:
    """RSS, session time and latency of one model file, measured in a fresh subprocess."""
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(WARMUP), str(runs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["?"])[-1][:300]}
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    base = out["rss_before_bytes"]
    for key in ("rss_session", "peak_rss_session", "rss_session_trimmed", "rss_first_run", "rss_first_run_trimmed"):
        if out.get(f"{key}_bytes") is not None:
            out[f"{key}_delta_bytes"] = out[f"{key}_bytes"] - base
    return out


def variants(src: Path, tmp: Path) -> list[dict[str, Any]]:
    """Write every variant of one model into ``tmp``; returns (name, path, facts) rows without runtime numbers."""
    rows: list[dict[str, Any]] = [{"variant": "float.onnx", "format": "onnx", "bits": 32, "path": src}]
    float_ort = write_ort(src, tmp / "float.ort", fold=True)
    rows.append({"variant": "float.ort", "format": "ort", "bits": 32, "path": float_ort[0], "config": float_ort[1]})
    same = write_ort(src, tmp / "float.nofold.ort")  # --format ort's settings: only for the operator comparison
    rows.append({"variant": "float.nofold.ort", "format": "ort", "bits": 32, "path": same[0], "config": same[1]})
    for bits in BITS:
        q = tmp / f"q{bits}.onnx"
        t0 = time.perf_counter()
        report = quantize_file(src, q, QuantConfig(bits=bits), verify=False)
        quantize_s = time.perf_counter() - t0
        rows.append(
            {
                "variant": q.name,
                "format": "onnx",
                "bits": bits,
                "path": q,
                "quantize_s": quantize_s,
                "average_index_bits": report.totals.get("average_index_bits"),
            }
        )
        kept = write_ort(q, tmp / f"q{bits}.ort")
        rows.append({"variant": f"q{bits}.ort", "format": "ort", "bits": bits, "path": kept[0], "config": kept[1]})
        folded = write_ort(q, tmp / f"q{bits}.folded.ort", config=False, fold=True)
        rows.append({"variant": f"q{bits}.folded.ort", "format": "ort", "bits": bits, "path": folded[0]})
    return rows


def measure_model(name: str, runs: int) -> dict[str, Any]:
    src = Path(TASKS[name].default_model_path())
    with tempfile.TemporaryDirectory(prefix=f"statq-mobile-{name}-") as d:
        rows = variants(src, Path(d))
        for row in rows:
            if row["variant"] == "float.nofold.ort":
                continue
            path = Path(row["path"])
            row["file_bytes"] = path.stat().st_size
            row["zipped_bytes"] = zipped_size([path])
            row.update(probe(path, runs))
        configs = {r["variant"]: read_config(Path(r["config"])) for r in rows if r.get("config")}

    def ops(variant: str) -> set[str]:
        return {f"{d}:{op}" for d, _, names in configs[variant] for op in names}

    for row in rows:
        row.pop("path")
        row.pop("config", None)
    return {
        "model": str(src.name),
        "variants": [r for r in rows if r["variant"] != "float.nofold.ort"],
        "required_operators": {k: [f"{d};{v};{','.join(ops)}" for d, v, ops in c] for k, c in configs.items()},
        # against the float model converted the same way (constant folding off): what the decode itself adds
        "decode_adds_ops": sorted(ops(f"q{BITS[0]}.ort") - ops("float.nofold.ort")),
        # against onnxruntime's converter as it is: what a reduced build for q4.ort needs beyond the float one's
        "reduced_build_adds_ops": sorted(ops(f"q{BITS[0]}.ort") - ops("float.ort")),
    }


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f}"


def table(results: dict[str, Any]) -> str:
    head = ("model", "variant", "file MB", "zip MB", "RSS sess.", "live sess.", "peak sess.", "live run", "sess.s")
    head = (*head, "ms/run")
    rows = [head]
    for name, m in results["models"].items():
        for v in m["variants"]:
            sizes = (name, v["variant"], _mb(v["file_bytes"]), _mb(v["zipped_bytes"]))
            if "error" in v:
                rows.append((*sizes, v["error"], "", "", "", "", ""))
                continue
            live = v.get("rss_session_trimmed_delta_bytes")
            live_run = v.get("rss_first_run_trimmed_delta_bytes")
            rows.append(
                (
                    *sizes,
                    _mb(v["rss_session_delta_bytes"]),
                    "-" if live is None else _mb(live),
                    _mb(v["peak_rss_session_delta_bytes"]),
                    "-" if live_run is None else _mb(live_run),
                    f"{v['session_s']:.3f}",
                    f"{v['latency_min_ms']:.2f}",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines += [
        "",
        "memory in MB over the process after importing onnxruntime (one subprocess per file): RSS right after session",
        "creation; live: the same after malloc_trim(0) (glibc keeps freed heap); peak: VmHWM during creation;",
        "live run: after the first run, trimmed. ms/run: fastest of the timed runs (1 thread).",
    ]
    for name, m in results["models"].items():
        lines.append(f"{name}: the decode adds {', '.join(m['decode_adds_ops']) or 'no op'} to a reduced build")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} timed runs instead of {RUNS}")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    runs = QUICK_RUNS if args.quick else RUNS
    results: dict[str, Any] = {
        "machine": machine_info(),
        "command": "python -m benchmarks.bench_mobile" + (" --quick" if args.quick else ""),
        "runs": runs,
        "warmup": WARMUP,
        "models": {},
    }
    for name in args.models:
        t0 = time.perf_counter()
        results["models"][name] = measure_model(name, runs)
        print(f"{name}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
