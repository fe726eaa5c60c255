"""Fold weights that reach their layer through data-movement ops on constants into plain constants.

PyTorch exports an LSTM or GRU with its weights sliced per gate and concatenated back in ONNX's gate order
(``Unsqueeze(Concat(Slice(W), Slice(W), ...))``), and some exporters transpose or reshape a constant weight on its
way to a MatMul. The weight input of the layer is then computed, not constant, and the pass would not see it: in
silero VAD the LSTM weights are half of the file. Such a chain computes the same tensor every run, and
onnxruntime folds it at session creation anyway; folding it here gives the layer a constant weight the pass can
encode, and removes the chain's nodes (and, once nothing else reads them, its source constants).

Only ops that move or reinterpret data are folded (no arithmetic), so the folded tensor is the one onnxruntime
would compute, bit for bit. The chain is evaluated by onnx's reference implementation of those ops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.reference import ReferenceEvaluator

from .handlers import weight_slots
from .scopes import enclosing, parents

__all__ = ["FOLDABLE_OPS", "fold_weight_chains"]

logger = logging.getLogger(__name__)

FOLDABLE_OPS = frozenset(
    {"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split", "Gather"}
)
MAX_CHAIN_NODES = 64  # a weight's gate reordering takes a dozen; anything far larger is not a weight chain


def _chain(t: gs.Tensor, outer: set[int]) -> list[gs.Node] | None:
    """The nodes computing ``t`` from constants through foldable ops, producers first; None if there are none or
    if ``t`` depends on anything else (a graph input, an outer-scope value, a non-foldable op)."""
    order: list[gs.Node] = []
    seen: set[int] = set()

    def visit(x: gs.Tensor) -> bool:
        if isinstance(x, gs.Constant):  # not one that is also a graph input: the caller may override it
            return id(x) not in outer
        if not isinstance(x, gs.Variable) or len(x.inputs) != 1 or id(x) in outer:
            return False
        node = x.inputs[0]
        if id(node) in seen:
            return True
        if node.op != "Constant" and (node.op not in FOLDABLE_OPS or (node.domain or "") not in ("", "ai.onnx")):
            return False
        seen.add(id(node))
        if len(seen) > MAX_CHAIN_NODES or not all(visit(i) for i in node.inputs if i.name):
            return False
        order.append(node)
        return True

    ok = visit(t) and any(n.op != "Constant" for n in order)
    return order if ok else None


def _weight_reads_only(t: gs.Tensor) -> bool:
    """Every reader of ``t`` takes it, once, as a weight."""
    return all(
        any(s.index < len(n.inputs) and n.inputs[s.index] is t for s in weight_slots(n.op, n.domain or ""))
        and sum(i is t for i in n.inputs) == 1
        for n in t.outputs
    )


def _is_data(t: gs.Tensor) -> bool:
    """A float initializer: weight data, not the shape, axes or indices a chain's ops read (small integer
    constants that exporters share between many nodes)."""
    if not isinstance(t, gs.Constant) or t.dtype is None:
        return False
    try:
        return bool(np.issubdtype(np.dtype(t.dtype), np.floating))
    except TypeError:  # bfloat16 and float8: graphsurgeon gives their ONNX type number, which numpy cannot read
        return True


def _small_constant(node: gs.Node) -> bool:
    """A Constant node holding no weight data (a shape, axes, slice bounds)."""
    if node.op != "Constant":
        return False
    if any(k in node.attrs for k in ("value_int", "value_ints", "value_string", "value_strings")):
        return True
    value = node.attrs.get("value")
    return isinstance(value, gs.Constant) and not _is_data(value)


def _sources(chain: list[gs.Node]) -> tuple[int, ...]:
    """The weight data a chain reads: its float initializers and its Constant nodes' outputs."""
    inits = {id(t) for node in chain for t in node.inputs if _is_data(t)}
    consts = {id(o) for node in chain if node.op == "Constant" and not _small_constant(node) for o in node.outputs}
    return tuple(sorted(inits | consts))


def _self_contained(chains: dict[int, tuple[gs.Tensor, list[gs.Node]]]) -> dict[int, tuple[gs.Tensor, list[gs.Node]]]:
    """The chains whose values nothing but folded chains reads: folding them frees every node they hold, instead
    of keeping a chain beside a copy. Chains may share nodes (two LSTMs reading one source constant), so a chain
    is dropped only when something outside all kept chains reads it, until no more is dropped. The small integer
    constants a chain's ops read (shapes, axes, bounds) may have other readers: they stay, the weight is folded."""
    kept = dict(chains)
    while True:
        members = {id(n) for _, chain in kept.values() for n in chain}
        tops = set(kept)
        bad = [
            key
            for key, (t, chain) in kept.items()
            if any(
                out is not t and id(out) not in tops and any(id(r) not in members for r in out.outputs)
                for node in chain
                if not _small_constant(node)  # shapes and axes other nodes read too stay, and cost nothing
                for out in node.outputs
            )
            or any(  # a float initializer the chain reads that something else reads too (a tied embedding)
                _is_data(src) and any(id(r) not in members for r in src.outputs)
                for node in chain
                for src in node.inputs
            )
        ]
        if not bad:
            return kept
        for key in bad:
            del kept[key]


def _evaluate(nodes: list[gs.Node], out: gs.Variable, opset: int) -> np.ndarray | None:
    graph = gs.Graph(nodes=list(nodes), inputs=[], outputs=[out], opset=opset)
    try:
        model = gs.export_onnx(graph, do_type_check=False)
        model.graph.output[0].type.CopyFrom(onnx.TypeProto())  # the reference runtime needs no output type
        (value,) = ReferenceEvaluator(model).run(None, {})
    except Exception as exc:  # an exporter quirk in a chain we merely hoped to fold: leave the chain as it is
        logger.info("not folding the chain computing %s: %s", out.name, exc)
        return None
    value = np.asarray(value)
    return value if value.dtype in (np.float16, np.float32, np.float64) else None


def _add_constant(graph: gs.Graph, value: np.ndarray, name: str, node_name: str) -> gs.Variable:
    """A Constant node at the top of ``graph`` holding ``value``: readers in enclosed subgraphs see its output."""
    out = gs.Variable(name, dtype=value.dtype, shape=list(value.shape))
    graph.nodes.insert(0, gs.Node("Constant", node_name, {"value": gs.Constant(name, value)}, [], [out]))
    return out


def _drop_unused(graphs: list[gs.Graph], nodes: list[gs.Node], keep: set[str]) -> None:
    """Remove chain nodes whose outputs nothing reads any more, from whichever graph holds them (a chain may start
    in an enclosing graph), until none is left to remove: chains can share their source constants."""
    home = {id(n): g for g in graphs for n in g.nodes}
    pending = {id(n): n for n in nodes}
    changed = True
    while changed:
        changed = False
        for key, node in list(pending.items()):
            if all(not o.outputs and o.name not in keep for o in node.outputs):
                g = home[key]
                del g.nodes[next(i for i, n in enumerate(g.nodes) if n is node)]
                node.inputs.clear()
                node.outputs.clear()
                del pending[key]
                changed = True


def fold_weight_chains(graphs: list[gs.Graph], opset: int, fresh: Callable[[str], str]) -> list[str]:
    """Replace every foldable weight chain by a constant in the layer's graph; the names of the folded tensors.

    ``graphs`` is the model's graph and its subgraphs, outer first. A chain that reads an input of the graph it
    starts in (a Loop's iteration values, or the model's inputs) is not constant and is left alone.
    """
    candidates: dict[int, tuple[gs.Tensor, list[gs.Node]]] = {}
    readers: list[tuple[gs.Node, int, gs.Tensor]] = []
    boundary = {id(t) for g in graphs for t in g.inputs}
    for g in graphs:
        for node in g.nodes:
            for slot in weight_slots(node.op, node.domain or ""):
                if slot.index >= len(node.inputs):
                    continue
                t = node.inputs[slot.index]
                if id(t) not in candidates and _weight_reads_only(t):
                    chain = _chain(t, boundary)
                    if chain is not None:
                        candidates[id(t)] = (t, chain)
                readers.append((node, slot.index, t))
    homes = {id(n): g for g in graphs for n in g.nodes}
    values: dict[tuple[tuple[int, ...], str, tuple[int, ...], bytes], list[tuple[int, gs.Tensor, np.ndarray]]] = {}
    for key, (t, chain) in _self_contained(candidates).items():
        value = _evaluate(chain, t, opset)
        if value is not None:
            ident = (_sources(chain), str(value.dtype), value.shape, value.tobytes())
            values.setdefault(ident, []).append((key, t, value))
    # Chains computing the same tensor from the same weight (an LSTM unrolled as two nodes, each reordering the
    # same gates; one initializer transposed in both branches of an If) share one folded constant, in the innermost
    # graph that holds all their readers, so the fold never stores a weight twice where the model stored it once.
    # Two weights that merely hold equal values stay two: a setting or an exclude may name one of them.
    parent = parents(graphs[0])  # ``graphs`` is the model's graph and its subgraphs, outer first
    folded: dict[int, gs.Variable] = {}
    shared: list[gs.Variable] = []
    for group in values.values():
        _, t0, value = group[0]
        home = enclosing(parent, [homes[id(n)] for _, t, _ in group for n in t.outputs if id(n) in homes])
        name = fresh(f"{t0.name}.folded")
        shared.append(_add_constant(home, value, name, fresh(f"{name}/Constant")))
        folded.update({key: shared[-1] for key, _, _ in group})
    for node, index, t in readers:
        if id(t) in folded:
            node.inputs[index] = folded[id(t)]
    outputs = {o.name for g in graphs for o in g.outputs}
    _drop_unused(graphs, [n for key in folded for n in candidates[key][1]], outputs)
    names = [v.name for v in shared]
    if names:
        logger.info("folded %d weight chain(s) of data-movement ops into constants", len(names))
    return names
