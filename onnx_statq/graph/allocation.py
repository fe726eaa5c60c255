"""Choose per-layer widths for the pass: predicted error curves turned into bits for the configured target.

Sits between the numerics (:mod:`onnx_statq.codebook.predict`, :mod:`onnx_statq.codebook.allocate`) and the pass,
which only hands over each free layer's weights and first encoding and re-encodes at the widths returned here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..codebook import EncodedTensor, Representation
from ..codebook.allocate import HI_BITS, LO_BITS, allocate_bits, avg_bits_for_bytes, bits_for_target, stored_bits
from ..codebook.predict import predict_curve
from ..codebook.tensor import to_groups
from ..config import QuantConfig
from ..errors import ConfigError

__all__ = ["DECODE_BYTES", "Choice", "Layer", "choose_bits", "layer_curve", "table_bits"]

logger = logging.getLogger(__name__)

TABLE_SHARE_BITS = 1.0  # at most this much of the per-weight budget goes to codebook tables
DECODE_BYTES = 1400  # serialized size of one layer's decode nodes and their small constants, measured on the demo


@dataclass(frozen=True)
class Layer:
    """One weight whose width is free: its values, channel axis and the encoding at the reference width."""

    values: np.ndarray
    axis: int | None
    encoded: EncodedTensor


@dataclass(frozen=True)
class Choice:
    bits: list[int]
    predicted: list[dict[int, float]]  # the statistical prediction per layer and width, before anchoring
    target: str  # what the widths were chosen for, for the report


def table_bits(enc: EncodedTensor) -> int:
    """Bits one codebook level costs across all of a layer's codebooks."""
    cb = enc.codebook
    if cb is None:
        return 0
    return cb.levels.shape[0] * (16 if cb.level_dtype == "float16" else 32)


def layer_curve(layer: Layer) -> dict[int, float]:
    """Predicted relative error at every width, on the group view the layer's codebooks actually use."""
    enc = layer.encoded
    per_channel = enc.representation == Representation.CHANNEL
    rows = to_groups(np.asarray(layer.values), layer.axis if per_channel else None)
    half = per_channel or layer.values.dtype == np.float16
    return predict_curve(rows, range(LO_BITS, HI_BITS + 1), half_levels=half)


def _anchored(curve: dict[int, float], measured: float, ref: int) -> dict[int, float]:
    """The prediction's shape through the measured error at the reference width: the best of both where a fit
    at one width has been paid for anyway."""
    scale = measured / curve[ref] if curve[ref] > 0 else 1.0
    return {b: v * scale for b, v in curve.items()}


def choose_bits(config: QuantConfig, layers: Sequence[Layer], other_bytes: int, input_bytes: int) -> Choice:
    """Widths for the free layers under ``config``'s target.

    ``other_bytes`` is what the output keeps besides these layers (graph, kept tensors), ``input_bytes`` the input
    file size; both only matter for ``size_ratio``.
    """
    predicted = [layer_curve(layer) for layer in layers]
    ref = config.bits
    curves = (
        predicted
        if config.auto_bits
        else [_anchored(c, max(la.encoded.rel_error, 1e-12), ref) for c, la in zip(predicted, layers, strict=True)]
    )
    sizes = [int(la.values.size) for la in layers]
    tables = [table_bits(la.encoded) for la in layers]
    if config.target_sqnr is not None:
        bits = bits_for_target(curves, 10 ** (-config.target_sqnr / 10))
        return Choice(bits, predicted, f"target SQNR {config.target_sqnr:g} dB per layer")
    if config.size_ratio is not None:
        ratio = config.size_ratio
        avg = avg_bits_for_bytes(sizes, tables, input_bytes / ratio - other_bytes)
        if avg is None:
            smallest = other_bytes + sum(stored_bits(s, t, LO_BITS) for s, t in zip(sizes, tables, strict=True)) / 8
            raise ConfigError(
                f"size ratio {ratio:g} is out of reach: {LO_BITS} bits everywhere gives {input_bytes / smallest:.2f}x"
            )
        logger.info("size ratio %.2f: %.3f bits per weight on average", ratio, avg)
        return Choice(allocate_bits(sizes, curves, avg, table_bits=tables), predicted, f"size ratio {ratio:g}")
    budget = config.budget
    if budget is None:
        raise ConfigError("no allocation target")  # unreachable: the config requires one when allocating
    # ``bits`` is an average that includes the codebooks beyond one float32 codebook per layer: per-channel tables
    # are paid for with index bits, so 4 bits gives about the same size whatever the representation. Up to one bit
    # per weight: beyond that (many channels, few weights each) the tables would starve the indices
    # (docs/method.md, "Choosing the widths").
    allowance = sum(sizes) * budget + len(sizes) * 32 * 2.0**budget
    avg = avg_bits_for_bytes(sizes, tables, allowance / 8)
    avg = max(avg if avg is not None else LO_BITS, min(budget, max(LO_BITS, budget - TABLE_SHARE_BITS)))
    bits = allocate_bits(sizes, curves, avg, table_bits=tables)
    return Choice(bits, predicted, f"average {budget:g} bits per weight, codebooks included")
