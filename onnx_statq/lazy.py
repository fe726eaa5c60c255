"""External weights read on demand, so that a large model never sits in memory whole.

:func:`onnx_statq.io.load_model` with ``lazy=True`` leaves external tensors on disk. After graphsurgeon imports the
model, :func:`attach` gives each external constant an :class:`ExternalValues`, whose :meth:`~ExternalValues.load`
maps the tensor's byte range of the data file read-only (``numpy.memmap``). :func:`values_of` hands the pass a fresh
map each time and never caches it, so the pages of a weight leave the process as soon as the pass is done with it:
the pass holds only the float weights it is working on (one with ``--jobs 1``; with more, at most
:data:`onnx_statq.workers.BYTES_IN_FLIGHT` of them, or one larger weight alone), whatever the model's size.
:func:`materialize` reads the external tensors that are still referenced after the rewrite (biases, skipped
weights) into the output model, exactly as ``onnx.load_external_data_for_model`` would have, so the lazy path writes
the same bytes as the in-memory one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import ExternalDataInfo
from onnx_graphsurgeon.ir.tensor import LazyValues

from .errors import ExternalDataError

__all__ = [
    "DeferredArray",
    "ExternalValues",
    "attach",
    "check_ranges",
    "deferred_values_of",
    "external_tensors",
    "materialize",
    "values_of",
]


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model (initializers, Constant attributes, subgraphs) whose data lives in a file."""
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t


_NP_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "<f4",
    onnx.TensorProto.DOUBLE: "<f8",
    onnx.TensorProto.FLOAT16: "<f2",
    onnx.TensorProto.INT8: "i1",
    onnx.TensorProto.UINT8: "u1",
    onnx.TensorProto.INT16: "<i2",
    onnx.TensorProto.UINT16: "<u2",
    onnx.TensorProto.INT32: "<i4",
    onnx.TensorProto.UINT32: "<u4",
    onnx.TensorProto.INT64: "<i8",
    onnx.TensorProto.UINT64: "<u8",
    onnx.TensorProto.BOOL: "?",
}


def _np_dtype(tensor: onnx.TensorProto) -> np.dtype | None:
    """The numpy dtype of the tensor's raw (little-endian) bytes, or None (bfloat16, float8, 4-bit, strings...)."""
    code = _NP_TYPES.get(int(tensor.data_type))
    return np.dtype(code) if code else None


def check_ranges(model: onnx.ModelProto, folder: Path) -> None:
    """Each external tensor's byte range lies inside its file and, where the type is known, fits its shape."""
    sizes: dict[str, int] = {}
    for t in external_tensors(model):
        try:
            info = ExternalDataInfo(t)
        except ValueError as exc:
            raise ExternalDataError(f"bad external data entry of {t.name!r}: {exc}") from None
        if info.location not in sizes:
            sizes[info.location] = (folder / info.location).stat().st_size
        offset = info.offset or 0
        length = info.length if info.length is not None else sizes[info.location] - offset
        if offset + length > sizes[info.location] or length < 0:
            raise ExternalDataError(f"external data of {t.name!r} runs past the end of {info.location!r}")
        dt = _np_dtype(t)
        if dt is not None and length != dt.itemsize * math.prod(t.dims):
            raise ExternalDataError(
                f"external data of {t.name!r} holds {length} bytes; its shape {list(t.dims)} needs "
                f"{dt.itemsize * math.prod(t.dims)}"
            )


class ExternalValues(LazyValues):
    """A constant's values in an external data file: mapped read-only on each :meth:`load`, never cached here."""

    def __init__(self, tensor: onnx.TensorProto, path: Path, offset: int, dtype: np.dtype) -> None:
        super().__init__(tensor)
        self.path = path
        self.offset = offset
        self.np_dtype = dtype

    def load(self) -> np.ndarray:
        shape = tuple(int(d) for d in self.tensor.dims)
        native = self.np_dtype.newbyteorder("=")
        if math.prod(shape) == 0:
            return np.zeros(shape, native)
        mapped = np.asarray(np.memmap(self.path, dtype=self.np_dtype, mode="r", offset=self.offset, shape=shape))
        return mapped if self.np_dtype.isnative else mapped.astype(native)  # a copy only on big-endian machines


def _constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    seen: set[int] = set()

    def visit(g: gs.Graph) -> Iterator[gs.Constant]:
        for t in g.tensors().values():
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                yield t
        for node in g.nodes:
            for attr in node.attrs.values():
                for item in attr if isinstance(attr, list) else [attr]:
                    if isinstance(item, gs.Graph):
                        yield from visit(item)
                    elif isinstance(item, gs.Constant) and id(item) not in seen:
                        seen.add(id(item))
                        yield item

    yield from visit(graph)


def attach(graph: gs.Graph, folder: Path) -> int:
    """Back every external constant of an imported graph by its file; returns how many.

    Tensors of a type numpy cannot map (bfloat16, float8, 4-bit) are read into a copy of their proto instead, as the
    in-memory path would have, so graphsurgeon converts them exactly as before; the caller's model is not modified.
    """
    count = 0
    for c in _constants(graph):
        values = c._values
        if not isinstance(values, LazyValues) or isinstance(values, ExternalValues):
            continue
        tensor = values.tensor
        if not isinstance(tensor, onnx.TensorProto) or tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        dt = _np_dtype(tensor)
        if dt is None:
            loaded = onnx.TensorProto()
            loaded.CopyFrom(tensor)
            onnx.external_data_helper.load_external_data_for_tensor(loaded, str(folder))
            c._values = LazyValues(loaded)
            continue
        info = ExternalDataInfo(tensor)
        c._values = ExternalValues(tensor, folder / info.location, info.offset or 0, dt)
        count += 1
    return count


def values_of(c: gs.Constant) -> np.ndarray:
    """A constant's values: a fresh read-only map for an external one (dropped with the caller's reference), the
    graphsurgeon-cached array otherwise (exactly as before)."""
    values = c._values
    if isinstance(values, ExternalValues):
        return values.load()
    return np.asarray(c.values)


def materialize(model: onnx.ModelProto, folder: Path) -> None:
    """Read the external tensors still referenced by ``model`` into it, as ``onnx.load_external_data_for_model``."""
    for t in list(external_tensors(model)):
        onnx.external_data_helper.load_external_data_for_tensor(t, str(folder))


class DeferredArray:
    """An external weight's shape, dtype and size without its data: each ``np.asarray`` maps it afresh.

    For code that keeps one entry per layer while it visits them in turn (the bit allocation's error curves): a
    list of mapped arrays would keep every weight it has read resident until the list goes; this keeps none.
    """

    def __init__(self, values: ExternalValues) -> None:
        self._values = values
        self.shape = tuple(int(d) for d in values.tensor.dims)
        self.dtype = values.np_dtype.newbyteorder("=")
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)
        self.nbytes = self.size * self.dtype.itemsize

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        a = self._values.load()
        return a if dtype is None else a.astype(dtype)


def deferred_values_of(c: gs.Constant) -> np.ndarray:
    """:func:`values_of`, but an external constant comes as a :class:`DeferredArray` (typed as the array it
    stands for: only ``shape``, ``dtype``, ``size``, ``nbytes`` and ``np.asarray`` may be used on it)."""
    values = c._values
    if isinstance(values, ExternalValues):
        return cast(np.ndarray, DeferredArray(values))
    return np.asarray(c.values)
