"""The pass's view of a model: import into graphsurgeon (with weight chains folded), walk every (sub)graph, name
new tensors, count constant bytes, and export with everything graphsurgeon does not carry restored.

Kept apart from :mod:`.pass_`, which decides what to encode; nothing here looks at weight values.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .fold import fold_weight_chains
from .scopes import enclosing, graphs, parents

__all__ = [
    "FLOATS",
    "constant_bytes",
    "constant_source",
    "default_opset",
    "enclosing",
    "export_graph",
    "graphs",
    "import_graph",
    "is_float",
    "itemsize",
    "namer",
    "names_kept",
    "parents",
]

logger = logging.getLogger(__name__)

FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_MODEL_FIELDS = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise UnsupportedModelError("model imports no default-domain opset")


def constant_source(t: gs.Tensor) -> gs.Node | None:
    if isinstance(t, gs.Variable) and len(t.inputs) == 1:
        node = t.inputs[0]
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
            return node
    return None


def constant_bytes(graph: gs.Graph) -> int:
    """Bytes of every constant tensor in the model, the input side of ``size_ratio``."""
    total = 0
    for g in graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant):
                total += int(np.prod(t.shape, dtype=np.int64)) * itemsize(t.dtype)
        for n in g.nodes:
            if n.op == "Constant" and isinstance(n.attrs.get("value"), gs.Constant):
                v = n.attrs["value"]
                total += int(np.prod(v.shape, dtype=np.int64)) * itemsize(v.dtype)
    return total


def is_float(dtype: object) -> bool:
    """Float types this pass reports; graphsurgeon keeps bfloat16 and float8 as ONNX type numbers."""
    if isinstance(dtype, int):
        return dtype in (onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT)
    try:
        return np.dtype(dtype) in FLOATS  # type: ignore[call-overload]
    except TypeError:
        return False


def itemsize(dtype: object) -> int:
    """Bytes per element; graphsurgeon keeps types numpy lacks (bfloat16, float8, int4) as ONNX type numbers."""
    if isinstance(dtype, int):
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).itemsize)
    return int(np.dtype(dtype).itemsize)  # type: ignore[call-overload]


def import_graph(model: onnx.ModelProto) -> tuple[gs.Graph, int]:
    """The graph the pass plans on, and the model's bytes besides its constants (``overhead`` of :meth:`plan`)."""
    graph = gs.import_onnx(model)
    # graphsurgeon keeps the model's own opset list and adds to it on export (a model importing the default
    # domain as "ai.onnx" gained {"": 1}, in the caller's model too, and its decode resolved at opset 1)
    graph.import_domains = [copy.copy(d) for d in (graph.import_domains or [])] or None
    restore_initializer_inputs(graph, model)
    fold_chains(graph, model)
    try:
        size = model.ByteSize()
    except Exception:  # protobuf refuses to size a message over 2 GB; only --size-ratio reads this, as a small term
        logger.debug("model too large to size in memory; graph overhead taken as 0")
        return graph, 0
    return graph, max(0, size - constant_bytes(graph))


def fold_chains(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """Give layers whose weight is computed from constants by data-movement ops a constant weight
    (:mod:`.fold`), with names no other tensor or node has."""
    fold_weight_chains(list(graphs(graph)), default_opset(model), namer(graph))


def namer(graph: gs.Graph) -> Callable[[str], str]:
    """``fresh(base)``: ``base``, or ``base_<n>``, never a name a tensor or node of any (sub)graph has or had from
    an earlier call: graph-wide, because a subgraph sees its enclosing graphs' names."""
    names = {t for g in graphs(graph) for t in g.tensors()} | {n.name for g in graphs(graph) for n in g.nodes}

    def fresh(base: str) -> str:
        name, n = base, 0
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.add(name)
        return name

    return fresh


def restore_initializer_inputs(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """graphsurgeon drops initializers from the graph inputs. From IR 4 on, listing one there makes it overridable
    at run time: put it back (in the original order), so that it stays an input and the pass leaves it alone. Below
    IR 4 every initializer had to be listed, so it says nothing; :func:`export_graph` lists them all again."""
    if model.ir_version < 4 or len(graph.inputs) == len(model.graph.input):
        return
    tensors = {name: t for g in reversed(list(graphs(graph))) for name, t in g.tensors().items()}  # main graph's last
    # an input only a subgraph reads (a bias in an If branch) is among that subgraph's tensors, not the main graph's
    graph.inputs = [tensors[i.name] for i in model.graph.input if i.name in tensors]


def export_graph(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export, then restore what graphsurgeon does not carry: model metadata, doc strings, opsets, IR version."""
    out = gs.export_onnx(graph, do_type_check=False)
    _main_initializers_home(out, {t.name for t in original.graph.initializer})
    if original.ir_version < 4:  # IR 3 wants every initializer, the new codebooks too, among the graph inputs
        _subgraph_initializers_as_constants(out.graph)
        listed = {i.name for i in out.graph.input}
        out.graph.input.extend(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            for t in out.graph.initializer
            if t.name not in listed
        )
    for name in _MODEL_FIELDS:
        setattr(out, name, getattr(original, name))
    del out.opset_import[:]
    out.opset_import.extend(original.opset_import)
    del out.metadata_props[:]
    out.metadata_props.extend(original.metadata_props)
    if original.graph.doc_string:
        out.graph.doc_string = original.graph.doc_string
    _restore_annotations(original.graph, out.graph)
    return out


def _restore_annotations(original: onnx.GraphProto, out: onnx.GraphProto) -> None:
    """Put back the doc strings and metadata_props graphsurgeon drops below the model: each node's (the torch
    exporter writes its module path there), the graph's own metadata, its inputs', outputs' and value_info's doc
    strings; then in the subgraphs, matched through the node and attribute that hold them. A node is matched by
    its op type, name and outputs, which nothing here changes; the pass's own nodes have no match."""
    if len(original.metadata_props):
        del out.metadata_props[:]
        out.metadata_props.extend(original.metadata_props)
    docs = {v.name: v.doc_string for v in (*original.input, *original.output, *original.value_info) if v.doc_string}
    for v in (*out.input, *out.output, *out.value_info):
        if v.name in docs:
            v.doc_string = docs[v.name]
    nodes = {(n.op_type, n.name, tuple(n.output)): n for n in original.node}
    for n in out.node:
        before = nodes.get((n.op_type, n.name, tuple(n.output)))
        if before is None:
            continue
        if before.doc_string:
            n.doc_string = before.doc_string
        if len(before.metadata_props):
            del n.metadata_props[:]
            n.metadata_props.extend(before.metadata_props)
        subgraphs = {
            a.name: a for a in before.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        }
        for attr in n.attribute:
            if attr.name in subgraphs and attr.type == onnx.AttributeProto.GRAPH:
                _restore_annotations(subgraphs[attr.name].g, attr.g)
            elif attr.name in subgraphs and attr.type == onnx.AttributeProto.GRAPHS:
                for a, b in zip(subgraphs[attr.name].graphs, attr.graphs, strict=False):
                    _restore_annotations(a, b)


def _subgraph_initializers_as_constants(graph: onnx.GraphProto) -> None:
    """Below IR 4 an initializer must also be an input of its graph, which an If branch cannot have: the codebooks
    of a weight decoded in a branch go there as Constant nodes (onnxruntime refused the file)."""
    for n in graph.node:
        for attr in n.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                listed = {i.name for i in sub.input}
                moved = [t for t in sub.initializer if t.name not in listed]
                if moved:
                    kept = [t for t in sub.initializer if t.name in listed]
                    del sub.initializer[:]
                    sub.initializer.extend(kept)
                    nodes = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in moved] + list(sub.node)
                    del sub.node[:]
                    sub.node.extend(nodes)
                _subgraph_initializers_as_constants(sub)


def _main_initializers_home(out: onnx.ModelProto, names: set[str]) -> None:
    """Put the original main-graph initializers that graphsurgeon exported into the subgraphs reading them back
    in the main graph, once. Read only in the two branches of an If, a bias went into each branch (stored twice);
    one that is also a graph input (a default the caller may override) was shadowed by its branch copy, so an
    override no longer reached the layer."""
    moved: dict[str, onnx.TensorProto] = {}

    def visit(g: onnx.GraphProto) -> None:
        for n in g.node:
            for attr in n.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    keep = [t for t in sub.initializer if t.name not in names]
                    for t in sub.initializer:
                        if t.name in names:
                            moved.setdefault(t.name, t)
                    if len(keep) != len(sub.initializer):
                        del sub.initializer[:]
                        sub.initializer.extend(keep)
                    visit(sub)

    visit(out.graph)
    have = {t.name for t in out.graph.initializer}
    out.graph.initializer.extend(t for name, t in moved.items() if name not in have)


@contextlib.contextmanager
def names_kept(model: onnx.ModelProto) -> Iterator[None]:
    """Put back the names of ``model``'s tensors afterwards. graphsurgeon exports a constant it imported by writing
    its name into the very TensorProto it came from, the caller's: an unnamed Constant value came back named ""
    (a set field), so the input model was no longer the same bytes."""
    saved = [(t, t.HasField("name"), t.name) for t in onnx.external_data_helper._get_all_tensors(model)]
    try:
        yield
    finally:
        for t, had, name in saved:
            if had:
                t.name = name
            else:
                t.ClearField("name")
