"""Regenerate docs/benchmarks.md from the JSON and markdown the benchmark scripts wrote.

Nothing here measures anything: every figure comes from benchmarks/results/, which records the machine it ran on.
``python -m benchmarks.make_docs`` after any of ``bench_codebook``, ``bench_size_time``, ``bench_models`` or
``bench_calibration``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INTRO = ROOT / "benchmarks" / "docs_intro.md"
OUT = ROOT / "docs" / "benchmarks.md"


def _load(name: str) -> dict[str, Any] | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def codebook_section(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    lines = [
        "## Codebook fitting: squared error and time, per tensor",
        "",
        f"`python -m benchmarks.bench_codebook` ({data['mode']} mode) on {m['lscpu_model_name']} "
        f"({m['cpu_count']} cores), numpy {m['numpy']}. Float32 weight tensors of >= 4096 elements of magika, "
        "PP-OCRv6 rec and MiniLM; one codebook per tensor. Ratios are geometric means over tensors (max in brackets) "
        "of the squared error against this project's k-means; speed-up is scikit-learn `KMeans(n_init=1)` time over "
        "sigma time (fit + assign), geometric mean over tensors.",
        "",
        "| bits | tensors | sigma / k-means | naive 3-sigma / k-means | uniform / k-means | sklearn / k-means "
        "| sklearn time / sigma time |",
        "|---|---|---|---|---|---|---|",
    ]
    for bits in (2, 3, 4, 8):
        s = data["summary"].get(f"all/{bits}")
        if not s:
            continue
        lines.append(
            f"| {bits} | {s['tensors']} | {s['mse_sigma/kmeans_geomean']:.3f} ({s['mse_sigma/kmeans_max']:.2f}) "
            f"| {s['mse_naive3s/kmeans_geomean']:.3f} | {s['mse_uniform/kmeans_geomean']:.2f} "
            f"| {s['mse_sklearn/kmeans_geomean']:.3f} | {s['speedup_sklearn/sigma_geomean']:.0f}x |"
        )
    return [*lines, ""]


def size_time_section(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    lines = [
        "## File size, quantization time and onnxruntime cost",
        "",
        f"`python -m benchmarks.bench_size_time` on {m['lscpu_model_name']} ({m['cpu_count']} cores), "
        f"onnxruntime {m['onnxruntime']}; load average during the run {m['loadavg_start'][0]:.1f}. Default options, "
        "data-free. Time ratio: `quantize_file` (load, quantize, save, sizes) over `onnx.load` + `onnx.save` of the "
        "same model in the same run. Latency ratio: median quantized / float latency (1 intra-op thread); session "
        "ratio: session creation time, where onnxruntime folds the decode.",
        "",
        "| model | bits | file x | zipped x | time ratio | latency ratio | session ratio | output SQNR dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in data["models"]:
        for r in model["rows"]:
            lines.append(
                f"| {model['model']} | {r['bits']} | {r['file_ratio']:.2f} | {r['zipped_ratio']:.2f} "
                f"| {r['time_ratio']:.0f} | {r['latency_ratio']:.2f} | {r['session_ratio']:.1f} "
                f"| {r.get('output_sqnr_db', float('nan')):.1f} |"
            )
    return [*lines, ""]


def verbatim(name: str, title: str) -> list[str]:
    p = RESULTS / name
    if not p.exists():
        return [f"## {title}", "", f"(not run yet: `{name}` is missing)", ""]
    return [f"## {title}", "", p.read_text().strip(), ""]


def main() -> None:
    parts = [INTRO.read_text().strip(), ""]
    if (cb := _load("codebook.json")) is not None:
        parts += codebook_section(cb)
    if (st := _load("size_time.json")) is not None:
        parts += size_time_section(st)
    parts += verbatim(
        "models_default.md",
        "Task metrics, data-free, default options (`python -m benchmarks.bench_models --methods sigma "
        "--bits 4,3,2 --out models_default`)",
    )
    parts += verbatim(
        "models.md",
        "Task metrics, data-free, the same bits in every layer (`--allocation fixed`; measured before allocation "
        "became the default; `python -m benchmarks.bench_models`)",
    )
    parts += verbatim("calibration.md", "Task metrics with calibration (`python -m benchmarks.bench_calibration`)")
    OUT.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
