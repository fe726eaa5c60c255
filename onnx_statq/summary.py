"""The end-of-run summary the CLI prints: one row per layer, then totals, calibration and the output check.

Kept apart from :mod:`.cli` so the click layer stays a thin mapping of flags onto :func:`~onnx_statq.api.quantize_file`;
everything here reads a :class:`~onnx_statq.report.Report` and returns text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .plan import RECOMMENDED_SAMPLES
from .report import Report

__all__ = ["LOW_RANDOM_SQNR_DB", "NAME_WIDTH", "aligned", "format_summary", "short_name"]

LOW_RANDOM_SQNR_DB = 20.0  # below this on random inputs, the summary suggests --verify-data
NAME_WIDTH = 48  # the layer column; longer names are cut in the middle


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as left-aligned columns two spaces apart: the summary's, ``inspect``'s and ``check``'s tables."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """A long name cut in the middle: exported names share long prefixes (``If_0_then_branch__Inline_0__...``) and
    differ at the end, and a cut that looks whole would be copied into ``--exclude`` as it is (the JSON report and
    ``--exclude``'s error, which lists the nearest names, carry them whole)."""
    if len(name) <= width:
        return name
    head = (width - 3) // 2
    return f"{name[:head]}...{name[len(name) - (width - 3 - head) :]}"


def format_summary(report: Report) -> str:
    """The table of quantized layers and the totals lines, as the CLI prints them unless --json or --quiet."""
    rows = [("weight", "op", "shape", "repr", "K", "bits", "rel.err", "predicted", "SQNR dB")]
    for r in report.layers:
        rows.append(
            (
                short_name(r.name),
                r.op,
                "x".join(map(str, r.shape)),
                r.representation,
                str(r.k),
                str(r.bits),
                f"{r.rel_error:.2e}",
                "" if r.predicted_rel_error is None else f"{r.predicted_rel_error:.2e}",
                f"{r.sqnr_db:.1f}",
            )
        )
    lines = aligned(rows)
    t = report.totals
    fb, fa = t["file_bytes_before"], t["file_bytes_after"]
    zb, za = t["zipped_bytes_before"], t["zipped_bytes_after"]
    lines += [
        "",
        f"weights quantized: {t['weights_quantized']}   skipped: {t['weights_skipped']}"
        + (f" ({report.skip_summary()})" if report.skipped else ""),
        f"file:   {_fmt_bytes(fb)} -> {_fmt_bytes(fa)}  ({fb / fa:.2f}x smaller)",
        f"zipped: {_fmt_bytes(zb)} -> {_fmt_bytes(za)}  ({zb / za:.2f}x smaller)",
        "time:   " + ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in report.timings.items()),
    ]
    if "average_index_bits" in t:
        stored = t.get("average_stored_bits")
        extra = f", {stored:.2f} stored per weight with codebooks" if stored is not None else ""
        avg, target = t["average_index_bits"], t["allocation_target"]
        if avg is None:  # the allocation put every layer in float16 (a high SQNR target)
            lines.append(f"bits:   no codebook: every weight the allocation chose is float16{extra} ({target})")
        else:
            lines.append(f"bits:   {avg:.2f} per weight on average{extra} ({target})")
    if report.calibration:
        c = report.calibration
        sq = c.get("model_output_sqnr_db")
        head = f"calibration: {c['mode']}, {c['samples']} samples, {c['layers_calibrated']} layers"
        if c["samples"] < RECOMMENDED_SAMPLES:
            head += f" (fewer than {RECOMMENDED_SAMPLES} samples: docs/calibration.md, 'How many samples')"
        if c.get("not_calibrated_in_subgraphs"):
            head += f"; {c['not_calibrated_in_subgraphs']} weights inside If/Loop/Scan subgraphs stay data-free"
        if c.get("mask_input"):
            head += f"; padding from {c['mask_input']} left out"
        if sq is not None:
            head += f"; model output SQNR vs float on the calibration data: {sq:.1f} dB"
        elif c.get("model_output_sqnr_note"):
            head += f"; no model output SQNR: {c['model_output_sqnr_note']}"
        lines.append(head)
    if report.verify.get("skipped"):
        lines.append(f"verify: skipped: {report.verify['skipped']}")
        if report.verify.get("random"):  # random inputs failed or could not be made; the user's may well work
            lines.append("verify: note: --verify-data DATA runs the check on your inputs")
    elif report.verify:
        lines += _verify_lines(report.verify)
    return "\n".join(lines)


def _verify_lines(v: dict[str, Any]) -> list[str]:
    """The check's worst output SQNR; on random inputs below ``LOW_RANDOM_SQNR_DB`` a pointer to ``--verify-data``
    (noise puts class scores near ties: such a figure says little of real inputs). The argmax agreement stays in
    the JSON report: on an embedding or a score map it means nothing, and the table cannot tell those apart."""
    on_data = v.get("source") == "data"
    count = f"{v['samples']} samples" if "samples" in v else f"{v.get('feeds')} feeds"
    where = f"{count} of {v['data']}" if on_data else "random inputs"
    line = f"verify: onnxruntime output SQNR vs float on {where}: {v['min_sqnr_db']:.1f} dB"
    lines = [line]
    if not on_data and v["min_sqnr_db"] < LOW_RANDOM_SQNR_DB:
        lines.append(
            "verify: note: random inputs can read far lower than real ones; --verify-data DATA.npz checks on yours"
        )
    if v.get("note"):
        lines.append(f"verify: note: {v['note']}")
    return lines
