"""Node building for the decode, and the tables over the 256 byte values that all packed weights of a graph share.

A packed plane is unpacked by a Gather from a table holding field ``j`` of every byte value (see :mod:`.encode`).
That table depends only on the plane (field width, its shift in the index), the index type and the opset, never on
the weight, so one per distinct plane is built per graph and every weight of that graph reads it. Built per weight,
it was most of the decode: on the PP-OCR direction classifier at 4 bits, 16 nodes (1.1 KB) and 400 bytes of small
constants for a 5-bit weight whose indices take 880 bytes; 32.8 KB of the 221.8 KB file over 27 weights, 16.3 KB
with the tables shared.

Tables are shared within a graph, not across graphs: a weight inside an If/Loop/Scan body gets the tables of the
body it is decoded in, so every reader has its table in scope without the pass reasoning about outer scopes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["INT32", "RANGE_OPSET", "UINT8", "Builder", "ByteTables", "SharedTables"]

INT32, UINT8 = 6, 2  # ONNX type numbers
RANGE_OPSET = 11  # Range; below it the 256 byte values and the channel offsets are stored
_MOD_OPSET = 10  # Mod on int32; below it the field mask is Div/Mul/Sub


class Builder:
    """Appends nodes with short, deterministic, collision-free names (``<base>.<tag>``, ``<base>/<tag>``).

    Names are kept short on purpose: a model has several decode nodes per weight, and long names derived from the
    weight's name cost measurable bytes in the file that the pass is trying to shrink.
    """

    def __init__(self, base: str, fresh: Callable[[str], str], opset: int) -> None:
        self.base = base
        self.fresh = fresh
        self.opset = opset
        self.nodes: list[gs.Node] = []

    def const(self, tag: str, value: np.ndarray) -> gs.Constant:
        # np.ascontiguousarray would turn a scalar into shape [1], which Range refuses
        return gs.Constant(self.fresh(f"{self.base}.{tag}"), np.require(value, requirements="C"))

    def op(
        self, op: str, inputs: list[gs.Tensor], attrs: dict | None = None, out: gs.Variable | None = None
    ) -> gs.Variable:
        tag = f"{op.lower()}{len(self.nodes)}"
        result = out if out is not None else gs.Variable(self.fresh(f"{self.base}.{tag}"))
        self.nodes.append(gs.Node(op, self.fresh(f"{self.base}/{tag}"), attrs or {}, inputs, [result]))
        return result

    def shape(self, tag: str, dims: tuple[int, ...] | list[int]) -> gs.Constant:
        return self.const(tag, np.array(dims, np.int64))

    def arange(self, tag: str, stop: int, step: int) -> gs.Tensor:
        """int32 ``[0, step, ..., stop - step]``: three scalars with Range, else stored (only small ranges)."""
        if self.opset >= RANGE_OPSET:
            scalars = [self.const(f"{tag}{i}", np.array(v, np.int32)) for i, v in enumerate((0, stop, step))]
            return self.op("Range", scalars)
        return self.const(tag, np.arange(0, stop, step, dtype=np.int32))


class ByteTables:
    """One graph's tables over the byte values, each built on first use and then returned to every later caller.

    :attr:`nodes` must precede every reader in the graph; :meth:`SharedTables.place` puts them first.
    """

    def __init__(self, fresh: Callable[[str], str], opset: int, prefix: str = "statqt") -> None:
        self._b = Builder(prefix, fresh, opset)
        self._made: dict[tuple[int, int, int], gs.Tensor] = {}
        self._by_byte: dict[tuple[int, int, int], gs.Tensor] = {}
        self._scalars: dict[int, gs.Constant] = {}
        self._values: gs.Tensor | None = None
        self._flat: gs.Constant | None = None

    @property
    def nodes(self) -> list[gs.Node]:
        return self._b.nodes

    def fields(self, width: int, shift: int = 0, to: int = INT32) -> gs.Tensor:
        """``[8 // width, 256]``: field ``j`` of every byte value, in :func:`pack`'s field order, times ``2**shift``,
        as ONNX type ``to``. Built from the same table at shift 0 in int32, so the variants cost one node each."""
        key = (width, shift, to)
        if key not in self._made:
            if to != INT32:
                made = self._b.op("Cast", [self.fields(width, shift)], {"to": to})
            elif shift:
                made = self._b.op("Mul", [self.fields(width), self._scalar(1 << shift)])
            else:
                made = self._unshifted(width)
            self._made[key] = made
        return self._made[key]

    def by_byte(self, width: int, shift: int = 0, to: int = INT32) -> gs.Tensor:
        """``[256, 8 // width]``: :meth:`fields` transposed, for rows packed by :func:`pack_rows`, whose gathered
        bytes then unpack in element order. One Transpose of the small table per variant and graph."""
        key = (width, shift, to)
        if key not in self._by_byte:
            self._by_byte[key] = self._b.op("Transpose", [self.fields(width, shift, to)], {"perm": [1, 0]})
        return self._by_byte[key]

    def flat(self) -> gs.Constant:
        """The int64 shape ``[-1]`` that flattens each plane's indices before they are added: one per graph."""
        if self._flat is None:
            self._flat = self._b.shape("flat", [-1])
        return self._flat

    def _unshifted(self, width: int) -> gs.Tensor:
        """Field ``j`` of byte ``v`` is ``v // 2**(width * j) mod 2**width``, computed on the 256 values only."""
        per_byte = 8 // width
        div = self._b.const(f"pow{width}", (1 << (width * np.arange(per_byte, dtype=np.int32)))[:, None])
        q = self._b.op("Div", [self._byte_values(), div])
        base = self._scalar(1 << width)
        if self._b.opset >= _MOD_OPSET:
            return self._b.op("Mod", [q, base])
        return self._b.op("Sub", [q, self._b.op("Mul", [self._b.op("Div", [q, base]), base])])

    def _byte_values(self) -> gs.Tensor:
        """int32 ``[256]``: 0 .. 255, once per graph for every width."""
        if self._values is None:
            if self._b.opset >= RANGE_OPSET:
                start, stop, step = (self._scalar(v) for v in (0, 256, 1))
                self._values = self._b.op("Range", [start, stop, step])
            else:  # 256 bytes stored as uint8 rather than 1 KB of int32
                stored = self._b.const("bytes", np.arange(256, dtype=np.uint8))
                self._values = self._b.op("Cast", [stored], {"to": INT32})
        return self._values

    def _scalar(self, value: int) -> gs.Constant:
        """An int32 scalar, one constant per value however many tables use it."""
        if value not in self._scalars:
            self._scalars[value] = self._b.const(f"c{value}", np.array(value, np.int32))
        return self._scalars[value]


class SharedTables:
    """The :class:`ByteTables` of every graph the pass writes decodes into, keyed by the graph."""

    def __init__(self, fresh: Callable[[str], str], opset: int) -> None:
        self._fresh = fresh
        self._opset = opset
        self._graphs: dict[int, tuple[gs.Graph, ByteTables]] = {}

    def of(self, graph: gs.Graph) -> ByteTables:
        if id(graph) not in self._graphs:
            self._graphs[id(graph)] = (graph, ByteTables(self._fresh, self._opset))
        return self._graphs[id(graph)][1]

    def place(self) -> None:
        """Put each graph's tables before all its other nodes: they read only constants, and decodes read them."""
        for graph, tables in self._graphs.values():
            graph.nodes[0:0] = tables.nodes
