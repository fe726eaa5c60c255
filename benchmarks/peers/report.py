"""Tables, verdicts and plots of the peer comparison, built from the JSON ``benchmarks.bench_peers`` writes.

Nothing here measures: ``bench_peers`` calls these functions as rows arrive, and ``benchmarks.make_docs`` calls them
again on the stored JSON, so every number and every yes/no statement in docs/benchmarks.md is computed from the
results file, never typed by hand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.rerun import elsewhere

# The rows the verdicts compare (tool keys of benchmarks.peers.TOOLS).
STATQ_4 = "statq/4"
STATQ_4_CALIB = "statq-calib/4"
EIGHT_BIT_PEERS = ("ort-dynamic/8", "ort-static-qdq/8")
FOUR_BIT_PEERS = (
    "ort-nbits-rtn/4",
    "ort-nbits-rtn-gather/4",
    "ort-nbits-hqq/4",
    "ort-nbits-gptq/4",
    "onnxsim-kmeans/4",
    "onnxsim-nf4/4",
)
MB = 1e6


# ------------------------------------------------------------------------------------------------ derived numbers


def derive(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ratios against each model's float row (size, zipped size, metric change); returns the same rows."""
    floats = {r["model"]: r for r in rows if r["tool"] == "float" and r.get("status") == "ok"}
    for r in rows:
        ref = floats.get(r["model"])
        if r.get("status") != "ok" or ref is None:
            continue
        r["file_ratio"] = ref["file_bytes"] / r["file_bytes"]
        r["zipped_ratio"] = ref["zipped_bytes"] / r["zipped_bytes"]
        r["delta_points"] = 100.0 * (r["value"] - ref["value"]) + 0.0
        if r.get("packed_bytes"):
            r["packed_ratio"] = ref["file_bytes"] / r["packed_bytes"]
    return rows


def models_in(rows: list[dict[str, Any]]) -> list[str]:
    """Models in the order they were run."""
    return list(dict.fromkeys(r["model"] for r in rows))


def _ok(row: dict[str, Any] | None) -> bool:
    return row is not None and row.get("status") == "ok"


# ------------------------------------------------------------------------------------------------ table


def _num(v: Any, fmt: str, empty: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return empty
    return format(v, fmt)


def status_cell(row: dict[str, Any]) -> str:
    """'ok', 'ok; 2/3 weights; float32 storage (packed 0.4 MB)', 'n/a: ...', 'failed: ...'."""
    st = row.get("status", "?")
    if st != "ok":
        return f"{st}: {row.get('error', '')}".replace("|", "/")[:160]
    parts = ["ok"]
    w = row.get("weights") or {}
    if row["tool"] != "float" and w.get("total") and w.get("changed", w["total"]) < w["total"]:
        parts.append(f"{w['changed']}/{w['total']} weights")
    if row.get("packed_bytes"):
        parts.append(f"float32 storage (packed {row['packed_bytes'] / MB:.2f} MB)")
    return "; ".join(parts)


TABLE_HEADERS = [
    "tool / config",
    "metric",
    "Δ points",
    "size MB",
    "× float",
    "zipped ×",
    "quant s",
    "latency ms (× float)",
    "load ms (× float)",
    "status",
]


def table_cells(row: dict[str, Any]) -> list[str]:
    """One row of a model's table; failed and n/a rows keep their label and status only."""
    if row.get("status") != "ok":
        return [row["label"], *["-"] * (len(TABLE_HEADERS) - 2), status_cell(row)]
    lat = _num(row.get("latency_ms"), ".2f")
    if row.get("float_latency_ms"):
        lat += f" ({row['latency_ms'] / row['float_latency_ms']:.2f})"
    load = _num(row.get("load_ms"), ".0f")
    if row.get("float_load_ms"):
        load += f" ({row['load_ms'] / row['float_load_ms']:.1f})"
    return [
        row["label"],
        f"{row['value']:.4f}",
        f"{row.get('delta_points', 0.0):+.2f}",
        f"{row['file_bytes'] / MB:.3f}",
        _num(row.get("file_ratio"), ".2f") + "x",
        _num(row.get("zipped_ratio"), ".2f") + "x",
        _num(row.get("quant_s"), ".2f"),
        lat if row["tool"] != "float" else _num(row.get("latency_ms"), ".2f"),
        load if row["tool"] != "float" else _num(row.get("load_ms"), ".0f"),
        status_cell(row),
    ]


def model_table(rows: list[dict[str, Any]], model: str) -> list[str]:
    """Markdown table of one model, rows in run order."""
    mine = [r for r in rows if r["model"] == model]
    ref = next((r for r in mine if r["tool"] == "float"), {})
    head = f"### {model} ({ref.get('metric', '?')}, n={ref.get('n', '?')})"
    lines = [head, "", "| " + " | ".join(TABLE_HEADERS) + " |", "|" + "---|" * len(TABLE_HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in table_cells(r)) + " |" for r in mine]
    return lines


# ------------------------------------------------------------------------------------------------ verdicts


def _mb(row: dict[str, Any]) -> str:
    return f"{row['file_bytes'] / MB:.2f} MB"


def _layer_bits(row: dict[str, Any]) -> dict[str, int]:
    """onnx-statq's bits per layer ({"3": 1, "8": 2}), as its worker recorded them in the row's notes."""
    return row.get("layer_bits") or (row.get("notes") or {}).get("layer_bits") or {}


def _why_not_smaller(statq: dict[str, Any], peer: dict[str, Any]) -> str:
    """Facts from the rows that explain a peer file smaller than onnx-statq's."""
    bits = _layer_bits(statq)
    wide = sum(n for b, n in bits.items() if int(b) > 8)
    reasons = []
    if wide:
        reasons.append(f"onnx-statq keeps {wide} weight tensor(s) in float16 where a codebook would cost more")
    sw, pw = statq.get("weights") or {}, peer.get("weights") or {}
    if sw.get("float_bytes_after", 0) > pw.get("float_bytes_after", float("inf")):
        reasons.append(
            f"onnx-statq leaves {sw['float_bytes_after'] / MB:.2f} MB of float weights against "
            f"{pw['float_bytes_after'] / MB:.2f} MB"
        )
    return "; ".join(reasons) or "no single cause shows in the rows (layer bits and float bytes left are in the JSON)"


def _why_less_accurate(statq: dict[str, Any], peer: dict[str, Any]) -> str:
    """Facts from the rows that explain a peer more accurate than onnx-statq at 4 bits."""
    reasons = []
    pw, sw = peer.get("weights") or {}, statq.get("weights") or {}
    if pw.get("total") and pw.get("changed", 0) < pw["total"]:
        untouched = pw.get("untouched_bytes", pw.get("float_bytes_after", 0))
        reasons.append(
            f"the peer quantizes only {pw['changed']} of {pw['total']} weight tensors and leaves "
            f"{untouched / MB:.2f} MB of float32 weights as they were "
            f"(file size against float: peer {1 / peer['file_ratio']:.2f}x, onnx-statq {1 / statq['file_ratio']:.2f}x)"
        )
    if peer.get("calibrated"):
        reasons.append("the peer uses the calibration data")
    bits = _layer_bits(statq)
    low = sorted(int(b) for b in bits if int(b) < 4)
    if low:
        reasons.append(
            f"onnx-statq's 4 bits are an average over its layers (some get {min(low)} bits), while every layer the "
            "peer quantizes keeps at least 4 bits"
        )
    if sw and not reasons:
        reasons.append("a per-tensor codebook of 16 levels loses more than the peer's per-block scales here")
    return "; ".join(reasons)


def _best_at_size(rows: dict[str, dict[str, Any]], limit_bytes: int) -> dict[str, Any] | None:
    """The most accurate onnx-statq row (data-free or calibrated, any bits) no larger than ``limit_bytes``."""
    cands = [
        r
        for k, r in rows.items()
        if k.startswith(("statq/", "statq-calib/")) and _ok(r) and r["file_bytes"] <= limit_bytes
    ]
    return max(cands, key=lambda r: (r["value"], -r["file_bytes"]), default=None)


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: (a) onnx-statq 4b smaller than every 8-bit peer; (b) at least as accurate as each 4-bit peer at
    equal or smaller size. Each check carries ``ok`` (True/False/None for not measurable) and a sentence."""
    out: list[dict[str, Any]] = []
    for model in models_in(rows):
        by = {r["tool"]: r for r in rows if r["model"] == model}
        statq, calib = by.get(STATQ_4), by.get(STATQ_4_CALIB)
        if not _ok(statq):
            reason = "not run" if statq is None else statq.get("error", "failed")
            out.append({"model": model, "check": "a", "ok": None, "text": f"onnx-statq 4 bits: {reason}"})
            continue
        assert statq is not None
        out.append(_verdict_a(model, statq, by))
        for key in FOUR_BIT_PEERS:
            if key in by:
                out.append(_verdict_b(model, statq, calib, by[key], by))
    return out


def _verdict_a(model: str, statq: dict[str, Any], by: dict[str, dict[str, Any]]) -> dict[str, Any]:
    peers = [by[k] for k in EIGHT_BIT_PEERS if k in by]
    measured = [p for p in peers if _ok(p)]
    skipped = [f"{p['label']} ({p['status']}: {p.get('error', '')[:80]})" for p in peers if not _ok(p)]
    larger = [p for p in measured if statq["file_bytes"] >= p["file_bytes"]]
    sizes = ", ".join(f"{p['label']} {_mb(p)}" for p in measured)
    if not measured:
        ok, text = None, "no 8-bit peer produced a model"
    elif larger:
        ok = False
        text = (
            f"**no**: onnx-statq 4 bits is {_mb(statq)}, not smaller than {', '.join(p['label'] for p in larger)} "
            f"({sizes}); {_why_not_smaller(statq, larger[0])}"
        )
    else:
        ratio = min(p["file_bytes"] for p in measured) / statq["file_bytes"]
        text = f"**yes**: {_mb(statq)} against {sizes} ({ratio:.2f}x smaller than the smallest)"
        ok = True
    if skipped:
        text += f". Not compared: {'; '.join(skipped)}"
    return {"model": model, "check": "a", "ok": ok, "text": text}


def _compare_size(statq: dict[str, Any], peer: dict[str, Any]) -> str:
    word = "smaller" if statq["file_bytes"] < peer["file_bytes"] else "larger"
    if statq["file_bytes"] == peer["file_bytes"]:
        word = "the same size"
    return f"{word} ({_mb(statq)} vs {_mb(peer)})"


# Metrics that are a fraction of evaluation samples: a difference reads as a count of samples.
COUNTED_METRICS = ("accuracy", "top1")


def _compare_metric(statq: dict[str, Any], peer: dict[str, Any]) -> str:
    d = 100.0 * (statq["value"] - peer["value"])
    word = "more accurate" if d > 0 else "less accurate" if d < 0 else "as accurate"
    count = ""
    if d and statq.get("metric") in COUNTED_METRICS and statq.get("n"):
        count = f", {round(abs(statq['value'] - peer['value']) * statq['n'])} of {statq['n']} samples"
    return f"{word} ({statq['value']:.4f} vs {peer['value']:.4f}, {d:+.2f} points{count})"


def _verdict_b(
    model: str,
    statq: dict[str, Any],
    calib: dict[str, Any] | None,
    peer: dict[str, Any],
    by: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    head = {"model": model, "check": "b", "peer": peer["tool"], "peer_label": peer["label"]}
    if not _ok(peer):
        return {**head, "ok": None, "text": f"not compared ({peer['status']}: {peer.get('error', '')})"}
    size_ok = statq["file_bytes"] <= peer["file_bytes"]
    acc_ok = statq["value"] >= peer["value"]
    size, acc = _compare_size(statq, peer), _compare_metric(statq, peer)
    if size_ok and acc_ok:
        text = f"**yes**: onnx-statq is {size} and {acc}"
    elif size_ok:
        text = f"**no**: onnx-statq is {size} but {acc}: {_why_less_accurate(statq, peer)}"
    else:
        text = f"**no**: onnx-statq is {size}: {_why_not_smaller(statq, peer)}; it is {acc}"
        if not acc_ok:
            text += f": {_why_less_accurate(statq, peer)}"
    if peer.get("packed_bytes"):
        packed_ok = statq["file_bytes"] <= peer["packed_bytes"]
        text += (
            f". The peer stores its quantized weights as float32 (simulated quantization); packed, its codes would "
            f"take about {peer['packed_bytes'] / MB:.2f} MB, which onnx-statq is "
            f"{'no larger than' if packed_ok else 'larger than'}"
        )
    if _ok(calib) and calib is not None:
        text += f". Calibrated onnx-statq 4 bits: {_compare_size(calib, peer)}, {_compare_metric(calib, peer)}"
    if not (size_ok and acc_ok):
        best = _best_at_size(by, peer["file_bytes"])
        if best is not None:
            bd = 100.0 * (best["value"] - peer["value"])
            text += (
                f". The most accurate onnx-statq file no larger than the peer's is {best['label']}: "
                f"{best['value']:.4f} at {_mb(best)} ({bd:+.2f} points against the peer)"
            )
    return {**head, "ok": size_ok and acc_ok, "size_ok": size_ok, "accuracy_ok": acc_ok, "text": text}


def b_summary(checks: list[dict[str, Any]]) -> str:
    """One sentence over a model's (b) checks: against which 4-bit peers onnx-statq holds, and against which not."""
    b = [c for c in checks if c["check"] == "b"]
    yes = [c["peer_label"] for c in b if c["ok"] is True]
    no = [c["peer_label"] for c in b if c["ok"] is False]
    skipped = [c["peer_label"] for c in b if c["ok"] is None]
    measured = len(yes) + len(no)
    if not measured:
        return "no 4-bit peer could be compared"
    if not no:
        text = f"**yes**, against each of the {measured} 4-bit peers that ran"
    elif not yes:
        text = f"**no**, against none of the {measured} 4-bit peers that ran"
    else:
        text = f"**partly**, against {len(yes)} of the {measured} 4-bit peers that ran"
    if yes:
        text += f" (holds against: {', '.join(yes)}"
        text += f"; not against: {', '.join(no)})" if no else ")"
    elif no:
        text += f" (not against: {', '.join(no)})"
    if skipped:
        text += f"; not run on this model: {', '.join(skipped)}"
    return text


def verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The written comparison, one bullet per check, grouped by model."""
    lines = []
    checks = verdicts(rows)
    for model in models_in(rows):
        mine = [c for c in checks if c["model"] == model]
        if not mine:
            continue
        lines += [f"**{model}**", ""]
        lines += [f"- (a) smaller than every 8-bit peer: {c['text']}." for c in mine if c["check"] == "a"]
        b = [c for c in mine if c["check"] == "b"]
        if b:
            lines.append(f"- (b) at least as accurate as each 4-bit peer at equal or smaller size: {b_summary(b)}.")
            lines += [f"  - vs {c['peer_label']}: {c['text']}." for c in b]
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------------------ whole page


def markdown(
    data: dict[str, Any], plots: dict[str, str] | None = None, level: int = 2, with_verdicts: bool = True
) -> str:
    """Machine, the verdicts, one table (and plot) per model, and what the columns mean."""
    rows = derive(data["rows"])
    m, o = data["machine"], data["options"]
    h = "#" * level
    versions = ", ".join(f"{k} {v}" for k, v in sorted((m.get("packages") or {}).items()))
    lines = [
        f"Measured on {m.get('lscpu_model_name') or m.get('processor')} ({m.get('cpu_count')} cores), "
        f"Python {m.get('python')}, numpy {m.get('numpy')}, {versions}; onnx-statq commit {m.get('commit') or '?'}"
        f"{' (modified)' if m.get('dirty') else ''}; {m.get('date')}; load average {_load(m)}; "
        f"{_duration(data.get('wall_s'))}.",
    ]
    if m.get("commit_at_end") not in (None, m.get("commit")):
        lines.append(
            f"\nThe repository moved from commit {m.get('commit')} to {m['commit_at_end']} during the run. Every row "
            "runs in a fresh process, so each used the library as it stood when that row started."
        )
    lines += _reruns(m)
    if o.get("limit") is not None:
        lines.append(f"\n**Quick run: only the first {o['limit']} evaluation samples per task; indicative only.**")
    if with_verdicts:
        lines += ["", f"{h}# Verdicts: onnx-statq at 4 bits (data-free, default options) against the peers", ""]
        lines += verdict_lines(rows)
    for model in models_in(rows):
        lines += ["", *_retitle(model_table(rows, model), level)]
        if plots and model in plots:
            lines += ["", f"![{model}: task metric against file size]({plots[model]})"]
    lines += ["", *notes(o)]
    return "\n".join(lines).rstrip() + "\n"


def _retitle(lines: list[str], level: int) -> list[str]:
    return [("#" * (level + 1) + line[3:]) if line.startswith("### ") else line for line in lines]


def _load(m: dict[str, Any]) -> str:
    a, b = m.get("loadavg_start"), m.get("loadavg_end")
    if not a:
        return "?"
    return f"{a[0]:.1f} at the start" + (f", {b[0]:.1f} at the end" if b else "")


def _duration(s: float | None) -> str:
    return "run time ?" if s is None else f"run time {s / 60:.1f} min"


PEERS_MACHINE_KEYS = ("lscpu_model_name", "cpu_count")  # bench_peers' names for the CPU and its cores


def _reruns(m: dict[str, Any]) -> list[str]:
    """The ``--update`` runs, a sentence each: their rows replaced the original run's, and each has its own run time
    (the header's is the original run's)."""
    runs = [
        f"Rerun with `--update` at commit {up.get('commit') or '?'}{' (modified)' if up.get('dirty') else ''}"
        f"{elsewhere(up, m, PEERS_MACHINE_KEYS)}, {up.get('date')}: {', '.join(up.get('tools') or [])}"
        f"{' on ' + ', '.join(up['models']) if up.get('models') else ''}; {_duration(up.get('wall_s'))}."
        for up in m.get("updates", [])
    ]
    return ["\n" + " ".join(runs)] if runs else []


def notes(o: dict[str, Any]) -> list[str]:
    """What each column and tool means (with the options of the run)."""
    return [
        f"Every row is one quantized file, made and measured in its own process (timeout {o.get('timeout')} s). "
        f"Calibrated tools get the same {o.get('samples')} calibration samples of the task (disjoint from the "
        "evaluation data). metric: the task's main metric on the evaluation set (Δ points: ×100 change against "
        "float). size MB: the file(s) written; × float and zipped ×: float size over this size, raw and after "
        "deflate (`onnx_statq.io.zipped_size`). quant s: wall time of the tool from file to file (onnx-statq: "
        "load + pass + save, without its zipped-size accounting). latency ms: median of "
        f"{o.get('runs')} runs of one input (the first calibration sample, batch 1) in onnxruntime CPU with one "
        "intra-op thread, float and quantized runs interleaved in the same process; load ms: median of 3 session "
        "creations with the same options (onnxruntime folds onnx-statq's decode and prepacks MatMulNBits here); "
        "in brackets the ratio to the float model measured alongside. status: n/a = the tool has nothing to quantize "
        "in this model; `k/n weights` = the tool changed k of the model's n float weight tensors of >= 1024 "
        "elements; float32 storage = the tool writes its dequantized weights back as float32 (the file does not "
        "shrink), with the size its codes would take packed.",
        "",
        "Tools: onnx-statq `QuantConfig(bits=b)` (defaults: sigma codebooks, auto granularity, bit allocation), "
        "calibrated = sequential calibration on the feeds; statq k-means = `QuantConfig(method='kmeans')`. "
        "onnxruntime: `quantize_dynamic` (int8 weights, default op types); `quantize_static` (QDQ, int8 "
        "activations and int8 weights, per channel where the opset allows (13+), MinMax calibration through a "
        "`CalibrationDataReader`, after `quant_pre_process` where it succeeds); `MatMulNBitsQuantizer` (MatMul "
        "only; default config = round to nearest, asymmetric, blocks of 128; +Gather also quantizes embedding "
        "tables; HQQ; GPTQ calibrated, blocks of 32, or larger where a MatMul would get an odd block count, which "
        "onnxruntime's GPTQ zero-point packing cannot handle). onnxsim (PyPI): "
        "`quantize_weight_only_kmeans`, `quantize_weight_only_nf4` (defaults), `quantize_weight_only_squeezellm` "
        "and `quantize_weight_only_gptvq` (defaults, with the calibration feeds); all four handle MatMul/Gemm "
        "layers with a constant 2-D float32 weight only, NF4 only where the reduction dimension is a multiple of 64, "
        "SqueezeLLM only with a 2-D activation input: 'changed nothing' means no layer of the model qualified.",
    ]


# ------------------------------------------------------------------------------------------------ plots

# Data-free as large hollow circles, calibrated as small filled squares: both stay visible where they coincide.
_STATQ_STYLE: dict[str, dict[str, Any]] = {
    "onnx-statq": dict(color="tab:blue", marker="o", markerfacecolor="none", markersize=11, markeredgewidth=1.8),
    "onnx-statq calibrated": dict(color="tab:green", marker="s", markersize=6),
}
_PEER_MARKERS = {
    "statq-kmeans/4": ("tab:cyan", "P"),
    "ort-dynamic/8": ("tab:red", "v"),
    "ort-static-qdq/8": ("tab:orange", "^"),
    "ort-nbits-rtn/4": ("tab:purple", "D"),
    "ort-nbits-rtn-gather/4": ("tab:pink", "d"),
    "ort-nbits-hqq/4": ("tab:brown", "X"),
    "ort-nbits-gptq/4": ("tab:olive", "*"),
    "onnxsim-kmeans/4": ("black", "h"),
    "onnxsim-nf4/4": ("darkslateblue", "p"),
    "onnxsim-squeezellm/4": ("goldenrod", "<"),
    "onnxsim-gptvq/4": ("teal", ">"),
}


def write_plots(data: dict[str, Any], outdir: Path) -> dict[str, Path]:
    """One PNG per model: the task metric against file size (log x), onnx-statq as curves over bits, peers as
    markers, float as reference lines. Returns {model: path}; empty when matplotlib is missing.

    The y axis is the change of the task metric against float in points on a symmetric-log scale (linear within
    +-LINTHRESH points), each tick also giving the metric itself: a 0.1-point difference and a collapse by 90 points
    are both readable on one plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator
    except ImportError:
        return {}
    rows = derive(data["rows"])
    outdir.mkdir(parents=True, exist_ok=True)
    for stale in outdir.glob("*.png"):
        stale.unlink()
    paths = {}
    for model in models_in(rows):
        mine = [r for r in rows if r["model"] == model and _ok(r)]
        ref = next((r for r in mine if r["tool"] == "float"), None)
        if ref is None:
            continue
        fig, ax = plt.subplots(figsize=(10.5, 5.8), dpi=110)
        ax.axhline(0.0, color="gray", linestyle="--", linewidth=1)
        ax.axvline(ref["file_bytes"] / MB, color="gray", linestyle=":", linewidth=1)
        ax.plot(
            [ref["file_bytes"] / MB],
            [0.0],
            linestyle="none",
            marker="*",
            color="gray",
            markersize=13,
            label=f"float ({ref['metric']} {ref['value']:.4f}, {ref['file_bytes'] / MB:.2f} MB; dashed lines)",
        )
        for (family, style), dy in zip(_STATQ_STYLE.items(), (-12, 6), strict=True):
            pts = sorted((r for r in mine if r.get("family") == family), key=lambda r: r["file_bytes"])
            if not pts:
                continue
            xs = [r["file_bytes"] / MB for r in pts]
            ys = [r["delta_points"] for r in pts]
            ax.plot(xs, ys, label=family, linestyle="-", linewidth=1.6, **style)
            for r, x, y in zip(pts, xs, ys, strict=True):
                ax.annotate(
                    f"{r['bits']}b",
                    (x, y),
                    textcoords="offset points",
                    xytext=(5, dy),
                    fontsize=8,
                    color=style["color"],
                )
        for r in mine:
            if r["tool"] not in _PEER_MARKERS:
                continue
            color, marker = _PEER_MARKERS[r["tool"]]
            x, y = r["file_bytes"] / MB, r["delta_points"]
            ax.plot([x], [y], linestyle="none", marker=marker, color=color, markersize=9, label=r["label"])
            if r.get("packed_bytes"):
                px = r["packed_bytes"] / MB
                ax.plot([px], [y], linestyle="none", marker=marker, markerfacecolor="none", color=color, markersize=9)
                ax.plot([px, x], [y, y], linestyle=":", color=color, linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        deltas = [r["delta_points"] for r in mine]
        lo, hi = min(deltas), max(deltas)
        ax.set_yscale("symlog", linthresh=LINTHRESH, linscale=0.6)
        ticks = [t for t in SYMLOG_TICKS if lo * 1.3 - 0.02 <= t <= hi * 1.3 + 0.02]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _, f=ref["value"]: _tick(t, f)))
        ax.set_ylim(_symlog_pad(lo, -1), _symlog_pad(hi, +1))
        ax.set_xlabel("file size, MB (log scale)")
        ax.set_ylabel(f"Δ {ref['metric']} against float, points (symlog)\n[in brackets: {ref['metric']}]")
        ax.set_title(f"{model}: {ref['metric']} (n={ref.get('n')}) against file size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        if any(r.get("packed_bytes") for r in mine):
            fig.text(
                0.01,
                0.01,
                "hollow markers: the size the float32-stored (simulated) peer codes would take if packed",
                fontsize=7,
                color="dimgray",
            )
        fig.tight_layout()
        path = outdir / f"{model}.png"
        fig.savefig(path)
        plt.close(fig)
        paths[model] = path
    return paths


LINTHRESH = 0.1  # points: the linear band of the symlog y axis
SYMLOG_TICKS = (-100, -30, -10, -3, -1, -0.3, -0.1, 0, 0.1, 0.3, 1, 3, 10)


def _tick(t: float, ref: float) -> str:
    """'-1 (0.9894)': a change in points and the metric it means."""
    return f"0 ({ref:.4f})" if t == 0 else f"{t:+g} ({ref + t / 100:.4f})"


def _symlog_pad(v: float, side: int) -> float:
    """An axis limit a little beyond ``v`` on the symlog scale (``side`` -1 for the bottom, +1 for the top)."""
    if side * v <= LINTHRESH:
        return side * LINTHRESH * 1.5
    return v * 1.4
