"""The human-readable report of ``onnx-statq check``: what :func:`~.check.check_model` found, as text.

Apart from :mod:`.check`, which runs onnxruntime and its tools; this only formats a :class:`~.check.CheckResult`.
"""

from __future__ import annotations

from ..summary import aligned
from .check import CheckResult

__all__ = ["format_check"]


def format_check(res: CheckResult) -> str:
    """The human-readable check report."""
    lines = [f"model: {res.model} ({res.file_bytes / 1024:.1f} KB)"]
    if res.loads and res.runs:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v)) or 'scalar'}" for k, v in res.inputs.items())
        lines.append(f"onnxruntime CPU: loads and runs on {res.inputs_from} ({shapes})")
    elif res.loads:
        lines.append(f"onnxruntime CPU: loads, but fails on {res.inputs_from}: {res.run_error}")
    else:
        lines.append(f"onnxruntime CPU: does not load: {res.load_error}")
    rows: list[tuple[str, ...]] = [("domain:op", "opset", "nodes", "CPU", "NNAPI", "CoreML NN", "CoreML MLProgram")]
    for o in res.ops:
        rows.append(
            (
                f"{o.domain}:{o.op}",
                str(o.opset),
                "?" if o.nodes is None else str(o.nodes),
                o.cpu,
                *("yes" if x else "-" for x in (o.nnapi, o.coreml_neuralnetwork, o.coreml_mlprogram)),
            )
        )
    lines += ["", *aligned(rows), ""]
    f = res.ort_format
    if f.get("ok"):
        what = "is ORT format" if f["note"].startswith("already") else "converts"
        lines.append(
            f"ORT format: {what} ({f['bytes'] / 1024:.1f} KB, {f['zipped_bytes'] / 1024:.1f} KB zipped; {f['note']})"
        )
        lines.append("  a reduced onnxruntime build needs: " + "; ".join(f["required_operators"]))
    else:
        lines.append(f"ORT format: fails: {f.get('error')}")
    if res.eps:
        lines.append("")
        lines.append("execution providers (onnxruntime's usability checker, by op type):")
        for e in res.eps:
            if e.view == "loaded":
                where = "loaded (decode folded)" if res.has_decode else "loaded"
            else:
                where = "stored (decode kept, as in .ort)" if res.has_decode else "as stored"
            lines.append(
                f"  {e.ep:<21} {where:<33} fixed input shapes: {e.supported_nodes_fixed}/{e.nodes} nodes, "
                f"{e.partitions_fixed} partition(s), {e.suitability_fixed}; declared shapes: "
                f"{e.supported_nodes}/{e.nodes}, {e.suitability}"
            )
            if e.unsupported_ops:
                lines.append(f"  {'':<21} {'':<33} unsupported: {', '.join(e.unsupported_ops)}")
            if e.view == "stored":  # the decoded weights are computed, no longer initializers
                lines += [f"  {'':<55} caveat: {c}" for c in e.caveats if "constant" in c and "eight" in c]
    problems = res.problems
    lines.append("")
    lines.append("result: OK" if not problems else "result: FAILED: " + "; ".join(problems))
    return "\n".join(lines)
