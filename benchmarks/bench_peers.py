"""onnx-statq against the other ONNX weight quantizers, on the real task models: accuracy, size, time, latency.

Why: "smaller at the same accuracy" only means something next to what a user could run instead. For each model of
``benchmarks.tasks`` (digits, magika, PP-OCRv6 rec, MiniLM) this runs every tool of ``benchmarks.peers.TOOLS``:

- float (the reference);
- onnx-statq at 8/4/3/2 bits, data-free and calibrated (the task's calibration feeds, 32 samples), and its k-means
  baseline at 4 bits;
- onnxruntime: ``quantize_dynamic`` (int8), ``quantize_static`` (QDQ int8, calibrated on the same feeds), and the
  ``MatMulNBitsQuantizer`` at 4 bits (default round-to-nearest, +Gather, HQQ, GPTQ);
- onnxsim (PyPI): ``quantize_weight_only_kmeans``, ``_nf4``, ``_squeezellm`` and ``_gptvq``.

Each row runs in its own process (``--worker``) with a timeout, so a peer that crashes, hangs or eats memory becomes
a "failed" row with a one-line error and never stops the harness; a tool with nothing to quantize in a model is
reported "n/a". The worker measures the task metric, the file size and zipped size, the tool's wall time, the
onnxruntime session-load time and the median latency of one typical input (single intra-op thread), float and
quantized interleaved in the same process so their ratio holds on a shared machine.

Outputs, rewritten after every row: ``benchmarks/results/<out>.json`` and ``<out>.md``, and at the end one PNG per
model in ``benchmarks/results/plots/<out>/`` (``pip install -e '.[peers,plot]'``). ``python -m
benchmarks.make_docs`` puts the tables, plots and verdicts into docs/benchmarks.md.

Run from the repository root::

    python -m benchmarks.bench_peers [--quick] [--models digits,magika,ppocr_rec,minilm] [--out NAME]
        [--tools statq/4,ort-nbits-rtn/4,...] [--limit N] [--timeout S] [--replot] [--update]

``--update`` reruns only the selected rows (``--tools``, ``--models``) and puts them in place of the same rows of
the existing JSON, each marked with its own commit and date: how onnx-statq's rows are brought up to date after a
change to the library without rerunning peers that did not change.

``--quick``: onnx-statq at 4 bits only (data-free, calibrated, k-means) and the peers the verdicts need (onnxruntime
dynamic, static, MatMulNBits round-to-nearest; onnxsim K-means and NF4; not the slow HQQ, GPTQ, SqueezeLLM and GPTVQ),
the first 100 evaluation samples, 10 latency runs; writes ``peers_quick.*`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import the package from the repo root, not this folder,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # where tasks/magika.py would shadow magika.

import numpy as np

from benchmarks.peers import TOOLS, NotApplicable, Tool, report
from benchmarks.tasks import TASKS
from benchmarks.tasks._common import machine_base, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("digits", "magika", "ppocr_rec", "minilm")
QUICK_LIMIT = 100
SAMPLES = 32
RUNS, QUICK_RUNS, WARMUP = 20, 10, 3
LOAD_REPEATS = 3
TIMEOUT, QUICK_TIMEOUT = 1800, 600
MIN_WEIGHT = 1024  # elements: the float tensors counted as "weights" (onnx-statq's default --min-size)
PACKAGES = ("onnx", "onnxruntime", "onnxsim", "torch", "onnx-statq", "matplotlib")


# ------------------------------------------------------------------------------------------------ options


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="onnx-statq against onnxruntime's and onnxsim's quantizers.")
    p.add_argument("--quick", action="store_true", help=f"4 bits only, first {QUICK_LIMIT} samples, fewer runs")
    p.add_argument("--models", type=_csv, default=list(MODELS))
    p.add_argument("--tools", type=_csv, default=None, help="only these tool keys (float is always run)")
    p.add_argument("--out", default=None, help="result name under benchmarks/results (default peers/peers_quick)")
    p.add_argument("--limit", type=int, default=None, help="evaluation samples per task (default: all; quick 100)")
    p.add_argument("--samples", type=int, default=SAMPLES, help="calibration samples")
    p.add_argument("--runs", type=int, default=None, help="latency runs per row")
    p.add_argument("--timeout", type=int, default=None, help="seconds per row before it counts as failed")
    p.add_argument("--replot", action="store_true", help="only redraw the plots and markdown from the JSON")
    p.add_argument(
        "--update",
        action="store_true",
        help="rerun only the selected rows and put them in place of the same rows of the existing <out>.json",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return args
    unknown = sorted(set(args.models) - set(TASKS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    bad = sorted(set(args.tools or ()) - set(TOOLS))
    if bad:
        p.error(f"unknown tool(s) {', '.join(bad)}; known: {', '.join(TOOLS)}")
    args.out = args.out or ("peers_quick" if args.quick else "peers")
    if args.limit is None and args.quick:
        args.limit = QUICK_LIMIT
    args.runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    args.timeout = args.timeout or (QUICK_TIMEOUT if args.quick else TIMEOUT)
    return args


def selected_tools(args: argparse.Namespace) -> list[Tool]:
    """float first, then the tools in registry order (statq, onnxruntime, onnxsim)."""
    tools = [t for t in TOOLS.values() if t.key != "float" and (t.quick or not args.quick)]
    if args.tools is not None:
        tools = [t for t in TOOLS.values() if t.key in args.tools and t.key != "float"]
    return [TOOLS["float"], *tools]


def machine_info() -> dict[str, Any]:
    """CPU, cores, versions of every package a row depends on, commit, date and load."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        **machine_base(),
        "packages": packages,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "onnx_statq")),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": list(os.getloadavg()),
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


# ------------------------------------------------------------------------------------------------ worker


def one_line(exc: BaseException) -> str:
    """'Type: first line of the message', at most 200 characters."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:200]


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def load_and_latency(path: Path, ref: Path, feed: dict[str, np.ndarray], runs: int) -> dict[str, Any]:
    """Session creation (median of LOAD_REPEATS) and median latency of ``path`` and the float ``ref``, interleaved.

    Returns float numbers too, so each row carries its own like-for-like ratio.
    """
    loads: dict[str, list[float]] = {"q": [], "f": []}
    sessions = {}
    for _ in range(LOAD_REPEATS):
        for key, p in (("q", path), ("f", ref)):
            t0 = time.perf_counter()
            sessions[key] = _session(p)
            loads[key].append(time.perf_counter() - t0)
    outs = {}
    for key, s in sessions.items():
        for _ in range(WARMUP):
            outs[key] = s.run(None, feed)
    lat: dict[str, list[float]] = {"q": [], "f": []}
    for _ in range(runs):
        for key, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            lat[key].append(time.perf_counter() - t0)
    return {
        "load_ms": 1e3 * statistics.median(loads["q"]),
        "float_load_ms": 1e3 * statistics.median(loads["f"]),
        "latency_ms": 1e3 * statistics.median(lat["q"]),
        "float_latency_ms": 1e3 * statistics.median(lat["f"]),
        "output_sqnr_db": _sqnr(outs["f"], outs["q"]),
    }


def _sqnr(ref: list[np.ndarray], out: list[np.ndarray]) -> float | None:
    """Output SQNR on the latency input, all float outputs together (a sanity check, not a quality metric)."""
    sig = noise = 0.0
    for a, b in zip(ref, out, strict=True):
        if not np.issubdtype(np.asarray(a).dtype, np.floating):
            continue
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        sig += float(np.sum(a64**2))
        noise += float(np.sum((a64 - b64) ** 2))
    if sig == 0:
        return None
    return 999.0 if noise == 0 else 10 * float(np.log10(sig / noise))


def weight_summary(src: Path, dst: Path) -> dict[str, Any]:
    """Which of the float model's weights (float32, >= MIN_WEIGHT elements) the tool changed, and how many bytes of
    float weights the output still holds; also the bytes of the replaced weights (to size simulated peers)."""
    import onnx
    from onnx import numpy_helper

    def big_float(init: onnx.TensorProto) -> bool:
        return init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims)) >= MIN_WEIGHT

    a = onnx.load(str(src))
    b = onnx.load(str(dst)) if dst != src else a
    used = {x for n in b.graph.node for x in n.input}
    out_inits = {i.name: i for i in b.graph.initializer}
    weights = [i for i in a.graph.initializer if big_float(i)]
    changed, replaced_elements, replaced_bytes = 0, 0, 0
    for w in weights:
        same = (
            w.name in used
            and w.name in out_inits
            and (
                out_inits[w.name] is w
                or np.array_equal(numpy_helper.to_array(out_inits[w.name]), numpy_helper.to_array(w))
            )
        )
        if not same:
            changed += 1
            replaced_elements += int(np.prod(w.dims))
            replaced_bytes += 4 * int(np.prod(w.dims))
    float_after = sum(
        (4 if i.data_type == onnx.TensorProto.FLOAT else 2) * int(np.prod(i.dims))
        for i in b.graph.initializer
        if i.name in used
        and i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        and int(np.prod(i.dims)) >= MIN_WEIGHT
    )
    ops_a = sorted(n.op_type for n in a.graph.node)
    ops_b = sorted(n.op_type for n in b.graph.node)
    return {
        "total": len(weights),
        "changed": changed,
        "float_bytes_before": sum(4 * int(np.prod(w.dims)) for w in weights),
        "float_bytes_after": float_after,
        "replaced_elements": replaced_elements,
        "replaced_bytes": replaced_bytes,
        "untouched_bytes": sum(4 * int(np.prod(w.dims)) for w in weights) - replaced_bytes,
        "graph_unchanged": changed == 0 and ops_a == ops_b,
    }


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Quantize with one tool, measure the result; always returns a row (status ok, n/a or failed)."""
    from onnx_statq.io import zipped_size

    tool, task = TOOLS[spec["tool"]], TASKS[spec["model"]]
    row: dict[str, Any] = {
        "model": spec["model"],
        "tool": tool.key,
        "label": tool.label,
        "family": tool.family,
        "bits": tool.bits,
        "calibrated": tool.calibrated,
    }
    workdir = Path(spec["workdir"])
    # Each row runs in a fresh process: record the library it imported (others may commit during a long run).
    row["statq_commit"] = _git("rev-parse", "--short", "HEAD") + (
        "+" if _git("status", "--porcelain", "--", "onnx_statq") else ""
    )
    try:
        src = Path(task.default_model_path())
        t0 = time.perf_counter()
        feeds = task.calibration_feeds(spec["samples"])
        row["feeds_s"] = time.perf_counter() - t0
        typical = {k: v[:1] for k, v in feeds[0].items()}
        t0 = time.perf_counter()
        for name in tool.imports:
            importlib.import_module(name)
        row["import_s"] = time.perf_counter() - t0
        if tool.key == "float":
            path, files = src, [src]
        else:
            path = workdir / "model.onnx"
            t0 = time.perf_counter()
            notes = tool.run(src, path, feeds if tool.calibrated else None)
            wall = time.perf_counter() - t0
            row["quant_s"] = notes.pop("quant_s", wall)
            row["quant_wall_s"] = wall
            row["notes"] = notes
            files = sorted(p for p in workdir.iterdir() if p.is_file())
            row["weights"] = weight_summary(src, path)
            if row["weights"]["graph_unchanged"]:
                raise NotApplicable("the tool changed nothing in this model")
            if tool.simulated_bits_per_weight:
                w = row["weights"]
                packed = w["replaced_elements"] * tool.simulated_bits_per_weight / 8
                row["packed_bytes"] = int(src.stat().st_size - w["replaced_bytes"] + packed)
        row["files"] = [p.name for p in files]
        row["file_bytes"] = sum(p.stat().st_size for p in files)
        row["zipped_bytes"] = zipped_size(files)
        row.update(load_and_latency(path, src, typical, spec["runs"]))
        row["latency_input"] = {k: list(v.shape) for k, v in typical.items()}
        t0 = time.perf_counter()
        result = task.evaluate(str(path), limit=spec["limit"])
        row["eval_s"] = time.perf_counter() - t0
        row.update(
            metric=result["metric"],
            value=float(result["value"]),
            n=result.get("n"),
            secondary={k: v for k, v in result.items() if k not in ("metric", "value", "n") and isinstance(v, float)},
            status="ok",
        )
    except NotApplicable as exc:
        row.update(status="n/a", error=str(exc))
    except Exception as exc:  # a tool failing on a model is a result, not a crash
        row.update(status="failed", error=one_line(exc), traceback=traceback.format_exc(limit=-3)[-2000:])
    return row


def worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    row = worker(spec)
    out = Path(spec["result"])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(row, indent=1, default=float))
    os.replace(tmp, out)
    return 0


# ------------------------------------------------------------------------------------------------ harness


def run_row(model: str, tool: Tool, args: argparse.Namespace) -> dict[str, Any]:
    """One worker process for one (model, tool); a timeout, crash or missing result becomes a failed row."""
    base = {
        "model": model,
        "tool": tool.key,
        "label": tool.label,
        "family": tool.family,
        "bits": tool.bits,
        "calibrated": tool.calibrated,
    }
    with tempfile.TemporaryDirectory(prefix="statq-peers-") as tmp:
        workdir = Path(tmp) / "out"
        workdir.mkdir()
        spec = {
            "model": model,
            "tool": tool.key,
            "workdir": str(workdir),
            "result": str(Path(tmp) / "row.json"),
            "limit": args.limit,
            "samples": args.samples,
            "runs": args.runs,
        }
        log = Path(tmp) / "log.txt"
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        with log.open("w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_peers", "--worker", json.dumps(spec)],
                cwd=tmp,  # onnxruntime's quantizers drop temporary files (<uuid>.data, ...) in the working folder
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
        job_s = time.perf_counter() - t0
        result = Path(spec["result"])
        if result.exists():
            row = json.loads(result.read_text())
        elif code is None:
            row = {**base, "status": "failed", "error": f"timed out after {args.timeout} s"}
        else:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            row = {**base, "status": "failed", "error": f"worker crashed ({how}): {tail[0][:160] if tail else ''}"}
    row["job_s"] = job_s
    return row


def write_results(data: dict[str, Any], out: str, plots: dict[str, Path] | None = None) -> None:
    """JSON and markdown, atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    report.derive(data["rows"])
    rel = {m: os.path.relpath(p, RESULTS) for m, p in (plots or {}).items()}
    texts = ((".json", json.dumps(data, indent=1, default=float) + "\n"), (".md", report.markdown(data, rel)))
    for suffix, text in texts:
        write_text_atomic(RESULTS / (out + suffix), text)


def _previous(args: argparse.Namespace, machine: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The existing results, with this run logged in ``machine["updates"]``: the rows it replaces carry their own
    commit and date (``row["measured"]``), the others keep the original run's."""
    path = RESULTS / f"{args.out}.json"
    if not path.exists():
        raise SystemExit(f"--update: {path} does not exist; run without --update first")
    data: dict[str, Any] = json.loads(path.read_text())
    data["machine"].setdefault("updates", []).append(
        {k: machine.get(k) for k in ("commit", "dirty", "date", "loadavg_start", "lscpu_model_name", "cpu_count")}
        | {"tools": options["tools"], "models": options["models"]}
    )
    return data


def _put(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Replace the row of the same model and tool in place, or append it."""
    for i, old in enumerate(rows):
        if (old["model"], old["tool"]) == (row["model"], row["tool"]):
            rows[i] = row
            return
    rows.append(row)


def print_row(row: dict[str, Any]) -> None:
    """Console line (the markdown cells, padded), flushed so a background run can be followed in its log."""
    cells = report.table_cells(row)
    widths = (30, 8, 8, 9, 8, 8, 8, 16, 12)
    print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1], flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    if args.replot:
        data = json.loads((RESULTS / f"{args.out}.json").read_text())
        write_results(data, args.out, report.write_plots(data, RESULTS / "plots" / args.out))
        print(f"redrew {RESULTS / 'plots' / args.out}")
        return 0
    tools = selected_tools(args)
    machine = machine_info()
    print(
        f"{machine['lscpu_model_name']}, {machine['cpu_count']} cores, load {machine['loadavg_start']}; "
        f"{len(tools)} rows x {len(args.models)} models, limit={args.limit}, timeout {args.timeout} s",
        flush=True,
    )
    options = {k: getattr(args, k) for k in ("models", "limit", "samples", "runs", "timeout", "quick")}
    options["tools"] = [t.key for t in tools]
    data = _previous(args, machine, options) if args.update else {"machine": machine, "options": options, "rows": []}
    run = data["machine"]["updates"][-1] if args.update else data  # where this run's own run time is kept
    t_start = time.perf_counter()
    for model in args.models:
        print(f"\n== {model}", flush=True)
        for tool in tools:
            row = run_row(model, tool, args)
            if args.update:
                row["measured"] = {"commit": machine["commit"], "date": machine["date"]}
            _put(data["rows"], row)
            report.derive(data["rows"])
            print_row(row)
            run["wall_s"] = time.perf_counter() - t_start
            write_results(data, args.out)
    ended = data["machine"]["updates"][-1] if args.update else machine
    ended["loadavg_end"] = list(os.getloadavg())
    ended["commit_at_end"] = _git("rev-parse", "--short", "HEAD")
    run["wall_s"] = time.perf_counter() - t_start
    plots = report.write_plots(data, RESULTS / "plots" / args.out)
    write_results(data, args.out, plots)
    print("", flush=True)
    for line in report.verdict_lines(data["rows"]):
        print(line, flush=True)
    print(f"wrote {RESULTS / (args.out + '.json')}, .md and {len(plots)} plot(s) in {run['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
