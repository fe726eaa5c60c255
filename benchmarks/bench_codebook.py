"""Codebook quality and speed on real weights: onnx_statq's methods against a naive rule and scikit-learn.

Why: the project claims that the statistical ("sigma") codebook is about as accurate as exact k-means while costing
a small fraction of a k-means fit. This measures both claims on every float32 weight tensor (>= 4096 elements) of
three real models (magika, PP-OCRv6 rec, MiniLM), one codebook per tensor (group view ``w.reshape(1, -1)``), at 2, 3,
4 and 8 bits, against:

- ``kmeans``/``uniform``: the project's other two methods (exact 1-D Lloyd k-means, and an evenly spaced grid);
- ``naive3s``: the paper's literal three-sigma rule (K equal bins over mean +/- 3 std, level = mean of its bin);
- ``sklearn``: ``sklearn.cluster.KMeans(n_clusters=K, n_init=1, random_state=0)`` on ``w.reshape(-1, 1)``.

Times cover everything needed to encode: fit + assign for onnx_statq, the whole rule for naive3s, and ``fit`` (which
also computes ``labels_``) for sklearn. A call shorter than ``TIME_BUDGET_S`` is repeated (up to ``MAX_REPEATS``
runs, same rule for every method) and the fastest run is kept, so millisecond timings are not dominated by noise.
scikit-learn runs with its default thread pool (all cores); onnx_statq is single-threaded numpy.

Run from the repository root::

    python -m benchmarks.bench_codebook [--quick]

``--quick`` keeps tensors of at most 300k elements and at most 15 per model (spread over the size range). The full
run includes every tensor but skips sklearn at 8 bits on tensors over 1M elements (recorded as skipped).
Writes ``benchmarks/results/codebook.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.tasks._common import machine_base

if not __package__:  # Run as a script: import the package from the repo root, not this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import onnx
from onnx import numpy_helper

from benchmarks.tasks import TASKS
from onnx_statq.codebook import assign, decode, fit

MODELS = ("magika", "ppocr_rec", "minilm")
BITS = (2, 3, 4, 8)
OURS = ("sigma", "kmeans", "uniform")
ALL_METHODS = (*OURS, "naive3s", "sklearn")
MIN_ELEMENTS = 4096
QUICK_MAX_ELEMENTS = 300_000
QUICK_MAX_TENSORS = 15
SKLEARN_8BIT_MAX_ELEMENTS = 1_000_000
TIME_BUDGET_S = 0.2
MAX_REPEATS = 3
MSE_TARGET = 1.05  # sigma MSE / exact k-means MSE, geomean over tensors, at 3 and 4 bits
SPEED_TARGET = 100.0  # sklearn time / sigma time
RESULTS = Path(__file__).resolve().parent / "results" / "codebook.json"


def machine_info() -> dict[str, Any]:
    """What the timings depend on: CPU, cores, library versions, thread pools, BLAS env and current load."""
    import sklearn
    from threadpoolctl import threadpool_info

    return {
        **machine_base(),
        "sklearn": sklearn.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "thread_pools": [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads")} for p in threadpool_info()],
        "loadavg_start": list(os.getloadavg()),
    }


def load_tensors(model: str, quick: bool) -> list[tuple[str, np.ndarray]]:
    """Float32 initializers with at least ``MIN_ELEMENTS`` elements; in quick mode a size-spread subset."""
    proto = onnx.load(str(TASKS[model].default_model_path()))
    out = []
    for init in proto.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and math.prod(init.dims) >= MIN_ELEMENTS:
            out.append((init.name, numpy_helper.to_array(init)))
    if quick:
        small = sorted((t for t in out if t[1].size <= QUICK_MAX_ELEMENTS), key=lambda t: (t[1].size, t[0]))
        keep = np.unique(np.linspace(0, len(small) - 1, min(QUICK_MAX_TENSORS, len(small))).round().astype(int))
        out = [small[i] for i in keep] if small else []
    return out


def naive_three_sigma(x: np.ndarray, k: int) -> np.ndarray:
    """The paper's literal rule, decoded: K equal bins over mean +/- 3 std, each weight replaced by its bin's mean.

    Weights outside the +/- 3 std range fall in the end bins. An empty bin keeps its centre (it decodes nothing).
    This is the reference the project's ``sigma`` method is meant to improve on.
    """
    mu, sd = float(x.mean()), float(x.std())
    lo, width = mu - 3.0 * sd, (6.0 * sd / k) if sd > 0 else 1.0
    idx = np.clip(((x - lo) / width).astype(np.int64), 0, k - 1)
    counts = np.bincount(idx, minlength=k)
    sums = np.bincount(idx, weights=x, minlength=k)
    centres = lo + width * (np.arange(k) + 0.5)
    levels = np.where(counts > 0, sums / np.maximum(counts, 1), centres).astype(np.float32)
    return levels[idx]


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """Run ``fn`` until ``TIME_BUDGET_S`` is spent or ``MAX_REPEATS`` runs; return its result and the fastest time."""
    best, spent, result = math.inf, 0.0, None
    for _ in range(MAX_REPEATS):
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent >= TIME_BUDGET_S:
            break
    assert result is not None
    return result, best


def _ours(groups: np.ndarray, bits: int, method: str) -> np.ndarray:
    """fit + assign (what encoding needs), then decode, which is not timed separately."""
    cb = fit(groups, bits, method)
    return decode(cb, assign(cb, groups))


def _sklearn(x: np.ndarray, k: int) -> np.ndarray:
    """Decoded weights of a single k-means++ / Lloyd run in scikit-learn (the Deep Compression-style baseline)."""
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():  # tensors with fewer than K distinct values warn; the error is still valid
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x.reshape(-1, 1))
    return km.cluster_centers_[km.labels_, 0]


def bench_tensor(w: np.ndarray, bits: int) -> dict[str, Any]:
    """MSE and encode time of every method on one tensor at one bit width."""
    groups = w.reshape(1, -1)
    x64 = groups.astype(np.float64).ravel()
    k = 1 << bits
    runs: dict[str, Callable[[], np.ndarray] | None] = {m: partial(_ours, groups, bits, m) for m in OURS}
    runs["naive3s"] = partial(naive_three_sigma, x64, k)
    skip_sklearn = bits == 8 and w.size > SKLEARN_8BIT_MAX_ELEMENTS  # minutes of K=256 Lloyd steps per tensor
    runs["sklearn"] = None if skip_sklearn else partial(_sklearn, groups.ravel(), k)
    mse: dict[str, float | None] = {}
    secs: dict[str, float | None] = {}
    for name, fn in runs.items():
        if fn is None:
            mse[name] = secs[name] = None
            continue
        approx, secs[name] = timed(fn)
        mse[name] = float(np.mean((np.asarray(approx, np.float64).ravel() - x64) ** 2))
    return {"mse": mse, "time_s": secs}


def ratio(num: float | None, den: float | None) -> float | None:
    """num/den, with 0/0 = 1 (both exact) and None when undefined (a method skipped, or den = 0 < num)."""
    if num is None or den is None:
        return None
    if den == 0:
        return 1.0 if num == 0 else None
    return num / den


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the defined, positive values (None if there are none)."""
    v = [x for x in values if x is not None and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, v)) / len(v)) if v else None


def run_model(model: str, quick: bool) -> list[dict[str, Any]]:
    """One row per (tensor, bits), printing progress to stderr (a full run takes many minutes)."""
    tensors = load_tensors(model, quick)
    rows = []
    t0 = time.perf_counter()
    for i, (name, w) in enumerate(tensors):
        for bits in BITS:
            rows.append(
                {"model": model, "tensor": name, "shape": list(w.shape), "size": int(w.size), "bits": bits}
                | bench_tensor(w, bits)
            )
        print(f"  {model} {i + 1}/{len(tensors)} {name} {w.size} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geomean and max MSE ratios against both k-means references, and sklearn/sigma speed, over ``rows``."""
    out: dict[str, Any] = {"tensors": len(rows)}
    for ref in ("kmeans", "sklearn"):
        for m in ALL_METHODS:
            if m == ref:
                continue
            r = [ratio(row["mse"][m], row["mse"][ref]) for row in rows]
            out[f"mse_{m}/{ref}_geomean"] = geomean(r)
            out[f"mse_{m}/{ref}_max"] = max((x for x in r if x is not None), default=None)
    timed_rows = [row for row in rows if row["time_s"]["sklearn"] is not None]
    out["sklearn_skipped"] = len(rows) - len(timed_rows)
    for m in ALL_METHODS:
        out[f"time_{m}_total_s"] = sum(row["time_s"][m] for row in rows if row["time_s"][m] is not None)
    sk = sum(row["time_s"]["sklearn"] for row in timed_rows)
    sg = sum(row["time_s"]["sigma"] for row in timed_rows)
    out["speedup_sklearn/sigma_total"] = sk / sg if sg > 0 else None
    out["speedup_sklearn/sigma_geomean"] = geomean(ratio(r["time_s"]["sklearn"], r["time_s"]["sigma"]) for r in rows)
    out["speedup_sklearn/kmeans_geomean"] = geomean(ratio(r["time_s"]["sklearn"], r["time_s"]["kmeans"]) for r in rows)
    return out


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The two stated claims, pooled over the tensors of all models."""
    out: dict[str, Any] = {}
    for bits in (3, 4):
        g = summarize([r for r in rows if r["bits"] == bits])["mse_sigma/kmeans_geomean"]
        out[f"sigma_mse_vs_kmeans_{bits}bit"] = {
            "geomean": g,
            "target": MSE_TARGET,
            "pass": g is not None and g <= MSE_TARGET,
        }
    s = summarize(rows)
    for key in ("speedup_sklearn/sigma_geomean", "speedup_sklearn/sigma_total"):
        v = s[key]
        out[key] = {"value": v, "target": SPEED_TARGET, "pass": v is not None and v >= SPEED_TARGET}
    return out


def _fmt(v: Any, spec: str = ".3f") -> str:
    """Table cell: numbers formatted, missing values as '-'."""
    return "-" if v is None else format(v, spec)


def _mse_table(summary: dict[str, dict[str, Any]], ref: str, methods: tuple[str, ...]) -> None:
    """One row per (model, bits): geomean (max) of each method's MSE over the reference's MSE."""
    print(f"{'model/bits':<16}{'n':>4}  " + "".join(f"{m:>18}" for m in methods))
    for key, s in summary.items():
        cells = [f"{_fmt(s[f'mse_{m}/{ref}_geomean'])} ({_fmt(s[f'mse_{m}/{ref}_max'], '.2f')})" for m in methods]
        print(f"{key:<16}{s['tensors']:>4}  " + "".join(f"{c:>18}" for c in cells))


def _time_table(summary: dict[str, dict[str, Any]]) -> None:
    """One row per (model, bits): summed encode seconds per method and the sklearn/sigma speedups."""
    heads = ("sk/sig tot", "sk/sig geo", "sk/km geo")
    speeds = ("speedup_sklearn/sigma_total", "speedup_sklearn/sigma_geomean", "speedup_sklearn/kmeans_geomean")
    print(
        f"{'model/bits':<16}{'n':>4}"
        + "".join(f"{m:>10}" for m in ALL_METHODS)
        + "".join(f"{h:>12}" for h in heads)
        + f"{'sk skip':>8}"
    )
    for key, s in summary.items():
        times = "".join(f"{s[f'time_{m}_total_s']:>10.3f}" for m in ALL_METHODS)
        ups = "".join(f"{_fmt(s[k], '.1f'):>12}" for k in speeds)
        print(f"{key:<16}{s['tensors']:>4}{times}{ups}{s['sklearn_skipped']:>8}")


def print_tables(summary: dict[str, dict[str, Any]], tgt: dict[str, Any]) -> None:
    """MSE vs exact k-means, MSE vs sklearn, encode time, then the targets with PASS/FAIL."""
    print("\nMSE ratio to onnx_statq exact k-means (geomean over tensors; max in brackets)")
    _mse_table(summary, "kmeans", ("sigma", "uniform", "naive3s", "sklearn"))
    print("\nMSE ratio to sklearn KMeans n_init=1 (geomean over tensors; max in brackets)")
    _mse_table(summary, "sklearn", ("sigma", "kmeans", "uniform", "naive3s"))
    print("\nEncode time, seconds summed over tensors (sklearn-skipped rows included for the other methods);")
    print("speedup sklearn/sigma: total over rows where sklearn ran, and geomean per tensor; sklearn/kmeans geomean")
    _time_table(summary)
    print("\nTargets (pooled over all tensors of the three models)")
    for name, t in tgt.items():
        val = t.get("geomean", t.get("value"))
        rel = "<=" if "mse" in name else ">="
        print(f"  {name:<38} {_fmt(val):>10}  (target {rel} {t['target']})  {'PASS' if t['pass'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    """Benchmark every model, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tensors <= 300k elements, <= 15 per model")
    args = parser.parse_args(argv)
    info = machine_info()
    print(
        f"machine: {info['lscpu_model_name'] or info['processor']} | cpus {info['cpu_count']} | numpy {info['numpy']}"
        f" | sklearn {info['sklearn']} | OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']} | load {info['loadavg_start']}"
    )
    print(f"mode: {'quick' if args.quick else 'full'}")
    t0 = time.perf_counter()
    rows = [row for model in MODELS for row in run_model(model, args.quick)]
    summary = {
        f"{m}/{b}": summarize([r for r in rows if r["model"] == m and r["bits"] == b]) for m in MODELS for b in BITS
    }
    summary |= {f"all/{b}": summarize([r for r in rows if r["bits"] == b]) for b in BITS}
    tgt = targets(rows)
    print_tables(summary, tgt)
    info["loadavg_end"] = list(os.getloadavg())
    info["wall_s"] = time.perf_counter() - t0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "targets": tgt,
        "summary": summary,
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {RESULTS} ({info['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
