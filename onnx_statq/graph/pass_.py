"""The graph pass: find weights through the handler registry, encode them, rewrite the graph.

It never runs a session and never does arithmetic on weights itself: numerics live in :mod:`onnx_statq.codebook`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..codebook import EncodedTensor, encode_tensor
from ..codebook.allocate import allocate_bits
from ..config import QuantConfig, Resolved
from ..errors import NoWeightsError, UnsupportedModelError
from ..plan import LayerOutcome, LayerPlan, Refiner
from ..report import LayerRecord, Report, SkipRecord
from .bias import add_bias
from .encode import MIN_OPSET, emit_decode
from .handlers import weight_slots

__all__ = ["PassResult", "StatqPass", "default_opset"]

logger = logging.getLogger(__name__)

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_MODEL_FIELDS = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")


@dataclass
class _Use:
    node: gs.Node
    graph: gs.Graph
    axis: int | None
    settings: Resolved
    role: str
    slot: int


@dataclass
class _Weight:
    tensor: gs.Tensor  # gs.Constant, or the Variable output of a Constant node
    source: gs.Node | None  # the Constant node, if any
    source_graph: gs.Graph | None
    uses: list[_Use] = field(default_factory=list)

    @property
    def values(self) -> np.ndarray:
        if self.source is not None:
            return np.asarray(self.source.attrs["value"].values)
        return np.asarray(self.tensor.values)


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    report: Report


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise UnsupportedModelError("model imports no default-domain opset")


def _graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph and all its subgraphs (If/Loop/Scan bodies), outer first."""
    yield graph
    for node in graph.nodes:
        for attr in node.attrs.values():
            subs = attr if isinstance(attr, list) else [attr]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    yield from _graphs(sub)


def _constant_source(t: gs.Tensor) -> gs.Node | None:
    if isinstance(t, gs.Variable) and len(t.inputs) == 1:
        node = t.inputs[0]
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
            return node
    return None


class StatqPass:
    """``StatqPass(config)(model) -> PassResult``: stateless, so one instance can run on many models."""

    def __init__(
        self,
        config: QuantConfig | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        refiner: Refiner | None = None,
    ):
        self.config = config or QuantConfig()
        self.progress = progress
        self.refiner = refiner  # calibration, injected so that this module never runs a session

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        opset = default_opset(model)
        if opset < MIN_OPSET:
            raise UnsupportedModelError(f"opset {opset} is older than the oldest supported ({MIN_OPSET})")
        graph = gs.import_onnx(model)
        report = Report(config=self.config.to_dict())
        weights = self._find(graph, report)
        names = {t for g in _graphs(graph) for t in g.tensors()} | {n.name for g in _graphs(graph) for n in g.nodes}
        todo = [w for w in weights if self._admit(w, graph, report)]
        if not todo:
            already = any(s.reason.startswith("already encoded by onnx-statq") for s in report.skipped) or any(
                n.name.startswith("statq") and n.op in ("Gather", "GatherElements") for n in graph.nodes
            )
            if already:
                raise NoWeightsError("the model is already quantized by onnx-statq; its encoded weights are left alone")
            raise NoWeightsError(self._nothing_message(report))
        positions = {id(n): i for i, n in enumerate(graph.nodes)}
        encoded = {}
        for i, w in enumerate(todo):
            if self.progress:
                self.progress(i, len(todo), w.tensor.name)
            encoded[id(w)] = self._encode(w)
        if self.progress:
            self.progress(len(todo), len(todo), "")
        if self.config.budget is not None:
            self._allocate(todo, encoded, report)
        outcomes = self._refine(model, graph, todo, encoded, positions, report)
        for w in todo:
            outcome = outcomes.get(w.tensor.name)
            enc = outcome.encoded if outcome else encoded[id(w)]
            self._rewrite(w, enc, opset, names, report, outcome)
        return PassResult(_export(graph, model), report)

    def _find(self, graph: gs.Graph, report: Report) -> list[_Weight]:
        found: dict[int, _Weight] = {}
        for g in _graphs(graph):
            for node in g.nodes:
                for slot in weight_slots(node.op, node.domain or ""):
                    if slot.index >= len(node.inputs):
                        continue
                    t = node.inputs[slot.index]
                    source = _constant_source(t)
                    if not isinstance(t, gs.Constant) and source is None:
                        continue
                    w = found.setdefault(id(t), _Weight(t, source, g if source is not None else None))
                    shape = tuple(int(s) for s in w.values.shape)
                    settings = self.config.resolve(node.name or "", node.op)
                    w.uses.append(_Use(node, g, slot.axis(node.attrs, shape), settings, slot.role, slot.index))
        self._report_other_constants(graph, found, report)
        return list(found.values())

    def _report_other_constants(self, graph: gs.Graph, found: dict[int, _Weight], report: Report) -> None:
        seen: set[int] = set()
        for g in _graphs(graph):
            for node in g.nodes:
                for i, t in enumerate(node.inputs):
                    if isinstance(t, gs.Constant) and id(t) not in found and id(t) not in seen:
                        seen.add(id(t))
                        if np.dtype(t.dtype) in _FLOATS:
                            size = int(np.prod(t.shape))
                            reason = f"not a weight input ({node.op} input {i}: bias, normalisation or other)"
                            report.skipped.append(SkipRecord(t.name, reason, size))

    def _admit(self, w: _Weight, graph: gs.Graph, report: Report) -> bool:
        reason = self._skip_reason(w, graph)
        if reason is None:
            return True
        logger.info("skipping %s: %s", w.tensor.name, reason)
        report.skipped.append(SkipRecord(w.tensor.name, reason, int(np.prod(w.values.shape))))
        return False

    def _skip_reason(self, w: _Weight, graph: gs.Graph) -> str | None:
        values = w.values
        if w.tensor.name.startswith("statq") and all(u.node.name.startswith("statq") for u in w.uses):
            return "already encoded by onnx-statq (a codebook of an earlier run)"
        if any(u.settings.skip for u in w.uses):
            return "excluded by --exclude or config"
        if values.dtype not in _FLOATS:
            return f"dtype {values.dtype} is not a float type this pass encodes"
        if any(w.tensor.name == i.name for g in _graphs(graph) for i in g.inputs):
            return "also a graph input, so it can be overridden at run time"
        if values.size < self.config.min_size:
            return f"{values.size} elements, below min-size {self.config.min_size}"
        if not np.all(np.isfinite(values)):
            return "holds NaN or Inf values"
        return None

    def _settings(self, w: _Weight) -> tuple[Resolved, int | None]:
        settings = max((u.settings for u in w.uses), key=lambda s: s.bits)
        axes = {u.axis for u in w.uses}
        return settings, (axes.pop() if len(axes) == 1 else None)

    def _encode(self, w: _Weight, bits: int | None = None) -> EncodedTensor:
        settings, axis = self._settings(w)
        return encode_tensor(
            w.values, axis, bits or settings.bits, settings.method, settings.granularity, self.config.channel_tolerance
        )

    def _allocate(self, todo: list[_Weight], encoded: dict[int, EncodedTensor], report: Report) -> None:
        """Re-encode codebook weights with per-layer bits for the average budget (explicit per-node/op bits stay)."""
        free = [w for w in todo if encoded[id(w)].codebook is not None and not self._fixed_bits(w)]
        sizes = [int(w.values.size) for w in free]
        errors = [max(encoded[id(w)].rel_error, 1e-12) for w in free]
        assert self.config.budget is not None
        tables = [_table_bits(encoded[id(w)]) for w in free]
        chosen = allocate_bits(sizes, errors, self.config.bits, self.config.budget, table_bits=tables)
        for w, b in zip(free, chosen, strict=True):
            if b != self.config.bits:
                encoded[id(w)] = self._encode(w, bits=b)
        report.totals["average_index_bits"] = (
            float(np.dot(sizes, chosen) / max(sum(sizes), 1)) if sizes else float(self.config.bits)
        )

    def _fixed_bits(self, w: _Weight) -> bool:
        return any(
            s is not None and s.bits is not None
            for u in w.uses
            for s in (self.config.nodes.get(u.node.name or ""), self.config.op_types.get(u.node.op))
        )

    def _refine(
        self,
        model: onnx.ModelProto,
        graph: gs.Graph,
        todo: list[_Weight],
        encoded: dict[int, EncodedTensor],
        positions: dict[int, int],
        report: Report,
    ) -> dict[str, LayerOutcome]:
        if self.refiner is None:
            return {}
        plans = []
        for w in todo:
            use = w.uses[0]
            if use.graph is not graph or not use.node.inputs or not use.node.outputs:
                continue
            plans.append(
                LayerPlan(
                    w.tensor.name,
                    positions[id(use.node)],
                    use.node.op,
                    dict(use.node.attrs),
                    use.slot,
                    use.node.inputs[0].name,
                    w.values,
                    encoded[id(w)],
                )
            )
        summary = self.refiner(model, plans)
        report.calibration = {
            "mode": summary.mode,
            "samples": summary.samples,
            "layers_calibrated": len(summary.outcomes),
            "model_output_sqnr_db": summary.model_sqnr_db,
            "sessions": summary.sessions,
        }
        report.timings.update(summary.timings)
        return summary.outcomes

    def _rewrite(
        self, w: _Weight, enc: EncodedTensor, opset: int, names: set[str], report: Report, outcome: LayerOutcome | None
    ) -> None:
        values = w.values
        if enc.representation == "float16" and values.dtype == np.float16:
            report.skipped.append(SkipRecord(w.tensor.name, "already float16; a codebook would not pay", values.size))
            return

        def fresh(base: str) -> str:
            name, n = base, 0
            while name in names:
                n += 1
                name = f"{base}_{n}"
            names.add(name)
            return name

        # A Constant node's decode stays in its graph; an initializer's goes to its first user's graph, which is
        # the outermost of its users because _graphs walks outer graphs first.
        home = w.source_graph or w.uses[0].graph
        target = self._detach(w)
        nodes = emit_decode(enc, target, values.dtype, opset, fresh, prefix=f"statq{len(report.layers)}")
        home.nodes[0:0] = nodes
        if outcome is not None and outcome.bias_delta is not None:
            add_bias(w.uses[0].node, w.uses[0].graph, outcome.bias_delta, fresh)
        report.layers.append(
            LayerRecord(
                name=w.tensor.name,
                op=w.uses[0].node.op,
                shape=tuple(int(s) for s in values.shape),
                representation=str(enc.representation),
                bits=enc.codebook.bits if enc.codebook else 16,
                k=enc.codebook.k if enc.codebook else 0,
                rel_error=enc.rel_error,
                bytes_before=int(values.nbytes),
                bytes_after=enc.stored_bytes,
                consumers=tuple(u.node.name or u.node.op for u in w.uses),
                calibration=outcome.note if outcome else "",
                output_sqnr_datafree_db=outcome.sqnr_before_db if outcome else None,
                output_sqnr_calibrated_db=outcome.sqnr_after_db if outcome else None,
            )
        )

    @staticmethod
    def _detach(w: _Weight) -> gs.Variable:
        """Turn the weight's tensor into a Variable with the same name, so every consumer, in any subgraph, reads
        the decoded value without being touched."""
        values = w.values
        if w.source is not None:
            assert w.source_graph is not None
            w.source_graph.nodes.remove(w.source)
            target = w.tensor
            target.inputs.clear()
            return target
        t = w.tensor
        t.to_variable(dtype=values.dtype, shape=list(values.shape))
        t.type = "tensor_type"  # graphsurgeon 0.6's to_variable leaves this unset, and export needs it
        return t

    @staticmethod
    def _nothing_message(report: Report) -> str:
        if not report.skipped:
            return "no quantizable weight: the model has no constant Conv/Gemm/MatMul/Gather/RNN weights"
        reasons = sorted({s.reason.split(",")[0] for s in report.skipped})[:3]
        return f"no weight to quantize ({len(report.skipped)} skipped: {'; '.join(reasons)})"


def _table_bits(enc: EncodedTensor) -> int:
    """Bits one codebook level costs over all groups of this encoding (16 for float16 levels, else 32)."""
    assert enc.codebook is not None
    return enc.codebook.groups * (16 if enc.codebook.level_dtype == "float16" else 32)


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export, then restore what graphsurgeon does not carry: model metadata, doc strings, opsets, IR version."""
    out = gs.export_onnx(graph, do_type_check=False)
    for name in _MODEL_FIELDS:
        setattr(out, name, getattr(original, name))
    del out.opset_import[:]
    out.opset_import.extend(original.opset_import)
    del out.metadata_props[:]
    out.metadata_props.extend(original.metadata_props)
    if original.graph.doc_string:
        out.graph.doc_string = original.graph.doc_string
    return out
