"""Sub-byte packing of indices into uint8 planes that standard ONNX integer ops can unpack.

A b-bit index is split into fields whose widths are powers of two (3 = 2 + 1, 5 = 4 + 1, 6 = 4 + 2, 7 = 4 + 2 + 1),
and each field is packed into its own plane of 8/w fields per byte, so every bit width costs exactly b bits per
weight: 3 bits never cost 4. Within a plane, element ``i`` of the first ``m * r`` indices sits in byte ``i % m`` at
field ``i // m``; numpy unpacks it with one broadcast Div, a mask and a Reshape, with no Slice (the ONNX decode
reads the same layout through a Gather on a table over the 256 byte values: :mod:`onnx_statq.graph.tables`). The
last ``n % 8`` indices are stored whole in a small tail.

An embedding table read only by Gather is packed row by row instead (:func:`pack_rows`), so that the rows a lookup
selects can be gathered still packed and decoded alone: the whole table is never unpacked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PackedIndices",
    "Plane",
    "field_widths",
    "pack",
    "pack_rows",
    "packed_bytes",
    "rows_packable",
    "unpack",
    "unpack_rows",
]


@dataclass(frozen=True)
class Plane:
    """One field of the index: ``width`` bits, worth ``2**shift`` in the index, packed ``8 // width`` per byte."""

    width: int
    shift: int
    data: np.ndarray  # uint8 [m]; from pack_rows, [rows, row length // per_byte]

    @property
    def per_byte(self) -> int:
        return 8 // self.width


@dataclass(frozen=True)
class PackedIndices:
    bits: int
    n: int
    planes: tuple[Plane, ...]
    tail: np.ndarray  # uint8 [n - n_main]

    def nbytes(self) -> int:
        return sum(p.data.size for p in self.planes) + self.tail.size


def field_widths(bits: int) -> list[int]:
    """Power-of-two widths summing to ``bits``, widest first."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8, got {bits}")
    return [w for w in (8, 4, 2, 1) if bits & w]


def packed_bytes(n: int, bits: int) -> int:
    """Bytes that :func:`pack` produces for ``n`` indices, for size estimates without packing."""
    main = n - n % 8 if bits < 8 else n
    return main * bits // 8 + (n - main)


def pack(indices: np.ndarray, bits: int) -> PackedIndices:
    idx = np.ascontiguousarray(indices, dtype=np.uint8).ravel()
    if idx.size and int(idx.max()) >= 1 << bits:
        raise ValueError(f"an index does not fit in {bits} bits")
    n = idx.size
    widths = field_widths(bits)
    n_main = n if bits == 8 else n - n % 8
    planes = []
    shift = bits
    for w in widths:
        shift -= w
        part = ((idx[:n_main] >> shift) & ((1 << w) - 1)).astype(np.uint16)
        r = 8 // w
        fields = part.reshape(r, n_main // r)
        byte = np.zeros(n_main // r, dtype=np.uint16)
        for j in range(r):
            byte |= fields[j] << (w * j)
        planes.append(Plane(width=w, shift=shift, data=byte.astype(np.uint8)))
    return PackedIndices(bits=bits, n=n, planes=tuple(planes), tail=idx[n_main:].copy())


def unpack(packed: PackedIndices) -> np.ndarray:
    """Inverse of :func:`pack`, written with the same integer steps the ONNX decode uses."""
    total: np.ndarray | None = None
    for p in packed.planes:
        q = p.data.astype(np.int32)[None, :] // (1 << (p.width * np.arange(p.per_byte, dtype=np.int32)))[:, None]
        q = q - (q // (1 << p.width)) * (1 << p.width)
        v = q.reshape(-1) * (1 << p.shift)
        total = v if total is None else total + v
    main = np.zeros(0, np.int32) if total is None else total
    return np.concatenate([main, packed.tail.astype(np.int32)]).astype(np.uint8)


def rows_packable(row_length: int, bits: int) -> bool:
    """Whether :func:`pack_rows` packs rows of this length at this width: every plane's bytes hold whole rows."""
    return row_length > 0 and all(row_length % (8 // w) == 0 for w in field_widths(bits))


def pack_rows(indices: np.ndarray, bits: int) -> tuple[Plane, ...]:
    """``[V, D]`` indices packed one row at a time: each plane is ``[V, D // per_byte]`` uint8, element ``j`` of a
    row in byte ``j // per_byte`` at field ``j % per_byte``.

    Fields interleaved within a row (not in blocks, as :func:`pack` lays out a whole tensor) make a row's fields, read
    byte by byte and field by field, come out in element order: unpacking the gathered rows is one lookup in a table
    ``[256, per_byte]`` and a Reshape, with no Transpose, whatever the shape of the lookup's indices.
    """
    idx = np.ascontiguousarray(indices, dtype=np.uint8)
    if idx.ndim != 2 or not rows_packable(idx.shape[1], bits):
        raise ValueError(f"cannot pack rows of shape {idx.shape} at {bits} bits")
    if idx.size and int(idx.max()) >= 1 << bits:
        raise ValueError(f"an index does not fit in {bits} bits")
    v, d = idx.shape
    planes = []
    shift = bits
    for w in field_widths(bits):
        shift -= w
        r = 8 // w
        part = ((idx >> shift) & ((1 << w) - 1)).astype(np.uint16).reshape(v, d // r, r)
        byte = np.bitwise_or.reduce(part << (w * np.arange(r, dtype=np.uint16)), axis=2)
        planes.append(Plane(width=w, shift=shift, data=byte.astype(np.uint8)))
    return tuple(planes)


def unpack_rows(planes: tuple[Plane, ...], rows: np.ndarray | None = None) -> np.ndarray:
    """The indices of ``rows`` (any integer array, as Gather takes; all rows if None) from :func:`pack_rows`'s
    planes, shaped ``rows.shape + [D]``, with the integer steps of the ONNX decode."""
    total: np.ndarray | None = None
    for p in planes:
        data = p.data if rows is None else p.data[np.asarray(rows)]
        q = data.astype(np.int32)[..., None] // (1 << (p.width * np.arange(p.per_byte, dtype=np.int32)))
        q = q - (q // (1 << p.width)) * (1 << p.width)
        v = (q * (1 << p.shift)).reshape(*data.shape[:-1], -1)
        total = v if total is None else total + v
    if total is None:
        raise ValueError("no planes to unpack")
    return total.astype(np.uint8)
