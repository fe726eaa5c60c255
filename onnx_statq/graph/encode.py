"""Emit the ONNX nodes that turn stored codebook + packed indices back into the weight.

onnxruntime constant-folds the decode when it creates a session, and it materialises every intermediate tensor of
the fold at once: the session-creation peak is the float model plus the sum of those intermediates. The decode is
therefore built so that per weight element only a few bytes of intermediates exist, and none is a full-size int32
or float tensor that is not needed:

- the bit fields are never unpacked with arithmetic on the large tensor. A table over the 256 byte values (built in
  the graph from ``Range``, a few hundred elements) is indexed by the packed bytes (one int32 per *byte*), so each
  index costs 1 byte (uint8) before the final lookup. The table depends on the plane, not the weight: every weight
  of a graph reads the same one (:mod:`.tables`), so in the file a weight's decode is a handful of nodes;
- a one-field tensor codebook (1, 2, 4 bits) goes further: its table holds the *levels* of each field of each byte
  value, and a single Gather on the bytes yields the float weight with no per-element index at all;
- a per-channel codebook gathers from the flattened levels at ``channel * K + index``; the indices are packed in the
  weight's own order, so the Gather's output already has the weight's shape (no Reshape or Transpose of floats).

A table read only by Gather lookups (an embedding) is not decoded here at all but after each lookup, row by row
(:mod:`.rows`), so that neither the fold nor a run ever holds the whole float table.

Only ops that onnxruntime's CPU provider implements at the model's opset, from opset 7: Cast, Div, Mul, Sub, Add,
Reshape, Concat, Gather; Mod from 10, Range and GatherElements (a 2-D per-channel weight's levels) from 11 (older
opsets store the small tables as constants instead).
The decoded tensor equals ``EncodedTensor.decoded()`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ..codebook import EncodedTensor, Representation, pack
from ..codebook.packing import PackedIndices, Plane
from .tables import INT32, UINT8, Builder, ByteTables

__all__ = ["MIN_OPSET", "UINT8_ADD_OPSET", "emit_decode", "levels_const", "one_field_plane"]

MIN_OPSET = 7
_ONNX_TYPES = {np.dtype(np.float16): 10, np.dtype(np.float32): 1, np.dtype(np.float64): 11, np.dtype(np.int32): 6}
_GATHER_ELEMENTS_OPSET = 11  # GatherElements; below it a per-channel decode adds channel offsets and Gathers
UINT8_ADD_OPSET = 14  # Add on uint8; below it indices split over several planes are summed in int32


def _bytes_i32(b: Builder, k: int, p: Plane) -> gs.Variable:
    """The packed bytes as int32 (Gather takes int32/int64 indices): 4 bytes per byte, not per index."""
    return b.op("Cast", [b.const(f"plane{k}", p.data)], {"to": INT32})


def _plane_indices(b: Builder, t: ByteTables, k: int, p: Plane, to: int) -> gs.Variable:
    """This plane's contribution ``field << shift`` to every index, in element order once flattened, as ``to``."""
    if p.width == 8:
        data: gs.Tensor = b.const(f"plane{k}", p.data)
        return data if to == UINT8 else b.op("Cast", [data], {"to": to})
    # [per_byte, m]: row j holds field j of every byte, i.e. elements j*m .. j*m+m-1 in pack's order
    return b.op("Gather", [t.fields(p.width, p.shift, to), _bytes_i32(b, k, p)], {"axis": 1})


def _indices(b: Builder, t: ByteTables, packed: PackedIndices, shape: tuple[int, ...]) -> gs.Variable:
    """int32 indices in the weight's shape, in the order of :func:`onnx_statq.codebook.unpack`.

    They stay uint8 until the last step (an Add of planes on uint8 needs opset 14; older opsets add in int32), so
    the only full-size int32 tensor is the one the final Gather needs.
    """
    if len(packed.planes) == 1 and packed.planes[0].width == 8:  # whole bytes: stored in the weight's shape
        return b.op("Cast", [b.const("plane0", packed.planes[0].data.reshape(shape))], {"to": INT32})
    to = INT32 if len(packed.planes) > 1 and b.opset < UINT8_ADD_OPSET else UINT8
    parts = [_plane_indices(b, t, k, p, to) for k, p in enumerate(packed.planes)]
    if len(parts) > 1 or packed.tail.size:  # planes differ in shape: add them flat (one plane goes to shape at once)
        parts = [b.op("Reshape", [part, t.flat()]) for part in parts]
    total: gs.Tensor | None = None
    for part in parts:
        total = part if total is None else b.op("Add", [total, part])
    if packed.tail.size:
        tail: gs.Tensor = b.const("tail", packed.tail)
        if to != UINT8:
            tail = b.op("Cast", [tail], {"to": to})
        total = tail if total is None else b.op("Concat", [total, tail], {"axis": 0})
    assert total is not None  # a weight has at least one element
    idx = b.op("Reshape", [total, b.shape("shape", shape)])
    return idx if to == INT32 else b.op("Cast", [idx], {"to": INT32})


def levels_const(b: Builder, enc: EncodedTensor, dtype: np.dtype, layout: str = "flat") -> gs.Tensor:
    """The levels in ``dtype``, stored in the codebook's level type: ``flat`` ``[G * K]``, ``rows`` ``[G, K]`` or
    ``columns`` ``[K, G]`` (the layouts GatherElements needs for a channel axis first or last)."""
    assert enc.codebook is not None
    cb = enc.codebook
    store = np.float16 if cb.level_dtype == "float16" else np.float32
    table = {"flat": cb.levels.reshape(-1), "rows": cb.levels, "columns": cb.levels.T}[layout]
    levels: gs.Tensor = b.const("levels", table.astype(store))
    if np.dtype(store) != np.dtype(dtype):
        levels = b.op("Cast", [levels], {"to": _ONNX_TYPES[np.dtype(dtype)]})
    return levels


def one_field_plane(planes: Sequence[Plane], k: int) -> Plane | None:
    """The index's only plane, if it is sub-byte and every value of its field is a level (``K >= 2**width``): a
    tensor codebook's decode can then look the levels of every field of every byte value up in one table."""
    one = planes[0] if len(planes) == 1 else None
    return one if one is not None and one.width < 8 and k >= 1 << one.width else None


def _decode_byte_table(
    b: Builder, t: ByteTables, levels: gs.Tensor, packed: PackedIndices, enc: EncodedTensor, target: gs.Variable
) -> None:
    """One-field tensor codebook: Gather the float levels of every field straight from the bytes.

    ``table[j, byte]`` is the level of field ``j`` of ``byte``; ``Gather(table, bytes, axis=1)`` is then the weight
    in pack's element order, with no per-element index ever materialised.
    """
    (p,) = packed.planes
    table = b.op("Gather", [levels, t.fields(p.width)], {"axis": 0})
    rows = b.op("Gather", [table, _bytes_i32(b, 0, p)], {"axis": 1})
    b.op("Reshape", [rows, b.shape("shape", enc.shape)], out=target)


def _channel_offsets(b: Builder, enc: EncodedTensor) -> gs.Tensor:
    """int32 ``c * K`` shaped ``[C, 1, ...]`` to broadcast over the weight's dimensions after the channel axis."""
    assert enc.codebook is not None and enc.axis is not None
    c, k = enc.codebook.groups, enc.codebook.k
    offsets = b.arange("offsets", c * k, k)
    return b.op("Reshape", [offsets, b.shape("offsets_shape", [c] + [1] * (len(enc.shape) - enc.axis - 1))])


def emit_decode(
    enc: EncodedTensor,
    target: gs.Variable,
    dtype: np.dtype,
    opset: int,
    fresh: Callable[[str], str],
    prefix: str = "statq",
    tables: ByteTables | None = None,
) -> list[gs.Node]:
    """Nodes whose last output is ``target``, holding the decoded weight in ``dtype``.

    With ``tables`` (the graph's shared tables over the byte values) the nodes read them and the caller places the
    tables' nodes before these; without, the tables this weight needs come first in the returned list.
    """
    b = Builder(prefix, fresh, opset)
    t = tables if tables is not None else ByteTables(fresh, opset, prefix=f"{prefix}t")
    _emit(b, t, enc, target, dtype)
    return b.nodes if tables is not None else t.nodes + b.nodes


def _emit(b: Builder, t: ByteTables, enc: EncodedTensor, target: gs.Variable, dtype: np.dtype) -> None:
    """The layout's decode: float16, tensor codebook (through the byte table when it can), per-channel codebook."""
    if enc.representation == Representation.FLOAT16:
        assert enc.half is not None
        b.op("Cast", [b.const("half", enc.half)], {"to": _ONNX_TYPES[np.dtype(dtype)]}, out=target)
        return
    assert enc.codebook is not None and enc.indices is not None
    cb = enc.codebook
    if enc.representation == Representation.TENSOR:
        levels = levels_const(b, enc, dtype)
        packed = pack(enc.indices.ravel(), cb.bits)
        if one_field_plane(packed.planes, cb.k) is not None and not packed.tail.size:
            _decode_byte_table(b, t, levels, packed, enc, target)
        else:
            b.op("Gather", [levels, _indices(b, t, packed, enc.shape)], {"axis": 0}, out=target)
        return
    assert enc.axis is not None
    # indices in the weight's own order (not the [C, n] group view), so the Gather yields the weight's layout
    natural = np.moveaxis(enc.indices.reshape(_moved(enc.shape, enc.axis)), 0, enc.axis)
    packed = pack(natural.ravel(), cb.bits)
    if b.opset >= _GATHER_ELEMENTS_OPSET and len(enc.shape) == 2:
        # GatherElements picks each element's level in its own channel with no offset tensor (one int32 copy less)
        levels = levels_const(b, enc, dtype, "rows" if enc.axis == 0 else "columns")
        gather_axis = 1 - enc.axis
        b.op("GatherElements", [levels, _indices(b, t, packed, enc.shape)], {"axis": gather_axis}, out=target)
        return
    key = b.op("Add", [_indices(b, t, packed, enc.shape), _channel_offsets(b, enc)])
    b.op("Gather", [levels_const(b, enc, dtype), key], {"axis": 0}, out=target)


def _moved(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """``shape`` with the channel axis first: the group view's layout before it is flattened to ``[C, n]``."""
    return (shape[axis], *tuple(s for i, s in enumerate(shape) if i != axis))
