"""Emit the ONNX nodes that turn stored codebook + packed indices back into the weight.

Only ops that onnxruntime's CPU provider implements from opset 7 (11 for GatherElements) and that onnxruntime
folds at session creation: Cast, Div, Mul, Sub, Add, Reshape, Concat, Gather, GatherElements, Transpose. The decoded
tensor therefore costs nothing at run time, and equals ``EncodedTensor.decoded()`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..codebook import EncodedTensor, Representation, pack
from ..codebook.packing import PackedIndices

__all__ = ["MIN_OPSET", "emit_decode"]

MIN_OPSET = 7
_ONNX_TYPES = {np.dtype(np.float16): 10, np.dtype(np.float32): 1, np.dtype(np.float64): 11, np.dtype(np.int32): 6}


class _Builder:
    """Appends nodes with short, deterministic, collision-free names (``statq<i>.<tag>``).

    Names are kept short on purpose: a model has a dozen decode nodes per weight, and long names derived from the
    weight's name cost measurable bytes in the file that the pass is trying to shrink.
    """

    def __init__(self, base: str, fresh: Callable[[str], str]) -> None:
        self.base = base
        self.fresh = fresh
        self.nodes: list[gs.Node] = []

    def const(self, tag: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self.fresh(f"{self.base}.{tag}"), np.ascontiguousarray(value))

    def op(
        self, op: str, inputs: list[gs.Tensor], attrs: dict | None = None, out: gs.Variable | None = None
    ) -> gs.Variable:
        tag = f"{op.lower()}{len(self.nodes)}"
        result = out if out is not None else gs.Variable(self.fresh(f"{self.base}.{tag}"))
        self.nodes.append(gs.Node(op, self.fresh(f"{self.base}/{tag}"), attrs or {}, inputs, [result]))
        return result


def _unpack(b: _Builder, packed: PackedIndices) -> gs.Variable:
    """int32 indices, in the order of :func:`onnx_statq.codebook.unpack`."""
    parts: list[gs.Variable] = []
    total: gs.Variable | None = None
    for k, p in enumerate(packed.planes):
        data = b.op("Cast", [b.const(f"plane{k}", p.data.reshape(1, -1))], {"to": 6})
        if p.width == 8:
            fields = b.op("Reshape", [data, b.const(f"flat{k}", np.array([-1], np.int64))])
        else:
            div = b.const(f"div{k}", (1 << (p.width * np.arange(p.per_byte, dtype=np.int32)))[:, None])
            q = b.op("Div", [data, div])
            base = b.const(f"base{k}", np.array(1 << p.width, np.int32))
            high = b.op("Mul", [b.op("Div", [q, base]), base])
            fields = b.op("Reshape", [b.op("Sub", [q, high]), b.const(f"flat{k}", np.array([-1], np.int64))])
        if p.shift:
            fields = b.op("Mul", [fields, b.const(f"shift{k}", np.array(1 << p.shift, np.int32))])
        total = fields if total is None else b.op("Add", [total, fields])
    if total is not None:
        parts.append(total)
    if packed.tail.size:
        parts.append(b.op("Cast", [b.const("tail", packed.tail)], {"to": 6}))
    return parts[0] if len(parts) == 1 else b.op("Concat", list(parts), {"axis": 0})


def emit_decode(
    enc: EncodedTensor,
    target: gs.Variable,
    dtype: np.dtype,
    opset: int,
    fresh: Callable[[str], str],
    prefix: str = "statq",
) -> list[gs.Node]:
    """Nodes whose last output is ``target``, holding the decoded weight in ``dtype``."""
    b = _Builder(prefix, fresh)
    to = _ONNX_TYPES[np.dtype(dtype)]
    if enc.representation == Representation.FLOAT16:
        assert enc.half is not None
        b.op("Cast", [b.const("half", enc.half)], {"to": to}, out=target)
        return b.nodes
    assert enc.codebook is not None and enc.indices is not None
    cb = enc.codebook
    store = np.float16 if cb.level_dtype == "float16" else np.float32
    table = cb.levels.reshape(-1) if enc.representation == Representation.TENSOR else cb.levels
    levels: gs.Tensor = b.const("levels", table.astype(store))
    if np.dtype(store) != np.dtype(dtype):
        levels = b.op("Cast", [levels], {"to": to})
    idx = _unpack(b, pack(enc.indices.ravel(), cb.bits))
    if enc.representation == Representation.TENSOR:
        flat = b.op("Gather", [levels, idx], {"axis": 0})
        b.op("Reshape", [flat, b.const("shape", np.array(enc.shape, np.int64))], out=target)
        return b.nodes
    assert enc.axis is not None
    c, n = enc.indices.shape
    grid = b.op("Reshape", [idx, b.const("grid", np.array([c, n], np.int64))])
    if opset >= 11:
        rows = b.op("GatherElements", [levels, grid], {"axis": 1})
    else:
        offsets = b.const("offsets", (np.arange(c, dtype=np.int32) * cb.k)[:, None])
        flat_levels = b.op("Reshape", [levels, b.const("levels_flat", np.array([-1], np.int64))])
        rows = b.op("Gather", [flat_levels, b.op("Add", [grid, offsets])], {"axis": 0})
    moved = (enc.shape[enc.axis], *tuple(s for i, s in enumerate(enc.shape) if i != enc.axis))
    if enc.axis == 0:
        b.op("Reshape", [rows, b.const("shape", np.array(moved, np.int64))], out=target)
        return b.nodes
    block = b.op("Reshape", [rows, b.const("shape", np.array(moved, np.int64))])
    perm = [*list(range(1, enc.axis + 1)), 0, *list(range(enc.axis + 1, len(enc.shape)))]
    b.op("Transpose", [block], {"perm": perm}, out=target)
    return b.nodes
