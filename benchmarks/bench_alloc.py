"""Choosing K from statistics (issue 4): how well the predicted error matches, what it costs, what it buys.

Three parts, on the real task models of ``benchmarks.tasks`` (and PP-OCRv6 det for the first two, which has no task):

(a) **Prediction accuracy.** Every layer the default pass encodes with a codebook is taken from
    ``StatqPass.plan`` (reference width 4, the representation, tensor or channel, that the plan chose). Its curve
    from ``onnx_statq.graph.allocation.layer_curve`` (statistics only) is compared, at bits 2..8, with the error
    measured by encoding it at that width with the same representation and method sigma (``encode_tensor`` with
    the granularity forced). The measured figure is ``EncodedTensor.rel_error``, the one the pass reports next to
    its prediction; for one codebook over a tensor with channels that is a mean of per-channel ratios while the
    prediction is for the tensor as a whole, so the whole-tensor ratio is recorded too, and the K-means error.
(b) **The trial and error the paper criticises against K from statistics.** "sweep": K-means (method kmeans) on
    every layer at every width 2..8, the error measured, and the per-layer bits chosen from those measured curves by
    the pass's own ``choose_bits`` for ``QuantConfig(bits="auto", avg_bits=3.0)`` (its budget rules, sizes and
    codebook tables; the measured curves are handed to it in place of the predicted ones). "statistics": the
    curves predicted (timed alone, and with the allocation), then the same ``choose_bits``: exactly what
    ``bits="auto"`` does. Each choice is then applied with per-node bits
    (``QuantConfig(nodes={consumer: LayerSettings(bits=b)}, allocation="fixed")``, method sigma for both, so only
    K differs) and the task metric evaluated. The times of both sides are measured in the same process, one layer
    after the other, so their ratio holds on a loaded machine even where absolute times do not.
(c) **At 3.0 bits per weight on average:** ``bits="auto", avg_bits=3.0`` against 3 bits in every layer
    (``bits=3, allocation="fixed"``), data-free and with calibration (sequential, the task's calibration feeds as
    ``bench_calibration`` builds them), plus the default ``bits=3`` (allocation auto, anchored on the 3-bit fit)
    for reference. File size ratios from the pass's report.

Outputs, rewritten after every step so an interrupted run keeps what it measured:
``benchmarks/results/alloc.json`` (``alloc_quick.json`` with ``--quick``) and tables on stdout;
``python -m benchmarks.make_docs`` renders the JSON into ``docs/benchmarks.md``.

Run from the repository root (a full run takes about an hour on 2 shared cores)::

    python -m benchmarks.bench_alloc [--quick] [--tasks digits,magika,ppocr_rec,minilm] [--out alloc] [--no-det]
                                     [--prediction-only]

``--quick``: first 100 evaluation samples, tasks digits, magika, ppocr_rec, no PP-OCRv6 det. ``--prediction-only``:
part (a) and the cost side of (b) (a few minutes); the task metrics of (b) and (c) are carried over from the existing
JSON and marked so in the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import the package from the repo root, not this folder,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # where tasks/magika.py would shadow magika.

# As the CLI runs (onnx_statq/_blas.py; bench_calibration says why the value is repeated here): without it,
# OpenBLAS's workers spinning after the k-means sweep's numpy calls slowed the allocation's thread pool, which cost
# 3.8 ms against 0.5 ms on the demo CNN and magika (a prediction-only run each way, the same machine).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np
import onnx
import onnxruntime as ort

import onnx_statq
import onnx_statq.calibrate  # (the pass imports it lazily; load it before the code digest is read)
from benchmarks import paired
from benchmarks.bench_calibration import samples_for
from benchmarks.bench_models import QUICK_LIMIT, RESULTS_DIR, _csv, _git, evaluate_row
from benchmarks.tasks import TASKS
from benchmarks.tasks._common import machine_base
from onnx_statq.api import quantize_file
from onnx_statq.calibrate.data import feed_samples
from onnx_statq.codebook import Granularity, Method, Representation, encode_tensor
from onnx_statq.codebook.allocate import HI_BITS, LO_BITS
from onnx_statq.config import LayerSettings, QuantConfig
from onnx_statq.graph import allocation
from onnx_statq.graph.allocation import Layer, layer_curve, table_bits
from onnx_statq.graph.pass_ import StatqPass, import_graph
from onnx_statq.report import Report

BITS = list(range(LO_BITS, HI_BITS + 1))
AVG_BITS = 3.0
TOLERANCES = (0.15, 0.25)  # |predicted / measured - 1|; the target is 0.15 for K >= 8
HEADLINE_BITS = [b for b in BITS if b >= 3]  # K >= 8
RANGES = ((3, 6), (7, 8))  # where the prediction holds and where it does not, pooled
TARGETS_DB = (15.0, 20.0, 25.0, 30.0)  # per-layer SQNR targets (--target-sqnr) for the agreement check
PREDICT_REPEATS = 3  # the prediction is timed this many times (median); the sweeps once, they take minutes
MAX_COST_RATIO = 0.01  # issue 4: choosing K costs under 1% of the K-means sweep
MIN_WITHIN = 0.9  # criterion (1) read as a distribution: at least 90% of layer-widths within ±15% for K >= 8
DET = "ppocr_det"  # PP-OCRv6 det: prediction accuracy and cost only, it has no task metric here
QUICK_TASKS = ("digits", "magika", "ppocr_rec")
AUTO_CONFIG = QuantConfig(bits="auto", avg_bits=AVG_BITS)  # part (b)'s allocation, and (c)'s 'auto avg 3.0'


def det_model_path() -> Path:
    """PP-OCRv6 det, next to the recognizer in the rapidocr wheel."""
    return Path(TASKS["ppocr_rec"].default_model_path()).parent / "PP-OCRv6_det_small.onnx"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Bits per layer from statistics: accuracy, cost, task metrics.")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_LIMIT} samples; {','.join(QUICK_TASKS)}")
    parser.add_argument("--tasks", type=lambda s: _csv(str, s), default=None)
    parser.add_argument("--no-det", action="store_true", help="leave PP-OCRv6 det out of parts (a) and (b)")
    parser.add_argument("--out", default=None, help="output name under benchmarks/results (default alloc)")
    parser.add_argument(
        "--prediction-only",
        action="store_true",
        help="part (a) and the cost side of (b) only; the task metrics of (b) and (c) are carried over from the "
        "existing output file, marked as such",
    )
    args = parser.parse_args(argv)
    if args.tasks is None:
        args.tasks = list(QUICK_TASKS if args.quick else TASKS)
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    args.det = not (args.no_det or args.quick)
    args.out = args.out or ("alloc_quick" if args.quick else "alloc")
    args.limit = QUICK_LIMIT if args.quick else None
    return args


def code_hash() -> str:
    """Digest of the library's sources, read at the start and the end of a run: others edit the tree meanwhile."""
    root = Path(onnx_statq.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info() -> dict[str, Any]:
    return {
        "code_hash": code_hash(),
        **machine_base(),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "onnx_statq")),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": list(os.getloadavg()),
    }


# ----------------------------------------------------------------------------------------------- layers


@dataclass
class LayerInfo:
    """One codebook layer of the plan, with what the pass knows of it."""

    name: str
    op: str
    consumers: tuple[str, ...]
    values: np.ndarray
    layer: Layer  # as the pass hands it to choose_bits: values, channel axis, encoding at the reference width

    @property
    def per_channel(self) -> bool:
        return self.layer.encoded.representation == Representation.CHANNEL

    @property
    def granularity(self) -> Granularity:
        return Granularity.CHANNEL if self.per_channel else Granularity.TENSOR


def plan_layers(path: Path) -> tuple[list[LayerInfo], float]:
    """The layers the default pass encodes with a codebook, from its own plan at the reference width (4 bits,
    allocation off, so the encodings are those ``choose_bits`` starts from), and the plan's time."""
    graph, overhead = import_graph(onnx.load(str(path)))  # as StatqPass.__call__ and `onnx-statq inspect` do
    statq = StatqPass(QuantConfig(allocation="fixed"))  # bits 4 = config.REFERENCE_BITS
    start = time.perf_counter()
    todo, encoded = statq.plan(graph, Report(), overhead=overhead)
    plan_s = time.perf_counter() - start
    out = []
    for w in todo:
        enc = encoded[id(w)]
        if enc.codebook is None:
            continue  # float16: no K to choose
        values = np.array(w.values)
        axis = statq._settings(w)[1]  # the channel axis exactly as the pass passes it on to Layer
        consumers = tuple(u.node.name for u in w.uses)
        layer = Layer(values, axis, enc, floored=not w.matmul_only)  # as the pass builds it for choose_bits
        out.append(LayerInfo(w.tensor.name, w.uses[0].node.op, consumers, values, layer))
    return out, plan_s


def _whole_error(w: np.ndarray, approx: np.ndarray) -> float:
    """Squared error of the whole tensor over its power: what the prediction of one codebook is a prediction of."""
    a = np.asarray(w, np.float64).ravel()
    d = a - np.asarray(approx, np.float64).ravel()
    power = float(a @ a)
    return float(d @ d) / power if power > 0 else 0.0


def measure(info: LayerInfo) -> tuple[dict[str, Any], float, float]:
    """Sigma and K-means at every width with the plan's representation; returns the record and both sweep times.

    Only ``encode_tensor`` (fit, assign, decode, error) is inside the timers; the whole-tensor error is extra."""
    sigma, whole, kmeans = {}, {}, {}
    sigma_s = kmeans_s = 0.0
    w, axis, gran = info.values, info.layer.axis, info.granularity
    for b in BITS:
        start = time.perf_counter()
        enc = encode_tensor(w, axis, b, Method.SIGMA, gran)
        sigma_s += time.perf_counter() - start
        sigma[b], whole[b] = enc.rel_error, _whole_error(w, enc.decoded())
        start = time.perf_counter()
        km = encode_tensor(w, axis, b, Method.KMEANS, gran)
        kmeans_s += time.perf_counter() - start
        kmeans[b] = km.rel_error
    enc4 = info.layer.encoded
    record = {
        "name": info.name,
        "op": info.op,
        "consumers": list(info.consumers),
        "shape": list(info.values.shape),
        "size": int(info.values.size),
        "representation": str(enc4.representation),
        "rows": int(enc4.codebook.levels.shape[0]) if enc4.codebook is not None else 0,
        "table_bits": table_bits(enc4),
        "measured_sigma": sigma,
        "measured_whole": whole,
        "measured_kmeans": kmeans,
    }
    return record, sigma_s, kmeans_s


def time_curve(layer: Layer) -> tuple[dict[int, float], float]:
    """One layer's predicted curve and the median seconds of computing it. Timed right before that layer's sweeps,
    so that both sides of the cost ratio see the same machine load."""
    times, curve = [], {}
    for _ in range(PREDICT_REPEATS):
        start = time.perf_counter()
        curve = layer_curve(layer)
        times.append(time.perf_counter() - start)
    return curve, statistics.median(times)


def time_allocation(infos: list[LayerInfo], curves: list[dict[int, float]]) -> float:
    """Median seconds of the pass's ``choose_bits`` for ``bits='auto', avg_bits=3.0`` once the curves are known:
    the rest of what choosing K costs."""
    times = []
    for _ in range(PREDICT_REPEATS):
        start = time.perf_counter()
        allocate_like_auto(infos, curves, AUTO_CONFIG)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def _given_curves(layers: list[Layer], curves: list[dict[int, float]]) -> Iterator[None]:
    """``choose_bits`` reads each layer's curve through ``allocation.layer_curve``: hand it these curves instead."""
    by_layer = {id(la): c for la, c in zip(layers, curves, strict=True)}
    original = allocation.layer_curve

    def given(layer: Layer, enc: Any = None) -> dict[int, float]:
        # the plan's layout gets the given curve; another layout (none here: Layer has no alternatives) its own
        same = enc is None or enc.representation == layer.encoded.representation
        return by_layer[id(layer)] if same else original(layer, enc)

    allocation.layer_curve = given
    try:
        yield
    finally:
        allocation.layer_curve = original


def allocate_like_auto(infos: list[LayerInfo], curves: list[dict[int, float]], config: QuantConfig) -> list[int]:
    """Bits per layer from ``curves`` through the pass's own ``choose_bits`` under ``config`` (budget rules, codebook
    tables and all), so a measured sweep and the prediction go through exactly the allocation ``bits='auto'`` runs."""
    layers = [i.layer for i in infos]
    with _given_curves(layers, curves):
        return allocation.choose_bits(config, layers, 0, 0).bits


# ----------------------------------------------------------------------------------------------- part (a)


def _ratio(pred: float, meas: float) -> float:
    """predicted / measured; both exact counts as a match, an exact measurement predicted inexact as a miss."""
    if meas > 0:
        return pred / meas
    return 1.0 if pred <= 0 else math.inf


def ratio_stats(ratios: list[float]) -> dict[str, Any]:
    if not ratios:
        return {"count": 0}
    r = np.minimum(np.asarray(ratios, dtype=np.float64), 1e9)
    out: dict[str, Any] = {
        "count": len(ratios),
        "median": float(np.median(r)),
        "p10": float(np.quantile(r, 0.1)),
        "p90": float(np.quantile(r, 0.9)),
    }
    for tol in TOLERANCES:
        out[f"within_{round(100 * tol)}"] = float(np.mean(np.abs(r - 1.0) <= tol))
    return out


def _ratios(layers: list[dict[str, Any]], bits: list[int], against: str) -> list[float]:
    return [_ratio(_at(la["predicted"], b), _at(la[against], b)) for la in layers for b in bits]


def _at(curve: dict[Any, float], b: int) -> float:
    """A curve's value at ``b``, keyed by int in memory and by str once read back from the JSON."""
    return curve[b] if b in curve else curve[str(b)]


def prediction_summary(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Per K, per model and per representation: ratio statistics of predicted over measured."""
    models = list(dict.fromkeys(la["model"] for la in layers))
    against = ("measured_sigma", "measured_whole", "measured_kmeans")
    return {
        "per_bits": [
            {"bits": b, "k": 1 << b, **{a: ratio_stats(_ratios(layers, [b], a)) for a in against}} for b in BITS
        ],
        "headline": {a: ratio_stats(_ratios(layers, HEADLINE_BITS, a)) for a in against},
        "ranges": [
            {"bits": f"{lo}-{hi}", **{a: ratio_stats(_ratios(layers, list(range(lo, hi + 1)), a)) for a in against}}
            for lo, hi in RANGES
        ],
        "per_model": [
            {
                "model": m,
                **{
                    a: ratio_stats(_ratios([la for la in layers if la["model"] == m], HEADLINE_BITS, a))
                    for a in against
                },
            }
            for m in models
        ],
        "per_representation": [
            {
                "representation": rep,
                **{
                    a: ratio_stats(_ratios([la for la in layers if la["representation"] == rep], HEADLINE_BITS, a))
                    for a in against
                },
            }
            for rep in sorted({la["representation"] for la in layers})
        ],
    }


# ----------------------------------------------------------------------------------------------- part (b)


def _hist(bits: list[int]) -> dict[str, int]:
    return {str(b): n for b, n in sorted(Counter(bits).items())}


def choices(infos: list[LayerInfo], records: list[dict[str, Any]], curves: list[dict[int, float]]) -> dict[str, Any]:
    """Bits per layer from the measured K-means curves (the sweep) and from the prediction, same allocator."""
    sizes = [int(i.values.size) for i in infos]
    kmeans = [r["measured_kmeans"] for r in records]
    sigma = [r["measured_sigma"] for r in records]
    sweep = allocate_like_auto(infos, kmeans, AUTO_CONFIG)
    stats = allocate_like_auto(infos, curves, AUTO_CONFIG)
    sigma_sweep = allocate_like_auto(infos, sigma, AUTO_CONFIG)
    total = max(sum(sizes), 1)
    targets = []
    for db in TARGETS_DB:
        config = QuantConfig(bits="auto", target_sqnr=db)
        from_pred, from_km = allocate_like_auto(infos, curves, config), allocate_like_auto(infos, kmeans, config)
        targets.append(
            {
                "target_db": db,
                "agree": sum(a == b for a, b in zip(from_pred, from_km, strict=True)),
                "layers": len(infos),
                "pred_minus_kmeans": _hist([a - b for a, b in zip(from_pred, from_km, strict=True)]),
                "avg_bits_pred": float(np.dot(sizes, from_pred) / total),
                "avg_bits_kmeans": float(np.dot(sizes, from_km) / total),
            }
        )
    return {
        "bits_sweep": sweep,
        "bits_stats": stats,
        "bits_sigma_sweep": sigma_sweep,
        "hist_sweep": _hist(sweep),
        "hist_stats": _hist(stats),
        "avg_sweep": float(np.dot(sizes, sweep) / total),
        "avg_stats": float(np.dot(sizes, stats) / total),
        "agree_stats_sweep": sum(a == b for a, b in zip(stats, sweep, strict=True)),
        "agree_stats_sigma_sweep": sum(a == b for a, b in zip(stats, sigma_sweep, strict=True)),
        "targets": targets,
    }


def per_node_config(infos: list[LayerInfo], bits: list[int]) -> tuple[QuantConfig, list[str]]:
    """Fixed widths per consumer node (method sigma, reference width 4 elsewhere, as ``bits="auto"`` leaves the
    float16 layers); returns the config and the nodes that consume layers given different widths."""
    nodes: dict[str, int] = {}
    conflicts = []
    for info, b in zip(infos, bits, strict=True):
        for node in info.consumers:
            if nodes.setdefault(node, b) != b:
                conflicts.append(node)
                nodes[node] = max(nodes[node], b)  # the pass takes the widest of a weight's consumers
    config = QuantConfig(
        bits=4, method="sigma", allocation="fixed", nodes={n: LayerSettings(bits=b) for n, b in nodes.items()}
    )
    return config, conflicts


# ----------------------------------------------------------------------------------------------- quantize + evaluate


def run_row(task: str, label: str, config: QuantConfig, limit: int | None, calib: Any = None) -> dict[str, Any]:
    """Quantize the task's float model with ``config`` (and calibration feeds), evaluate the copy."""
    row: dict[str, Any] = {"task": task, "setting": label, "calibrated": calib is not None}
    try:
        with tempfile.TemporaryDirectory(prefix="statq-alloc-") as tmp:
            dst = Path(tmp) / "model.onnx"
            start = time.perf_counter()
            report = quantize_file(
                TASKS[task].default_model_path(),
                dst,
                config,
                verify=False,
                calib=calib,
                calib_samples=None,  # a list of feeds: use them all
                calib_mode="sequential" if calib is not None else "none",
            )
            row["quantize_total_s"] = time.perf_counter() - start
            row.update(evaluate_row(task, dst, limit))
    except Exception as exc:  # one failing row is a result, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    totals = report.totals
    row.update(
        file_bytes=totals["file_bytes_after"],
        file_ratio=totals["file_bytes_before"] / totals["file_bytes_after"],
        average_index_bits=totals.get("average_index_bits"),
        layer_bits={r.name: r.bits for r in report.layers},
        bits_hist=_hist([r.bits for r in report.layers]),
        representations={r.name: str(r.representation) for r in report.layers},
        quantize_s=report.timings.get("quantize_s"),
    )
    return row


def float_row(task: str, limit: int | None) -> dict[str, Any]:
    path = Path(TASKS[task].default_model_path())
    row: dict[str, Any] = {"task": task, "setting": "float", "calibrated": False}
    row.update(evaluate_row(task, path, limit), file_bytes=path.stat().st_size, file_ratio=1.0)
    return row


def _rep_changes(row: dict[str, Any], infos: list[LayerInfo]) -> dict[str, int]:
    """Codebook layers of the plan (chosen at 4 bits) stored in another representation once re-encoded at their
    width with granularity auto, as 'tensor->channel': count. The predicted curve and table cost were the plan's."""
    got = row.get("representations", {})
    moved = [
        f"{i.layer.encoded.representation}->{got[i.name]}"
        for i in infos
        if i.name in got and got[i.name] != str(i.layer.encoded.representation)
    ]
    return dict(sorted(Counter(moved).items()))


def _why_not_auto(entry: dict[str, Any], avg3: list[dict[str, Any]]) -> str:
    """Where ``bits='auto'`` (its data-free row in part (c)) departs from the statistics choice: the comparison holds
    each layer's layout at the plan's and leaves the plan's float16 layers out, while the pass also chooses the
    layouts (tensor, channel, float16) and gives float16 layers a width when a codebook pays."""
    auto = next(
        (r for e in avg3 if e["task"] == entry["task"] for r in e["rows"] if r.get("setting") == "auto avg 3.0"),
        None,
    )
    stats = entry["rows"][2].get("layer_bits", {}) if len(entry["rows"]) > 2 else {}
    if auto is None or not stats:
        return ""
    got = auto.get("layer_bits", {})
    differ = [n for n in stats if got.get(n) != stats[n]]
    halves = sum(stats[n] == 16 for n in differ)
    moved = auto.get("representation_changes") or {}
    parts = [f"{len(differ)} of {len(stats)} layers differ"]
    if halves:
        parts.append(f"{halves} of them float16 in the plan and given a codebook by `auto`")
    if moved:
        parts.append("`auto` moved layouts " + ", ".join(f"{k} {v}" for k, v in moved.items()))
    return (
        f" ({'; '.join(parts)}): the comparison holds the plan's layouts and leaves its float16 layers out of the "
        "budget, `auto` chooses every layer's layout within the whole budget"
    )


def _bits_mismatch(row: dict[str, Any], infos: list[LayerInfo], bits: list[int]) -> int:
    """Layers whose width in the quantized file differs from the one asked for (0: the per-node bits took)."""
    got = row.get("layer_bits", {})
    return sum(got.get(i.name) != b for i, b in zip(infos, bits, strict=True))


# ----------------------------------------------------------------------------------------------- driver


class Results:
    """The JSON document, rewritten atomically after each step."""

    def __init__(self, args: argparse.Namespace, machine: dict[str, Any]) -> None:
        self.path = RESULTS_DIR / f"{args.out}.json"
        self.data: dict[str, Any] = {
            "machine": machine,
            "limit": args.limit,
            "options": {"tasks": args.tasks, "det": args.det, "quick": args.quick, "avg_bits": AVG_BITS},
            "layers": [],
            "cost": [],
            "choice": [],
            "avg3": [],
        }

    def save(self) -> None:
        self.data["prediction"] = prediction_summary(self.data["layers"]) if self.data["layers"] else {}
        self.data["verdicts"] = verdicts(self.data)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(paired.dumps(_json_safe(self.data), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def analyse_model(model: str, path: Path, res: Results) -> tuple[list[LayerInfo], dict[str, Any]]:
    """Parts (a) and the cost side of (b) for one model file."""
    print(f"\n== {model}: planning {path.name}", flush=True)
    infos, plan_s = plan_layers(path)
    records, curves, sigma_s, kmeans_s, predict_s = [], [], 0.0, 0.0, 0.0
    for n, info in enumerate(infos):
        curve, p_s = time_curve(info.layer)
        rec, s_s, k_s = measure(info)
        curves.append(curve)
        predict_s += p_s
        rec.update(model=model, predicted=curve)
        records.append(rec)
        sigma_s += s_s
        kmeans_s += k_s
        print(
            f"  [{n + 1}/{len(infos)}] {info.name[:50]:50s} {rec['representation']:7s} "
            f"pred/meas at 3,4,8 bits: "
            + " ".join(f"{_ratio(curve[b], rec['measured_sigma'][b]):.2f}" for b in (3, 4, 8))
            + f"  kmeans {k_s:.1f}s",
            flush=True,
        )
    res.data["layers"] += records
    predict_alloc_s = predict_s + time_allocation(infos, curves)
    choice = choices(infos, records, curves)
    cost = {
        "model": model,
        "layers": len(infos),
        "weights": int(sum(i.values.size for i in infos)),
        "plan_s": plan_s,
        "sweep_kmeans_s": kmeans_s,
        "sweep_sigma_s": sigma_s,
        "predict_s": predict_s,
        "predict_alloc_s": predict_alloc_s,
        "ratio_predict_alloc_to_kmeans": predict_alloc_s / kmeans_s if kmeans_s > 0 else None,
        "ratio_predict_to_kmeans": predict_s / kmeans_s if kmeans_s > 0 else None,
        "ratio_predict_alloc_to_sigma": predict_alloc_s / sigma_s if sigma_s > 0 else None,
        "loadavg": list(os.getloadavg()),
    }
    res.data["cost"].append(cost)
    res.save()
    return infos, choice


def run_task(task: str, args: argparse.Namespace, res: Results) -> None:
    infos, choice = analyse_model(task, Path(TASKS[task].default_model_path()), res)
    limit = None if task == "digits" else args.limit
    ref = float_row(task, limit)
    entry: dict[str, Any] = {"task": task, **choice, "rows": [ref]}
    res.data["choice"].append(entry)
    print_choice(entry, res.data["cost"][-1])
    for label, key in (("sweep (k-means curves)", "bits_sweep"), ("statistics (predicted curves)", "bits_stats")):
        config, conflicts = per_node_config(infos, entry[key])
        row = run_row(task, label, config, limit)
        row.update(
            node_conflicts=conflicts,
            bits_mismatch=_bits_mismatch(row, infos, entry[key]),
            representation_changes=_rep_changes(row, infos),
        )
        entry["rows"].append(row)
        print_row(row, ref)
        res.save()
    # (c): at 3.0 bits on average, data-free and calibrated
    avg3: dict[str, Any] = {"task": task, "rows": [ref]}
    res.data["avg3"].append(avg3)
    start = time.perf_counter()
    feeds = TASKS[task].calibration_feeds(samples_for(task, None))
    avg3["calib_samples"] = sum(feed_samples(f) for f in feeds)
    avg3["calib_build_s"] = time.perf_counter() - start
    configs = (
        ("uniform 3", QuantConfig(bits=3, allocation="fixed")),
        ("auto avg 3.0", QuantConfig(bits="auto", avg_bits=AVG_BITS)),
        ("default bits=3", QuantConfig(bits=3)),
    )
    for calib in (None, feeds):
        for label, config in configs:
            row = run_row(task, label, config, limit, calib=calib)
            row["representation_changes"] = _rep_changes(row, infos)
            avg3["rows"].append(row)
            print_row(row, ref)
            res.save()
    # the statistics choice applied through per-node bits must be exactly what bits="auto" did
    auto = next(r for r in avg3["rows"] if r["setting"] == "auto avg 3.0" and not r["calibrated"])
    stats_row = entry["rows"][2]
    entry["stats_equals_auto"] = auto.get("layer_bits") == stats_row.get("layer_bits")
    res.save()


def run_prediction_only(args: argparse.Namespace, res: Results) -> None:
    """Part (a) and (b)'s cost and choices on every model; (b)'s task rows and (c) carried over, marked."""
    old = json.loads(res.path.read_text(encoding="utf-8")) if res.path.is_file() else {}
    old_rows = {e["task"]: e.get("rows", []) for e in old.get("choice", [])}
    for task in args.tasks:
        _, choice = analyse_model(task, Path(TASKS[task].default_model_path()), res)
        res.data["choice"].append({"task": task, **choice, "rows": old_rows.get(task, [])})
        print_choice(res.data["choice"][-1], res.data["cost"][-1])
    res.data["avg3"] = old.get("avg3", [])
    res.data["carried_over"] = {
        "parts": "(b) task metrics, (c)",
        "from": {k: old.get("machine", {}).get(k) for k in ("commit", "code_hash", "date")},
    }
    res.save()


def run_det(res: Results) -> None:
    path = det_model_path()
    if not path.is_file():
        print(f"PP-OCRv6 det not found at {path}; skipped", flush=True)
        return
    _, choice = analyse_model(DET, path, res)
    entry = {"task": DET, **choice, "rows": []}
    res.data["choice"].append(entry)
    print_choice(entry, res.data["cost"][-1])
    res.save()


# ----------------------------------------------------------------------------------------------- verdicts + tables


def verdicts(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    head = (data.get("prediction") or {}).get("headline", {}).get("measured_sigma")
    if head and head.get("count"):
        out["prediction_within_15_k8"] = {
            "value": head["within_15"],
            "detail": f"{100 * head['within_15']:.0f}% of {head['count']} layer-widths within ±15% "
            f"(median ratio {head['median']:.2f}, p10 {head['p10']:.2f}, p90 {head['p90']:.2f})",
            "status": "PASS" if head["within_15"] >= MIN_WITHIN else "FAIL",
        }
    cmp = []
    for entry in data.get("avg3", []):
        for calibrated in (False, True):
            rows = {r["setting"]: r for r in entry["rows"] if r.get("calibrated") == calibrated}
            auto, uni = rows.get("auto avg 3.0"), rows.get("uniform 3")
            if not auto or not uni or "error" in auto or "error" in uni:
                continue
            diff = 100 * (auto["value"] - uni["value"])
            pair = paired.compare(auto.get("units"), uni.get("units"))
            cmp.append(
                {
                    "task": entry["task"],
                    "calibrated": calibrated,
                    "auto": auto["value"],
                    "uniform": uni["value"],
                    "delta_points": diff,
                    "auto_ratio": auto["file_ratio"],
                    "uniform_ratio": uni["file_ratio"],
                    "result": "beats" if diff > 1e-9 else ("tie" if abs(diff) <= 1e-9 else "loses"),
                    # a count of samples for metrics that are one: how many files/digits/queries the margin is
                    "samples": round(diff / 100 * auto["n"]) if auto.get("metric") in ("accuracy", "top1") else None,
                    "n": auto.get("n"),
                    "interval": None if pair is None else [pair.low, pair.high],
                    "better_worse": None if pair is None else [pair.better, pair.worse],
                }
            )
    out["auto_vs_uniform"] = cmp
    if cmp:
        out["auto_beats_uniform_everywhere"] = "PASS" if all(c["result"] == "beats" for c in cmp) else "FAIL"
    cost = [c for c in data.get("cost", []) if c.get("ratio_predict_alloc_to_kmeans") is not None]
    if cost:
        worst = max(cost, key=lambda c: c["ratio_predict_alloc_to_kmeans"])
        out["cost_under_1pct"] = {
            "worst_model": worst["model"],
            "worst_ratio": worst["ratio_predict_alloc_to_kmeans"],
            "status": "PASS" if worst["ratio_predict_alloc_to_kmeans"] < MAX_COST_RATIO else "FAIL",
        }
    return out


def _fmt_stats(s: dict[str, Any]) -> list[str]:
    if not s.get("count"):
        return ["0", "-", "-", "-", "-", "-"]
    return [
        str(s["count"]),
        f"{s['median']:.2f}",
        f"{s['p10']:.2f}",
        f"{s['p90']:.2f}",
        f"{100 * s['within_15']:.0f}%",
        f"{100 * s['within_25']:.0f}%",
    ]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows
    ]


STAT_HEADERS = ["n", "median pred/meas", "p10", "p90", "within ±15%", "within ±25%"]


def prediction_tables(data: dict[str, Any]) -> list[str]:
    pred = data.get("prediction") or {}
    if not pred:
        return ["(no layers measured)"]
    rows = []
    for p in pred["per_bits"]:
        rows.append(
            [
                str(p["bits"]),
                str(p["k"]),
                *_fmt_stats(p["measured_sigma"]),
                f"{p['measured_whole']['median']:.2f} / {100 * p['measured_whole']['within_15']:.0f}%",
                f"{p['measured_kmeans']['median']:.2f} / {100 * p['measured_kmeans']['within_15']:.0f}%",
            ]
        )
    h = pred["headline"]
    rows.append(
        [
            "**3-8**",
            "**>= 8**",
            *[f"**{c}**" for c in _fmt_stats(h["measured_sigma"])],
            f"{h['measured_whole']['median']:.2f} / {100 * h['measured_whole']['within_15']:.0f}%",
            f"{h['measured_kmeans']['median']:.2f} / {100 * h['measured_kmeans']['within_15']:.0f}%",
        ]
    )
    for r in pred.get("ranges", []):
        rows.append(
            [
                r["bits"],
                "",
                *_fmt_stats(r["measured_sigma"]),
                f"{r['measured_whole']['median']:.2f} / {100 * r['measured_whole']['within_15']:.0f}%",
                f"{r['measured_kmeans']['median']:.2f} / {100 * r['measured_kmeans']['within_15']:.0f}%",
            ]
        )
    lines = _table(["bits", "K", *STAT_HEADERS, "vs whole-tensor: median / ±15%", "vs k-means: median / ±15%"], rows)
    lines += ["", "Per model and per representation, K >= 8 (bits 3-8), against the pass's measured error:", ""]
    rows = [
        [
            p["model"],
            *_fmt_stats(p["measured_sigma"]),
            f"{p['measured_whole']['median']:.2f} / {100 * p['measured_whole']['within_15']:.0f}%",
        ]
        for p in pred["per_model"]
    ]
    rows += [
        [
            f"({p['representation']})",
            *_fmt_stats(p["measured_sigma"]),
            f"{p['measured_whole']['median']:.2f} / {100 * p['measured_whole']['within_15']:.0f}%",
        ]
        for p in pred["per_representation"]
    ]
    return lines + _table(["model", *STAT_HEADERS, "vs whole-tensor: median / ±15%"], rows)


def _metric(row: dict[str, Any] | None, ref: dict[str, Any] | None = None) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "ERROR " + row["error"][:60]
    delta = "" if ref is None or row is ref else f" ({100 * (row['value'] - ref['value']):+.2f})"
    return f"{row['value']:.4f}{delta}"


def _hist_str(h: dict[str, int]) -> str:
    return " ".join(f"{b}b:{n}" for b, n in h.items())


def choice_tables(data: dict[str, Any]) -> list[str]:
    costs = {c["model"]: c for c in data.get("cost", [])}
    rows = []
    for e in data.get("choice", []):
        c = costs.get(e["task"], {})
        r = {row["setting"]: row for row in e["rows"]}
        ref = r.get("float")
        sweep, stats = r.get("sweep (k-means curves)"), r.get("statistics (predicted curves)")
        rows.append(
            [
                e["task"],
                str(c.get("layers", "-")),
                f"{c.get('plan_s', float('nan')):.1f}",
                f"{c.get('sweep_kmeans_s', float('nan')):.1f}",
                f"{c.get('sweep_sigma_s', float('nan')):.1f}",
                f"{1000 * c.get('predict_s', float('nan')):.1f}",
                f"{1000 * c.get('predict_alloc_s', float('nan')):.1f}",
                f"{100 * c['ratio_predict_alloc_to_kmeans']:.3f}%" if c.get("ratio_predict_alloc_to_kmeans") else "-",
                _hist_str(e["hist_sweep"]),
                _hist_str(e["hist_stats"]),
                f"{e['agree_stats_sweep']}/{len(e['bits_stats'])}",
                _metric(ref),
                _metric(sweep, ref) + (f" {sweep['file_ratio']:.2f}x" if sweep and "file_ratio" in sweep else ""),
                _metric(stats, ref) + (f" {stats['file_ratio']:.2f}x" if stats and "file_ratio" in stats else ""),
            ]
        )
    lines = _table(
        [
            "model",
            "layers",
            "plan s",
            "k-means sweep s",
            "sigma sweep s",
            "predict ms",
            "predict+alloc ms",
            "predict+alloc / k-means sweep",
            "bits (sweep)",
            "bits (statistics)",
            "same bits",
            "float",
            "sweep choice",
            "statistics choice",
        ],
        rows,
    )
    notes = []
    for e in data.get("choice", []):
        for row in e["rows"][1:]:
            if row.get("bits_mismatch") or row.get("node_conflicts"):
                notes.append(
                    f"{e['task']} {row['setting']}: {row.get('bits_mismatch')} layers stored at another width "
                    f"than chosen, nodes with conflicting widths {row.get('node_conflicts')}"
                )
            if row.get("representation_changes"):
                notes.append(
                    f"{e['task']} {row['setting']}: representation changed from the plan's "
                    f"{row['representation_changes']}"
                )
        if "stats_equals_auto" in e:
            notes.append(
                f"{e['task']}: the statistics choice applied as per-node bits gives "
                f"{'the same' if e['stats_equals_auto'] else 'NOT the same'} widths as `bits='auto'`"
                + ("" if e["stats_equals_auto"] else _why_not_auto(e, data.get("avg3", [])))
            )
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    trows = []
    for e in data.get("choice", []):
        for t in e.get("targets", []):
            trows.append(
                [
                    e["task"],
                    f"{t['target_db']:g}",
                    f"{t['agree']}/{t['layers']}",
                    " ".join(f"{d}:{n}" for d, n in t["pred_minus_kmeans"].items()),
                    f"{t['avg_bits_pred']:.2f} / {t['avg_bits_kmeans']:.2f}",
                ]
            )
    if trows:
        lines += [
            "",
            "Per-layer SQNR target (`QuantConfig(bits='auto', target_sqnr=dB)` through `choose_bits`): bits from "
            "the predicted curves against bits from the measured k-means curves.",
            "",
        ]
        lines += _table(
            ["model", "target dB", "same bits", "predicted - k-means (bits: layers)", "avg bits predicted / k-means"],
            trows,
        )
    return lines


def avg3_tables(data: dict[str, Any]) -> list[str]:
    rows = []
    for e in data.get("avg3", []):
        r = {(row["setting"], row["calibrated"]): row for row in e["rows"]}
        ref = r.get(("float", False))
        for label in ("uniform 3", "auto avg 3.0", "default bits=3"):
            cells = [e["task"], label]
            for calibrated in (False, True):
                row = r.get((label, calibrated))
                cells.append(_metric(row, ref))
                cells.append(f"{row['file_ratio']:.2f}x" if row and "file_ratio" in row else "-")
            row = r.get((label, False))
            cells.append(_hist_str(row.get("bits_hist", {})) if row else "-")
            rows.append(cells)
        rows.append([e["task"], "float", _metric(ref), "1.00x", "", "", ""])
    samples = "/".join(sorted({str(e.get("calib_samples")) for e in data.get("avg3", [])}))
    headers = ["model", "setting", "data-free", "file ×", f"calibrated (seq, {samples} samples)", "file ×"]
    lines = _table([*headers, "layer bits (data-free)"], rows)
    moved = [
        f"{e['task']} {r['setting']}{' +calib' if r['calibrated'] else ''}: {r['representation_changes']}"
        for e in data.get("avg3", [])
        for r in e["rows"]
        if r.get("representation_changes")
    ]
    if moved:
        lines += [
            "",
            "Layers stored in another representation than the plan chose at 4 bits (re-encoded at their "
            "width with granularity auto): " + "; ".join(moved) + ".",
        ]
    v = data.get("verdicts", {}).get("auto_vs_uniform", [])
    if v:
        lines += ["", "auto avg 3.0 against uniform 3, on the task metric:", ""]
        lines += _table(
            [
                "model",
                "condition",
                "auto",
                "uniform",
                "Δ points",
                "95% interval",
                "units better / worse",
                "file × auto / uniform",
                "result",
            ],
            [
                [
                    c["task"],
                    "calibrated" if c["calibrated"] else "data-free",
                    f"{c['auto']:.4f}",
                    f"{c['uniform']:.4f}",
                    f"{c['delta_points']:+.2f}",
                    paired.band(c.get("interval")),
                    "-" if c.get("better_worse") is None else f"{c['better_worse'][0]} / {c['better_worse'][1]}",
                    f"{c['auto_ratio']:.2f} / {c['uniform_ratio']:.2f}",
                    f"**{c['result']}**",
                ]
                for c in v
            ],
        )
    return lines


def print_choice(entry: dict[str, Any], cost: dict[str, Any]) -> None:
    print(
        f"  {cost['layers']} layers: k-means sweep {cost['sweep_kmeans_s']:.1f} s, sigma sweep "
        f"{cost['sweep_sigma_s']:.1f} s, predict {1000 * cost['predict_s']:.1f} ms, predict+allocate "
        f"{1000 * cost['predict_alloc_s']:.1f} ms ({100 * (cost['ratio_predict_alloc_to_kmeans'] or 0):.3f}% of "
        f"the k-means sweep); bits sweep {_hist_str(entry['hist_sweep'])} | statistics "
        f"{_hist_str(entry['hist_stats'])} | same {entry['agree_stats_sweep']}/{len(entry['bits_stats'])}",
        flush=True,
    )


def print_row(row: dict[str, Any], ref: dict[str, Any]) -> None:
    extra = "" if "error" in row else f"  {row['file_ratio']:.2f}x  bits {_hist_str(row['bits_hist'])}"
    if row.get("representation_changes"):
        extra += f"  representation changed: {row['representation_changes']}"
    cal = " +calib" if row["calibrated"] else ""
    print(f"  {row['setting'] + cal:36s} {_metric(row, ref)}{extra}", flush=True)


def markdown_lines(data: dict[str, Any]) -> list[str]:
    """Machine, the three parts' tables and the verdicts: printed at the end and rendered by make_docs."""
    m = data["machine"]
    # summaries recomputed from the per-layer records, so a JSON written by an older version of this script renders
    data = {**data, "prediction": prediction_summary(data["layers"]) if data.get("layers") else {}}
    data["verdicts"] = v = verdicts(data)
    lines = [
        f"Measured on {m.get('lscpu_model_name') or m.get('processor')} ({m.get('cpu_count')} cores, shared; load "
        f"average {m['loadavg_start'][0]:.1f} at the start), numpy {m.get('numpy')}, onnxruntime "
        f"{m.get('onnxruntime')}, commit {m.get('commit') or '?'}{', modified' if m.get('dirty') else ''}, "
        f"{m.get('date')}.",
    ]
    if m.get("code_hash_end") not in (None, m.get("code_hash")):
        lines.append(
            f"\nThe library's sources changed during the run (digest {m.get('code_hash')} -> {m['code_hash_end']}); "
            "the numbers are those of the code loaded at the start."
        )
    if data.get("carried_over"):
        c = data["carried_over"]
        lines.append(
            f"\n**Rerun with `--prediction-only`: part (a) and the timings and choices of (b) are from this run; "
            f"{c['parts']} are carried over from the run of {c['from'].get('date')} (commit "
            f"{c['from'].get('commit')}, library digest {c['from'].get('code_hash')}), made with the predictor of "
            "that time.**"
        )
    if data.get("limit") is not None:
        lines.append(f"\n**Quick run: only the first {data['limit']} evaluation samples; indicative only.**")
    lines += ["", "**Verdicts against issue 4's criteria:**", ""]
    if "prediction_within_15_k8" in v:
        p = v["prediction_within_15_k8"]
        lines.append(
            f"1. Predicted within ±15% of measured for K >= 8: **{p['status']}**: {p['detail']} "
            f"(PASS needs at least {100 * MIN_WITHIN:.0f}% within ±15%)."
        )
    if "auto_beats_uniform_everywhere" in v:
        cells = [
            f"{c['task']} {'calibrated' if c['calibrated'] else 'data-free'} {c['result']} ({c['delta_points']:+.2f}"
            + (f", {c['samples']:+d} of {c['n']}" if c.get("samples") is not None else "")
            + (f", 95% interval {paired.band(c['interval'])}" if c.get("interval") else "")
            + ")"
            for c in v["auto_vs_uniform"]
        ]
        lines.append(
            f"2. At 3.0 bits on average auto beats uniform 3-bit on every model, with and without "
            f"calibration: **{v['auto_beats_uniform_everywhere']}**: {'; '.join(cells)}."
        )
    if "cost_under_1pct" in v:
        c = v["cost_under_1pct"]
        lines.append(
            f"3. Choosing K (predict + allocate) costs under 1% of the k-means sweep: **{c['status']}** "
            f"(worst {c['worst_model']}: {100 * c['worst_ratio']:.3f}%)."
        )
    lines += [
        "",
        "### (a) Predicted against measured relative error, per width",
        "",
        "Every layer the default pass encodes with a codebook (digits, magika, PP-OCRv6 rec, MiniLM"
        + (", PP-OCRv6 det" if any(la["model"] == DET for la in data["layers"]) else "")
        + "), predicted by `layer_curve` from the plan's representation, measured by encoding at that width with the "
        "same representation and method sigma (`EncodedTensor.rel_error`: per output channel error over power, "
        "averaged over channels). Ratio = predicted / measured. The last two columns compare the same prediction "
        "with the whole-tensor error (squared error over power of the whole tensor: what a one-codebook prediction "
        "estimates) and with the k-means error.",
        "",
        *prediction_tables(data),
        "",
        f"### (b) K from a k-means sweep against K from statistics (average {AVG_BITS:g} bits)",
        "",
        "k-means sweep: `encode_tensor(method='kmeans')` of every layer at every width 2-8 with the plan's "
        "representation (fit, assign, error); sigma sweep: the same with the default method. predict: "
        f"`layer_curve` for every layer (per layer the median of {PREDICT_REPEATS}, timed right before that "
        "layer's sweeps, so both see the same load); +alloc: with the pass's `choose_bits`. plan s: the pass's own "
        "encode of every weight at the reference width (4 bits), which both choices start from (it fixes the "
        "representation) and which is in neither side of the ratio. Both choices go through `choose_bits` for "
        "`bits='auto', avg_bits=3.0` (the sweep's measured curves handed to it in place of the predicted ones); each "
        "is then applied as per-node bits (method sigma, allocation fixed) and evaluated. "
        "Task metric with Δ points against float and the file ratio. Times come from one process on a shared "
        "machine: compare the ratio, not the seconds.",
        "",
        *choice_tables(data),
        "",
        f"### (c) {AVG_BITS:g} bits per weight on average: bits auto against 3 bits everywhere",
        "",
        "`uniform 3` = `QuantConfig(bits=3, allocation='fixed')`; `auto avg 3.0` = `QuantConfig(bits='auto', "
        "avg_bits=3.0)` (widths from the predicted curves only); `default bits=3` = `QuantConfig(bits=3)` (the "
        "current default allocation, the 3-bit fit anchoring the predicted curves). Calibrated: "
        "`quantize_file(..., calib=feeds)` sequential, default compensation, the task's `calibration_feeds` as in "
        "`bench_calibration`. Metric with Δ points against float; file × = float file size / quantized.",
        "",
        *avg3_tables(data),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    print(
        f"{machine['lscpu_model_name']}, {machine['cpu_count']} cores, load {machine['loadavg_start'][0]:.1f}; "
        f"tasks {args.tasks}, det {args.det}, limit {args.limit}",
        flush=True,
    )
    res = Results(args, machine)
    start = time.perf_counter()
    if args.prediction_only:
        run_prediction_only(args, res)
    else:
        for task in args.tasks:
            run_task(task, args, res)
    if args.det:
        run_det(res)
    res.data["machine"]["wall_s"] = time.perf_counter() - start
    res.data["machine"]["commit_at_end"] = _git("rev-parse", "--short", "HEAD")
    res.data["machine"]["code_hash_end"] = code_hash()
    res.save()
    print("\n" + "\n".join(markdown_lines(res.data)), flush=True)
    print(f"\nwrote {res.path}", flush=True)
    return int(any("error" in r for e in res.data["choice"] + res.data["avg3"] for r in e["rows"]))


if __name__ == "__main__":
    sys.exit(main())
