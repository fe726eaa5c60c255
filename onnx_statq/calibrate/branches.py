"""Calibrate layers inside If branches: inline the branch every calibration feed takes.

Models exported from control flow keep whole networks inside an If (silero VAD has one per sample rate, each with
its own weights). The streams of :class:`~.executor.StreamExecutor` run the main graph's nodes one segment at a time;
an If is one node to them, so the layers in its branches could not be reached. When the If's condition has the same
value on every calibration feed, the model the calibration runs is the main graph with that If replaced by the
nodes of its taken branch: the same computation on these feeds, with every layer of the branch in topological order
among the main graph's. The other branch's layers are never run on the calibration data, so they stay data-free, and
so do the layers of an If whose feeds disagree. Only If nodes of the main graph are inlined (one level).

This module only builds the model calibration runs; the quantized model keeps its If.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..plan import LayerOutcome, LayerPlan
from .executor import model_like, subgraph_inputs
from .runtime import cpu_session

__all__ = ["inline_taken_branches"]

logger = logging.getLogger(__name__)


def _condition_model(model: onnx.ModelProto, index: int) -> onnx.ModelProto:
    """The nodes before the If at ``index`` that its condition depends on, as a model with that one output."""
    nodes = list(model.graph.node)
    cond = nodes[index].input[0]
    need, keep = {cond}, []
    for n in reversed(nodes[:index]):
        if need & set(n.output):
            keep.append(n)
            need |= {i for i in n.input if i} | subgraph_inputs(n)
    keep.reverse()
    inputs = [i for i in model.graph.input if i.name in need]
    inits = [t for t in model.graph.initializer if t.name in need]
    graph = helper.make_graph(keep, "condition", inputs, [helper.make_empty_tensor_value_info(cond)], inits)
    return model_like(model, graph)


def _taken(model: onnx.ModelProto, index: int, feeds: list[dict[str, np.ndarray]]) -> tuple[str | None, str]:
    """The branch every feed takes at the If at ``index``, or None and why not: the feeds take both, or the
    condition cannot be evaluated on its own (the branches then stay data-free rather than stop the calibration)."""
    cond = model.graph.node[index].input[0]
    constant = next((t for t in model.graph.initializer if t.name == cond), None)
    default = None if constant is None else numpy_helper.to_array(constant)
    if any(cond == i.name for i in model.graph.input) or default is not None:  # a feed wins over a default
        values = [bool(np.asarray(f.get(cond, default)).reshape(-1)[0]) for f in feeds]
    else:
        try:
            values = _evaluate(_condition_model(model, index), feeds)
        except Exception as exc:  # onnxruntime raises many types; the branches just stay data-free
            logger.warning("cannot evaluate the condition of If %d (%s); its branches stay data-free", index, exc)
            return None, "its If's condition could not be evaluated on the calibration feeds"
    if len(set(values)) != 1:
        return None, "the calibration feeds take both branches of its If"
    return ("then_branch" if values[0] else "else_branch"), "the calibration feeds take the other branch of its If"


def _evaluate(cond_model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[bool]:
    sess = cpu_session(cond_model)
    names = [i.name for i in sess.get_inputs()]
    return [bool(np.asarray(sess.run(None, {k: f[k] for k in names})[0]).reshape(-1)[0]) for f in feeds]


def _inline(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], index: int, branch: onnx.GraphProto
) -> list[onnx.NodeProto]:
    """``nodes`` with the If at ``index`` replaced by ``branch``'s nodes, whose outputs become the If's outputs."""
    node = nodes[index]
    links = [
        helper.make_node("Identity", [b.name], [o], name=f"statq_calib_inline_{index}_{k}")
        for k, (b, o) in enumerate(zip(branch.output, node.output, strict=True))
        if o and o != b.name  # a branch output named as the If's output already defines it
    ]
    inits.extend(_own_initializers(branch, inits))
    return nodes[:index] + list(branch.node) + links + nodes[index + 1 :]


def _own_initializers(branch: onnx.GraphProto, inits: list[onnx.TensorProto]) -> list[onnx.TensorProto]:
    """The branch's initializers that are not copies of one the graph already has: onnx-graphsurgeon's export
    repeats an outer constant a subgraph reads (a Loop's trip count) as an initializer of that subgraph."""
    have = {t.name: t for t in inits}
    return [
        t for t in branch.initializer if t.name not in have or t.SerializeToString() != have[t.name].SerializeToString()
    ]


def _top(nodes: Sequence[onnx.NodeProto], inits: Sequence[onnx.TensorProto]) -> set[str]:
    """The names these nodes and initializers define in their own graph."""
    return {o for n in nodes for o in n.output if o} | {t.name for t in inits}


def _nested(nodes: Sequence[onnx.NodeProto]) -> set[str]:
    """The names defined inside these nodes' subgraphs, at any depth."""
    names: set[str] = set()
    for n in nodes:
        for attr in n.attribute:
            for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= _top(g.node, g.initializer) | {i.name for i in g.input} | _nested(g.node)
    return names


def _clashes(
    branch: onnx.GraphProto, nodes: list[onnx.NodeProto], at: int, inits: list[onnx.TensorProto], inputs: set[str]
) -> bool:
    """Whether inlining ``branch`` in place of ``nodes[at]`` would define a name twice in one scope, or a name a
    subgraph also defines (onnxruntime refuses a subgraph that shadows an outer name). Sibling subgraphs may reuse
    names (two branches' ``t``, two Ifs' initializer ``W``, two Loop bodies' ``i``), and still may once inlined."""
    rest = nodes[:at] + nodes[at + 1 :]
    rest_top, branch_top = _top(rest, inits) | inputs, _top(branch.node, _own_initializers(branch, inits))
    return not branch_top.isdisjoint(rest_top | _nested(rest)) or not _nested(branch.node).isdisjoint(rest_top)


def inline_taken_branches(
    model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], plans: list[LayerPlan]
) -> tuple[onnx.ModelProto, list[LayerPlan], dict[str, LayerOutcome], int]:
    """The model calibration runs, the plans with their positions in it, the outcomes of the plans it cannot
    reach (data-free, with the reason), and how many of those the streams run float: those in an If that is not
    inlined, which runs whole with the weights stored in its branches. Without plans in branches, ``model`` and
    ``plans`` come back as they are.

    A ``data_free`` plan in a branch the feeds do not take stays a plan when its weight is defined outside the If
    (an initializer of the main graph read in both branches): it enters the streams by name. One the If's branches
    define does not: its name may also be another tensor's in the taken branch."""
    ifs = sorted({p.branch[0] for p in plans if p.branch is not None})
    if not ifs:
        return model, plans, {}, 0
    nodes, inits = list(model.graph.node), list(model.graph.initializer)
    nodes_before = list(model.graph.node)
    taken: dict[int, str | None] = {}
    why_not: dict[int, str] = {}
    start: dict[int, int] = {}  # If position -> where its branch starts in the flat node list
    delta: dict[int, int] = {}  # If position -> how many positions the nodes after it move
    for index in ifs:
        taken[index], why_not[index] = _taken(model, index, feeds)
        start[index] = index + sum(delta.values())
        delta[index] = 0
        if taken[index] is not None:
            branch = next(a.g for a in model.graph.node[index].attribute if a.name == taken[index])
            if _clashes(branch, nodes, start[index], inits, {i.name for i in model.graph.input}):
                taken[index], why_not[index] = None, "its If's branch defines names its graph also defines"
                continue
            before = len(nodes)
            nodes = _inline(nodes, inits, start[index], branch)
            delta[index] = len(nodes) - before
    kept, fixed, unrun = [], {}, 0
    for p in plans:
        if p.branch is None:
            moved = p.node_index + sum(d for i, d in delta.items() if i < p.node_index)
            kept.append(dataclasses.replace(p, node_index=moved))
        elif taken[p.branch[0]] == p.branch[1]:
            kept.append(dataclasses.replace(p, node_index=start[p.branch[0]] + p.node_index, branch=None))
        elif p.data_free and taken[p.branch[0]] is not None and p.weight not in _nested([nodes_before[p.branch[0]]]):
            kept.append(dataclasses.replace(p, branch=None))  # read here, defined outside the If: set by name
        else:
            fixed[p.weight] = LayerOutcome(p.encoded, note=f"data-free: {why_not[p.branch[0]]}")
            unrun += taken[p.branch[0]] is None
    logger.info("calibration inlines %d of %d If nodes", sum(t is not None for t in taken.values()), len(ifs))
    graph = helper.make_graph(nodes, model.graph.name, list(model.graph.input), list(model.graph.output), inits)
    return model_like(model, graph), kept, fixed, unrun
