"""``onnx-statq check``: what onnxruntime (CPU, NNAPI, CoreML) makes of a model, from onnxruntime's own tables.

- CPU kernels come from onnxruntime's kernel registry (``get_all_opkernel_def``).
- NNAPI and CoreML coverage comes from ``onnxruntime.tools.mobile_helpers.usability_checker`` and the supported-op
  tables that onnxruntime ships next to it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from ..errors import CheckFailedError, OutputError, UnsupportedModelError, first_line
from ..io import load_model, zipped_size
from .cpu_run import RANDOM, CpuRun, run_cpu
from .ort_format import (
    CONFIG_SUFFIX,
    ORT_SUFFIX,
    is_ort_format,
    read_config,
    write_config,
    write_ort,
)

__all__ = ["CheckResult", "EPCoverage", "OpUse", "check_model", "raise_if_failed"]

_EPS = (
    ("NNAPI", "nnapi_supported_ops.md"),
    ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
    ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md"),
)
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OpUse:
    domain: str  # "ai.onnx" for the default domain
    op: str
    opset: int  # the model's opset for this domain
    nodes: int | None  # None for an .ort file, whose operator list does not count nodes
    # "kernel"; "initializer" (Constant: onnxruntime turns it into one when loading); "function" (expanded into ops
    # with kernels); "local function"; "resolved at load" (no kernel listed, but the session loads); "missing"
    cpu: str
    nnapi: bool
    coreml_neuralnetwork: bool
    coreml_mlprogram: bool

    @property
    def runs_on_cpu(self) -> bool:
        return self.cpu != "missing"


@dataclass(frozen=True)
class EPCoverage:
    """What an execution provider would take, as onnxruntime's usability checker estimates it (by op type).

    The checker counts a node whose inputs have dynamic shapes as unsupported (NNAPI needs fixed shapes; CoreML
    runs slower with them), so it is asked twice: with the shapes as declared, and as if the inputs were fixed.
    """

    ep: str
    view: str  # "loaded": after onnxruntime's basic optimizations (our decode folded); "stored": the graph as stored
    nodes: int
    supported_nodes: int  # shapes as declared
    partitions: int
    suitability: str  # onnxruntime's verdict: YES, MAYBE or NO ("unknown" without shape information)
    supported_nodes_fixed: int  # with every input shape fixed
    partitions_fixed: int
    suitability_fixed: str
    unsupported_ops: list[str]
    caveats: list[str]


@dataclass
class CheckResult(CpuRun):
    """What ``check`` found: the CPU run's outcome (:class:`~.cpu_run.CpuRun`, filled by :func:`~.cpu_run.run_cpu`),
    the operators, the ORT-format conversion and the execution providers' coverage."""

    model: str = ""
    ops: list[OpUse] = field(default_factory=list)
    ort_format: dict[str, Any] = field(default_factory=dict)  # ok, bytes, zipped_bytes, required_operators, error
    eps: list[EPCoverage] = field(default_factory=list)
    file_bytes: int = 0
    has_decode: bool = False  # the model holds onnx-statq decode subgraphs

    @property
    def missing_kernels(self) -> list[str]:
        return [f"{o.domain}:{o.op} (opset {o.opset})" for o in self.ops if not o.runs_on_cpu]

    @property
    def problems(self) -> list[str]:
        out = []
        if self.missing_kernels:
            out.append("no onnxruntime CPU kernel for " + ", ".join(self.missing_kernels))
        if not self.loads:
            out.append(f"onnxruntime cannot load it: {self.load_error}")
        elif not self.runs:
            hint = " (random inputs give dynamic dims small sizes; --data DATA runs it on yours)"
            where = self.inputs_from + (hint if self.inputs_from == RANDOM else "")
            out.append(f"onnxruntime cannot run it on {where}: {self.run_error}")
        if not self.ort_format.get("ok"):
            out.append("it does not convert to ORT format")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "problems": self.problems,
            "file_bytes": self.file_bytes,
            "has_decode": self.has_decode,
            "cpu": {
                "loads": self.loads,
                "load_error": self.load_error,
                "runs": self.runs,
                "run_error": self.run_error,
                "inputs": self.inputs,
                "inputs_from": self.inputs_from,
                "missing_kernels": self.missing_kernels,
            },
            "ops": [asdict(o) for o in self.ops],
            "ort_format": self.ort_format,
            "execution_providers": [asdict(e) for e in self.eps],
        }


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _cpu_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(domain, op) -> the opset ranges onnxruntime's CPU provider has a kernel for."""
    from onnxruntime.capi import _pybind_state

    table: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in _pybind_state.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            domain = "ai.onnx" if k.domain in _DEFAULT_DOMAINS else k.domain
            lo, hi = k.version_range
            table.setdefault((domain, k.op_name), []).append((int(lo), int(hi)))
    return table


def _expands_to_function(domain: str, op: str, opset: int) -> bool:
    """An ONNX op with a function body runs in onnxruntime as that body when there is no kernel for it."""
    try:
        schema = onnx.defs.get_schema(op, opset, "" if domain == "ai.onnx" else domain)
    except Exception:
        return False
    return bool(getattr(schema, "has_function", False) or getattr(schema, "has_context_dependent_function", False))


def _supported_ops(filename: str) -> set[str]:
    """domain:op entries of one of onnxruntime's supported-op tables, read by onnxruntime's own parser."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    path = Path(usability_checker.__file__).parent / filename
    checker = usability_checker._SupportedOpsChecker(path)
    return set(checker._ops)


def _op_uses(counts: dict[tuple[str, str, int], int | None], local: set[tuple[str, str]]) -> list[OpUse]:
    """One row per (domain, op, opset) with its node count, CPU kernel and EP table entries."""
    kernels = _cpu_kernels()
    tables = [_supported_ops(f) for _, f in _EPS]
    out = []
    for (domain, op, opset), nodes in sorted(counts.items()):
        if any(lo <= opset <= hi for lo, hi in kernels.get((domain, op), [])):
            cpu = "kernel"
        elif (domain, op) == ("ai.onnx", "Constant"):
            cpu = "initializer"
        elif (domain, op) in local:
            cpu = "local function"
        elif _expands_to_function(domain, op, opset):
            cpu = "function"
        else:
            cpu = "missing"
        name = f"{domain}:{op}"
        out.append(OpUse(domain, op, opset, nodes, cpu, *(name in t for t in tables)))
    return out


def _ort_format(path: Path, tmp: Path) -> dict[str, Any]:
    dst = tmp / (path.stem + ORT_SUFFIX)
    try:
        written = write_ort(path, dst)
    except (OutputError, UnsupportedModelError) as exc:
        return {"ok": False, "error": str(exc)}
    return {
        "ok": True,
        "bytes": dst.stat().st_size,
        "zipped_bytes": zipped_size([dst]),
        "required_operators": [f"{d};{v};{','.join(ops)}" for d, v, ops in read_config(written[1])],
        "note": "converted as --format ort does: constant folding off, so an onnx-statq decode stays in the file",
    }


def _partition(model: onnx.ModelProto, ep: str, table: str, fixed: bool) -> Any:
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    if ep == "NNAPI":
        return uc.check_nnapi_partitions(model, fixed)
    return uc.check_coreml_partitions(model, fixed, table)


def _coverage(model: onnx.ModelProto, view: str) -> list[EPCoverage]:
    """onnxruntime's estimate per EP, as its usability checker makes it: nodes whose inputs have dynamic shapes
    count as unsupported; the verdict with fixed shapes is given beside it."""
    try:
        shaped: onnx.ModelProto | None = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception:
        shaped = None
    out = []
    for ep, table in _EPS:
        loose = _partition(shaped or model, ep, table, False)
        strict = None
        if shaped is not None:
            with contextlib.suppress(ValueError):  # raised when there is no shape information to judge by
                strict = _partition(shaped, ep, table, True)
        out.append(
            EPCoverage(
                ep=ep,
                view=view,
                nodes=loose.num_nodes,
                supported_nodes=strict.num_supported_nodes if strict else 0,
                partitions=strict.num_partitions if strict else 0,
                suitability=_suitability(strict) if strict else "unknown",
                supported_nodes_fixed=loose.num_supported_nodes,
                partitions_fixed=loose.num_partitions,
                suitability_fixed=_suitability(loose),
                unsupported_ops=sorted(loose.unsupported_ops),
                caveats=loose.supported_ops_checker.get_caveats(),
            )
        )
    return out


def _suitability(partitions: Any) -> str:
    """The checker's verdict; it divides by the node count, which is 0 for a graph that folds to constants (a model
    without inputs, once its decode is folded)."""
    return str(partitions.suitability().name) if partitions.num_nodes else "no nodes"


def _basic_optimized(path: Path, tmp: Path) -> onnx.ModelProto | None:
    """The graph the execution providers are offered when the .onnx is loaded: after the basic optimizations,
    constant folding (and so our decode) included; None if onnxruntime cannot load the model."""
    from onnxruntime.tools.onnx_model_utils import optimize_model

    out = tmp / "basic.onnx"
    try:
        optimize_model(path, out, use_external_initializers=True)
        return onnx.load(str(out))
    except Exception:
        return None


def check_model(
    path: str | os.PathLike[str], progress: Callable[[str], None] | None = None, data: Any = None
) -> CheckResult:
    """Load, run and convert ``path`` in onnxruntime; list its ops with CPU, NNAPI and CoreML support. It runs on
    ``data`` (an .npz, a folder of .npz feeds or input dicts, as ``--calib`` takes) or on random inputs. Raises only
    for a file that is neither ONNX nor ORT format, or data that does not match its inputs; every other problem is
    in the result.

    An .ort file is checked too (loads, runs, its operators); the NNAPI / CoreML estimate needs the ONNX model.
    """
    p = Path(path)
    if p.is_file() and is_ort_format(p):
        return _check_ort(p, progress, data)
    data_files: list[str] = []
    model = load_model(p, data_files)
    # what ships: the model and its external data files (the .onnx alone was reported)
    size = p.stat().st_size + sum((p.parent / f).stat().st_size for f in data_files)
    result = CheckResult(model=str(p), file_bytes=size)

    def step(what: str) -> None:
        if progress:
            progress(what)

    step("operators")
    counts: dict[tuple[str, str], int] = {}
    for g in _graphs(model.graph):
        for n in g.node:
            key = ("ai.onnx" if n.domain in _DEFAULT_DOMAINS else n.domain, n.op_type)
            counts[key] = counts.get(key, 0) + 1
    opsets = {("ai.onnx" if i.domain in _DEFAULT_DOMAINS else i.domain): int(i.version) for i in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    result.ops = _op_uses({(d, op, opsets.get(d, 0)): n for (d, op), n in counts.items()}, local)
    step("onnxruntime CPU")
    run_cpu(p, data, into=result)
    if result.loads:  # every node found a kernel: whatever the registry lookup missed is resolved by onnxruntime
        result.ops = [replace(o, cpu="resolved at load") if o.cpu == "missing" else o for o in result.ops]
    with tempfile.TemporaryDirectory(prefix="statq-check-") as tmp:
        step("ORT format")
        result.ort_format = _ort_format(p, Path(tmp))
        step("NNAPI / CoreML")
        loaded = _basic_optimized(p, Path(tmp)) if result.loads else None
        if loaded is not None:
            result.eps += _coverage(loaded, "loaded")
        result.has_decode = any(n.name.startswith("statq") for g in _graphs(model.graph) for n in g.node)
        if loaded is None or result.has_decode:
            result.eps += _coverage(model, "stored")
    return result


def _ort_has_decode(p: Path) -> bool:
    """Whether the .ort holds onnx-statq decode nodes, in its subgraphs too (``--format ort`` keeps them)."""
    from .ort_canonical import ort_root

    def found(graph: Any) -> bool:  # a decode in this graph or in one its nodes hold (If/Loop/Scan bodies)
        for i in range(graph.NodesLength()):
            node = graph.Nodes(i)
            if (node.Name() or b"").startswith(b"statq"):
                return True
            for j in range(node.AttributesLength()):
                attr = node.Attributes(j)
                subs = [attr.G()] + [attr.Graphs(k) for k in range(attr.GraphsLength())]
                if any(sub is not None and found(sub) for sub in subs):
                    return True
        return False

    try:
        return found(ort_root(p.read_bytes()).Model().Graph())
    except Exception:  # a layout this reader does not know: say no decode rather than fail the check
        return False


def _check_ort(p: Path, progress: Callable[[str], None] | None, data: Any) -> CheckResult:
    result = CheckResult(model=str(p), file_bytes=p.stat().st_size)
    with tempfile.TemporaryDirectory(prefix="statq-check-") as tmp:
        cfg = Path(tmp) / ("model" + CONFIG_SUFFIX)
        try:
            write_config(p, cfg, shown_as=p)
            lines = read_config(cfg)
        except Exception as exc:
            result.ort_format = {"ok": False, "error": f"onnxruntime cannot read the ORT file: {first_line(exc, 300)}"}
            lines = []
    result.ops = _op_uses({(d, op, v): None for d, v, ops in lines for op in ops}, set())
    if progress:
        progress("onnxruntime CPU")
    run_cpu(p, data, into=result)
    if lines:
        result.has_decode = _ort_has_decode(p)
        result.ort_format = {
            "ok": True,
            "bytes": result.file_bytes,
            "zipped_bytes": zipped_size([p]),
            "required_operators": [f"{d};{v};{','.join(ops)}" for d, v, ops in lines],
            "note": "already ORT format; the NNAPI / CoreML estimate needs the .onnx model",
        }
    return result


def raise_if_failed(res: CheckResult) -> None:
    if not res.ok:
        raise CheckFailedError("check failed: " + "; ".join(res.problems))
