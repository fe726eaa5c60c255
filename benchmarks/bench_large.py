"""Peak memory and time of quantizing a model whose weights exceed 2 GB (issue 6: at most ~1.5x the weight bytes).

Writes an LLM-shaped model with external data (``tests/bigmodel.py``: an 8192x4096 embedding table and eight
4096x16384 projections, 2.28 GB of float32 by default; ``--gb`` picks another size), runs the CLI on it in a
subprocess with default options (verification included) and records the CLI's peak resident set (``ru_maxrss``,
which counts the pages of memory-mapped weights too), its wall time and its own timing breakdown.

It also measures what onnxruntime needs to open a quantized output (``--probe-gb``, 0.67 GB by default, since the
full-size probe would need ~20 GB): a default session, which folds the decode at creation, against one with
constant folding disabled, which decodes at run time. Run from the repository root::

    python -m benchmarks.bench_large [--gb 2.28] [--probe-gb 0.67] [--dir /tmp]

Writes ``benchmarks/results/large.json``. The multi-GB files go to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import the package from the repo root, not this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import onnx
import onnxruntime as ort

from benchmarks.tasks._common import REPO_ROOT, machine_base

sys.path.insert(0, str(REPO_ROOT / "tests"))
from bigmodel import layers_for, run_measured, write_big_model

RESULTS = Path(__file__).resolve().parent / "results" / "large.json"
EXE = [sys.executable, "-m", "onnx_statq.cli"]

# Opens a model in onnxruntime and runs it once; argv: model path, "fold" or "nofold".
_SESSION = """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.log_severity_level = 3
fold = sys.argv[2] == "fold"
if not fold:
    o.enable_cpu_mem_arena = False
off = [] if fold else ["ConstantFolding"]
s = ort.InferenceSession(sys.argv[1], o, ["CPUExecutionProvider"], disabled_optimizers=off)
s.run(None, {"ids": np.array([0, 1], np.int64)})
"""


def machine_info() -> dict[str, Any]:
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return {
        **machine_base(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "ram_bytes": pages * page,
        "loadavg_start": list(os.getloadavg()),
    }


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def quantize_large(folder: Path, gb: float) -> dict[str, Any]:
    """Generate the model, quantize it with the CLI (default options), return the figures."""
    t0 = time.perf_counter()
    big = write_big_model(folder / "in", layers=_even(layers_for(int(gb * 1e9))))
    gen_s = time.perf_counter() - t0
    out = folder / "out" / "q.onnx"
    out.parent.mkdir()
    report_file = folder / "report.json"
    res = run_measured([*EXE, str(big.path), "-o", str(out), "--report", str(report_file), "-q"], env=_env())
    if res.returncode != 0:
        raise SystemExit(f"onnx-statq failed ({res.returncode}): {res.stderr.strip()}")
    report = json.loads(report_file.read_text())
    t = report["totals"]
    return {
        "weight_bytes": big.weight_bytes,
        "tensors": {k: list(v) for k, v in big.shapes.items()},
        "generate_s": gen_s,
        "peak_rss_bytes": res.peak_rss,
        "peak_rss_ratio": res.peak_rss / big.weight_bytes,
        "wall_s": res.wall_s,
        "timings": report["timings"],
        "file_bytes_before": t["file_bytes_before"],
        "file_bytes_after": t["file_bytes_after"],
        "zipped_bytes_before": t["zipped_bytes_before"],
        "zipped_bytes_after": t["zipped_bytes_after"],
        "outputs": [Path(p).name for p in t["outputs"]],
        "layers": len(report["layers"]),
        "average_index_bits": t.get("average_index_bits"),
        "verify": report["verify"],
    }


def probe_sessions(folder: Path, gb: float) -> dict[str, Any]:
    """Peak memory of onnxruntime opening a quantized output, with and without folding the decode."""
    big = write_big_model(folder / "in", layers=_even(layers_for(int(gb * 1e9))))
    out = folder / "q.onnx"
    res = run_measured([*EXE, str(big.path), "-o", str(out), "-q", "--no-verify"], env=_env())
    if res.returncode != 0:
        raise SystemExit(f"onnx-statq failed ({res.returncode}): {res.stderr.strip()}")
    row: dict[str, Any] = {"weight_bytes": big.weight_bytes, "quantized_file_bytes": out.stat().st_size}
    for mode, model in (("float", big.path), ("fold", out), ("nofold", out)):
        r = run_measured([sys.executable, "-c", _SESSION, str(model), "nofold" if mode == "nofold" else "fold"])
        if r.returncode != 0:
            raise SystemExit(f"onnxruntime failed on {model} ({mode}): {r.stderr.strip()}")
        row[mode] = {"peak_rss_bytes": r.peak_rss, "ratio": r.peak_rss / big.weight_bytes, "wall_s": r.wall_s}
    return row


def _even(n: int) -> int:
    return n + n % 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.28, help="float32 weight GB of the model to quantize")
    parser.add_argument("--probe-gb", type=float, default=0.67, help="weight GB for the session probe (0: skip)")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary model files go")
    args = parser.parse_args(argv)
    info = machine_info()
    print(
        f"machine: {info['lscpu_model_name'] or info['processor']} | cpus {info['cpu_count']} | RAM "
        f"{info['ram_bytes'] / 2**30:.1f} GiB | onnxruntime {info['onnxruntime']} | load {info['loadavg_start']}"
    )
    folder = Path(tempfile.mkdtemp(prefix="statq-bench-large-", dir=args.dir))
    try:
        large = quantize_large(folder / "large", args.gb)
        shutil.rmtree(folder / "large")
        print(
            f"weights {large['weight_bytes'] / 1e9:.2f} GB -> file {large['file_bytes_after'] / 1e9:.3f} GB | "
            f"peak RSS {large['peak_rss_bytes'] / 1e9:.2f} GB = {large['peak_rss_ratio']:.2f}x the weights | "
            f"{large['wall_s']:.0f} s ({', '.join(f'{k} {v:.0f}s' for k, v in large['timings'].items())})"
        )
        probe = probe_sessions(folder / "probe", args.probe_gb) if args.probe_gb > 0 else None
        if probe:
            print(
                f"onnxruntime on {probe['weight_bytes'] / 1e9:.2f} GB: float "
                f"{probe['float']['ratio']:.2f}x, quantized folded {probe['fold']['ratio']:.2f}x, "
                f"unfolded {probe['nofold']['ratio']:.2f}x the weights (peak RSS)"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    info["loadavg_end"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "large": large, "session_probe": probe}
    RESULTS.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
