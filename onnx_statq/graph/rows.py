"""Embedding tables decoded after the lookup: only the rows a Gather selects are ever unpacked.

A table ``[V, D]`` read only by Gather on axis 0 (a word embedding) does not need its whole decode. Decoded whole,
onnxruntime either folds it at session creation (the session then holds the float table, as many bytes as the float
model's: 45 MB for MiniLM's word embedding) or, in an ORT-format file, decodes all of it on every run. Packed row by
row instead (:func:`~onnx_statq.codebook.packing.pack_rows`), the same bytes are gathered first, still packed, with
the lookup's own indices, and only those rows are unpacked and looked up in the codebook. The file is the same size
(rows of whole bytes leave no tail), the session holds the packed table, and a run decodes ``len(ids) * D`` weights.

The result equals ``Gather(decoded table, ids)`` bit for bit: same levels, same indices, same row selection (negative
and out-of-range indices behave as Gather's on the table, because the first Gather is Gather on the table's rows).
Ops: Gather, Cast, Add, Reshape, Shape, Concat and Transpose (on a 256-entry table), all with CPU kernels from opset 7.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from ..codebook import EncodedTensor, Representation
from ..codebook.packing import Plane, pack_rows, rows_packable
from .encode import UINT8_ADD_OPSET, levels_const, one_field_plane
from .tables import INT32, UINT8, Builder, ByteTables
from .weights import Weight

__all__ = ["decode_after_lookup", "row_lookup_reason"]

logger = logging.getLogger(__name__)


def row_lookup_reason(w: Weight, enc: EncodedTensor) -> str | None:
    """Why ``w`` cannot be decoded after its lookups (None: it can). Every reader must be a Gather on axis 0 of the
    2-D table in the graph the decode goes into, and its rows must pack into whole bytes."""
    if len(enc.shape) != 2:
        return "not a 2-D table"
    for u in w.uses:
        if u.node.op != "Gather" or u.slot != 0 or int(u.node.attrs.get("axis", 0)) != 0 or u.graph is not w.home:
            return "read by something other than a Gather on its rows in its own graph"
    if len(w.tensor.outputs) != len(w.uses) or w.tensor in w.home.outputs:  # every use is in w.home (above)
        return "also read by an op other than Gather, or a graph output"
    if enc.representation == Representation.FLOAT16:
        return None
    assert enc.codebook is not None
    if enc.representation == Representation.CHANNEL and enc.axis != 1:
        return "one codebook per row"
    if not rows_packable(enc.shape[1], enc.codebook.bits):
        return f"rows of {enc.shape[1]} do not pack into whole bytes at {enc.codebook.bits} bits"
    return None


def decode_after_lookup(
    w: Weight, enc: EncodedTensor, dtype: np.dtype, opset: int, fresh: Callable[[str], str], prefix: str, t: ByteTables
) -> None:
    """Replace every Gather reading ``w`` by a Gather of its packed rows and their decode, at the Gather's place and
    under its name; the table itself leaves the graph."""
    b = Builder(prefix, fresh, opset)
    stored = _Stored(b, enc, dtype)
    w.home.nodes[0:0] = b.nodes[:]  # the stored constants' own nodes (a Cast of float16 levels) read only constants
    for use in w.uses:
        node, graph = use.node, use.graph
        ids, out, name = node.inputs[1], node.outputs[0], node.name
        at = graph.nodes.index(node)
        node.inputs.clear()  # detach, so the decode's last node is the output's only producer
        node.outputs.clear()
        start = len(b.nodes)
        stored.lookup(t, ids, out)
        chain = b.nodes[start:]
        chain[-1].name = name or chain[-1].name
        graph.nodes[at : at + 1] = chain
    if w.source is not None and w.source_graph is not None:
        w.source_graph.nodes.remove(w.source)
        w.tensor.inputs.clear()
    logger.debug("%s: decoded after its %d lookup(s)", w.tensor.name, len(w.uses))


class _Stored:
    """One table's stored constants (planes, levels, offsets), shared by all its lookups."""

    def __init__(self, b: Builder, enc: EncodedTensor, dtype: np.dtype) -> None:
        self.b, self.enc, self.dtype = b, enc, dtype
        self.width = int(enc.shape[1])
        if enc.representation == Representation.FLOAT16:
            assert enc.half is not None
            self.half: gs.Constant | None = b.const("half", enc.half)
            return
        self.half = None
        assert enc.codebook is not None and enc.indices is not None
        self.per_channel = enc.representation == Representation.CHANNEL
        # per-channel indices are held channels first, [D, V]; a tensor codebook's in the table's own order
        natural = enc.indices.reshape(enc.shape[::-1]).T if self.per_channel else enc.indices.reshape(enc.shape)
        self.planes = [(p, b.const(f"rows{k}", p.data)) for k, p in enumerate(pack_rows(natural, enc.codebook.bits))]
        self.levels = levels_const(b, enc, dtype)

    def lookup(self, t: ByteTables, ids: gs.Tensor, out: gs.Variable) -> None:
        b = self.b
        if self.half is not None:
            rows = b.op("Gather", [self.half, ids], {"axis": 0})
            b.op("Cast", [rows], {"to": helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))}, out=out)
            return
        shape = b.op("Concat", [b.op("Shape", [ids]), b.shape("width", [self.width])], {"axis": 0})
        cb = self.enc.codebook
        assert cb is not None
        one = None if self.per_channel else one_field_plane([p for p, _ in self.planes], cb.k)
        if one is not None:
            # one field per byte value: the table holds the levels of every field of every byte value
            table = b.op("Gather", [self.levels, t.by_byte(one.width)], {"axis": 0})
            vals = b.op("Gather", [table, self._bytes(ids, 0)], {"axis": 0})
            b.op("Reshape", [vals, shape], out=out)
            return
        idx = self._indices(t, ids, shape)
        if self.per_channel:  # levels flat [D * K]: channel c's level j at c * K + j, channels on the last axis
            offsets = b.arange("offsets", self.width * cb.k, cb.k)
            idx = b.op("Add", [idx, offsets])
        b.op("Gather", [self.levels, idx], {"axis": 0}, out=out)

    def _bytes(self, ids: gs.Tensor, k: int) -> gs.Variable:
        """Plane ``k``'s bytes of the selected rows, as int32 indices into a byte table."""
        rows = self.b.op("Gather", [self.planes[k][1], ids], {"axis": 0})
        return self.b.op("Cast", [rows], {"to": INT32})

    def _indices(self, t: ByteTables, ids: gs.Tensor, shape: gs.Tensor) -> gs.Variable:
        """int32 indices of the selected rows, shaped ``ids.shape + [D]``."""
        b = self.b
        to = INT32 if len(self.planes) > 1 and b.opset < UINT8_ADD_OPSET else UINT8
        total: gs.Variable | None = None
        for k, (p, data) in enumerate(self.planes):
            part = self._plane(t, ids, shape, k, p, data, to)
            total = part if total is None else b.op("Add", [total, part])
        assert total is not None
        return total if to == INT32 else b.op("Cast", [total], {"to": INT32})

    def _plane(
        self, t: ByteTables, ids: gs.Tensor, shape: gs.Tensor, k: int, p: Plane, data: gs.Constant, to: int
    ) -> gs.Variable:
        """This plane's part ``field << shift`` of the selected rows' indices, shaped ``ids.shape + [D]``."""
        b = self.b
        if p.width == 8:
            rows = b.op("Gather", [data, ids], {"axis": 0})
            return rows if to == UINT8 else b.op("Cast", [rows], {"to": to})
        fields = b.op("Gather", [t.by_byte(p.width, p.shift, to), self._bytes(ids, k)], {"axis": 0})
        return b.op("Reshape", [fields, shape])
