"""Regenerate docs/benchmarks.md from the JSON and markdown the benchmark scripts wrote.

Nothing here measures anything: every figure comes from benchmarks/results/, which records the machine it ran on.
``python -m benchmarks.make_docs`` after any of ``bench_codebook``, ``bench_size_time``, ``bench_models``,
``bench_calibration``, ``bench_draws`` or ``bench_peers``. The peer comparison's verdicts (is onnx-statq at 4 bits
smaller than every 8-bit peer, at least as accurate as each 4-bit peer at equal or smaller size) are computed here from
``peers.json`` by ``benchmarks.peers.report``, never typed by hand; its plots are the PNGs ``bench_peers`` drew.

``python -m benchmarks.make_docs --run`` is the one command that regenerates the page and its plots from scratch:
it runs every benchmark behind a section (``RUNS``, in order, each in its own process; hours on a 2-core machine),
then rebuilds the page. ``--run NAME,...`` reruns only those results (the names of ``RUNS``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: make `benchmarks` importable from the repository root.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INTRO = ROOT / "benchmarks" / "docs_intro.md"
OUT = ROOT / "docs" / "benchmarks.md"


# Every result file the page reads, and the command that writes it: what ``--run`` executes, in this order.
DRAWS_SECTIONS = (
    ("draws", "Calibration draws: the small models' calibrated rows on five draws of their calibration data"),
    ("draws_modes", "Calibration draws on the small models, both calibrated modes: five draws of 32 samples"),
    ("draws_2bit", "Calibration draws at 2 bits: both calibrated modes on five draws of 32 samples"),
    (
        "draws_large",
        "Calibration draws on magika, PP-OCRv6 recognition and MiniLM: both calibrated modes on five draws of 32 "
        "samples",
    ),
)


def _both_modes(out: str, tasks: str, bits: str) -> list[str]:
    """A ``bench_draws`` run of both calibrated modes on five draws of 32 samples."""
    options = ("--tasks", tasks, "--samples", "32", "--bits", bits, "--modes", "sequential,independent")
    return ["bench_draws", *options, "--out", out]


RUNS: dict[str, list[str]] = {
    "codebook": ["bench_codebook"],
    "size_time": ["bench_size_time"],
    "large": ["bench_large"],
    "models_default": ["bench_models", "--methods", "sigma", "--bits", "8,4,3,2", "--out", "models_default"],
    "models_other": [
        "bench_models",
        *("--tasks", "ppocr_det,ppocr_cls,silero_vad", "--methods", "sigma", "--bits", "8,4,3,2"),
        *("--out", "models_other"),
    ],
    "granularity_channel": [
        "bench_models",
        *("--tasks", "magika,ppocr_rec,minilm", "--methods", "sigma", "--granularities", "channel"),
        *("--bits", "3,2", "--out", "granularity_channel"),
    ],
    "models": ["bench_models", "--allocation", "fixed"],
    "calibration": ["bench_calibration"],
    "calibration_other": [
        "bench_calibration",
        *("--tasks", "ppocr_det,ppocr_cls,silero_vad", "--bits", "4,3", "--out", "calibration_other"),
    ],
    "calibration_8": [
        "bench_calibration",
        *("--tasks", "digits,magika,ppocr_rec,minilm,ppocr_det,ppocr_cls,silero_vad", "--samples", "8"),
        *("--bits", "4,3", "--compensations", "", "--out", "calibration_8"),
    ],
    "draws": ["bench_draws"],
    "draws_modes": _both_modes("draws_modes", "silero_vad,ppocr_cls", "4,3"),
    "draws_2bit": _both_modes("draws_2bit", "silero_vad,ppocr_cls,magika,minilm", "2"),
    "draws_large": _both_modes("draws_large", "magika,ppocr_rec,minilm", "4,3"),
    "alloc": ["bench_alloc"],
    "peers": ["bench_peers"],
}


def command(name: str) -> str:
    """The shell command behind result ``name``, as the page quotes it."""
    script, *args = RUNS[name]
    return " ".join(["python -m", f"benchmarks.{script}", *map(shlex.quote, args)])


def run(names: list[str]) -> None:
    """Run the benchmarks behind ``names`` one after another; stop at the first that fails."""
    for name in names:
        script, *args = RUNS[name]
        print(f"== {name}: {command(name)}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{script}", *args], cwd=ROOT).returncode:
            raise SystemExit(f"make_docs: {command(name)} failed; the page was not rebuilt")


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
        "sigma time (fit + assign), geometric mean over tensors. Load average "
        f"{m['loadavg_start'][0]:.1f} at the start and {m['loadavg_end'][0]:.1f} at the end on {m['cpu_count']} cores: "
        "scikit-learn runs on a thread pool, which a loaded machine slows far more than single-threaded sigma, so the "
        "speed-up reads higher the busier the machine.",
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
    from benchmarks.bench_calibration import _f  # a figure, or "-" where the run did not measure it

    m = data["machine"]
    lines = [
        "## File size, quantization time and onnxruntime cost",
        "",
        f"`python -m benchmarks.bench_size_time` on {m['lscpu_model_name']} ({m['cpu_count']} cores), "
        f"onnxruntime {m['onnxruntime']}; load average during the run {m['loadavg_start'][0]:.1f}. Default options, "
        "data-free. Time ratio: `quantize_file` (load, quantize, save, sizes) over `onnx.load` + `onnx.save` of the "
        "same model in the same run. Latency ratio: median quantized / float latency (1 intra-op thread); session "
        "ratio: session creation time, where onnxruntime folds the decode. Output SQNR: on the random input "
        "`onnx-statq`'s check uses by default, then on the task's calibration inputs (what `--verify-data` "
        "reports), with the share of positions whose argmax over the last axis is unchanged (meaningful for class "
        "scores: digits, magika, PP-OCRv6; not for MiniLM's token embeddings).",
        "",
        "| model | bits | file x | zipped x | time ratio | latency ratio | session ratio | output SQNR dB, random "
        "| on real inputs | argmax kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in data["models"]:
        for r in model["rows"]:
            lines.append(
                f"| {model['model']} | {r['bits']} | {r['file_ratio']:.2f} | {r['zipped_ratio']:.2f} "
                f"| {r['time_ratio']:.0f} | {r['latency_ratio']:.2f} | {r['session_ratio']:.1f} "
                f"| {r.get('output_sqnr_db', float('nan')):.1f} | {_f(r.get('data_sqnr_db'), '.1f')} "
                f"| {_f(r.get('data_argmax_agreement'), '.1%')} |"
            )
    return [*lines, ""]


def large_section(data: dict[str, Any]) -> list[str]:
    """Issue 6: peak memory of a model over 2 GB, and what onnxruntime needs to open a quantized one."""
    m, r = data["machine"], data["large"]
    gb = 1e9
    t = r["timings"]
    lines = [
        "## A model over 2 GB: peak memory and time",
        "",
        f"`python -m benchmarks.bench_large` on {m['lscpu_model_name']} ({m['cpu_count']} cores, "
        f"{m['ram_bytes'] / 2**30:.0f} GiB), onnxruntime {m['onnxruntime']}; load average "
        f"{m['loadavg_start'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the end (a shared machine: the times "
        "stretch with it, the memory does not). An LLM-shaped model written by `tests/bigmodel.py` with external "
        f"data: {len(r['tensors'])} float32 tensors, {r['weight_bytes'] / gb:.2f} GB of weights (an embedding table "
        "and 4096x16384 projections). `onnx-statq big.onnx -o q.onnx`, default options, verification included; peak "
        "RSS is the CLI process's `ru_maxrss`, which counts the pages of memory-mapped weights.",
        "",
        "| weights | peak RSS | peak / weights | wall | output | zipped before -> after | output SQNR |",
        "|---|---|---|---|---|---|---|",
        f"| {r['weight_bytes'] / gb:.2f} GB | {r['peak_rss_bytes'] / gb:.2f} GB | {r['peak_rss_ratio']:.2f}x "
        f"| {r['wall_s']:.0f} s | {r['file_bytes_after'] / gb:.3f} GB ({', '.join(r['outputs'])}) "
        f"| {r['zipped_bytes_before'] / gb:.2f} -> {r['zipped_bytes_after'] / gb:.3f} GB "
        f"| {r['verify'].get('min_sqnr_db', float('nan')):.1f} dB |",
        "",
        "Time per stage: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in t.items()) + " (the input's zipped size is "
        "computed alongside the pass). The pass maps one weight at a time from the data file; the peak is the "
        "encoding of the largest tensor (several times its size in temporaries) on top of the indices encoded so "
        "far (one byte per weight until the graph is written). Verification holds one model at a time; for a float "
        "model over 256 MB it runs without onnxruntime's constant folding, and says so.",
        "",
    ]
    p = data.get("session_probe")
    if p:
        lines += [
            f"Opening a quantized model in onnxruntime ({p['weight_bytes'] / gb:.2f} GB of float weights, the same "
            "shapes), peak RSS over the float weight bytes: the float model "
            f"{p['float']['ratio']:.2f}x; the quantized model with default options {p['fold']['ratio']:.2f}x, "
            "because constant folding evaluates every decode at session creation and holds the intermediates; with "
            f'`disabled_optimizers=["ConstantFolding"]` {p["nofold"]["ratio"]:.2f}x, decoding at each run '
            "instead. For large models, open the output without constant folding or budget for the folding peak.",
            "",
        ]
    return lines


PEERS = "peers.json"
PEERS_TITLE = "onnx-statq against onnxruntime's and onnxsim's quantizers (`python -m benchmarks.bench_peers`)"


def peers_verdict_section(data: dict[str, Any]) -> list[str]:
    """The written comparison near the top of the page: one bullet per model and check, from the JSON."""
    from benchmarks.peers import report

    rows = report.derive(data["rows"])
    m = data["machine"]
    return [
        "## onnx-statq at 4 bits against the peers, plainly",
        "",
        "Computed by `benchmarks/make_docs.py` from `benchmarks/results/peers.json` (measured on "
        f"{m.get('lscpu_model_name')}, {m.get('date')}{_updates(data)}; tables and plots in the last section). "
        "For each model: (a) is "
        "onnx-statq at 4 bits (data-free, default options) smaller than every 8-bit peer; (b) is it at least as "
        "accurate as onnxruntime's 4-bit MatMulNBits quantizer and onnxsim's K-means and NF4, at equal or smaller "
        "file size. Accuracy is the task's main metric on the full evaluation set; ties count as at least as "
        "accurate.",
        "",
        *report.verdict_lines(rows),
    ]


def _updates(data: dict[str, Any]) -> str:
    """Which rows later ``bench_peers --update`` runs replaced, from the rows' own marks, grouped by run and then by
    the models each tool's rows cover."""
    runs: dict[tuple[str, str], dict[str, set[str]]] = {}
    for r in data["rows"]:
        if m := r.get("measured"):
            runs.setdefault((m["date"], m["commit"]), {}).setdefault(r["tool"], set()).add(r["model"])
    parts = []
    for (date, commit), tools in sorted(runs.items()):
        by_models: dict[tuple[str, ...], list[str]] = {}
        for tool, models in tools.items():
            by_models.setdefault(tuple(sorted(models)), []).append(tool)
        rows = "; ".join(f"{', '.join(sorted(t))} on {', '.join(ms)}" for ms, t in sorted(by_models.items()))
        parts.append(f"; rerun at commit {commit}, {date}: {rows}")
    return "".join(parts)


def peers_section(data: dict[str, Any]) -> list[str]:
    """Tables per model with the plots bench_peers drew (linked, relative to docs/)."""
    from benchmarks.peers import report

    plot_dir = RESULTS / "plots" / Path(PEERS).stem
    plots = {
        model: f"../benchmarks/results/plots/{plot_dir.name}/{model}.png"
        for model in report.models_in(data["rows"])
        if (plot_dir / f"{model}.png").exists()
    }
    return [f"## {PEERS_TITLE}", "", report.markdown(data, plots, level=2, with_verdicts=False).strip(), ""]


ALLOC = "alloc.json"
ALLOC_TITLE = "Bits per layer from statistics (issue 4; `python -m benchmarks.bench_alloc`)"


def alloc_section(data: dict[str, Any] | None) -> list[str]:
    """Prediction accuracy, the cost of choosing K against a k-means sweep, and auto against uniform 3 bits: the
    tables and verdicts ``bench_alloc`` computes from ``alloc.json`` (the same renderer prints them after a run)."""
    if data is None:
        return [f"## {ALLOC_TITLE}", "", f"(not run yet: `{ALLOC}` is missing)", ""]
    from benchmarks.bench_alloc import markdown_lines

    return [f"## {ALLOC_TITLE}", "", *markdown_lines(data), ""]


def verbatim(name: str, title: str) -> list[str]:
    """The markdown a benchmark wrote for result ``name``, under ``title`` followed by the command behind it (unless
    the title quotes it already)."""
    p = RESULTS / f"{name}.md"
    if "`python -m" not in title:
        title = f"{title} (`{command(name)}`)"
    if not p.exists():
        return [f"## {title}", "", f"(not run yet: `{p.name}` is missing)", ""]
    return [f"## {title}", "", p.read_text().strip(), ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild docs/benchmarks.md from benchmarks/results/.")
    parser.add_argument(
        "--run",
        nargs="?",
        const=",".join(RUNS),
        default="",
        help="first rerun these benchmarks (comma-separated names; all of them without a value)",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.run.split(",") if n]
    if unknown := sorted(set(names) - set(RUNS)):
        parser.error(f"unknown result(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    run(names)
    build()


def build() -> None:
    parts = [INTRO.read_text().strip(), ""]
    peers = _load(PEERS)
    if peers is not None:
        parts += peers_verdict_section(peers)
    if (cb := _load("codebook.json")) is not None:
        parts += codebook_section(cb)
    if (st := _load("size_time.json")) is not None:
        parts += size_time_section(st)
    if (lg := _load("large.json")) is not None:
        parts += large_section(lg)
    parts += verbatim("models_default", "Task metrics, data-free, default options")
    parts += verbatim(
        "models_other",
        "Other real models of the same kinds: PP-OCRv6 detection, the PP-OCR direction classifier and silero VAD "
        "(recurrent, state inputs, If subgraphs), data-free",
    )
    parts += verbatim("granularity_channel", "One codebook per output channel everywhere, at the same budget")
    parts += verbatim(
        "models",
        "Task metrics, data-free, every method with the same bits in every layer (measured before the allocation "
        f"became the default; `{command('models')}` reruns it)",
    )
    parts += verbatim("calibration", "Task metrics with calibration")
    parts += verbatim(
        "calibration_other",
        "Calibration on the other models: PP-OCRv6 detection, the direction classifier and silero VAD",
    )
    parts += verbatim(
        "calibration_8",
        "Calibration with 8 samples, the small end of the 8-64 the issue names, on every model",
    )
    for name, title in DRAWS_SECTIONS:
        parts += verbatim(name, title)
    parts += alloc_section(_load(ALLOC))
    if peers is not None:
        parts += peers_section(peers)
    else:
        parts += [f"## {PEERS_TITLE}", "", f"(not run yet: `{PEERS}` is missing)", ""]
    OUT.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
