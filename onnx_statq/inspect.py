"""``onnx-statq inspect``: per-weight statistics and the choices the default pass would make, without writing a model.

The choices come from the pass itself (:meth:`onnx_statq.graph.pass_.StatqPass.plan`: the same find, skip, encode and
bit allocation as a data-free run), so what this shows is what ``onnx-statq MODEL -o OUT`` would do. Plots are
optional (``pip install 'onnx-statq[plot]'``); matplotlib is imported only when they are asked for.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .codebook import EncodedTensor, Representation, row_stats, to_groups
from .config import QuantConfig
from .errors import MissingDependencyError, NoWeightsError, OutputError
from .graph.allocation import Layer, layer_curve
from .graph.pass_ import StatqPass, import_graph, unchanged_reason
from .io import load_model
from .report import Report, SkipRecord, sqnr_db
from .summary import aligned, short_name

__all__ = ["Inspection", "TensorStats", "format_table", "inspect_model", "plot_tensor"]

PLOT_EXTRA = "pip install 'onnx-statq[plot]'"
HIST_BINS = 200
CHANNEL_PANELS = 3  # representative channels shown for a per-channel codebook: smallest, median and largest RMS


@dataclass(frozen=True)
class TensorStats:
    """One weight the pass would quantize: its statistics, the pass's choice and the error of that choice."""

    name: str
    op: str
    shape: tuple[int, ...]
    axis: int | None  # output-channel axis the error is measured over (None: the whole tensor is one group)
    mean: float
    std: float
    kurtosis: float  # non-excess: 3 for a Gaussian
    representation: str
    k: int
    bits: int
    rel_error: float  # measured, as EncodedTensor.rel_error
    predicted_rel_error: float | None  # from the statistics alone, as the bit allocation sees it (None: float16)
    bytes_before: int
    bytes_after: int
    plot: str | None = None

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.rel_error)


@dataclass
class Inspection:
    model: str
    tensors: list[TensorStats] = field(default_factory=list)
    skipped: list[SkipRecord] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    average_index_bits: float | None = None

    def to_dict(self) -> dict[str, Any]:
        before = sum(t.bytes_before for t in self.tensors)
        after = sum(t.bytes_after for t in self.tensors)
        return _clean(
            {
                "model": self.model,
                "tensors": [dict(asdict(t), sqnr_db=t.sqnr_db) for t in self.tensors],
                "skipped": [asdict(s) for s in self.skipped],
                "config": self.config,
                "totals": {
                    "weights_quantized": len(self.tensors),
                    "weights_skipped": len(self.skipped),
                    "weight_bytes_before": before,
                    "weight_bytes_after": after,
                    "average_index_bits": self.average_index_bits,
                },
            }
        )


def _clean(v: Any) -> Any:
    """JSON-safe: inf and nan as strings / null, tuples as lists."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def require_matplotlib() -> None:
    """Fail early, before any work, when plots are asked for without the ``plot`` extra."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"--plot needs matplotlib, which is not installed: {PLOT_EXTRA}") from None


def inspect_model(
    model: onnx.ModelProto | str | os.PathLike[str],
    config: QuantConfig | None = None,
    *,
    plot_dir: str | os.PathLike[str] | None = None,
) -> Inspection:
    """Statistics and the default pass's choice for every weight; with ``plot_dir``, one PNG per quantized tensor."""
    if plot_dir is not None:
        require_matplotlib()
        out = Path(plot_dir)
        if out.exists() and not out.is_dir():
            raise OutputError(f"plot folder {out} is a file")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create plot folder {out}: {exc.strerror}") from None
    name = str(model) if isinstance(model, (str, os.PathLike)) else (model.graph.name or "<model>")
    proto = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    config = config or QuantConfig()
    statq = StatqPass(config)
    report = Report(config=config.to_dict())
    graph, overhead = import_graph(proto)
    try:
        todo, encoded = statq.plan(graph, report, overhead=overhead)
    except NoWeightsError:
        todo, encoded = [], {}
    result = Inspection(model=name, config=report.config)
    for index, w in enumerate(todo):
        values, enc = w.values, encoded[id(w)]
        kept = unchanged_reason(values, enc)
        if kept:
            report.skipped.append(SkipRecord(w.tensor.name, kept, int(values.size)))
            continue
        stats = _stats(w.tensor.name, w.uses[0].node.op, values, enc, report.predicted.get(index))
        if plot_dir is not None:
            path = Path(plot_dir) / _file_name(len(result.tensors), w.tensor.name)
            plot_tensor(path, stats, values, enc)
            stats = replace(stats, plot=str(path))
        result.tensors.append(stats)
    result.skipped = list(report.skipped)
    result.average_index_bits = report.totals.get("average_index_bits")
    return result


def _stats(name: str, op: str, values: np.ndarray, enc: EncodedTensor, predicted: float | None) -> TensorStats:
    """``predicted``: the error the pass's allocation predicted at the chosen width, if it chose this one's; a
    width fixed by the configuration gets the same prediction here, though the pass reports none."""
    s = row_stats(values)
    cb = enc.codebook
    bits = cb.bits if cb is not None else 16
    if cb is None:
        predicted = None
    elif predicted is None:
        predicted = layer_curve(Layer(values, enc.axis, enc), widths=[bits])[bits]
    return TensorStats(
        name=name,
        op=op,
        shape=tuple(int(d) for d in values.shape),
        axis=enc.axis,
        mean=s.mean,
        std=s.std,
        kurtosis=s.kurtosis,
        representation=str(enc.representation),
        k=cb.k if cb is not None else 0,
        bits=bits,
        rel_error=float(enc.rel_error),
        predicted_rel_error=predicted,
        bytes_before=int(values.nbytes),
        bytes_after=int(enc.stored_bytes),
    )


def _file_name(index: int, name: str) -> str:
    """Unique (the index leads) and safe on every file system, whatever characters the tensor name has."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "weight"
    return f"{index:03d}_{safe[:80]}.png"


def format_table(ins: Inspection) -> str:
    """The human-readable report: one row per quantized weight, then the skipped ones with their reasons."""
    head = ["weight", "op", "shape", "mean", "std", "kurt", "repr", "K", "bits", "rel.err", "pred.err"]
    rows = [head]
    for t in ins.tensors:
        row = [
            short_name(t.name),
            t.op,
            "x".join(map(str, t.shape)),
            f"{t.mean:+.2e}",
            f"{t.std:.2e}",
            f"{t.kurtosis:.1f}",
            t.representation,
            str(t.k) if t.k else "-",
            str(t.bits),
            f"{t.rel_error:.2e}",
            "-" if t.predicted_rel_error is None else f"{t.predicted_rel_error:.2e}",
        ]
        rows.append(row)
    lines = aligned(rows)
    if not ins.tensors:
        lines.append("(no weight would be quantized)")
    before = sum(t.bytes_before for t in ins.tensors)
    after = sum(t.bytes_after for t in ins.tensors)
    lines.append("")
    summary = f"{len(ins.tensors)} weights would be quantized: {before / 1024:.1f} KB -> {after / 1024:.1f} KB"
    if ins.average_index_bits is not None:
        summary += f", {ins.average_index_bits:.2f} index bits per weight on average"
    lines.append(summary)
    lines.append("rel.err: measured; pred.err: predicted from a sketch of the weights, as the bit allocation predicts")
    if ins.skipped:
        lines.append(f"skipped ({len(ins.skipped)}):")
        w = max(len(short_name(s.name)) for s in ins.skipped)
        lines += [f"  {short_name(s.name).ljust(w)}  {s.size:>9}  {s.reason}" for s in ins.skipped]
    plots = [t.plot for t in ins.tensors if t.plot]
    if plots:
        lines.append(f"plots: {len(plots)} PNG files in {Path(plots[0]).parent}")
    return "\n".join(lines)


def plot_tensor(path: Path, stats: TensorStats, values: np.ndarray, enc: EncodedTensor) -> None:
    """One PNG: the weight histogram (log counts) with the codebook levels as vertical lines.

    A per-tensor codebook is drawn over the tensor's histogram. Per-channel codebooks differ by channel, so the top
    panel shows every channel scaled to unit RMS (the shape they share) and the panels below show the channels with
    the smallest, median and largest RMS, each with its own levels.
    """
    from matplotlib.figure import Figure

    title = (
        f"{stats.name}  [{'x'.join(map(str, stats.shape))}]  {stats.op}\n"
        f"{stats.representation}"
        + (f", K={stats.k} ({stats.bits} bits)" if stats.k else " (no codebook)")
        + f", rel. error {stats.rel_error:.2e} ({stats.sqnr_db:.1f} dB)"
        + f", kurtosis {stats.kurtosis:.1f}"
    )
    flat = np.asarray(values, np.float32).ravel()
    if enc.representation == Representation.CHANNEL and enc.codebook is not None and enc.axis is not None:
        fig = Figure(figsize=(12, 7.5), layout="constrained")
        grid = fig.add_gridspec(2, CHANNEL_PANELS)
        top = fig.add_subplot(grid[0, :])
        groups = to_groups(np.asarray(values, np.float32), enc.axis)
        rms = np.sqrt(np.mean(groups.astype(np.float64) ** 2, axis=1))
        live = np.flatnonzero(rms > 0)
        scaled = groups[live] / rms[live, None]
        _hist(top, scaled.ravel(), "tab:blue")
        top.set_xlabel("weight / its channel's RMS (all channels)")
        top.set_title(f"{groups.shape[0]} channels, one float16 codebook each; RMS spread {_spread(rms):.1f}x")
        decoded = to_groups(enc.decoded(), enc.axis)
        order = live[np.argsort(rms[live])]
        picks = _representative(order)
        labels = ["smallest RMS", "median RMS", "largest RMS"]
        for j, c in enumerate(picks):
            ax = fig.add_subplot(grid[1, j])
            _hist(ax, groups[c], "tab:gray", bins=min(HIST_BINS, max(20, groups.shape[1] // 8)))
            _levels(ax, enc.codebook.levels[c], legend=False)
            d = groups[c].astype(np.float64) - decoded[c]
            err = float(np.dot(d, d) / max(float(np.dot(groups[c], groups[c].astype(np.float64))), 1e-30))
            which = labels[j] if len(picks) == CHANNEL_PANELS else "channel"
            ax.set_title(f"channel {c}: {which}\nrel. error {err:.1e}", fontsize=9)
            ax.set_xlabel("weight (red: this channel's levels)", fontsize=9)
            ax.tick_params(labelsize=8)
    else:
        fig = Figure(figsize=(11, 5), layout="constrained")
        ax = fig.add_subplot()
        _hist(ax, flat, "tab:blue")
        if enc.codebook is not None:
            _levels(ax, enc.codebook.levels[0])
        else:
            ax.text(0.01, 0.97, "stored as float16: no codebook", transform=ax.transAxes, va="top")
        ax.set_xlabel("weight")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)


def _representative(order: np.ndarray) -> list[int]:
    if order.size == 0:
        return []
    if order.size < CHANNEL_PANELS:
        return [int(c) for c in order]
    return [int(order[0]), int(order[order.size // 2]), int(order[-1])]


def _spread(rms: np.ndarray) -> float:
    live = rms[rms > 0]
    return float(live.max() / live.min()) if live.size else 1.0


def _hist(ax: Any, x: np.ndarray, color: str, bins: int = HIST_BINS) -> None:
    x = np.asarray(x, np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    ax.stairs(counts, edges, fill=True, color=color, alpha=0.6, label=f"weights ({x.size})")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)
    ax.set_ylabel("count (log)")


def _levels(ax: Any, levels: np.ndarray, legend: bool = True) -> None:
    u = np.unique(np.asarray(levels, np.float64))
    for i, v in enumerate(u):
        ax.axvline(v, color="tab:red", lw=0.8, alpha=0.85, label=f"codebook levels ({u.size})" if i == 0 else None)
    if legend:
        ax.legend(loc="upper right", fontsize=8)
