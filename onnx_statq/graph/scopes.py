"""Where a graph sits among the model's graphs: every subgraph, each one's enclosing graph, and the innermost graph
several others share, which is where a value all of them read can be defined."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_graphsurgeon as gs

__all__ = ["enclosing", "graphs", "parents"]


def graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph and all its subgraphs (If/Loop/Scan bodies), outer first."""
    yield graph
    for node in graph.nodes:
        for attr in node.attrs.values():
            subs = attr if isinstance(attr, list) else [attr]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    yield from graphs(sub)


def parents(graph: gs.Graph) -> dict[int, gs.Graph]:
    """Each subgraph of ``graph`` (by id) -> the graph whose node holds it."""
    out: dict[int, gs.Graph] = {}
    for g in graphs(graph):
        for node in g.nodes:
            for attr in node.attrs.values():
                out.update(
                    {id(sub): g for sub in (attr if isinstance(attr, list) else [attr]) if isinstance(sub, gs.Graph)}
                )
    return out


def enclosing(parent: dict[int, gs.Graph], inner: list[gs.Graph]) -> gs.Graph:
    """The innermost graph that is, or holds, every graph of ``inner`` (``parent``: from :func:`parents`): where a
    value that all of them read can be defined. An If's two branches both see their If's graph, not each other."""

    def chain(g: gs.Graph) -> list[gs.Graph]:
        out = [g]
        while id(out[-1]) in parent:
            out.append(parent[id(out[-1])])
        return out

    common = set.intersection(*({id(c) for c in chain(g)} for g in inner))
    return next(g for g in chain(inner[0]) if id(g) in common)
