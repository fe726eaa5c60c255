"""Find the weights a pass may encode, and decide which it admits: the first half of the pass, graph reading only.

Every weight slot the handler registry knows is looked up in every graph and subgraph; a tensor read by several
nodes is one weight with several uses (encoded once). What is skipped, and why, goes to the report.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import SparseValues

from ..config import QuantConfig, Resolved, excludes, is_pattern
from ..errors import ConfigError
from ..lazy import deferred_values_of, values_of
from ..report import Report, SkipRecord
from .handlers import weight_slots
from .model_io import FLOATS, constant_source, enclosing, graphs, is_float, parents

__all__ = ["Use", "Weight", "admit", "check_names", "find_weights", "nothing_message"]

logger = logging.getLogger(__name__)


@dataclass
class Use:
    node: gs.Node
    graph: gs.Graph
    axis: int | None
    settings: Resolved
    role: str
    slot: int


@dataclass
class Weight:
    tensor: gs.Tensor  # gs.Constant, or the Variable output of a Constant node
    source: gs.Node | None  # the Constant node, if any
    source_graph: gs.Graph | None
    uses: list[Use] = field(default_factory=list)
    scope: gs.Graph | None = None  # an initializer's: the innermost graph that holds every use (find_weights)

    def _stored(self) -> gs.Constant:
        """Where the values live: the Constant node's value, or the initializer itself."""
        if self.source is not None:
            return self.source.attrs["value"]
        assert isinstance(self.tensor, gs.Constant)
        return self.tensor

    @property
    def values(self) -> np.ndarray:
        """The weight; for an external one, a fresh read-only map each time, which nothing here keeps."""
        return values_of(self._stored())

    @property
    def home(self) -> gs.Graph:
        """The graph the decode goes into. A Constant node's decode stays in its graph; an initializer's goes to the
        innermost graph that holds all its users (for users in an If's two branches, the If's graph)."""
        return self.source_graph or self.scope or self.uses[0].graph

    @property
    def matmul_only(self) -> bool:
        """Whether only MatMul nodes read it: the allocation's floor does not hold such a weight (``Layer.floored``)."""
        return all(u.node.op == "MatMul" for u in self.uses)

    @property
    def deferred(self) -> np.ndarray:
        """Like :attr:`values`, but an external weight is mapped only inside each ``np.asarray`` of it."""
        return deferred_values_of(self._stored())


def find_weights(graph: gs.Graph, config: QuantConfig, report: Report) -> list[Weight]:
    """Every constant in a weight slot of any node of ``graph`` and its subgraphs, with its uses; the other float
    constants go to the report as skipped."""
    found: dict[int, Weight] = {}
    # a Constant node's decode replaces it in its own graph, which may enclose the graphs of all its readers
    homes = {id(n): g for g in graphs(graph) for n in g.nodes if n.op == "Constant"}
    held = _excluded_holders(graph, config)
    sparse: dict[int, gs.Constant] = {}  # sparse_initializers in weight slots: left as stored, in order found
    for g in graphs(graph):
        for node in g.nodes:
            for slot in weight_slots(node.op, node.domain or ""):
                if slot.index >= len(node.inputs):
                    continue
                t = node.inputs[slot.index]
                source = constant_source(t)
                if not isinstance(t, gs.Constant) and source is None:
                    continue
                if isinstance(t, gs.Constant) and isinstance(t._values, SparseValues):  # see _report_sparse
                    sparse.setdefault(id(t), t)
                    continue
                w = found.setdefault(id(t), Weight(t, source, homes[id(source)] if source is not None else None))
                shape = tuple(int(s) for s in w.values.shape)
                settings = config.resolve(node.name or "", node.op, t.name)
                if id(g) in held and not settings.skip:  # inside an If / Loop / Scan the config skips
                    settings = replace(settings, skip=True)
                w.uses.append(Use(node, g, slot.axis(node.attrs, shape), settings, slot.role, slot.index))
    parent = parents(graph)
    owner = {id(n): g for g in graphs(graph) for n in g.nodes}
    for w in found.values():
        if w.source is None:  # every reader sees the decode: weight uses, other ops, a graph's outputs
            readers = [owner[id(n)] for n in w.tensor.outputs if id(n) in owner]
            returned = [g for g in graphs(graph) if any(o is w.tensor for o in g.outputs)]
            w.scope = enclosing(parent, [u.graph for u in w.uses] + readers + returned)
    _report_sparse(list(sparse.values()), report)
    _report_other_constants(graph, found.keys() | sparse, report)
    check_names(graph, list(found.values()), config)
    _warn_idle_excludes(graph, list(found.values()), config)
    return list(found.values())


def _warn_idle_excludes(graph: gs.Graph, weights: list[Weight], config: QuantConfig) -> None:
    """An ``exclude`` entry that names a node of the model but leaves no weight float (a Relu, a Reshape): legal,
    since one config may serve many models, but on the command line most likely a slip. Said once each."""
    names = {x for w in weights for u in w.uses for x in (u.node.name, u.node.op, w.tensor.name) if x}
    for entry in config.exclude:
        if excludes(entry, names):
            continue
        held = _excluded_holders(graph, QuantConfig(exclude=(entry,)))
        if not any(id(u.graph) in held for w in weights for u in w.uses):
            logger.warning("exclude entry %r names no node that reads a weight: it leaves nothing float", entry)


def _excluded_holders(graph: gs.Graph, config: QuantConfig) -> set[int]:
    """The subgraphs (by id) inside a node the config skips (an If, Loop or Scan, by ``exclude``, or ``skip`` in
    its ``nodes`` or ``op_types`` entry), at any depth: skipping the node that holds a branch skips the weights in
    it, as a user naming it means (``skip`` there was accepted and did nothing)."""
    out: set[int] = set()

    def visit(g: gs.Graph, inside: bool) -> None:
        for node in g.nodes:
            subs = [sub for attr in node.attrs.values() for sub in (attr if isinstance(attr, list) else [attr])]
            subs = [sub for sub in subs if isinstance(sub, gs.Graph)]
            held = inside or (bool(subs) and config.resolve(node.name or "", node.op).skip)
            for sub in subs:
                if held:
                    out.add(id(sub))
                visit(sub, held)

    if config.exclude or config.nodes or config.op_types:
        visit(graph, False)
    return out


def check_names(graph: gs.Graph, weights: list[Weight], config: QuantConfig) -> None:
    """Refuse an ``exclude`` entry or a ``nodes`` or ``op_types`` key that names nothing in the model, an
    ``exclude`` pattern that matches nothing, or a name of a tensor no node reads as a weight: each would otherwise
    leave the layer it meant to protect quantized, silently (``exclude`` took only node names before, so a weight
    name copied from the report's table did nothing). An ONNX op type the model lacks is fine: one config may
    serve many models."""
    nodes = {n.name for g in graphs(graph) for n in g.nodes if n.name}
    ops = {n.op for g in graphs(graph) for n in g.nodes}
    names = nodes | {w.tensor.name for w in weights}
    checks = [("exclude", e, names | ops) for e in config.exclude] + [("nodes", k, names) for k in config.nodes]
    checks += [("op_types", k, ops) for k in config.op_types]
    tensors = {name for g in graphs(graph) for name in g.tensors()}
    for where, key, known in checks:
        if key in known or (where != "nodes" and onnx.defs.has(key)):
            continue
        if where == "exclude" and is_pattern(key):
            if not excludes(key, known):
                raise ConfigError(f"exclude pattern {key!r} matches no node, weight or op type of the model")
            continue
        if key in tensors and where != "op_types":
            raise ConfigError(
                f"{where} entry {key!r} names a tensor no node reads as a weight (a bias, normalisation parameter or "
                "activation), which the pass leaves as it is anyway"
            )
        close = difflib.get_close_matches(key, sorted(known), n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        what = "op type" if where == "op_types" else "node, weight or op type"
        raise ConfigError(f"{where} entry {key!r} names no {what} of the model{hint}")


def _report_sparse(sparse: list[gs.Constant], report: Report) -> None:
    """sparse_initializers in weight slots, once each. Their values are never read: graphsurgeon loads one as
    float64 zeros and would then write that back as a dense initializer."""
    for t in sparse:
        reason = "stored as a sparse_initializer, which the pass leaves as it is"
        report.skipped.append(SkipRecord(t.name, reason, int(np.prod(t.shape))))


def _report_other_constants(graph: gs.Graph, found: Collection[int], report: Report) -> None:
    seen: set[int] = set()
    for g in graphs(graph):
        for node in g.nodes:
            for i, t in enumerate(node.inputs):
                if isinstance(t, gs.Constant) and id(t) not in found and id(t) not in seen:
                    seen.add(id(t))
                    if is_float(t.dtype):
                        size = int(np.prod(t.shape))
                        reason = f"not a weight input ({node.op} input {i}: bias, normalisation or other)"
                        report.skipped.append(SkipRecord(t.name, reason, size))


def admit(w: Weight, graph: gs.Graph, config: QuantConfig, report: Report) -> bool:
    """Whether the pass encodes ``w``; a weight it does not is logged and reported with its reason."""
    reason = _skip_reason(w, graph, config)
    if reason is None:
        return True
    logger.info("skipping %s: %s", w.tensor.name, reason)
    report.skipped.append(SkipRecord(w.tensor.name, reason, int(np.prod(w.values.shape))))
    return False


def _skip_reason(w: Weight, graph: gs.Graph, config: QuantConfig) -> str | None:
    values = w.values
    if w.tensor.name.startswith("statq") and all(u.node.name.startswith("statq") for u in w.uses):
        return "already encoded by onnx-statq (a codebook of an earlier run)"
    if any(u.settings.skip for u in w.uses):
        return "excluded by --exclude or config"
    if values.dtype not in FLOATS:
        return f"dtype {values.dtype} is not a float type this pass encodes"
    if any(w.tensor.name == i.name for g in graphs(graph) for i in g.inputs):
        return "also a graph input, so it can be overridden at run time"
    if values.size < config.min_size:
        return f"{values.size} elements, below min-size {config.min_size}"
    if not np.all(np.isfinite(values)):
        return "holds NaN or Inf values"
    if values.dtype == np.float64 and np.max(np.abs(values)) > np.finfo(np.float32).max:
        return "holds values beyond the float32 range of codebook levels"
    return None


def nothing_message(report: Report) -> str:
    """The one-line error for a model with no weight to encode, with the commonest reasons it was skipped."""
    if not report.skipped:
        return "no quantizable weight: the model has no constant Conv/Gemm/MatMul/Gather/RNN weights"
    return f"no weight to quantize ({len(report.skipped)} skipped: {report.skip_summary()})"
