"""Apply a calibration bias correction to a layer in the graph: update its bias, or give it one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..plan import bias_input_delta, bias_values

__all__ = ["add_bias"]


def _updated(const: gs.Constant, delta: np.ndarray, fresh: Callable[[str], str]) -> gs.Constant:
    return gs.Constant(fresh(f"{const.name}.statq_bias"), bias_values(np.asarray(const.values), delta))


def _conv_or_gemm(
    node: gs.Node, graph: gs.Graph, delta: np.ndarray, fresh: Callable[[str], str], dtype: np.dtype[Any]
) -> bool:
    """Fold ``delta`` into the bias input as :func:`~onnx_statq.plan.bias_input_delta` says, or add one; not into
    a computed bias, nor one that is also a graph input (the caller may override it)."""
    bias = node.inputs[2] if len(node.inputs) >= 3 and node.inputs[2].name else None
    if bias is not None and (not isinstance(bias, gs.Constant) or any(bias is i for i in graph.inputs)):
        return False
    shape = None if bias is None else tuple(np.asarray(bias.values).shape)
    moved = bias_input_delta(node.op, node.attrs, shape, delta)
    if moved is None:
        return False
    if bias is not None:
        node.inputs[2] = _updated(bias, moved, fresh)
        return True
    node.inputs.append(gs.Constant(fresh(f"{node.name or node.op}.statq_bias"), bias_values(None, moved, dtype)))
    return True


def add_bias(
    node: gs.Node, graph: gs.Graph, delta: np.ndarray, fresh: Callable[[str], str], dtype: np.dtype[Any]
) -> bool:
    """Add ``delta`` (one value per output channel) to the layer's output bias; False if the graph does not allow.
    ``dtype``: the layer's weight type, which a bias it is given takes (a Constant node's weight leaves the layer's
    input untyped: a float16 Conv got a float32 bias, which onnxruntime refused).

    A new constant is always created rather than editing the old one in place, because a bias may be shared.
    """
    n = delta.size
    if node.op in ("Conv", "Gemm"):
        return _conv_or_gemm(node, graph, delta, fresh, dtype)
    if node.op == "MatMul":
        out = node.outputs[0]
        users = list(out.outputs)
        if len(users) == 1 and users[0].op == "Add":
            add = users[0]
            other = [i for i, t in enumerate(add.inputs) if t is not out]
            held = add.inputs[other[0]] if len(other) == 1 else None
            if isinstance(held, gs.Constant) and not any(held is i for i in graph.inputs):
                c = add.inputs[other[0]]
                if tuple(c.shape) == (n,):
                    add.inputs[other[0]] = _updated(c, delta, fresh)
                    return True
        mid = gs.Variable(fresh(f"{out.name}.statq_pre_bias"), dtype=out.dtype)
        node.outputs[0] = mid
        const = gs.Constant(fresh(f"{out.name}.statq_bias"), delta.astype(np.dtype(out.dtype or np.float32)))
        add_node = gs.Node("Add", fresh(f"{node.name or 'matmul'}/statq_bias"), {}, [mid, const], [out])
        graph.nodes.insert(graph.nodes.index(node) + 1, add_node)
        return True
    return False
