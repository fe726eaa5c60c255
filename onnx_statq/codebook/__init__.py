"""Pure-numpy codebook numerics: no onnx or onnxruntime import here, so it can be tested and reused alone."""

from .assign import assign, assign_rows, decode
from .fit import fit
from .packing import PackedIndices, field_widths, pack, packed_bytes, unpack
from .stats import RowStats, row_stats
from .tensor import EncodedTensor, Granularity, Representation, encode_tensor, from_groups, to_groups
from .types import MAX_BITS, Codebook, LevelDType, Method

__all__ = [
    "MAX_BITS",
    "Codebook",
    "EncodedTensor",
    "Granularity",
    "LevelDType",
    "Method",
    "PackedIndices",
    "Representation",
    "RowStats",
    "assign",
    "assign_rows",
    "decode",
    "encode_tensor",
    "field_widths",
    "fit",
    "from_groups",
    "pack",
    "packed_bytes",
    "row_stats",
    "to_groups",
    "unpack",
]
